// The record of a run: what rank 0 writes under train.log_dir, and the progress line of long runs.
//
//   absl::StatusOr<std::unique_ptr<RunLog>> log = RunLog::Open(recipe.train.log_dir);  // rank 0 only
//   (*log)->Log(record);  // once per step (and once per evaluation)
//
// Each Log appends one JSON line to <log_dir>/metrics.jsonl:
//   {"step": 12, "wall_time": 1733220000.5, "loss": 2.31, "lr": 0.003, ...,
//    "phase_seconds": {"attention": 0.12, ...}, "expert_load": {"layer_1": {"max": 96, "mean": 64}, ...}}
// (record.scalars in order at the top level, then the structured fields; a non-finite value is written as
// null, JSON having no NaN) and one Event to a TensorBoard file <log_dir>/events.out.tfevents.* with every
// value under the tag that flattens its JSON path with '/': "loss", "phase_seconds/attention",
// "expert_load/layer_1/max" (TensorBoardTags). tests/data/check_tensorboard.py relies on exactly that.
//
// Files: metrics.jsonl is appended to (a resumed run continues it), is never replaced and must be a
// regular file if it exists; the event file is new for every Open. Both are written with one write(2) per
// record, nothing buffered in the process, so a killed job keeps its curve. Like the event files, the
// metrics log is append-only and so not written through AtomicFileWriter.
// Errors: InvalidArgument naming train.log_dir for a path that cannot be a log directory, Internal for I/O
// failures. Thread safety: none; one thread (rank 0's) at a time.
#ifndef FATHOM_FRAMEWORK_RUN_LOG_H_
#define FATHOM_FRAMEWORK_RUN_LOG_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framework/tensorboard.h"

namespace fathom {

// Tokens routed to the experts of one MoE layer in a step.
struct ExpertLoadRecord {
  int64_t layer = 0;  // decoder layer index (MTP modules continue after the last decoder layer)
  double max = 0;     // tokens of the busiest expert
  double mean = 0;    // mean tokens per expert
};

struct StepRecord {
  int64_t step = 0;
  // Flat name -> value, in the order they should appear, e.g. loss, lm_loss, mtp_loss, balance, lr,
  // grad_norm, tokens_per_s, tflops_per_gpu, mfu, memory_gib, valid_loss, valid_perplexity. Names must not
  // be "step", "wall_time", "phase_seconds" or "expert_load", nor contain '/'.
  std::vector<Scalar> scalars;
  std::vector<Scalar> phase_seconds;  // time of the step by phase: "attention" -> seconds
  std::vector<ExpertLoadRecord> expert_load;
};

// The TensorBoard (tag, value) pairs of a record, in JSON order (see the top of this file).
std::vector<Scalar> TensorBoardTags(const StepRecord& record);
// The JSON line of a record, without the trailing newline.
std::string MetricsJsonLine(const StepRecord& record, double wall_time);

class RunLog {
 public:
  // Creates `log_dir` (and its parents) when missing, opens metrics.jsonl for appending and creates a new
  // event file. REQUIRES: log_dir non-empty (train.log_dir "" means no RunLog at all).
  static absl::StatusOr<std::unique_ptr<RunLog>> Open(const std::string& log_dir);
  ~RunLog();
  RunLog(const RunLog&) = delete;
  RunLog& operator=(const RunLog&) = delete;

  // Appends the record to both files, stamped with the current wall time. A record without any value
  // writes only its JSON line.
  absl::Status Log(const StepRecord& record);
  // Closes both files (also done by the destructor); Log must not be called afterwards.
  absl::Status Close();

  const std::string& metrics_path() const { return metrics_path_; }
  const std::string& events_path() const { return events_->path(); }

 private:
  RunLog(int metrics_fd, std::string metrics_path, std::unique_ptr<TensorBoardWriter> events)
      : metrics_fd_(metrics_fd), metrics_path_(std::move(metrics_path)), events_(std::move(events)) {}

  int metrics_fd_;
  std::string metrics_path_;
  std::unique_ptr<TensorBoardWriter> events_;
};

// "45s", "4m05s", "3h12m", "2d04h".
std::string FormatDuration(double seconds);

// "step 1200/10000 (12%), 3h12m left" for a run that has finished `steps_done` of `total_steps` steps,
// `timed_steps` of them (those since the clock started, e.g. after a resume) in `timed_seconds`: the ETA
// assumes the remaining steps take their mean. Without timing ("step 0/10000 (0%)") no ETA is shown.
std::string FormatProgress(int64_t steps_done, int64_t total_steps, int64_t timed_steps,
                           double timed_seconds);

}  // namespace fathom

#endif  // FATHOM_FRAMEWORK_RUN_LOG_H_
