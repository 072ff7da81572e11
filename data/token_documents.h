// What the packer (data/packed_split.h) needs from a tokenized dataset file: documents of token ids, read
// by range. Implemented by Megatron's .bin/.idx (data/indexed_dataset.h) and HDF5 token files
// (data/hdf5_dataset.h).
//
// Token ids are checked against the vocabulary given when the file was opened: every read checks the
// tokens it returns, and CheckTokenIds scans a range of documents up front. A bad id is an InvalidArgument
// naming the file, the document, the position in it, the id and the vocabulary size.
//
// Thread safety: none; one thread at a time per object (reads may use a scratch buffer).
#ifndef FATHOM_DATA_TOKEN_DOCUMENTS_H_
#define FATHOM_DATA_TOKEN_DOCUMENTS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace fathom {

class TokenDocuments {
 public:
  virtual ~TokenDocuments() = default;

  // The file the documents come from, as messages name it (PREFIX.bin, or the HDF5 file).
  virtual const std::string& path() const = 0;
  // Total bytes of the file(s) (.bin + .idx, or the HDF5 file), for data fingerprints.
  virtual int64_t file_bytes() const = 0;
  virtual int64_t num_documents() const = 0;
  // Tokens in document `doc`. REQUIRES: 0 <= doc < num_documents().
  virtual int64_t document_length(int64_t doc) const = 0;
  // Tokens [begin, begin + count) of document `doc`, converted to int32, into out[0, count).
  // REQUIRES: 0 <= begin, begin + count <= document_length(doc). Errors: a token id outside
  // [0, vocab_size) (InvalidArgument, see above); an HDF5 read failure (Internal).
  virtual absl::Status ReadTokens(int64_t doc, int64_t begin, int64_t count, int32_t* out) = 0;
  // Checks every token of documents [doc_begin, doc_end) (a sequential read in bounded memory; the first
  // bad id is reported). REQUIRES: 0 <= doc_begin <= doc_end <= num_documents().
  virtual absl::Status CheckTokenIds(int64_t doc_begin, int64_t doc_end) = 0;
};

}  // namespace fathom

#endif  // FATHOM_DATA_TOKEN_DOCUMENTS_H_
