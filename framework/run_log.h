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
// Runs: every Open first appends a start marker, the one kind of line without metrics:
//   {"event": "start", "step": S, "wall_time": ..., "resumed_from": "ckpt/step_00000005"}   (null: fresh)
// so that a reader can split the file into runs (readers of metrics skip lines with "event"). A run that
// resumes from a checkpoint of step S continues the curve from S, so the records past S that the
// interrupted run wrote after that checkpoint (steps S+1.. of an abandoned continuation) are removed: Open
// rewrites metrics.jsonl without them (WriteFileAtomically: a crash leaves the old file or the new one),
// looking only at the records since the last fresh start (the last marker with step 0, or, in a file
// written before markers existed, the last place where the steps went back), and its new event file
// starts with a SessionLog START at step S+1, which makes TensorBoard discard the older files' events from
// S+1 on (PyTorch's purge_step). The steps of one run in metrics.jsonl then increase. A FRESH run (step
// 0) never removes anything: the records of earlier runs stay, before its start marker, and notice() says
// so (TensorBoard shows both runs in the directory, as before). The log cannot know which run a
// checkpoint came from: resuming another run's checkpoint into this log_dir still removes the records
// past S of the last run logged here.
//
// Files: metrics.jsonl is appended to and must be a regular file if it exists; it is replaced only by the
// resume rewrite above. The event file is new for every Open. Both are written with one write(2) per
// record, nothing buffered in the process, so a killed job keeps its curve.
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
  // grad_norm, tokens_per_s, tflops_per_gpu, mfu, memory_gib, valid_loss, valid_perplexity (test_loss,
  // test_perplexity in the last step's). Names must not
  // be "step", "wall_time", "phase_seconds" or "expert_load", nor contain '/'.
  std::vector<Scalar> scalars;
  std::vector<Scalar> phase_seconds;  // time of the step by phase: "attention" -> seconds
  std::vector<ExpertLoadRecord> expert_load;
};

// The TensorBoard (tag, value) pairs of a record, in JSON order (see the top of this file).
std::vector<Scalar> TensorBoardTags(const StepRecord& record);
// The JSON line of a record, without the trailing newline.
std::string MetricsJsonLine(const StepRecord& record, double wall_time);

// Where a run starts, for its start marker and for what a resume removes (see the top of this file).
struct RunStart {
  int64_t step = 0;          // steps done before the run: 0 fresh, S when resumed from a checkpoint of step S
  std::string resumed_from;  // the checkpoint resumed from (empty for a fresh run)
};

class RunLog {
 public:
  // Creates `log_dir` (and its parents) when missing; with start.step > 0 removes the records past it of
  // the run being resumed (see the top); opens metrics.jsonl for appending and writes the start marker;
  // creates a new event file (with the SessionLog START of a resumed run). REQUIRES: log_dir non-empty
  // (train.log_dir "" means no RunLog at all), start.step >= 0.
  static absl::StatusOr<std::unique_ptr<RunLog>> Open(const std::string& log_dir, const RunStart& start = {});
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
  // One line for the user about the records metrics.jsonl already held ("" when there were none and
  // nothing was removed): kept (a fresh run) or how many were removed (a resume).
  const std::string& notice() const { return notice_; }

 private:
  RunLog(int metrics_fd, std::string metrics_path, std::unique_ptr<TensorBoardWriter> events,
         std::string notice)
      : metrics_fd_(metrics_fd),
        metrics_path_(std::move(metrics_path)),
        events_(std::move(events)),
        notice_(std::move(notice)) {}

  int metrics_fd_;
  std::string metrics_path_;
  std::unique_ptr<TensorBoardWriter> events_;
  std::string notice_;
};

// The start marker line of a run (see the top), without the trailing newline.
std::string StartMarkerJsonLine(const RunStart& start, double wall_time);

// "45s", "4m05s", "3h12m", "2d04h".
std::string FormatDuration(double seconds);

// "step 1200/10000 (12%), 3h12m left" for a run that has finished `steps_done` of `total_steps` steps,
// `timed_steps` of them (those since the clock started, e.g. after a resume) in `timed_seconds`: the ETA
// assumes the remaining steps take their mean. Without timing ("step 0/10000 (0%)") no ETA is shown.
std::string FormatProgress(int64_t steps_done, int64_t total_steps, int64_t timed_steps,
                           double timed_seconds);

}  // namespace fathom

#endif  // FATHOM_FRAMEWORK_RUN_LOG_H_
