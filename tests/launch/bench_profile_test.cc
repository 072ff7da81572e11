// The host half of `fathom bench --profile` (launch/bench_profile.h): a profile completed from a bench step
// carries the step's optimizer bandwidth, the activation estimate against the pool's peak and an elementwise
// share with which the simulator gives back the measured step; the estimate lines name both numbers.
#include "launch/bench_profile.h"

#include <random>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/memory_plan.h"
#include "parallel/phases.h"
#include "parallel/planner.h"
#include "parallel/simulator.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using ::testing::HasSubstr;

const std::string kSmall = FATHOM_SOURCE_DIR "/recipes/small.yaml";

TEST(BenchProfile, CompletedProfileReproducesTheMeasuredStep) {
  std::mt19937_64 rng(testing::TestSeed());
  std::uniform_real_distribution<double> u(0.0, 1.0);
  absl::StatusOr<Recipe> recipe = LoadRecipe(kSmall);
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  absl::StatusOr<ClusterConfig> cluster = LoadCluster(FATHOM_SOURCE_DIR "/recipes/clusters/h200-1.yaml");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  // Kernel rates as the microbenchmarks would have measured them (random, plausible).
  CalibrationProfile p;
  p.gpu = "test GPU";
  p.dense_gemm_tflops = 400 + 300 * u(rng);
  p.head_gemm_tflops = 400 + 300 * u(rng);
  p.expert_rows = {256, 1024, 4096};
  p.expert_tflops = {150 + 50 * u(rng), 300 + 50 * u(rng), 500 + 50 * u(rng)};
  p.attention_forward_tflops = 150 + 300 * u(rng);
  p.attention_backward_tflops = 100 + 250 * u(rng);
  BenchStepMeasurements step;
  step.gpu = "test GPU";
  step.world = 1;
  step.stage_layers = {recipe->model.num_hidden_layers};
  step.step_ms = 150 + 50 * u(rng);
  step.phase_ms[static_cast<size_t>(phases::kOptimizer)] = 20 + 20 * u(rng);
  const double estimate = EstimatedActivationBytes(*recipe, step.stage_layers, 0);
  step.pool_peak_bytes = {estimate * (1.02 + 0.05 * u(rng))};
  step.param_elements = 2'000'000'000 + static_cast<int64_t>(5e8 * u(rng));
  FillProfileFromStep(*recipe, step, &p);
  ASSERT_TRUE(p.Validate().ok()) << p.Validate();

  const double optimizer_s = step.phase_ms[static_cast<size_t>(phases::kOptimizer)] / 1e3;
  const double bytes =
      OptimizerStepBytes(FathomPrecisionFor(*recipe), static_cast<double>(step.param_elements),
                         static_cast<double>(step.param_elements));
  EXPECT_NEAR(p.optimizer_gbps, bytes / optimizer_s / 1e9, 1e-9 * p.optimizer_gbps);
  EXPECT_DOUBLE_EQ(p.activation_estimated_bytes, estimate);
  EXPECT_NEAR(p.ActivationError(), step.pool_peak_bytes[0] / estimate - 1, 1e-12);
  EXPECT_EQ(p.activation_layers, recipe->model.num_hidden_layers + recipe->model.num_nextn_predict_layers);
  EXPECT_EQ(p.all_to_all_gbps, 0);  // one GPU: nothing measured
  EXPECT_GT(p.elementwise_fraction, 0);

  // The simulator with this profile gives back the measured step less its optimizer phase (the elementwise
  // share is what makes the modelled kernels add up to it); the optimizer is compared above, since the
  // random parameter count here is not the model's.
  ClusterConfig calibrated = *cluster;
  calibrated.profile = p;
  ParallelPlan plan;
  plan.micro_batch_size = recipe->train.micro_batch_size;
  plan.seq_len = recipe->train.seq_len;
  plan.precision = FathomPrecisionFor(*recipe);
  plan.recompute = Recompute::None();
  absl::StatusOr<SimulationResult> r = Simulate(recipe->model, calibrated, plan);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(1e3 * r->makespan_s, step.step_ms - 1e3 * optimizer_s, 1e-6 * step.step_ms);
}

TEST(BenchProfile, EstimateLinesNameTheEstimateAndThePeak) {
  absl::StatusOr<Recipe> recipe = LoadRecipe(kSmall);
  ASSERT_TRUE(recipe.ok());
  BenchStepMeasurements step;
  step.world = 1;
  step.stage_layers = {recipe->model.num_hidden_layers};
  const double estimate = EstimatedActivationBytes(*recipe, step.stage_layers, 0);
  // One micro-batch in flight on one GPU: the estimate is the start-up plan's.
  const std::vector<Instruction> program = Schedule1F1B(1, 1).ranks[0];
  EXPECT_DOUBLE_EQ(estimate, ActivationPeakBytes(*recipe, ModelSlice{}, program));
  step.pool_peak_bytes = {estimate / 1.1};
  const std::string lines = ActivationEstimateLines(*recipe, step);
  EXPECT_THAT(lines, HasSubstr("activations"));
  EXPECT_THAT(lines, HasSubstr("pool peak"));
  EXPECT_THAT(lines, HasSubstr("+10.0%"));
#ifndef FATHOM_WITH_CUDA
  EXPECT_EQ(MeasureProfile(*recipe, step).status().code(), absl::StatusCode::kUnimplemented);
#endif
}

}  // namespace
}  // namespace fathom
