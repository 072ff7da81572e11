// `fathom train` under mpirun: a bad mesh gets one clear message from rank 0 and every rank exits non-zero
// within seconds; a rank that dies mid-step (FATHOM_TEST_FAULT) brings the job down with a message naming
// the rank instead of hanging; a good mesh trains and logs it once.
#include <string>

#include "gtest/gtest.h"
#include "tests/launch/run_fathom.h"

namespace {

using fathom::testing::RunResult;

// `timeout` bounds a hang: a job that does not end by itself in 60 s fails the test (exit 124).
RunResult MpiRun(int np, const std::string& args, const std::string& env = "") {
  return fathom::testing::RunShell(
      env +
      " OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 60 mpirun "
      "--oversubscribe -np " +
      std::to_string(np) + " " + FATHOM_BINARY + " " + args);
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

const std::string kTiny = std::string(FATHOM_SOURCE_DIR) + "/recipes/tiny.yaml";

TEST(MpiCli, WorldNotDivisibleByPipelineStages) {
  RunResult r = MpiRun(3, "train " + kTiny + " --set parallel.pp=2");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, 124) << "hung: " << r.output;
  EXPECT_EQ(Count(r.output, "fathom train:"), 1u) << "one message from rank 0 expected:\n" << r.output;
  EXPECT_NE(r.output.find("parallel.pp = 2 does not divide the world size 3"), std::string::npos) << r.output;
  EXPECT_LT(r.seconds, 30);
}

TEST(MpiCli, ExpertParallelismNotDividingExperts) {
  RunResult r = MpiRun(3, "train " + kTiny + " --set parallel.ep=3");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(Count(r.output, "parallel.ep (3) must divide model.n_routed_experts (8)"), 1u) << r.output;
}

TEST(MpiCli, MorePipelineStagesThanLayers) {
  RunResult r = MpiRun(4, "train " + kTiny + " --set parallel.pp=4");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(Count(r.output, "parallel.pp (4)"), 1u) << r.output;
  EXPECT_NE(r.output.find("model.num_hidden_layers (3)"), std::string::npos) << r.output;
}

TEST(MpiCli, StageSplitNotSummingToTheLayers) {
  RunResult r = MpiRun(2, "train " + kTiny + " --set parallel.pp=2 --set 'parallel.stage_layers=[1,1]'");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(Count(r.output, "parallel.stage_layers"), 1u) << r.output;
}

TEST(MpiCli, RankDyingMidStepEndsTheJobNamingTheRank) {
  RunResult r = MpiRun(4, "train " + kTiny + " --set parallel.pp=2 --set parallel.ep=2 --set train.steps=50",
                       "FATHOM_TEST_FAULT=3:2");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, 124) << "hung: " << r.output;
  EXPECT_NE(r.output.find("[rank 3]"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("step    50/50"), std::string::npos) << "the job must not finish:\n" << r.output;
  EXPECT_LT(r.seconds, 45);
}

TEST(MpiCli, FourRanksTrainAndLogTheMeshOnce) {
  RunResult r = MpiRun(4, "train " + kTiny + " --set parallel.pp=2 --set parallel.ep=2 --set train.steps=3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Count(r.output, "mesh: world 4 = pp 2 x dp 2 (ep 2 x edp 1)"), 1u) << r.output;
  EXPECT_EQ(Count(r.output, "step     3/3"), 1u) << r.output;
}

}  // namespace
