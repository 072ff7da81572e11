#include "parallel/whole_run.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace fathom {
namespace {

// Points along the ramp at which the step is simulated; the time between them is integrated by the
// trapezoid rule in seconds per token (the throughput changes smoothly with the batch between them).
constexpr int kRampPoints = 9;

}  // namespace

absl::StatusOr<WholeRunEstimate> EstimateWholeRun(const WholeRunInput& in, const RunAssumptions& run) {
  if (!(in.total_tokens > 0) || in.global_batch < 1 || in.seq_len < 1 || in.world < 1 ||
      !(in.steady_tokens_per_s > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("whole-run accounting needs positive tokens (",
                                                   in.total_tokens,
                                                   "), batch, sequence, world and throughput"));
  }
  WholeRunEstimate e;
  e.steady_tokens_per_s_per_gpu = in.steady_tokens_per_s / static_cast<double>(in.world);
  double ramp_tokens = std::min(run.batch_ramp_tokens, in.total_tokens);
  if (run.batch_ramp_start <= 0 || run.batch_ramp_start >= in.global_batch) ramp_tokens = 0;
  double ramp_time = 0;
  if (ramp_tokens > 0) {
    std::vector<double> seconds_per_token;
    for (int i = 0; i < kRampPoints; ++i) {
      const double at = static_cast<double>(i) / (kRampPoints - 1);
      const int64_t batch = static_cast<int64_t>(
          std::llround(static_cast<double>(run.batch_ramp_start) +
                       at * static_cast<double>(in.global_batch - run.batch_ramp_start)));
      absl::StatusOr<double> speed =
          batch >= in.global_batch ? in.steady_tokens_per_s : in.tokens_per_s_at(batch);
      if (!speed.ok()) return speed.status();
      e.ramp.push_back({batch, *speed});
      seconds_per_token.push_back(1.0 / *speed);
    }
    const double slice = ramp_tokens / (kRampPoints - 1);
    for (int i = 1; i < kRampPoints; ++i)
      ramp_time += slice * 0.5 * (seconds_per_token[i - 1] + seconds_per_token[i]);
    e.ramp_s = ramp_time - ramp_tokens / in.steady_tokens_per_s;
  }
  e.compute_s = ramp_time + (in.total_tokens - ramp_tokens) / in.steady_tokens_per_s;
  e.checkpoint_each_s = in.checkpoint_bytes_per_gpu / (run.checkpoint_gbps_per_gpu * 1e9);
  e.checkpoints = e.compute_s / (run.checkpoint_interval_min * 60);
  e.checkpoint_s = e.checkpoints * e.checkpoint_each_s;
  e.job_mtbf_s = run.gpu_mtbf_hours * 3600 / static_cast<double>(in.world);
  e.failure_cost_s = run.restart_min * 60 + 0.5 * run.checkpoint_interval_min * 60;
  const double lost = run.eval_fraction + e.failure_cost_s / e.job_mtbf_s;
  if (!(lost < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the run never finishes: evaluation (", run.eval_fraction, " of the time) and failures (one every ",
        e.job_mtbf_s / 3600, " h on ", in.world, " GPUs, each costing ", e.failure_cost_s / 60,
        " min) take all of it; check run.gpu_mtbf_hours, run.restart_min and run.checkpoint_interval_min"));
  }
  e.wall_s = (e.compute_s + e.checkpoint_s) / (1 - lost);
  e.evaluation_s = run.eval_fraction * e.wall_s;
  e.failures = e.wall_s / e.job_mtbf_s;
  e.failure_s = e.failures * e.failure_cost_s;
  e.tokens_per_s_per_gpu = in.total_tokens / (e.wall_s * static_cast<double>(in.world));
  return e;
}

}  // namespace fathom
