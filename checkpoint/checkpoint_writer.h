// Saving a distributed checkpoint: every rank writes what it owns, and the checkpoint appears only when all
// of them have (checkpoint/checkpoint_index.h for the format, checkpoint/checkpoint_dir.h for the names).
//
// Commit protocol (one save of step N into checkpoint.dir = D), every step collective over `comm`:
//   1. prepare  rank 0 creates D if needed, refuses a D/step_N that is not a complete checkpoint (only
//               those are replaced), removes its own leftover D/step_N.tmp (one it did not make is refused:
//               checkpoint/checkpoint_dir.h), creates it with its marker; every rank checks that it sees
//               it (D must be shared by all ranks); all agree or all fail.
//   2. write    each rank writes D/step_N.tmp/rank_RRRRR.h5 (R = its rank in `comm`) from host memory,
//               then fsyncs it and the directory (checkpoint/rank_file_writer.h).
//   3. confirm  all ranks agree that every write succeeded; if one failed, all return its error and rank 0
//               removes D/step_N.tmp.
//   4. commit   rank 0 gathers what every rank wrote, writes index.json into the temporary directory
//               (framework/file_io.h: temp file, fsync, rename), renames D/step_N.tmp to D/step_N
//               (an older complete D/step_N is exchanged with it atomically, then removed), fsyncs D,
//               then prunes to keep_last complete checkpoints and removes leftovers of crashed saves.
//               Every rank returns rank 0's verdict.
// A crash or kill anywhere leaves every earlier complete checkpoint intact and discoverable: the new one
// exists under its final name only after the rename, which happens after every file and index.json are on
// disk. Pruning starts only after that rename.
//
// Sync and async. Save() does the four steps and returns. StartAsync() does step 1, copies every source
// into host snapshot buffers (the only stall of the step loop; for CUDA sources this is the device-to-host
// copy) and starts step 2 in a background thread; Poll(), called by every rank at every step boundary,
// all-reduces "my write is done" and, once every rank's is, runs steps 3-4 on the calling (main) thread:
// MPI is only ever called from the main thread (Open MPI runs without MPI_THREAD_MULTIPLE). Finish() waits
// for the write and commits (end of training, or before the next StartAsync). Snapshot buffers are kept
// and reused by later saves of the same sizes. Without a thread-safe HDF5 library the async write runs
// synchronously inside StartAsync (stats.async is then false).
//
// Sources: flat tensors of table elements (ShardSource), host or CUDA. Only the range their pieces span
// is copied or written. CUDA sources REQUIRE what ops::Copy requires (framework/ops.h: a current OpContext
// on the device) and are copied to host snapshot buffers, also by Save(). Metadata comes from rank 0.
//
// Errors: every rank returns the same absl::Status for a save (prepare, write, or commit failure): the
// error of the lowest failing rank, "[rank R] " prefixed when R > 0; InvalidArgument when D cannot be used
// (not a directory, not writable, a step or leftover name taken by something fathom did not save),
// Internal for I/O errors. The test hook FATHOM_TEST_FAULT="R:N:save" (parallel/fault.h) kills rank R in
// the middle of its write of step N.
//
// Thread safety: the methods are called from the thread that owns `comm` (the main thread), in the same
// order on every rank of `comm`. Destroying a writer with a save in flight waits for the background write
// and abandons the save uncommitted (its temporary directory is a leftover the next save removes): call
// Finish() first.
#ifndef FATHOM_CHECKPOINT_CHECKPOINT_WRITER_H_
#define FATHOM_CHECKPOINT_CHECKPOINT_WRITER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint_index.h"
#include "checkpoint/rank_file_writer.h"
#include "framework/config.h"
#include "parallel/communicator.h"

namespace fathom {

// What one save cost; identical on every rank except stall_seconds (this rank's).
struct CheckpointSaveStats {
  int64_t step = 0;
  std::string path;           // the committed checkpoint, D/step_00000123
  bool async = false;         // written by a background thread
  double stall_seconds = 0;   // this rank's step loop was blocked: prepare + snapshot (async), all (sync)
  double write_seconds = 0;   // the slowest rank's file write, fsync included
  double commit_seconds = 0;  // confirm + gather + index + rename + prune, on the committing call
  int64_t bytes = 0;          // tensor bytes written by all ranks together
  // Aggregate write bandwidth: bytes / write_seconds, in GB/s (1e9 bytes).
  double write_gb_per_s() const {
    return write_seconds > 0 ? static_cast<double>(bytes) / write_seconds / 1e9 : 0;
  }
};

// One log line: "checkpoint step 123 saved to D/step_00000123: 2.150 GB in 1.020 s (2.11 GB/s), step loop
// stalled 0.013 s (async), commit 0.041 s".
std::string DescribeSave(const CheckpointSaveStats& stats);

class CheckpointWriter {
 public:
  // `comm`: every rank that holds state (normally the world), moving CPU tensors; it must outlive the
  // writer. `dir` = checkpoint.dir (REQUIRES non-empty); keep_last as in CheckpointConfig.
  CheckpointWriter(Communicator& comm, std::string dir, int64_t keep_last);
  CheckpointWriter(Communicator& comm, const CheckpointConfig& config)
      : CheckpointWriter(comm, config.dir, config.keep_last) {}
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // The checkpoint of step metadata.step, written and committed before returning. REQUIRES: no save in
  // flight.
  absl::StatusOr<CheckpointSaveStats> Save(const std::vector<ShardSource>& sources,
                                           const CheckpointMetadata& metadata);

  // Starts the checkpoint of step metadata.step: prepares, snapshots the sources (they may change as soon
  // as this returns) and starts the background write. REQUIRES: no save in flight.
  absl::Status StartAsync(const std::vector<ShardSource>& sources, const CheckpointMetadata& metadata);
  // At a step boundary: nullopt while some rank's write runs (or when nothing is in flight); once every
  // rank's write is done, commits and returns the stats (or every rank's same error).
  absl::StatusOr<std::optional<CheckpointSaveStats>> Poll();
  // Waits for the write in flight and commits it (nullopt when nothing is in flight).
  absl::StatusOr<std::optional<CheckpointSaveStats>> Finish();
  bool in_flight() const { return pending_ != nullptr; }

  const std::string& dir() const { return dir_; }

 private:
  struct Pending;  // one save between prepare and commit

  absl::Status Prepare(int64_t step);
  // Host sources for the write: the CPU sources as they are (`copy` false), or snapshots of the pieces'
  // ranges into snapshot_ buffers.
  std::vector<ShardSource> HostSources(const std::vector<ShardSource>& sources, bool copy);
  void Write(Pending& pending);
  absl::StatusOr<CheckpointSaveStats> Commit(Pending& pending);
  absl::Status CommitOnRankZero(const Pending& pending, const std::vector<std::string>& records);

  Communicator& comm_;
  std::string dir_;
  int64_t keep_last_;
  std::vector<Tensor> snapshot_;  // host buffers reused by async saves
  std::unique_ptr<Pending> pending_;
};

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_CHECKPOINT_WRITER_H_
