// Whole-run accounting: each factor's arithmetic against its closed form, the ramp's integral, and the
// cluster file's `run:` section.
#include "parallel/whole_run.h"

#include <cmath>
#include <random>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using ::testing::HasSubstr;

RunAssumptions RandomRun(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  RunAssumptions r;
  r.checkpoint_gbps_per_gpu = 0.5 + 4 * u(rng);
  r.checkpoint_interval_min = 10 + 50 * u(rng);
  r.gpu_mtbf_hours = 20000 + 60000 * u(rng);
  r.restart_min = 5 + 30 * u(rng);
  r.eval_fraction = 0.03 * u(rng);
  return r;
}

TEST(WholeRun, FactorsFollowTheirClosedForms) {
  std::mt19937_64 rng(testing::TestSeed());
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const RunAssumptions run = RandomRun(rng);  // no ramp
  WholeRunInput in;
  in.total_tokens = 1e12 * (1 + 10 * u(rng));
  in.global_batch = 4096;
  in.seq_len = 4096;
  in.world = 1024;
  in.steady_tokens_per_s = 1e6 * (1 + u(rng));
  in.checkpoint_bytes_per_gpu = 1e9 * (1 + 5 * u(rng));
  in.tokens_per_s_at = [](int64_t) -> absl::StatusOr<double> {
    ADD_FAILURE() << "no ramp: no smaller batch is simulated";
    return 1.0;
  };
  absl::StatusOr<WholeRunEstimate> w = EstimateWholeRun(in, run);
  ASSERT_TRUE(w.ok()) << w.status();
  const double compute = in.total_tokens / in.steady_tokens_per_s;
  EXPECT_NEAR(w->compute_s, compute, 1e-9 * compute);
  EXPECT_EQ(w->ramp_s, 0);
  const double each = in.checkpoint_bytes_per_gpu / (run.checkpoint_gbps_per_gpu * 1e9);
  const double checkpoints = compute / (run.checkpoint_interval_min * 60);
  EXPECT_NEAR(w->checkpoint_s, checkpoints * each, 1e-9 * checkpoints * each);
  const double mtbf = run.gpu_mtbf_hours * 3600 / 1024;
  const double cost = run.restart_min * 60 + run.checkpoint_interval_min * 30;
  const double wall = (compute + checkpoints * each) / (1 - run.eval_fraction - cost / mtbf);
  EXPECT_NEAR(w->wall_s, wall, 1e-9 * wall);
  // The parts add up to the wall time, and the failures are the expected count over it.
  EXPECT_NEAR(w->compute_s + w->checkpoint_s + w->evaluation_s + w->failure_s, w->wall_s, 1e-9 * wall);
  EXPECT_NEAR(w->failures, wall / mtbf, 1e-9 * wall / mtbf);
  EXPECT_NEAR(w->tokens_per_s_per_gpu, in.total_tokens / (wall * 1024), 1e-9 * w->tokens_per_s_per_gpu);
  EXPECT_LT(w->tokens_per_s_per_gpu, w->steady_tokens_per_s_per_gpu);
}

// A ramp whose throughput grows in proportion to the batch: time = R / (c (B - B0)) ln(B / B0) for c
// tokens/s per sequence of batch. The trapezoid rule over 8 intervals of the convex 1 / (c b) overestimates
// it by at most R (B - B0)^2 / (384 c B0^3) (its error term, f'' <= 2 b'^2 / (c B0^3)): for B = 2 B0,
// 1 / (384 ln 2) = 0.38% of the ramp's time.
TEST(WholeRun, RampIntegratesTheSlowerSteps) {
  RunAssumptions run;
  run.checkpoint_gbps_per_gpu = 1;
  run.checkpoint_interval_min = 60;
  run.gpu_mtbf_hours = 1e12;  // no failures to speak of
  run.batch_ramp_start = 1024;
  run.batch_ramp_tokens = 1e11;
  WholeRunInput in;
  in.total_tokens = 1e12;
  in.global_batch = 2048;
  in.seq_len = 4096;
  in.world = 64;
  const double c = 500;  // tokens/s per sequence of global batch
  in.steady_tokens_per_s = c * 2048;
  in.tokens_per_s_at = [&](int64_t batch) -> absl::StatusOr<double> {
    return c * static_cast<double>(batch);
  };
  absl::StatusOr<WholeRunEstimate> w = EstimateWholeRun(in, run);
  ASSERT_TRUE(w.ok()) << w.status();
  const double ramp_time = 1e11 / (c * 1024) * std::log(2.0);
  const double exact_extra = ramp_time - 1e11 / in.steady_tokens_per_s;
  EXPECT_GT(w->ramp_s, exact_extra);
  EXPECT_LT(w->ramp_s - exact_extra, 0.0038 * ramp_time);
  ASSERT_EQ(w->ramp.size(), 9u);
  EXPECT_EQ(w->ramp.front().first, 1024);
  EXPECT_EQ(w->ramp.back().first, 2048);
  // A steady throughput at every batch: the ramp costs nothing.
  in.tokens_per_s_at = [&](int64_t) -> absl::StatusOr<double> { return in.steady_tokens_per_s; };
  w = EstimateWholeRun(in, run);
  ASSERT_TRUE(w.ok());
  EXPECT_NEAR(w->ramp_s, 0, 1e-9 * w->compute_s);
}

TEST(WholeRun, ARunThatNeverFinishesIsAnError) {
  RunAssumptions run;
  run.checkpoint_gbps_per_gpu = 1;
  run.checkpoint_interval_min = 600;
  run.gpu_mtbf_hours = 1000;  // on 4096 GPUs: a failure every 15 minutes, each costing 5 hours
  run.restart_min = 30;
  WholeRunInput in{1e12, 4096, 4096, 4096, 1e6, 1e9, nullptr};
  absl::StatusOr<WholeRunEstimate> w = EstimateWholeRun(in, run);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("never finishes"));
}

}  // namespace
}  // namespace fathom
