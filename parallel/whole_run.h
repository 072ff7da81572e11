// Whole-run accounting beside the steady-state step: the wall time of a training run of `total_tokens`
// tokens on a plan, from the simulated steps and the cluster file's `run:` assumptions (cluster.h):
//
//   compute     the steps at their simulated speed: the ramp's tokens at the speed of their (smaller) global
//               batch, the rest at the steady step's;
//   ramp        the part of `compute` the ramp adds over the steady speed (batch_ramp_start growing linearly
//               to the recipe's batch over batch_ramp_tokens; at a batch too small for the layout's schedule,
//               the smallest step the schedule runs carries the batch: the pipeline idles for the rest);
//   checkpoints every checkpoint_interval_min of compute, each rank writes its share of the model state
//               (f32 master weights and both moments of every parameter once, spread over the world) at
//               checkpoint_gbps_per_gpu, training stopped;
//   evaluation  eval_fraction of the wall time;
//   failures    the job fails every gpu_mtbf_hours / world hours; each failure costs restart_min plus, on
//               average, half a checkpoint interval of lost training;
//   wall = (compute + checkpoints) / (1 - eval_fraction - failure cost / job MTBF).
// Whole-run tokens/s/GPU = total_tokens / (wall x world): the figure the DeepSeek-V3 report's 180K H800
// GPU-hours per trillion tokens (1543 tokens/s/GPU) is, so the two are comparable. Pure arithmetic.
#ifndef FATHOM_PARALLEL_WHOLE_RUN_H_
#define FATHOM_PARALLEL_WHOLE_RUN_H_

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/cluster.h"

namespace fathom {

struct WholeRunInput {
  double total_tokens = 0;
  int64_t global_batch = 0;  // sequences per step at full batch
  int64_t seq_len = 0;
  int64_t world = 0;               // GPUs
  double steady_tokens_per_s = 0;  // the job's, at the full batch (the simulated step)
  double checkpoint_bytes_per_gpu = 0;
  // The job's tokens/s at a smaller global batch (the same layout); called for the ramp's batches only.
  std::function<absl::StatusOr<double>(int64_t global_batch)> tokens_per_s_at;
};

struct WholeRunEstimate {
  double compute_s = 0, ramp_s = 0, checkpoint_s = 0, evaluation_s = 0, failure_s = 0, wall_s = 0;
  double checkpoints = 0;        // written over the run
  double checkpoint_each_s = 0;  // one checkpoint's write time
  double failures = 0;           // expected over the run
  double failure_cost_s = 0;     // each: restart plus half an interval of lost training
  double job_mtbf_s = 0;
  double steady_tokens_per_s_per_gpu = 0;
  double tokens_per_s_per_gpu = 0;               // whole run
  std::vector<std::pair<int64_t, double>> ramp;  // (global batch, the job's tokens/s) at the sampled points
};

// InvalidArgument when the run cannot finish (failures and evaluation take all the time) or the inputs are
// not positive; the throughput callback's error otherwise.
absl::StatusOr<WholeRunEstimate> EstimateWholeRun(const WholeRunInput& input, const RunAssumptions& run);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_WHOLE_RUN_H_
