#include "checkpoint/checkpoint_dir.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/checkpoint_index.h"
#include "framework/file_io.h"
#include "parallel/collective_status.h"

namespace fathom {
namespace {

namespace fs = std::filesystem;

constexpr char kStepPrefix[] = "step_";
constexpr const char* kLeftoverSuffixes[] = {".tmp", ".pruned", ".replaced"};

// The step of "step_<digits>" (nullopt for any other name).
std::optional<int64_t> ParseStepName(const std::string& name) {
  const size_t prefix = sizeof(kStepPrefix) - 1;
  if (name.compare(0, prefix, kStepPrefix) != 0) return std::nullopt;
  const std::string digits = name.substr(prefix);
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  int64_t step = 0;
  if (!absl::SimpleAtoi(digits, &step)) return std::nullopt;
  return step;
}

bool IsLeftoverName(const std::string& name) {
  for (const std::string suffix : kLeftoverSuffixes) {
    if (name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        ParseStepName(name.substr(0, name.size() - suffix.size()))) {
      return true;
    }
  }
  return false;
}

bool IsRegularFile(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsRealDirectory(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsCompleteCheckpoint(const std::string& path) {
  return IsRealDirectory(path) && IsRegularFile(absl::StrCat(path, "/", kIndexFileName));
}

// Why the step_<digits> entry `path` is not a complete checkpoint ("" when it is one).
std::string WhyNotACheckpoint(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return "it cannot be read";
  if (S_ISLNK(st.st_mode)) return "a symbolic link, not a directory fathom saved";
  if (!S_ISDIR(st.st_mode)) return "not a directory";
  const std::string index = absl::StrCat(path, "/", kIndexFileName);
  if (::lstat(index.c_str(), &st) != 0)
    return absl::StrCat("no ", kIndexFileName, " (an incomplete save, or not a fathom checkpoint)");
  if (!S_ISREG(st.st_mode)) return absl::StrCat("its ", kIndexFileName, " is not a regular file");
  return "";
}

// A leftover of this directory's protocol that fathom made: a marked (or empty) temporary, or a complete
// checkpoint renamed aside to be pruned or replaced.
bool IsOwnLeftover(const std::string& path) {
  return IsOwnedDirectory(path) || (!absl::EndsWith(path, ".tmp") && IsCompleteCheckpoint(path));
}

// The names of `dir`'s entries that IsLeftoverName; `ec` is set when the listing failed (what was listed
// until then is returned).
std::vector<std::string> LeftoverNames(const std::string& dir, std::error_code& ec) {
  std::vector<std::string> out;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (IsLeftoverName(name)) out.push_back(std::move(name));
  }
  return out;
}

// OK with false when `dir` does not exist; InvalidArgument when it is something other than a directory.
absl::StatusOr<bool> DirectoryExists(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return false;
  if (!S_ISDIR(st.st_mode))
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint directory ", dir, " exists but is not a directory"));
  return true;
}

absl::Status RemoveTree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);  // does not follow symbolic links: a link is removed, not its target
  if (ec) return absl::InternalError(absl::StrCat("cannot remove ", path, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

std::string StepDirName(int64_t step) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string CheckpointPath(const std::string& dir, int64_t step) {
  return absl::StrCat(dir, "/", StepDirName(step));
}

std::string CheckpointTmpPath(const std::string& dir, int64_t step) {
  return CheckpointPath(dir, step) + ".tmp";
}

absl::Status CreateOwnedDirectory(const std::string& path) {
  std::error_code ec;
  if (!fs::create_directory(path, ec) || ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create ", path, ec ? absl::StrCat(": ", ec.message()) : ": it exists"));
  }
  if (absl::Status s =
          WriteFileAtomically(absl::StrCat(path, "/", kOwnedMarkerName),
                              "a temporary directory of fathom's; it is removed when complete\n");
      !s.ok()) {
    return s;
  }
  return FsyncDirectory(DirectoryOf(path));
}

bool IsOwnedDirectory(const std::string& path) {
  if (!IsRealDirectory(path)) return false;
  if (IsRegularFile(absl::StrCat(path, "/", kOwnedMarkerName))) return true;
  std::error_code ec;
  return fs::is_empty(path, ec) && !ec;
}

absl::Status RemoveOwnedLeftover(const std::string& path, const std::string& purpose) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return absl::OkStatus();
  if (!IsOwnedDirectory(path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, " exists and fathom did not make it (it is not a directory holding ", kOwnedMarkerName,
        "); fathom needs the name ", purpose, " and removes only its own leftovers: move it elsewhere"));
  }
  return RemoveOwnedTree(path);
}

absl::Status RemoveOwnedTree(const std::string& path) {
  const std::string marker = absl::StrCat(path, "/", kOwnedMarkerName);
  if (!IsRegularFile(marker)) {
    if (absl::Status s = WriteFileAtomically(marker, "being removed by fathom\n"); !s.ok()) return s;
  }
  // Everything but the marker first: a crash midway leaves a directory still recognisably fathom's.
  std::error_code ec;
  std::vector<std::string> entries;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename() != kOwnedMarkerName) entries.push_back(it->path().string());
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", path, ": ", ec.message()));
  for (const std::string& e : entries) {
    if (absl::Status s = RemoveTree(e); !s.ok()) return s;
  }
  return RemoveTree(path);
}

absl::Status DropOwnedMarker(const std::string& path) {
  const std::string marker = absl::StrCat(path, "/", kOwnedMarkerName);
  if (std::remove(marker.c_str()) != 0 && errno != ENOENT) {
    return absl::InternalError(absl::StrCat("cannot remove ", marker, ": ", std::strerror(errno)));
  }
  return FsyncDirectory(path);
}

std::string DescribeSkipped(const SkippedStepEntry& entry) {
  return absl::StrCat(entry.path, ": ", entry.reason);
}

absl::StatusOr<std::vector<CheckpointEntry>> ListCheckpoints(const std::string& dir,
                                                             std::vector<SkippedStepEntry>* skipped) {
  absl::StatusOr<bool> exists = DirectoryExists(dir);
  if (!exists.ok()) return exists.status();
  std::vector<CheckpointEntry> out;
  if (!*exists) return out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::optional<int64_t> step = ParseStepName(name);
    if (!step) continue;
    const std::string path = absl::StrCat(dir, "/", name);
    if (IsCompleteCheckpoint(path)) {
      out.push_back({*step, path});
    } else if (skipped != nullptr) {
      skipped->push_back({*step, path, WhyNotACheckpoint(path)});
    }
  }
  if (ec)
    return absl::InternalError(absl::StrCat("cannot list checkpoint directory ", dir, ": ", ec.message()));
  std::sort(out.begin(), out.end(),
            [](const CheckpointEntry& a, const CheckpointEntry& b) { return a.step < b.step; });
  if (skipped != nullptr) {
    std::sort(skipped->begin(), skipped->end(),
              [](const SkippedStepEntry& a, const SkippedStepEntry& b) { return a.step < b.step; });
  }
  return out;
}

std::vector<SkippedStepEntry> ForeignLeftovers(const std::string& dir) {
  std::vector<SkippedStepEntry> out;
  std::error_code ec;
  for (const std::string& name : LeftoverNames(dir, ec)) {
    const std::string path = absl::StrCat(dir, "/", name);
    if (IsOwnLeftover(path)) continue;
    const std::string stem = name.substr(0, name.rfind('.'));
    out.push_back({ParseStepName(stem).value_or(0), path,
                   "named like a leftover of fathom's saves, but fathom did not make it (no marker): left "
                   "alone"});
  }
  std::sort(out.begin(), out.end(),
            [](const SkippedStepEntry& a, const SkippedStepEntry& b) { return a.path < b.path; });
  return out;
}

absl::StatusOr<std::optional<std::string>> FindLatestCheckpoint(const std::string& dir,
                                                                std::vector<SkippedStepEntry>* skipped) {
  absl::StatusOr<std::vector<CheckpointEntry>> all = ListCheckpoints(dir, skipped);
  if (!all.ok()) return all.status();
  if (all->empty()) return std::optional<std::string>();
  return std::optional<std::string>(all->back().path);
}

absl::Status PruneCheckpoints(const std::string& dir, int64_t keep_last) {
  if (keep_last <= 0) return absl::OkStatus();
  absl::StatusOr<std::vector<CheckpointEntry>> all = ListCheckpoints(dir);
  if (!all.ok()) return all.status();
  const int64_t excess = static_cast<int64_t>(all->size()) - keep_last;
  for (int64_t i = 0; i < excess; ++i) {
    const std::string& path = (*all)[static_cast<size_t>(i)].path;
    // Renamed out of discovery's sight first: a crash while removing leaves a leftover, never a damaged
    // "complete" checkpoint.
    const std::string doomed = path + ".pruned";
    if (std::rename(path.c_str(), doomed.c_str()) != 0)
      return absl::InternalError(absl::StrCat("cannot rename ", path, " to ", doomed, " to prune it"));
    if (absl::Status s = RemoveOwnedTree(doomed); !s.ok()) return s;
  }
  return excess > 0 ? FsyncDirectory(dir) : absl::OkStatus();
}

absl::Status CleanLeftovers(const std::string& dir, const std::string& keep) {
  absl::StatusOr<bool> exists = DirectoryExists(dir);
  if (!exists.ok() || !*exists) return exists.status();
  std::vector<std::string> doomed;
  std::error_code ec;
  for (const std::string& name : LeftoverNames(dir, ec)) {
    const std::string path = absl::StrCat(dir, "/", name);
    // A leftover's name on something fathom did not make is not ours to delete.
    if (path != keep && IsOwnLeftover(path)) doomed.push_back(path);
  }
  if (ec)
    return absl::InternalError(absl::StrCat("cannot list checkpoint directory ", dir, ": ", ec.message()));
  for (const std::string& path : doomed) {
    if (absl::Status s = RemoveOwnedTree(path); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> ResolveResume(const CheckpointConfig& config,
                                                         std::vector<std::string>* warnings) {
  using Result = std::optional<std::string>;
  auto warn = [warnings](const std::vector<SkippedStepEntry>& skipped) {
    if (warnings == nullptr) return;
    for (const SkippedStepEntry& e : skipped) {
      warnings->push_back(absl::StrCat("skipped ", DescribeSkipped(e)));
    }
  };
  if (!config.dir.empty()) {
    // Saving into a checkpoint would put step directories inside a committed one.
    if (IsRegularFile(absl::StrCat(config.dir, "/", kIndexFileName))) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint.dir ", config.dir, " is itself a checkpoint (it holds ", kIndexFileName,
                       "); set checkpoint.dir to its parent, or checkpoint.resume: ", config.dir));
    }
  }
  if (config.resume == "none") {
    if (config.dir.empty()) return Result();
    // A fresh run among another run's checkpoints would replace some of them, keep the newer ones, and a
    // later resume: auto would continue whichever is newest: the old run, possibly.
    absl::StatusOr<std::vector<CheckpointEntry>> existing = ListCheckpoints(config.dir);
    if (!existing.ok()) return existing.status();
    if (!existing->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint.resume: none, but checkpoint.dir ", config.dir, " already holds ", existing->size(),
          " checkpoint(s), the newest ", existing->back().path,
          "; a fresh run's checkpoints would mix with them: use an empty checkpoint.dir for a fresh run, "
          "or checkpoint.resume: auto to continue from the newest"));
    }
    return Result();
  }
  if (config.resume == "auto") {
    if (config.dir.empty()) return Result();
    std::vector<SkippedStepEntry> skipped;
    absl::StatusOr<Result> latest = FindLatestCheckpoint(config.dir, &skipped);
    if (latest.ok()) warn(skipped);
    return latest;
  }
  const std::string& path = config.resume;
  if (IsCompleteCheckpoint(path)) return Result(path);
  std::vector<SkippedStepEntry> skipped;
  absl::StatusOr<std::optional<std::string>> latest = FindLatestCheckpoint(path, &skipped);
  if (latest.ok() && latest->has_value()) {
    warn(skipped);
    return latest;
  }
  return absl::NotFoundError(absl::StrCat("checkpoint.resume: ", path,
                                          " is not a checkpoint (a directory with ", kIndexFileName,
                                          ") nor a directory of checkpoints (step_NNNNNNNN)"));
}

absl::StatusOr<std::optional<std::string>> ResolveResumeOnAllRanks(const CheckpointConfig& config,
                                                                   Communicator& comm,
                                                                   std::vector<std::string>* warnings) {
  absl::StatusOr<std::optional<std::string>> local =
      comm.rank() == 0 ? ResolveResume(config, warnings)
                       : absl::StatusOr<std::optional<std::string>>(std::nullopt);
  absl::Status agreed = AgreeOnStatus(comm, local.status());
  if (!agreed.ok()) return agreed;
  // ResolveResume never answers an empty path, so "" stands for "start fresh".
  const std::string mine = comm.rank() == 0 && local->has_value() ? **local : "";
  const std::string path = BroadcastString(comm, mine, 0);
  if (path.empty()) return std::optional<std::string>();
  return std::optional<std::string>(path);
}

}  // namespace fathom
