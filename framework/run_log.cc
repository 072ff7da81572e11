#include "framework/run_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "framework/check.h"
#include "framework/file_io.h"

namespace fathom {
namespace {

double WallTime() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string LayerKey(int64_t layer) { return absl::StrCat("layer_", layer); }

void CheckName(const std::string& name) {
  FATHOM_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "step" &&
                   name != "wall_time" && name != "phase_seconds" && name != "expert_load",
               "[run_log] scalar name '", name, "' is reserved or contains '/'");
}

absl::Status WriteAll(int fd, const std::string& path, std::string_view data) {
  for (size_t done = 0; done < data.size();) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("write to ", path, ": ", std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// What metrics.jsonl already holds, line by line, and what a run starting at `start` keeps of it.
struct ExistingLog {
  std::string kept;     // the lines to keep, each with its newline
  int64_t records = 0;  // metric records found (start markers and unreadable lines not counted)
  int64_t last_step = 0;
  int64_t removed = 0;  // records removed (a resume only)
  int64_t first_removed = 0, last_removed = 0;
};

// A line's step when it is a start marker (`marker`) or a metric record; nullopt for anything else (a
// torn or foreign line, which is kept as it is).
std::optional<int64_t> LineStep(const std::string& line, bool* marker) {
  const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) return std::nullopt;
  *marker = j.contains("event");
  if (*marker && j["event"] != "start") return std::nullopt;
  return j["step"].get<int64_t>();
}

ExistingLog ReadExistingLog(const std::string& contents, int64_t start_step) {
  std::vector<std::string> lines;
  for (size_t at = 0; at < contents.size();) {
    const size_t end = std::min(contents.find('\n', at), contents.size());
    lines.push_back(contents.substr(at, end - at));
    at = end + 1;
  }
  // The run being resumed began after the last fresh start: its marker (step 0), or in a file written
  // before there were markers, the last record whose step went back.
  size_t begin = 0;
  std::optional<int64_t> previous;
  ExistingLog log;
  std::vector<std::optional<int64_t>> steps(lines.size());
  std::vector<bool> markers(lines.size(), false);
  for (size_t i = 0; i < lines.size(); ++i) {
    bool marker = false;
    steps[i] = LineStep(lines[i], &marker);
    markers[i] = marker;
    if (!steps[i]) continue;
    if (marker) {
      if (*steps[i] == 0) begin = i + 1;
      continue;
    }
    if (previous && *steps[i] < *previous) begin = i;
    previous = steps[i];
    ++log.records;
    log.last_step = *steps[i];
  }
  for (size_t i = 0; i < lines.size(); ++i) {
    // Past the checkpoint: the abandoned continuation's records, and its markers from there on.
    const bool abandoned = start_step > 0 && i >= begin && steps[i] &&
                           (markers[i] ? *steps[i] >= start_step : *steps[i] > start_step);
    if (abandoned && !markers[i]) {
      if (log.removed++ == 0) log.first_removed = *steps[i];
      log.last_removed = *steps[i];
    }
    if (!abandoned) absl::StrAppend(&log.kept, lines[i], "\n");  // a torn last line gets its newline
  }
  return log;
}

}  // namespace

std::string StartMarkerJsonLine(const RunStart& start, double wall_time) {
  nlohmann::ordered_json j;
  j["event"] = "start";
  j["step"] = start.step;
  j["wall_time"] = wall_time;
  j["resumed_from"] = nullptr;  // a fresh run
  if (!start.resumed_from.empty()) j["resumed_from"] = start.resumed_from;
  return j.dump();
}

std::vector<Scalar> TensorBoardTags(const StepRecord& record) {
  std::vector<Scalar> tags;
  for (const Scalar& s : record.scalars) {
    CheckName(s.first);
    tags.push_back(s);
  }
  for (const auto& [name, seconds] : record.phase_seconds) tags.push_back({"phase_seconds/" + name, seconds});
  for (const ExpertLoadRecord& e : record.expert_load) {
    tags.push_back({absl::StrCat("expert_load/", LayerKey(e.layer), "/max"), e.max});
    tags.push_back({absl::StrCat("expert_load/", LayerKey(e.layer), "/mean"), e.mean});
  }
  return tags;
}

std::string MetricsJsonLine(const StepRecord& record, double wall_time) {
  nlohmann::ordered_json j;
  j["step"] = record.step;
  j["wall_time"] = wall_time;
  for (const auto& [name, value] : record.scalars) {
    CheckName(name);
    j[name] = value;  // NaN and infinities are dumped as null
  }
  if (!record.phase_seconds.empty()) {
    nlohmann::ordered_json phases = nlohmann::ordered_json::object();
    for (const auto& [name, seconds] : record.phase_seconds) phases[name] = seconds;
    j["phase_seconds"] = std::move(phases);
  }
  if (!record.expert_load.empty()) {
    nlohmann::ordered_json loads = nlohmann::ordered_json::object();
    for (const ExpertLoadRecord& e : record.expert_load)
      loads[LayerKey(e.layer)] = {{"max", e.max}, {"mean", e.mean}};
    j["expert_load"] = std::move(loads);
  }
  return j.dump();
}

absl::StatusOr<std::unique_ptr<RunLog>> RunLog::Open(const std::string& log_dir, const RunStart& start) {
  FATHOM_CHECK(!log_dir.empty(), "[run_log] an empty train.log_dir means no RunLog");
  FATHOM_CHECK(start.step >= 0, "[run_log] a run starting at step ", start.step);
  if (absl::Status s = MakeDirectories(log_dir, "train.log_dir"); !s.ok()) return s;
  const std::string metrics_path = log_dir + "/metrics.jsonl";
  // Refuses a symlink, a directory or a device where the log should be (file_io.h's rule for what fathom
  // may write over applies to appending too).
  if (absl::Status s = CheckReplaceable(metrics_path); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("train.log_dir: ", s.message()));
  }
  // The records already there: kept, except a resumed run's abandoned continuation (see run_log.h).
  std::string notice;
  bool needs_newline = false;  // a torn last line (a crash mid-write) must not absorb the marker
  if (std::filesystem::exists(metrics_path)) {
    std::ifstream in(metrics_path, std::ios::binary);
    std::string contents((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", metrics_path));
    const ExistingLog existing = ReadExistingLog(contents, start.step);
    if (existing.removed > 0) {
      if (absl::Status s = WriteFileAtomically(metrics_path, existing.kept); !s.ok()) return s;
      notice = absl::StrFormat(
          "train.log_dir: resuming after step %d: removed %d record(s) of steps %d-%d from %s, written past "
          "that checkpoint by the run that did not finish (TensorBoard drops them too)",
          start.step, existing.removed, existing.first_removed, existing.last_removed, metrics_path);
    } else {
      needs_newline = !contents.empty() && contents.back() != '\n';
      if (start.step == 0 && existing.records > 0) {
        notice = absl::StrFormat(
            "train.log_dir: %s already holds %d record(s) of earlier runs (the last of step %d); they are "
            "kept, and this fresh run's records follow its start marker",
            metrics_path, existing.records, existing.last_step);
      }
    }
  }
  const int fd = ::open(metrics_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("cannot open ", metrics_path, " for appending: ", std::strerror(errno)));
  }
  const double now = WallTime();
  const std::string marker = absl::StrCat(needs_newline ? "\n" : "", StartMarkerJsonLine(start, now), "\n");
  if (absl::Status s = WriteAll(fd, metrics_path, marker); !s.ok()) {
    ::close(fd);
    return s;
  }
  absl::StatusOr<std::unique_ptr<TensorBoardWriter>> events = TensorBoardWriter::Create(log_dir);
  absl::Status s = events.status();
  if (s.ok() && start.step > 0) s = (*events)->WriteSessionStart(start.step + 1, now);
  if (!s.ok()) {
    ::close(fd);
    return s;
  }
  return std::unique_ptr<RunLog>(new RunLog(fd, metrics_path, *std::move(events), std::move(notice)));
}

RunLog::~RunLog() { Close().IgnoreError(); }

absl::Status RunLog::Log(const StepRecord& record) {
  FATHOM_CHECK(metrics_fd_ >= 0, "[run_log] Log after Close");
  const double now = WallTime();
  if (absl::Status s = WriteAll(metrics_fd_, metrics_path_, MetricsJsonLine(record, now) + "\n"); !s.ok())
    return s;
  const std::vector<Scalar> tags = TensorBoardTags(record);
  if (tags.empty()) return absl::OkStatus();
  return events_->WriteScalars(record.step, now, tags);
}

absl::Status RunLog::Close() {
  if (metrics_fd_ < 0) return absl::OkStatus();
  const int rc = ::close(metrics_fd_);
  metrics_fd_ = -1;
  if (rc != 0) return absl::InternalError(absl::StrCat("close ", metrics_path_, ": ", std::strerror(errno)));
  return absl::OkStatus();
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  return absl::StrFormat("%dd%02dh", s / 86400, (s % 86400) / 3600);
}

std::string FormatProgress(int64_t steps_done, int64_t total_steps, int64_t timed_steps,
                           double timed_seconds) {
  const int64_t percent = total_steps > 0 ? steps_done * 100 / total_steps : 100;
  std::string line = absl::StrCat("step ", steps_done, "/", total_steps, " (", percent, "%)");
  if (timed_steps > 0 && timed_seconds > 0 && steps_done < total_steps) {
    const double per_step = timed_seconds / static_cast<double>(timed_steps);
    absl::StrAppend(&line, ", ", FormatDuration(per_step * static_cast<double>(total_steps - steps_done)),
                    " left");
  }
  return line;
}

}  // namespace fathom
