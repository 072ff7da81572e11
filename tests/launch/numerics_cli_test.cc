// The step loop's own checks (issue 17): non-finite gradients skip the update and, after
// train.max_skipped_steps in a row, stop the job naming the tensor; a vanished gradient is flagged; and the
// silent-data-corruption check catches one flipped value on one data-parallel replica, naming the tensor
// and the ranks.
#include <string>

#include "gtest/gtest.h"
#include "tests/launch/run_fathom.h"

namespace {

using fathom::testing::CountOf;
using fathom::testing::MpiRun;
using fathom::testing::RunResult;

const std::string kTiny = std::string(FATHOM_SOURCE_DIR) + "/recipes/tiny.yaml";

TEST(NumericsCli, NonFiniteGradientsSkipThenStopNamingTheTensor) {
  // A learning rate of 1e4 without clipping blows the weights up: the gradient vanishes, then turns NaN.
  RunResult r = fathom::testing::RunFathom(
      "train " + kTiny +
      " --set train.steps=40 --set optim.lr=1e4 --set optim.min_lr=0 --set optim.warmup_steps=0"
      " --set optim.grad_clip=0 --set train.max_skipped_steps=3");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("gradient norm is exactly 0"), std::string::npos) << r.output;
  EXPECT_EQ(CountOf(r.output, "skipped: gradient norm"), 2u) << r.output;  // the third stops the job
  EXPECT_NE(r.output.find("3 steps in a row had a non-finite gradient norm (train.max_skipped_steps); the "
                          "first non-finite gradient: model."),
            std::string::npos)
      << r.output;
}

// As in Megatron-LM, a skipped step does not advance the LR schedule: after step 1's update every step is
// skipped, and each runs at the learning rate of the schedule's second position (it used to keep moving).
TEST(NumericsCli, SkippedStepsDoNotAdvanceTheLearningRate) {
  RunResult r = fathom::testing::RunFathom(
      "train " + kTiny +
      " --set train.steps=6 --set optim.lr=1e30 --set optim.warmup_steps=4 --set optim.grad_clip=0"
      " --set train.max_skipped_steps=8");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(CountOf(r.output, "skipped: gradient norm"), 5u) << r.output;
  EXPECT_EQ(CountOf(r.output, "| lr 2.500e+29 |"), 1u) << r.output;
  EXPECT_EQ(CountOf(r.output, "| lr 5.000e+29 |"), 5u) << r.output;
}

TEST(NumericsCli, ReplicaChecksumsCatchAFlippedValue) {
  const std::string args = "train " + kTiny + " --set train.steps=4 --set train.check_replicas_every=2";
  RunResult clean = MpiRun(2, args);  // dp 2: every parameter has two replicas
  EXPECT_EQ(clean.exit_code, 0) << clean.output;
  RunResult flipped = MpiRun(2, args, "FATHOM_TEST_FLIP_BIT=1:4");
  EXPECT_NE(flipped.exit_code, 0) << flipped.output;
  EXPECT_NE(flipped.exit_code, 124) << "hung:\n" << flipped.output;
  EXPECT_EQ(CountOf(flipped.output, "silent data corruption: the replicas of model."), 1u) << flipped.output;
  EXPECT_NE(flipped.output.find("step 4:"), std::string::npos) << flipped.output;
  EXPECT_NE(flipped.output.find("on rank 0 ["), std::string::npos) << flipped.output;
  EXPECT_NE(flipped.output.find("on rank 1 ["), std::string::npos) << flipped.output;
}

}  // namespace
