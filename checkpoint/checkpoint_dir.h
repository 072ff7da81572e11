// The directory of a run's checkpoints (checkpoint.dir = D): naming, discovery, pruning, and the choice of
// where a run resumes.
//
// D holds one directory per checkpoint. Names (the step zero-padded to 8 digits, more when it needs them):
//   step_00000123           a complete checkpoint: committed by a rename, holds index.json
//   step_00000123.tmp       a save in progress, or the leftover of one that crashed
//   step_00000123.pruned    a complete checkpoint being deleted by keep_last (renamed first, so a crash in
//                           the middle of a deletion never leaves a half-deleted "complete" checkpoint)
//   step_00000123.replaced  a complete checkpoint of the same step being replaced by a new save
// Discovery sees only complete checkpoints (the exact name step_<digits> and a regular index.json inside);
// every other entry is ignored, and the leftovers above are removed by the next successful save
// (CleanLeftovers). Nothing else in D is ever touched. D must be a file system every rank sees (a shared
// one for multi-node jobs).
//
// Errors: InvalidArgument naming the path for a D that is not a directory, NotFound for a resume path that
// is not a checkpoint, Internal for I/O errors. Thread-compatible.
#ifndef FATHOM_CHECKPOINT_CHECKPOINT_DIR_H_
#define FATHOM_CHECKPOINT_CHECKPOINT_DIR_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framework/config.h"
#include "parallel/communicator.h"

namespace fathom {

// "step_00000123".
std::string StepDirName(int64_t step);
// D/step_00000123 and D/step_00000123.tmp.
std::string CheckpointPath(const std::string& dir, int64_t step);
std::string CheckpointTmpPath(const std::string& dir, int64_t step);

struct CheckpointEntry {
  int64_t step;
  std::string path;
};
// The complete checkpoints in `dir`, ascending by step. A missing `dir` has none (OK, empty).
absl::StatusOr<std::vector<CheckpointEntry>> ListCheckpoints(const std::string& dir);
// The newest complete checkpoint's path, or nullopt when there is none (or `dir` does not exist).
absl::StatusOr<std::optional<std::string>> FindLatestCheckpoint(const std::string& dir);

// Deletes the complete checkpoints of `dir` older than the newest `keep_last` (0 = keep all), each renamed
// to .pruned first and then removed. Call only after a new checkpoint is complete.
absl::Status PruneCheckpoints(const std::string& dir, int64_t keep_last);
// Removes the leftovers (.tmp, .pruned, .replaced) of `dir`, except `keep` (a path; may be empty).
absl::Status CleanLeftovers(const std::string& dir, const std::string& keep = "");

// Where a run resumes, from checkpoint.resume:
//   "none"  nullopt (start fresh);
//   "auto"  the newest complete checkpoint in checkpoint.dir, nullopt when there is none (or no dir);
//   a path  that checkpoint (a directory holding index.json); a directory of checkpoints (such as another
//           run's checkpoint.dir) means its newest one; anything else is NotFound naming the path.
absl::StatusOr<std::optional<std::string>> ResolveResume(const CheckpointConfig& config);
// ResolveResume on rank 0 of `comm`, its answer (or error) broadcast, so that every rank loads the same
// checkpoint even if a file system showed them different listings. Collective over `comm` (a host
// communicator: MPI or local).
absl::StatusOr<std::optional<std::string>> ResolveResumeOnAllRanks(const CheckpointConfig& config,
                                                                   Communicator& comm);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_CHECKPOINT_DIR_H_
