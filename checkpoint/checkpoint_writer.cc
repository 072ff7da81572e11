#include "checkpoint/checkpoint_writer.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/hdf5_rank_file.h"
#include "framework/file_io.h"
#include "framework/ops.h"
#include "parallel/collective_status.h"
#include "parallel/fault.h"

namespace fathom {
namespace {

namespace fs = std::filesystem;

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

bool IsDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// A save may replace a complete checkpoint of its step, nothing else: a step directory without index.json
// may be the only copy of something (a damaged checkpoint to be inspected, a user's directory).
absl::Status CheckReplaceableStep(const std::string& final_path) {
  std::vector<SkippedStepEntry> skipped;
  absl::StatusOr<std::vector<CheckpointEntry>> all = ListCheckpoints(DirectoryOf(final_path), &skipped);
  if (!all.ok()) return all.status();
  for (const SkippedStepEntry& e : skipped) {
    if (e.path != final_path) continue;
    return absl::InvalidArgumentError(absl::StrCat(
        "a save must replace ", DescribeSkipped(e),
        "; fathom replaces only its own complete checkpoints: move it out of the checkpoint.dir"));
  }
  return absl::OkStatus();
}

absl::Status Rename(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0)
    return absl::InternalError(absl::StrCat("cannot rename ", from, " to ", to, ": ", std::strerror(errno)));
  return absl::OkStatus();
}

// Renames the finished `tmp` to `final_path`. A complete checkpoint already there (a run resumed from an
// earlier step) is swapped out atomically (renameat2 RENAME_EXCHANGE), so a crash at any moment leaves a
// complete checkpoint under that name; where the file system cannot exchange, it is renamed aside to
// .replaced first (a crash between the two renames then leaves only the older checkpoints). The old one is
// marked as fathom's before the swap (so that wherever a crash leaves it, it is a leftover fathom may
// remove) and removed last. Anything else under that name was refused by Prepare; it is refused again here
// in case it appeared since. The new checkpoint loses its marker once it is in place.
absl::Status RenameIntoPlace(const std::string& tmp, const std::string& final_path) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(final_path, ec))) {
    if (absl::Status s = Rename(tmp, final_path); !s.ok()) return s;
    return DropOwnedMarker(final_path);
  }
  if (absl::Status s = CheckReplaceableStep(final_path); !s.ok()) return s;
  const std::string replaced = final_path + ".replaced";
  if (absl::Status s = RemoveOwnedLeftover(replaced, "to set the replaced checkpoint aside"); !s.ok())
    return s;
  if (absl::Status s = WriteFileAtomically(absl::StrCat(final_path, "/", kOwnedMarkerName), "replaced\n");
      !s.ok()) {
    return s;
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_path.c_str(), RENAME_EXCHANGE) == 0) {
    if (absl::Status s = Rename(tmp, replaced); !s.ok()) return s;  // the old checkpoint, now at `tmp`
  } else if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) {
    if (absl::Status s = Rename(final_path, replaced); !s.ok()) return s;
    if (absl::Status s = Rename(tmp, final_path); !s.ok()) return s;
  } else {
    return absl::InternalError(
        absl::StrCat("cannot exchange ", tmp, " with ", final_path, ": ", std::strerror(errno)));
  }
  if (absl::Status s = DropOwnedMarker(final_path); !s.ok()) return s;
  return RemoveOwnedTree(replaced);
}

// Rank 0's half of "prepare": D exists as a directory, D/step_N is absent or a complete checkpoint (the
// only thing a save may replace), and D/step_N.tmp is new, empty but for the marker.
absl::Status PrepareOnRankZero(const std::string& dir, int64_t step) {
  if (absl::Status s = MakeDirectories(dir, "checkpoint.dir"); !s.ok()) return s;
  std::error_code ec;
  const std::string final_path = CheckpointPath(dir, step);
  if (fs::exists(fs::symlink_status(final_path, ec))) {
    if (absl::Status s = CheckReplaceableStep(final_path); !s.ok()) return s;
  }
  const std::string tmp = CheckpointTmpPath(dir, step);
  // A crashed save of the same step, if fathom's.
  if (absl::Status s = RemoveOwnedLeftover(tmp, absl::StrCat("to save step ", step)); !s.ok()) return s;
  if (absl::Status s = CreateOwnedDirectory(tmp); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(s.message(), " (in checkpoint.dir ", dir, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string DescribeSave(const CheckpointSaveStats& stats) {
  return absl::StrFormat(
      "checkpoint step %d saved to %s: %.3f GB in %.3f s (%.2f GB/s), step loop stalled %.3f s (%s), commit "
      "%.3f s",
      stats.step, stats.path, static_cast<double>(stats.bytes) / 1e9, stats.write_seconds,
      stats.write_gb_per_s(), stats.stall_seconds, stats.async ? "async" : "sync", stats.commit_seconds);
}

struct CheckpointWriter::Pending {
  CheckpointMetadata metadata;
  std::string tmp;
  std::vector<ShardSource> sources;  // host
  bool async = false;
  bool inject_fault = false;  // FATHOM_TEST_FAULT="R:N:save" names this rank and step
  std::chrono::steady_clock::time_point started;
  double stall_seconds = 0;
  // Written by the background thread, read after `done` (release/acquire) or after join.
  absl::StatusOr<RankWriteRecord> result = absl::UnknownError("not written");
  double write_seconds = 0;
  std::atomic<bool> done{false};
  std::thread thread;
};

CheckpointWriter::CheckpointWriter(Communicator& comm, std::string dir, int64_t keep_last)
    : comm_(comm), dir_(std::move(dir)), keep_last_(keep_last) {
  FATHOM_CHECK(!dir_.empty(), "[CheckpointWriter] empty checkpoint directory");
  FATHOM_CHECK(keep_last_ >= 0, "[CheckpointWriter] keep_last ", keep_last_);
}

CheckpointWriter::~CheckpointWriter() {
  if (pending_ && pending_->thread.joinable()) pending_->thread.join();
}

absl::Status CheckpointWriter::Prepare(int64_t step) {
  const std::string tmp = CheckpointTmpPath(dir_, step);
  absl::Status local = comm_.rank() == 0 ? PrepareOnRankZero(dir_, step) : absl::OkStatus();
  if (absl::Status s = AgreeOnStatus(comm_, local); !s.ok()) return s;
  local = IsDirectory(tmp)
              ? absl::OkStatus()
              : absl::InvalidArgumentError(absl::StrCat(
                    "rank ", comm_.rank(), " cannot see ", tmp,
                    ", which rank 0 created: checkpoint.dir must be a file system every rank shares"));
  return AgreeOnStatus(comm_, local);
}

std::vector<ShardSource> CheckpointWriter::HostSources(const std::vector<ShardSource>& sources, bool copy) {
  std::vector<ShardSource> out;
  if (copy) snapshot_.resize(std::max(snapshot_.size(), sources.size()));
  for (size_t i = 0; i < sources.size(); ++i) {
    const ShardSource& s = sources[i];
    FATHOM_CHECK(s.data.defined(), "[CheckpointWriter] kind ", s.kind, ": undefined data");
    if (!copy) {
      FATHOM_CHECK(s.data.device() == Device::kCPU, "[CheckpointWriter] kind ", s.kind,
                   ": host data expected");
      out.push_back(s);
      continue;
    }
    // Only the range the pieces span: a ZeRO shard of a whole table's buffer copies the shard.
    int64_t lo = s.table_begin + s.data.numel(), hi = s.table_begin;
    for (const TensorPiece& p : s.pieces) {
      if (p.numel() == 0) continue;
      lo = std::min(lo, p.table_offset);
      hi = std::max(hi, p.table_offset + p.numel());
    }
    if (lo >= hi) lo = hi = s.table_begin;
    FATHOM_CHECK(lo >= s.table_begin && hi <= s.table_begin + s.data.numel(), "[CheckpointWriter] kind ",
                 s.kind, ": pieces outside the data");
    Tensor& buffer = snapshot_[i];
    if (!buffer.defined() || buffer.dtype() != s.data.dtype() || buffer.numel() != hi - lo) {
      buffer = Tensor::Empty({hi - lo}, s.data.dtype());
    }
    const Tensor flat = s.data.Reshape({s.data.numel()});
    ops::Copy(buffer, flat.Rows(lo - s.table_begin, hi - s.table_begin));
    out.push_back(ShardSource{s.kind, s.pieces, buffer, lo});
  }
  return out;
}

void CheckpointWriter::Write(Pending& pending) {
  const auto start = std::chrono::steady_clock::now();
  const std::string path = absl::StrCat(pending.tmp, "/", RankFileName(comm_.rank()));
  const int64_t step = pending.metadata.step;
  const bool inject = pending.inject_fault;
  pending.result = WriteRankFile(path, pending.sources, [inject, step] {
    if (inject) InjectFault(ProcessRank(), step);
  });
  pending.write_seconds = Seconds(start);
  pending.done.store(true, std::memory_order_release);
}

absl::Status CheckpointWriter::CommitOnRankZero(const Pending& pending,
                                                const std::vector<std::string>& records) {
  std::vector<RankWriteRecord> parsed;
  for (size_t r = 0; r < records.size(); ++r) {
    absl::StatusOr<RankWriteRecord> rec = RankWriteRecordFromJson(records[r]);
    if (!rec.ok())
      return absl::InternalError(absl::StrCat("rank ", r, "'s write record: ", rec.status().message()));
    parsed.push_back(*std::move(rec));
  }
  absl::StatusOr<CheckpointIndex> index = MergeRankRecords(parsed, pending.metadata);
  if (!index.ok()) return index.status();
  const std::string final_path = CheckpointPath(dir_, pending.metadata.step);
  if (absl::Status s =
          WriteFileAtomically(absl::StrCat(pending.tmp, "/", kIndexFileName), IndexToJson(*index));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = FsyncDirectory(pending.tmp); !s.ok()) return s;
  if (absl::Status s = RenameIntoPlace(pending.tmp, final_path); !s.ok()) return s;
  if (absl::Status s = FsyncDirectory(dir_); !s.ok()) return s;
  // The new checkpoint is complete: only now may older ones go.
  if (absl::Status s = PruneCheckpoints(dir_, keep_last_); !s.ok()) return s;
  return CleanLeftovers(dir_);
}

absl::StatusOr<CheckpointSaveStats> CheckpointWriter::Commit(Pending& pending) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status agreed = AgreeOnStatus(comm_, pending.result.status());
  if (!agreed.ok()) {
    if (comm_.rank() == 0) RemoveOwnedTree(pending.tmp).IgnoreError();  // the next save would, anyway
    return agreed;
  }
  Tensor seconds = Tensor::FromVector({pending.write_seconds}, {1}, DType::kF64);
  comm_.AllReduce(seconds, ReduceOp::kMax);
  Tensor bytes = Tensor::Empty({1}, DType::kI64);
  bytes.data<int64_t>()[0] = SourceBytes(pending.sources);
  comm_.AllReduce(bytes, ReduceOp::kSum);
  std::vector<std::string> records = GatherStrings(comm_, RankWriteRecordToJson(*pending.result), 0);
  absl::Status local = comm_.rank() == 0 ? CommitOnRankZero(pending, records) : absl::OkStatus();
  if (!local.ok() && comm_.rank() == 0 && IsDirectory(pending.tmp))
    RemoveOwnedTree(pending.tmp).IgnoreError();
  if (absl::Status s = AgreeOnStatus(comm_, local); !s.ok()) return s;
  CheckpointSaveStats stats;
  stats.step = pending.metadata.step;
  stats.path = CheckpointPath(dir_, pending.metadata.step);
  stats.async = pending.async;
  stats.stall_seconds = pending.stall_seconds;
  stats.write_seconds = seconds.data<double>()[0];
  stats.commit_seconds = Seconds(start);
  stats.bytes = bytes.data<int64_t>()[0];
  return stats;
}

absl::StatusOr<CheckpointSaveStats> CheckpointWriter::Save(const std::vector<ShardSource>& sources,
                                                           const CheckpointMetadata& metadata) {
  FATHOM_CHECK(!in_flight(), "[CheckpointWriter::Save] an async save is in flight: Finish() it first");
  const auto start = std::chrono::steady_clock::now();
  Pending pending;
  pending.metadata = metadata;
  pending.tmp = CheckpointTmpPath(dir_, metadata.step);
  pending.inject_fault = ShouldInjectSaveFault(ProcessRank(), metadata.step);
  if (absl::Status s = Prepare(metadata.step); !s.ok()) return s;
  bool on_device = false;
  for (const ShardSource& s : sources) on_device |= s.data.defined() && s.data.device() != Device::kCPU;
  pending.sources = HostSources(sources, /*copy=*/on_device);
  Write(pending);
  absl::StatusOr<CheckpointSaveStats> stats = Commit(pending);
  if (stats.ok()) stats->stall_seconds = Seconds(start);
  return stats;
}

absl::Status CheckpointWriter::StartAsync(const std::vector<ShardSource>& sources,
                                          const CheckpointMetadata& metadata) {
  FATHOM_CHECK(!in_flight(), "[CheckpointWriter::StartAsync] a save is in flight: Finish() it first");
  auto pending = std::make_unique<Pending>();
  pending->started = std::chrono::steady_clock::now();
  pending->metadata = metadata;
  pending->tmp = CheckpointTmpPath(dir_, metadata.step);
  // Read here, on the main thread: a malformed value ends the job through MPI, which the writer thread
  // must not call.
  pending->inject_fault = ShouldInjectSaveFault(ProcessRank(), metadata.step);
  if (absl::Status s = Prepare(metadata.step); !s.ok()) return s;
  pending->sources = HostSources(sources, /*copy=*/true);
  pending->async = Hdf5IsThreadSafe();
  pending->stall_seconds = Seconds(pending->started);
  pending_ = std::move(pending);
  if (pending_->async) {
    pending_->thread = std::thread([this, p = pending_.get()] { Write(*p); });
  } else {
    Write(*pending_);
    pending_->stall_seconds = Seconds(pending_->started);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<CheckpointSaveStats>> CheckpointWriter::Poll() {
  if (!in_flight()) return std::optional<CheckpointSaveStats>();
  Tensor done = Tensor::Empty({1}, DType::kI64);
  done.data<int64_t>()[0] = pending_->done.load(std::memory_order_acquire) ? 1 : 0;
  comm_.AllReduce(done, ReduceOp::kSum);
  if (done.data<int64_t>()[0] < comm_.size()) return std::optional<CheckpointSaveStats>();
  return Finish();
}

absl::StatusOr<std::optional<CheckpointSaveStats>> CheckpointWriter::Finish() {
  if (!in_flight()) return std::optional<CheckpointSaveStats>();
  std::unique_ptr<Pending> pending = std::move(pending_);
  if (pending->thread.joinable()) pending->thread.join();
  absl::StatusOr<CheckpointSaveStats> stats = Commit(*pending);
  if (!stats.ok()) return stats.status();
  return std::optional<CheckpointSaveStats>(*std::move(stats));
}

}  // namespace fathom
