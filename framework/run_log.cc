#include "framework/run_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

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

}  // namespace

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

absl::StatusOr<std::unique_ptr<RunLog>> RunLog::Open(const std::string& log_dir) {
  FATHOM_CHECK(!log_dir.empty(), "[run_log] an empty train.log_dir means no RunLog");
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  if (!std::filesystem::is_directory(log_dir)) {
    return absl::InvalidArgumentError(absl::StrCat("train.log_dir '", log_dir,
                                                   "' is not a directory and cannot be ", "created",
                                                   ec ? ": " + ec.message() : std::string()));
  }
  const std::string metrics_path = log_dir + "/metrics.jsonl";
  // Refuses a symlink, a directory or a device where the log should be (file_io.h's rule for what fathom
  // may write over applies to appending too).
  if (absl::Status s = CheckReplaceable(metrics_path); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("train.log_dir: ", s.message()));
  }
  const int fd = ::open(metrics_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("cannot open ", metrics_path, " for appending: ", std::strerror(errno)));
  }
  absl::StatusOr<std::unique_ptr<TensorBoardWriter>> events = TensorBoardWriter::Create(log_dir);
  if (!events.ok()) {
    ::close(fd);
    return events.status();
  }
  return std::unique_ptr<RunLog>(new RunLog(fd, metrics_path, *std::move(events)));
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
