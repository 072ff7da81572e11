// The fathom binary end to end: bad input gives one message naming the key and exit code 2; the tiny recipe
// trains and its loss falls well below ln(vocab).
#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <regex>
#include <string>

#include "gtest/gtest.h"
#include "tests/launch/run_fathom.h"

namespace {

using fathom::testing::RunFathom;
using fathom::testing::RunResult;

std::string WriteRecipe(const std::string& name, const std::string& text) {
  std::string path = ::testing::TempDir() + "/" + name + ".yaml";
  std::ofstream(path) << text;
  return path;
}

const char* kTiny = FATHOM_SOURCE_DIR "/recipes/tiny.yaml";

TEST(Cli, UnknownKeyNamesTheKeyAndExits2) {
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set model.n_expert=4");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.n_expert"), std::string::npos) << r.output;
}

TEST(Cli, WrongTypeNamesTheKeyAndExits2) {
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set train.steps=many");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.steps"), std::string::npos) << r.output;
}

TEST(Cli, TopkGroupAboveNGroupExits2) {
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set model.topk_group=5");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.topk_group"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("model.n_group"), std::string::npos) << r.output;
}

TEST(Cli, ExpertsNotDivisibleByGroupsExits2) {
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set model.n_routed_experts=9");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.n_routed_experts"), std::string::npos) << r.output;
}

TEST(Cli, TooManyExpertsPerTokenExits2) {
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set model.num_experts_per_tok=9");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.num_experts_per_tok"), std::string::npos) << r.output;
}

// A stated global batch that one process with tiny.yaml's micro-batching would not run: exit 2 naming both.
TEST(Cli, DisagreeingGlobalBatchExits2) {
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set train.global_batch_size=999");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.global_batch_size (999"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("parallel.micro_batches"), std::string::npos) << r.output;
}

TEST(Cli, MissingRecipeFileExits2) {
  RunResult r = RunFathom("train /nonexistent/recipe.yaml");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("/nonexistent/recipe.yaml"), std::string::npos) << r.output;
}

TEST(Cli, UnknownSectionInFileExits2) {
  std::string path = WriteRecipe("bad_section", "model:\n  vocab_size: 256\nmodle:\n  hidden_size: 8\n");
  RunResult r = RunFathom("train " + path);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("modle"), std::string::npos) << r.output;
}

TEST(Cli, UnknownCommandAndMissingArgumentsExit2) {
  EXPECT_EQ(RunFathom("trian").exit_code, 2);
  EXPECT_EQ(RunFathom("train").exit_code, 2);
  EXPECT_EQ(RunFathom(std::string("train ") + kTiny + " --set").exit_code, 2);
}

// The acceptance run of issue 2: 300 steps of the tiny recipe; the loss must fall well below ln(256).
TEST(Cli, TinyRecipeTrainsWellBelowLnVocab) {
  RunResult r = RunFathom(std::string("train ") + kTiny);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex(R"(lm loss ([0-9.]+) -> ([0-9.]+))"))) << r.output;
  double first = std::stod(m[1]), last = std::stod(m[2]);
  std::printf("tiny recipe: lm loss %.4f -> %.4f, ln(256) = %.4f\n", first, last, std::log(256.0));
  EXPECT_GT(first, 0.9 * std::log(256.0));
  EXPECT_LT(last, 0.4 * std::log(256.0));
  EXPECT_NE(r.output.find("step   300/300"), std::string::npos);
}

}  // namespace
