#include "checkpoint/checkpoint_dir.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <system_error>

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

bool IsCompleteCheckpoint(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return false;
  const std::string index = absl::StrCat(path, "/", kIndexFileName);
  return ::lstat(index.c_str(), &st) == 0 && S_ISREG(st.st_mode);
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

absl::StatusOr<std::vector<CheckpointEntry>> ListCheckpoints(const std::string& dir) {
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
    if (IsCompleteCheckpoint(path)) out.push_back({*step, path});
  }
  if (ec)
    return absl::InternalError(absl::StrCat("cannot list checkpoint directory ", dir, ": ", ec.message()));
  std::sort(out.begin(), out.end(),
            [](const CheckpointEntry& a, const CheckpointEntry& b) { return a.step < b.step; });
  return out;
}

absl::StatusOr<std::optional<std::string>> FindLatestCheckpoint(const std::string& dir) {
  absl::StatusOr<std::vector<CheckpointEntry>> all = ListCheckpoints(dir);
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
    if (absl::Status s = RemoveTree(doomed); !s.ok()) return s;
  }
  return excess > 0 ? FsyncDirectory(dir) : absl::OkStatus();
}

absl::Status CleanLeftovers(const std::string& dir, const std::string& keep) {
  absl::StatusOr<bool> exists = DirectoryExists(dir);
  if (!exists.ok() || !*exists) return exists.status();
  std::vector<std::string> doomed;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const std::string path = absl::StrCat(dir, "/", name);
    if (IsLeftoverName(name) && path != keep) doomed.push_back(path);
  }
  if (ec)
    return absl::InternalError(absl::StrCat("cannot list checkpoint directory ", dir, ": ", ec.message()));
  for (const std::string& path : doomed) {
    if (absl::Status s = RemoveTree(path); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> ResolveResume(const CheckpointConfig& config) {
  using Result = std::optional<std::string>;
  if (config.resume == "none") return Result();
  if (config.resume == "auto") {
    if (config.dir.empty()) return Result();
    return FindLatestCheckpoint(config.dir);
  }
  const std::string& path = config.resume;
  if (IsCompleteCheckpoint(path)) return Result(path);
  absl::StatusOr<std::optional<std::string>> latest = FindLatestCheckpoint(path);
  if (latest.ok() && latest->has_value()) return latest;
  return absl::NotFoundError(absl::StrCat("checkpoint.resume: ", path,
                                          " is not a checkpoint (a directory with ", kIndexFileName,
                                          ") nor a directory of checkpoints (step_NNNNNNNN)"));
}

absl::StatusOr<std::optional<std::string>> ResolveResumeOnAllRanks(const CheckpointConfig& config,
                                                                   Communicator& comm) {
  absl::StatusOr<std::optional<std::string>> local =
      comm.rank() == 0 ? ResolveResume(config) : absl::StatusOr<std::optional<std::string>>(std::nullopt);
  absl::Status agreed = AgreeOnStatus(comm, local.status());
  if (!agreed.ok()) return agreed;
  // ResolveResume never answers an empty path, so "" stands for "start fresh".
  const std::string mine = comm.rank() == 0 && local->has_value() ? **local : "";
  const std::string path = BroadcastString(comm, mine, 0);
  if (path.empty()) return std::optional<std::string>();
  return std::optional<std::string>(path);
}

}  // namespace fathom
