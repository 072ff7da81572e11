// Megatron-LM's "MMap" indexed dataset (PREFIX.idx + PREFIX.bin), read through mmap without copying, and a
// writer producing the same bytes Megatron's own writer does (so Megatron's reader reads fathom's files).
//
// PREFIX.idx, little-endian, no padding:
//   offset 0   9 bytes  magic "MMIDIDX\0\0"
//          9   u64      version, 1
//          17  u8       dtype code of the tokens in .bin: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
//                       6 float64, 7 float32, 8 uint16 (fathom reads the integer codes)
//          18  u64      S, the number of sequences
//          26  u64      D, the number of document indices (documents + 1)
//          34  i32[S]   sequence lengths, in tokens
//              i64[S]   sequence pointers: byte offset of each sequence in .bin
//              i64[D]   document indices: document d is sequences [idx[d], idx[d + 1]); idx[0] = 0 and
//                       idx[D - 1] = S
// PREFIX.bin: the tokens of every sequence, in the dtype above (Megatron writes them back to back, so
// pointer[i + 1] = pointer[i] + length[i] * itemsize, but any in-bounds pointers are read).
//
// A document is the concatenation of its sequences (Megatron splits a document into sentences only when
// preprocessing with --split-sentences; fathom's `preprocess` writes one sequence per document).
//
// Validation at Open (cost: O(S + D) over the memory-mapped index, no token is read): both files exist,
// the magic, version and dtype code, the exact .idx size for S and D, lengths >= 0, every sequence inside
// .bin, document indices non-decreasing from 0 to S. Token ids are checked when read (ReadTokens) and by
// CheckTokenIds, which scans a document range with pread in 4 MiB pieces: bounded memory, the mapping is
// left untouched (no RSS growth), at the speed of the disk or the page cache.
// Every error is an InvalidArgument whose message starts with the file it is about. The files must not
// change while open (they are mapped: a file truncated underneath faults the process, as with Megatron).
// Little-endian hosts only (x86-64, aarch64), as the format.
//
// Thread safety: const methods are thread-safe; ReadTokens and CheckTokenIds read only, but a dataset is
// used by one thread at a time (TokenDocuments' contract).
#ifndef FATHOM_DATA_INDEXED_DATASET_H_
#define FATHOM_DATA_INDEXED_DATASET_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/token_documents.h"
#include "framework/file_io.h"

namespace fathom {

enum class IndexedDType : uint8_t {
  kUint8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kFloat64 = 6,
  kFloat32 = 7,
  kUint16 = 8,
};

inline constexpr char kIndexMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr uint64_t kIndexVersion = 1;
inline constexpr int64_t kIndexHeaderBytes = 34;

// Bytes per token; "uint16" etc. REQUIRES: a valid code.
int64_t IndexedDTypeSize(IndexedDType dtype);
const char* IndexedDTypeName(IndexedDType dtype);
// Megatron's choice for a vocabulary: uint16 below 65500 ids, else int32.
IndexedDType IndexedDTypeForVocab(int64_t vocab_size);

class IndexedDataset final : public TokenDocuments {
 public:
  // Maps PREFIX.idx and PREFIX.bin and validates their structure (see above). Token ids must lie in
  // [0, vocab_size). REQUIRES: vocab_size >= 1.
  static absl::StatusOr<std::unique_ptr<IndexedDataset>> Open(const std::string& prefix, int64_t vocab_size);
  ~IndexedDataset() override;
  IndexedDataset(const IndexedDataset&) = delete;
  IndexedDataset& operator=(const IndexedDataset&) = delete;

  // Megatron's view of the index. REQUIRES: indices in range.
  IndexedDType dtype() const { return dtype_; }
  int64_t num_sequences() const { return num_sequences_; }
  int64_t sequence_length(int64_t seq) const;
  int64_t sequence_pointer(int64_t seq) const;  // byte offset in .bin
  int64_t document_index(int64_t i) const;      // i in [0, num_documents()]: the first sequence of document i

  // TokenDocuments
  const std::string& path() const override { return bin_path_; }
  int64_t file_bytes() const override { return idx_bytes_ + bin_bytes_; }
  int64_t num_documents() const override { return num_document_indices_ - 1; }
  int64_t document_length(int64_t doc) const override;
  absl::Status ReadTokens(int64_t doc, int64_t begin, int64_t count, int32_t* out) override;
  absl::Status CheckTokenIds(int64_t doc_begin, int64_t doc_end) override;

 private:
  IndexedDataset() = default;
  absl::Status Map(const std::string& prefix);
  absl::Status Validate();  // sets the fields read from the header
  // The document containing sequence `seq` and the position of the sequence's first token in it.
  std::pair<int64_t, int64_t> Locate(int64_t seq) const;
  absl::Status BadToken(int64_t seq, int64_t position_in_seq, int64_t value) const;

  std::string idx_path_, bin_path_;
  int bin_fd_ = -1;
  const uint8_t* idx_ = nullptr;  // the mapped .idx (idx_bytes_)
  const uint8_t* bin_ = nullptr;  // the mapped .bin (bin_bytes_; nullptr when empty)
  int64_t idx_bytes_ = 0, bin_bytes_ = 0;
  IndexedDType dtype_ = IndexedDType::kUint16;
  int64_t itemsize_ = 2;
  int64_t num_sequences_ = 0, num_document_indices_ = 0;
  int64_t vocab_size_ = 0;
};

// Writes PREFIX.bin and PREFIX.idx the way Megatron's MMapIndexedDatasetBuilder does. The .bin is streamed
// to a temporary file; Finish writes the .idx to its own temporary file and renames both into place
// (framework/file_io.h: .bin first, then .idx, each atomically). Both destinations are checked before
// anything is written (Create) and again before the renames, so a PREFIX.idx that cannot be replaced
// leaves an existing PREFIX.bin untouched. Destroying an unfinished writer leaves no file behind.
// Memory: 20 bytes per sequence (the index is kept until Finish). One thread at a time.
class IndexedDatasetWriter {
 public:
  // Errors: a float dtype (InvalidArgument); a PREFIX.bin or PREFIX.idx that cannot be written or replaced
  // (framework/file_io.h's errors).
  static absl::StatusOr<std::unique_ptr<IndexedDatasetWriter>> Create(const std::string& prefix,
                                                                      IndexedDType dtype);

  // Appends one sequence to the current document. InvalidArgument when a token does not fit the dtype.
  absl::Status AddSequence(std::span<const int32_t> tokens);
  // Closes the current document (the sequences added since the previous EndDocument; may be none).
  void EndDocument();
  // AddSequence then EndDocument.
  absl::Status AddDocument(std::span<const int32_t> tokens);
  // Writes the .idx and commits both files. Sequences added after the last EndDocument are an error
  // (FailedPrecondition), as in Megatron. The writer is spent afterwards.
  absl::Status Finish();

  int64_t num_sequences() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t num_documents() const { return static_cast<int64_t>(document_indices_.size()) - 1; }
  int64_t num_tokens() const { return tokens_; }

 private:
  IndexedDatasetWriter(std::string prefix, IndexedDType dtype) : prefix_(std::move(prefix)), dtype_(dtype) {}

  std::string prefix_;
  IndexedDType dtype_;
  AtomicFileWriter bin_;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> pointers_;
  std::vector<int64_t> document_indices_{0};
  int64_t tokens_ = 0;
  std::string scratch_;  // one sequence in the output dtype
};

}  // namespace fathom

#endif  // FATHOM_DATA_INDEXED_DATASET_H_
