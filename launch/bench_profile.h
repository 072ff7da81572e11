// What `fathom bench` adds for the planner (issue 18): the start-up activation estimate (parallel/memory_plan)
// against each rank's measured pool peak, printed by every bench; and with `--profile OUT.yaml` a
// calibration profile (parallel/profile.h) for a cluster file to include:
//   GEMM TFLOP/s     microbenchmarks of ops::Matmul* (forward, dgrad, wgrad forms) at the recipe's shapes
//                    and tokens per micro-batch: dense (the attention projections and the shared experts),
//                    head (the vocabulary GEMM), and the grouped routed-expert GEMMs at 256 .. 4096 rows per
//                    expert and at the recipe's own; and the same Linears and expert GEMMs in FP8 (e4m3
//                    block-scaled, each with its activation quantisation; experts in the padded layout);
//   attention        ops::CausalAttentionForward / Backward at the recipe's shape (causal FLOPs);
//   elementwise      the step's time outside the optimizer that the classes above do not explain, over what
//                    they explain (the cost model's FLOPs at the measured rates; calibrate with pp = 1);
//   optimizer GB/s   layers/cost.h OptimizerStepBytes of rank 0 over the optimizer phase's time;
//   all-to-all GB/s  with ep > 1: the bytes the dispatch and combine move over the dispatch/combine phase
//                    (permutation kernels included, so a lower bound); p2p is not measured yet (0);
//   activations      the estimate and the pool peak of the rank with the largest peak.
// Fragmentation is not measured (the pool does not report it yet): the profile says 0, and the planner
// keeps its default. Device work runs on the calling rank's GPU in a pool of its own (the trainer must be
// gone); no collectives.
#ifndef FATHOM_LAUNCH_BENCH_PROFILE_H_
#define FATHOM_LAUNCH_BENCH_PROFILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "framework/config.h"
#include "framework/phase_timer.h"
#include "parallel/profile.h"

namespace fathom {

// What the timed steps measured, gathered over the ranks (launch/bench_command.cc).
struct BenchStepMeasurements {
  std::string gpu;
  int world = 1;
  std::vector<int64_t> stage_layers;    // decoder layers per pipeline stage (the trainer's split)
  double step_ms = 0;                   // median step, the slowest rank's
  PhaseMillis phase_ms{};               // per step, of the busiest rank
  std::vector<double> pool_peak_bytes;  // per world rank: the activation pool's peak
  int64_t param_elements = 0;           // rank 0's parameters (values and gradients)
};

// The start-up estimate of pipeline rank `pp_rank`'s activations (parallel/memory_plan ActivationPeakBytes:
// its slice of the model and its schedule's list).
double EstimatedActivationBytes(const Recipe& recipe, const std::vector<int64_t>& stage_layers, int pp_rank);

// "activations  estimate 14.03 GiB vs pool peak 14.00 GiB (+0.2%, rank 0) ..." lines for the bench table:
// the rank with the largest pool peak and the worst estimate. Host arithmetic.
std::string ActivationEstimateLines(const Recipe& recipe, const BenchStepMeasurements& step);

// Completes a profile whose kernel rates (gemm, expert, attention) are set with what comes from the timed
// steps and the cost model: the elementwise share, the optimizer and all-to-all bandwidths, the
// activation estimate and peak, the step. Host arithmetic (MeasureProfile's last part).
void FillProfileFromStep(const Recipe& recipe, const BenchStepMeasurements& step,
                         CalibrationProfile* profile);

// The profile of this GPU for `recipe` (see above). CUDA builds: FailedPrecondition when its microbenchmark
// pool cannot be allocated; other builds: Unimplemented.
absl::StatusOr<CalibrationProfile> MeasureProfile(const Recipe& recipe, const BenchStepMeasurements& step);

}  // namespace fathom

#endif  // FATHOM_LAUNCH_BENCH_PROFILE_H_
