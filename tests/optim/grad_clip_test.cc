#include "optim/grad_clip.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>

#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::FillRandom;
using testing::TestSeed;

void AddParams(ParamTable& t) {
  t.Add({.name = "embed.weight", .shape = {9, 7}});
  t.Add({.name = "gate.e_score_correction_bias", .shape = {5}, .trainable = false, .weight_decay = false});
  t.Add({.name = "norm.weight", .shape = {21}, .weight_decay = false});
  t.Add({.name = "head.weight", .shape = {3, 10}});
}

// sum of g^2 over the trainable parameters' own elements, read through the per-parameter views.
double DirectNormSquared(const ParamTable& t) {
  double s = 0;
  for (int id = 0; id < t.size(); ++id) {
    if (!t.spec(id).trainable) continue;
    Tensor g = t.grad(id);
    for (int64_t i = 0; i < g.numel(); ++i) s += g.Item(i) * g.Item(i);
  }
  return s;
}

class GradClipTest : public ::testing::TestWithParam<DType> {};

TEST_P(GradClipTest, NormMatchesDirectComputationAndRangesAddUp) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ParamTable t;
  AddParams(t);
  t.Finalize(GetParam());
  FillRandom(t.grads(), rng, 3.0);  // padding and the non-trainable buffer get large grads too
  t.grad(1).Fill(1e3);
  double direct = DirectNormSquared(t);
  EXPECT_NEAR(GradNormSquared(t), direct, 1e-12 * direct);
  int64_t cut = std::uniform_int_distribution<int64_t>(1, t.numel() - 1)(rng);
  EXPECT_NEAR(GradNormSquared(t, 0, cut) + GradNormSquared(t, cut, -1), direct, 1e-12 * direct);
  EXPECT_EQ(GradNormSquared(t, cut, cut), 0.0);
}

TEST_P(GradClipTest, ClippingBringsTheNormToMaxNorm) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ParamTable t;
  AddParams(t);
  t.Finalize(GetParam());
  FillRandom(t.grads(), rng, 500.0);  // norm ~5e3, so the 1e-6 guard is below 1e-9 relative
  const Tensor frozen_before = t.grad(1).Clone();
  double norm = std::sqrt(GradNormSquared(t));
  double max_norm = norm * std::uniform_real_distribution<double>(0.05, 0.9)(rng);
  double scale = ClipGradients(t, max_norm, norm);
  EXPECT_NEAR(scale, max_norm / (norm + 1e-6), 1e-15);
  double after = std::sqrt(GradNormSquared(t));
  double tol = GetParam() == DType::kF64 ? 1e-9 : 1e-6;  // f32 grads round each product
  EXPECT_NEAR(after, max_norm, tol * max_norm);
  for (int64_t i = 0; i < frozen_before.numel(); ++i) {
    EXPECT_EQ(t.grad(1).Item(i), frozen_before.Item(i)) << "non-trainable grad " << i << " was scaled";
  }
}

TEST_P(GradClipTest, NoChangeBelowTheThresholdOrWhenDisabled) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ParamTable t;
  AddParams(t);
  t.Finalize(GetParam());
  FillRandom(t.grads(), rng);
  const Tensor before = t.grads().Clone();
  double norm = std::sqrt(GradNormSquared(t));
  EXPECT_EQ(ClipGradients(t, norm * 1.5, norm), 1.0);
  EXPECT_EQ(ClipGradients(t, 0.0, norm), 1.0);  // max_norm 0: clipping off even though norm > 0
  for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(t.grads().Item(i), before.Item(i)) << i;
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GradClipTest, ::testing::Values(DType::kF32, DType::kF64),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

}  // namespace
}  // namespace fathom
