// `fathom bench` through the binary, on the CPU CI machine: everything that must fail before a GPU is
// touched fails with exit code 2 and a message naming what to change. (The GPU run itself is not a test:
// a benchmark prints a table; the lead runs it on the device machine.)
#include <array>
#include <cstdio>
#include <string>

#include "gtest/gtest.h"
#include "tests/launch/run_fathom.h"

namespace {

using fathom::testing::RunFathom;
using fathom::testing::RunResult;

bool Contains(const std::string& text, const std::string& piece) {
  return text.find(piece) != std::string::npos;
}

const std::string kTiny = FATHOM_SOURCE_DIR "/recipes/tiny.yaml";    // train.device cpu
const std::string kSmall = FATHOM_SOURCE_DIR "/recipes/small.yaml";  // train.device cuda

TEST(Bench, CpuDeviceExits2NamingTrainDevice) {
  RunResult r = RunFathom("bench " + kTiny);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "train.device")) << r.output;
  EXPECT_TRUE(Contains(r.output, "cuda")) << r.output;
  // An override reaches the same check.
  r = RunFathom("bench " + kSmall + " --set train.device=cpu --set train.dtype=f32");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "train.device is cpu")) << r.output;
}

TEST(Bench, UnknownFlagExits2NamingIt) {
  RunResult r = RunFathom("bench " + kSmall + " --stepz 3");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "--stepz")) << r.output;
  EXPECT_TRUE(Contains(r.output, "usage: fathom bench")) << r.output;
}

TEST(Bench, BadStepCountsExit2NamingTheFlag) {
  for (const char* bad : {"--steps 0", "--steps many", "--warmup -1", "--warmup 2.5"}) {
    RunResult r = RunFathom("bench " + kSmall + " " + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.output;
    const std::string flag = std::string(bad).substr(0, std::string(bad).find(' '));
    EXPECT_TRUE(Contains(r.output, flag + " needs a whole number")) << bad << ": " << r.output;
  }
  RunResult r = RunFathom("bench " + kSmall + " --steps");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "--steps needs a value")) << r.output;
}

TEST(Bench, MissingRecipeAndBadKeyExit2) {
  RunResult r = RunFathom("bench");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "no recipe given")) << r.output;
  r = RunFathom("bench /nonexistent/recipe.yaml");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "/nonexistent/recipe.yaml")) << r.output;
  r = RunFathom("bench " + kSmall + " --set train.micro_batch_sise=1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "train.micro_batch_sise")) << r.output;
}

TEST(Bench, UsageListsBench) {
  RunResult r = RunFathom("--help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "bench RECIPE.yaml")) << r.output;
}

#ifndef FATHOM_WITH_CUDA
// A build without the CUDA backend says so for a cuda recipe (a CUDA build would start the benchmark).
TEST(Bench, BuildWithoutCudaExits2) {
  RunResult r = RunFathom("bench " + kSmall + " --steps 1 --warmup 0");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "no CUDA backend")) << r.output;
}
#endif

}  // namespace
