// Reading a distributed checkpoint (checkpoint/checkpoint_index.h) on any mesh: any flat range of any
// tensor, assembled from whichever slices of whichever rank files overlap it, every checksum verified.
//
// Typical load on one rank (its table, its ZeRO shard [b, e), its moments' buffer):
//   absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(path);
//   if (absl::Status s = (*r)->CheckModel(recipe.model, &notes); !s.ok()) return s;
//   auto values = TablePieces(table, 0, table.numel());                      // every value it holds
//   auto moments = TablePieces(table, b, e, PieceFilter::kTrainableOnly);   // its shard's moments
//   (*r)->ReadPieces(kKindValue, values, table.values(), 0);
//   (*r)->ReadPieces(kKindAdamM, moments, adam_m /* (e - b) */, b);
// (Reading only the shard's values and all-gathering them, as ZeroOptimizer::GatherParameters does, reads
// each byte of the checkpoint once per data-parallel group instead of once per rank.)
//
// Validation. Open checks index.json (parsed and validated by IndexFromJson: format version, fields,
// slices, coverage) and that every file it lists exists as a regular file of the recorded size; a file's
// datasets (names, dtypes, lengths) are checked the first time a read touches the file, so a rank opens
// only the files it reads from. Every chunk read is checked against its CRC-32C. ReadPieces checks every
// piece (the tensor exists, has that kind of state and the model's shape) before it reads anything.
//
// Errors (all of them about the user's input: a command exits 2 on any): NotFound for a missing directory,
// index.json or rank file; DataLoss for a truncated or corrupt file or a checksum mismatch; InvalidArgument
// for an unknown format version, a malformed index, or a tensor missing or of another shape than the
// model's; Internal for an I/O error. Messages name the checkpoint file, the tensor and what was expected.
//
// Thread safety: one thread at a time (reads share a cache of open files and a scratch buffer).
#ifndef FATHOM_CHECKPOINT_CHECKPOINT_READER_H_
#define FATHOM_CHECKPOINT_CHECKPOINT_READER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/checkpoint_index.h"
#include "checkpoint/param_slices.h"
#include "framework/config.h"
#include "framework/tensor.h"

namespace fathom {

class Hdf5RankFile;

class CheckpointReader {
 public:
  // `dir` is one checkpoint (D/step_00000123), not the directory of checkpoints.
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(const std::string& dir);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const std::string& dir() const { return dir_; }
  const CheckpointIndex& index() const { return index_; }
  const CheckpointMetadata& metadata() const { return index_.metadata; }
  int64_t step() const { return index_.metadata.step; }
  // The tensor's record, or nullptr when the checkpoint has no tensor of that name.
  const TensorRecord* Find(const std::string& name) const;

  // Refuses a checkpoint saved by a model whose shapes differ from `model` (InvalidArgument listing every
  // differing key that decides shapes); the other differing keys (rope, routing constants, ...) are
  // returned in *notes (may be null) for the caller to print, and so are the checkpoint's tensors the
  // model does not have (they are not loaded).
  absl::Status CheckModel(const ModelConfig& model, std::vector<std::string>* notes) const;

  // Elements [begin, end) of tensor `name`'s `kind` state into `out`, converted from the stored dtype to
  // out's (f32, f64 or bf16; narrowing rounds to nearest even). REQUIRES: out is a CPU tensor of
  // end - begin elements. Errors as above (the tensor or kind absent, a range outside the tensor, ...).
  absl::Status Read(const std::string& name, const std::string& kind, int64_t begin, int64_t end,
                    const Tensor& out);

  // Opens every file now and checks its datasets (what Read does lazily for the files it touches): for
  // tools that vet a whole checkpoint. A rank that loads its part need not call it.
  absl::Status CheckFiles();

  // Every piece's tensor exists with `kind` state and the piece's shape; one InvalidArgument listing the
  // problems (the first 20 and their count) otherwise.
  absl::Status CheckPieces(const std::string& kind, const std::vector<TensorPiece>& pieces) const;
  // CheckPieces, then each piece into dst at element piece.table_offset - dst_table_begin. REQUIRES: dst a
  // flat CPU tensor (f32, f64 or bf16) holding the pieces' table range. On an error after the check (a
  // corrupt chunk) dst may be partly written.
  absl::Status ReadPieces(const std::string& kind, const std::vector<TensorPiece>& pieces, const Tensor& dst,
                          int64_t dst_table_begin);

 private:
  CheckpointReader(std::string dir, CheckpointIndex index);
  absl::StatusOr<Hdf5RankFile*> File(int file);
  // Elements [lo, hi) of `slice` (stored as `stored`) into out_bytes, converted to `out_dtype`.
  absl::Status ReadFromSlice(const std::string& name, const std::string& kind, const SliceRecord& slice,
                             DType stored, int64_t lo, int64_t hi, char* out_bytes, DType out_dtype);
  std::string FilePath(int file) const;

  std::string dir_;
  CheckpointIndex index_;
  std::map<int, std::unique_ptr<Hdf5RankFile>> open_files_;
  std::vector<char> scratch_;
};

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_CHECKPOINT_READER_H_
