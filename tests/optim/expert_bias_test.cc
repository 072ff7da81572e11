#include "optim/expert_bias.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::RandomTensor;
using testing::TestSeed;

class ExpertBiasTest : public ::testing::TestWithParam<DType> {
 protected:
  // b + delta as the bias dtype stores it.
  double Moved(double b, double delta) const {
    return GetParam() == DType::kF32 ? static_cast<float>(b + delta) : b + delta;
  }
};

TEST_P(ExpertBiasTest, MovesEachBiasByGammaTowardTheMean) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t n = 16;
  // Loads 0..15 shuffled: sum 120, mean 7.5, so no expert sits at the mean; eight are above it.
  std::vector<int64_t> load(n);
  for (int64_t i = 0; i < n; ++i) load[static_cast<size_t>(i)] = i;
  std::shuffle(load.begin(), load.end(), rng);
  Tensor bias = RandomTensor({n}, GetParam(), rng, 0.1);
  const Tensor before = bias.Clone();
  const double gamma = 1e-3;
  UpdateExpertBias(bias, load, gamma);
  for (int64_t i = 0; i < n; ++i) {
    double expected_sign = load[static_cast<size_t>(i)] > 7 ? -1.0 : 1.0;
    EXPECT_EQ(bias.Item(i), Moved(before.Item(i), expected_sign * gamma))
        << "expert " << i << " load " << load[static_cast<size_t>(i)];
  }
}

TEST_P(ExpertBiasTest, LoadAtTheMeanAndGammaZeroLeaveTheBias) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  // Three experts with mean 5 exactly (1 + 5 + 9); E = 3 so the mean is not a binary fraction of the sum.
  std::vector<int64_t> load = {9, 5, 1};
  Tensor bias = RandomTensor({3}, GetParam(), rng);
  const Tensor before = bias.Clone();
  UpdateExpertBias(bias, load, 0.25);
  EXPECT_EQ(bias.Item(0), Moved(before.Item(0), -0.25));
  EXPECT_EQ(bias.Item(1), before.Item(1));
  EXPECT_EQ(bias.Item(2), Moved(before.Item(2), 0.25));
  const Tensor after = bias.Clone();
  UpdateExpertBias(bias, {0, 7, 2}, 0.0);
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(bias.Item(i), after.Item(i));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ExpertBiasTest, ::testing::Values(DType::kF32, DType::kF64),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(ExpertLoadTest, AccumulatesCountsAndStats) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t n_experts = 8, tokens = 50, k = 2;
  std::vector<int64_t> expected(n_experts, 0);
  std::vector<double> ids;
  std::uniform_int_distribution<int64_t> pick(0, n_experts - 1);
  for (int64_t i = 0; i < tokens * k; ++i) {
    int64_t e = pick(rng);
    ids.push_back(static_cast<double>(e));
    ++expected[static_cast<size_t>(e)];
  }
  std::vector<int64_t> load;
  AccumulateExpertLoad(Tensor::FromVector(ids, {tokens, k}, DType::kI32), n_experts, load);
  EXPECT_EQ(load, expected);
  // A second micro-batch (i64 ids) adds on top.
  AccumulateExpertLoad(Tensor::FromVector(ids, {tokens, k}, DType::kI64), n_experts, load);
  for (int64_t e = 0; e < n_experts; ++e)
    EXPECT_EQ(load[static_cast<size_t>(e)], 2 * expected[static_cast<size_t>(e)]);

  ExpertLoadStats s = ComputeExpertLoadStats({2, 6, 4, 4});  // mean 4
  EXPECT_DOUBLE_EQ(s.max_over_mean, 1.5);
  EXPECT_DOUBLE_EQ(s.min_over_mean, 0.5);
  ExpertLoadStats even = ComputeExpertLoadStats({3, 3, 3});
  EXPECT_DOUBLE_EQ(even.max_over_mean, 1.0);
  EXPECT_DOUBLE_EQ(even.min_over_mean, 1.0);
  ExpertLoadStats empty = ComputeExpertLoadStats({0, 0});
  EXPECT_EQ(empty.max_over_mean, 0.0);
  EXPECT_EQ(empty.min_over_mean, 0.0);
}

}  // namespace
}  // namespace fathom
