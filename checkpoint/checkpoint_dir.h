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
// a step_<digits> entry that is not one (a save interrupted before this protocol existed, a copy that lost
// its index, a user's directory) is skipped and reported, never pruned or replaced: a save that would have
// to replace one is refused. The leftovers above are removed by the next successful save (CleanLeftovers),
// but only when fathom made them: every temporary directory fathom creates (step_N.tmp here, HF_DIR.tmp of
// `fathom export`) holds the marker file kOwnedMarkerName from its creation until it is complete, and a
// .pruned / .replaced one is a renamed complete checkpoint (index.json) marked before its removal. An entry
// of a leftover's name without either is someone else's and is left alone (or, where fathom needs the name,
// refused naming the path). Nothing else in D is ever touched. D must be a file system every rank sees (a
// shared one for multi-node jobs).
//
// Errors: InvalidArgument naming the path for a D that is not a directory, a D that is itself a checkpoint,
// resume: none into a D that holds checkpoints, and a leftover's name taken by something fathom did not
// make; NotFound for a resume path that is not a checkpoint, Internal for I/O errors. Thread-compatible.
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

// The file that marks a directory as fathom's own temporary (written first, removed last): only such a
// directory (or an empty one: a crash between its creation and the marker) is ever removed as a leftover.
inline constexpr char kOwnedMarkerName[] = ".fathom-incomplete";

// Creates the new directory `path` (it must not exist) with the marker inside, both fsynced.
// InvalidArgument naming `path` when it cannot be created.
absl::Status CreateOwnedDirectory(const std::string& path);
// True when `path` is a directory (not a symbolic link) that holds the marker or nothing at all.
bool IsOwnedDirectory(const std::string& path);
// Removes the leftover `path` when IsOwnedDirectory (the marker last, so that a crash midway leaves it
// recognisable); OK when nothing is there. Otherwise InvalidArgument naming `path`, saying that fathom did
// not make it and `purpose` (what fathom needs the name for), and asking the user to move it.
absl::Status RemoveOwnedLeftover(const std::string& path, const std::string& purpose);
// Marks `path` (a directory fathom is about to delete, such as a complete checkpoint renamed aside) as its
// own, then removes it, the marker last.
absl::Status RemoveOwnedTree(const std::string& path);
// Removes the marker from `path`, a temporary directory that is now complete (renamed into place), and
// fsyncs it.
absl::Status DropOwnedMarker(const std::string& path);

struct CheckpointEntry {
  int64_t step;
  std::string path;
};
// A step_<digits> entry of a checkpoint directory that is not a complete checkpoint, and why.
struct SkippedStepEntry {
  int64_t step;
  std::string path;
  std::string reason;  // e.g. "no index.json (an incomplete save, or not a fathom checkpoint)"
};
// The complete checkpoints in `dir`, ascending by step. A missing `dir` has none (OK, empty). `skipped`
// (optional) receives the step_<digits> entries that are not complete checkpoints, ascending by step.
absl::StatusOr<std::vector<CheckpointEntry>> ListCheckpoints(
    const std::string& dir, std::vector<SkippedStepEntry>* skipped = nullptr);
// The entries of `dir` named like its leftovers (step_N.tmp, step_N.pruned, step_N.replaced) that fathom
// did not make (no marker, not empty, not a complete checkpoint renamed aside), ascending by step: never
// removed, so callers name them (a save of step N refuses to start while step_N.tmp is one). A missing or
// unreadable `dir` has none.
std::vector<SkippedStepEntry> ForeignLeftovers(const std::string& dir);
// The newest complete checkpoint's path, or nullopt when there is none (or `dir` does not exist).
absl::StatusOr<std::optional<std::string>> FindLatestCheckpoint(
    const std::string& dir, std::vector<SkippedStepEntry>* skipped = nullptr);
// "D/step_00000004: no index.json (...)": one line per skipped entry, for a warning.
std::string DescribeSkipped(const SkippedStepEntry& entry);

// Deletes the complete checkpoints of `dir` older than the newest `keep_last` (0 = keep all), each renamed
// to .pruned first and then removed. Call only after a new checkpoint is complete.
absl::Status PruneCheckpoints(const std::string& dir, int64_t keep_last);
// Removes fathom's own leftovers (.tmp, .pruned, .replaced; see above) of `dir`, except `keep` (a path;
// may be empty). Entries of those names that fathom did not make are left alone.
absl::Status CleanLeftovers(const std::string& dir, const std::string& keep = "");

// Where a run resumes, from checkpoint.resume:
//   "none"  nullopt (start fresh); InvalidArgument naming the newest checkpoint when checkpoint.dir already
//           holds complete checkpoints (the new run's saves would mix with another run's, and a later
//           resume: auto would continue whichever is newest);
//   "auto"  the newest complete checkpoint in checkpoint.dir, nullopt when there is none (or no dir);
//   a path  that checkpoint (a directory holding index.json); a directory of checkpoints (such as another
//           run's checkpoint.dir) means its newest one; anything else is NotFound naming the path.
// Whatever `resume` says, a checkpoint.dir that is itself a checkpoint (it holds index.json) is
// InvalidArgument. `warnings` (optional) receives one line per step_<digits> entry that "auto" or a
// directory of checkpoints skipped because it is not a complete checkpoint (DescribeSkipped).
absl::StatusOr<std::optional<std::string>> ResolveResume(const CheckpointConfig& config,
                                                         std::vector<std::string>* warnings = nullptr);
// ResolveResume on rank 0 of `comm`, its answer (or error) broadcast, so that every rank loads the same
// checkpoint even if a file system showed them different listings. Collective over `comm` (a host
// communicator: MPI or local). `warnings` is filled on rank 0 only.
absl::StatusOr<std::optional<std::string>> ResolveResumeOnAllRanks(
    const CheckpointConfig& config, Communicator& comm, std::vector<std::string>* warnings = nullptr);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_CHECKPOINT_DIR_H_
