// HDF5 token datasets (data.source: hdf5): one file holding
//   /tokens            1-D, any integer type (fathom writes uint16 or int32): every document's tokens,
//                      back to back
//   /document_offsets  1-D, any integer type (fathom writes int64), documents + 1 entries: document d is
//                      /tokens[offsets[d], offsets[d + 1]); offsets[0] = 0, non-decreasing, the last one
//                      = the length of /tokens
// Packed and split exactly like Megatron datasets (data/packed_split.h).
//
// Validation at Open: the file opens as HDF5, both datasets exist, are 1-D and of an integer type, and the
// offsets are as above. Open reads the offsets into memory (8 bytes per document); tokens are read on
// demand with hyperslab selections (HDF5 converts them to int64, then each is checked < vocab_size).
// Errors are InvalidArgument messages starting with the file's path; HDF5's own error stack is silenced
// while fathom calls it (it would print to stderr) and restored afterwards.
//
// Thread safety: none (the HDF5 library of Debian is built without its thread-safe option): one thread at
// a time in all HDF5 calls of the process.
#ifndef FATHOM_DATA_HDF5_DATASET_H_
#define FATHOM_DATA_HDF5_DATASET_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/indexed_dataset.h"
#include "data/token_documents.h"

namespace fathom {

inline constexpr char kHdf5TokensDataset[] = "/tokens";
inline constexpr char kHdf5DocumentOffsetsDataset[] = "/document_offsets";

class Hdf5TokenDataset final : public TokenDocuments {
 public:
  // Opens `path` read-only and validates it (see above). Token ids must lie in [0, vocab_size).
  // REQUIRES: vocab_size >= 1.
  static absl::StatusOr<std::unique_ptr<Hdf5TokenDataset>> Open(const std::string& path, int64_t vocab_size);
  ~Hdf5TokenDataset() override;
  Hdf5TokenDataset(const Hdf5TokenDataset&) = delete;
  Hdf5TokenDataset& operator=(const Hdf5TokenDataset&) = delete;

  int64_t num_tokens() const { return offsets_.back(); }

  // TokenDocuments
  const std::string& path() const override { return path_; }
  int64_t file_bytes() const override { return file_bytes_; }
  int64_t num_documents() const override { return static_cast<int64_t>(offsets_.size()) - 1; }
  int64_t document_length(int64_t doc) const override;
  absl::Status ReadTokens(int64_t doc, int64_t begin, int64_t count, int32_t* out) override;
  absl::Status CheckTokenIds(int64_t doc_begin, int64_t doc_end) override;

 private:
  Hdf5TokenDataset() = default;
  absl::Status OpenAndValidate(const std::string& path);
  // Tokens [begin, begin + count) of /tokens into scratch_ (as int64).
  absl::Status ReadRange(int64_t begin, int64_t count);
  absl::Status BadToken(int64_t token, int64_t value) const;

  std::string path_;
  int64_t file_bytes_ = 0;
  int64_t vocab_size_ = 0;
  int64_t file_ = -1;    // hid_t of the file
  int64_t tokens_ = -1;  // hid_t of /tokens
  std::vector<int64_t> offsets_;
  std::vector<int64_t> scratch_;
};

// Writes an HDF5 token file at `path`: /tokens stored as `dtype` (kUint16 or kInt32; every token must fit)
// and /document_offsets as int64. The file is built in memory (HDF5's core driver), then written with
// WriteFileAtomically (framework/file_io.h), so it needs about the file's size in memory.
// Errors: InvalidArgument for a token that does not fit, offsets that are not as above, another dtype;
// framework/file_io.h's errors for the write.
absl::Status WriteHdf5TokenFile(const std::string& path, std::span<const int32_t> tokens,
                                std::span<const int64_t> document_offsets, IndexedDType dtype);

}  // namespace fathom

#endif  // FATHOM_DATA_HDF5_DATASET_H_
