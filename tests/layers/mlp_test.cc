// DenseMlp (SwiGLU): parameter names, the forward against a per-token loop of HF's down(silu(gate(x)) *
// up(x)), and f64 central-difference gradients of x and all three weights.
#include "layers/mlp.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::Dot;
using testing::FillRandom;
using testing::GradCheck;
using testing::GradCheckReport;
using testing::GradTarget;
using testing::RandomTensor;
using testing::TestSeed;

constexpr int64_t kB = 2, kT = 5, kH = 10, kI = 6;

TEST(DenseMlpTest, RegistersHfNames) {
  ParamTable table;
  DenseMlp mlp(table, "model.layers.0.mlp", kH, kI, 0);
  EXPECT_EQ(table.spec(mlp.gate_id()).name, "model.layers.0.mlp.gate_proj.weight");
  EXPECT_EQ(table.spec(mlp.up_id()).name, "model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(table.spec(mlp.down_id()).name, "model.layers.0.mlp.down_proj.weight");
  EXPECT_EQ(table.spec(mlp.gate_id()).shape, (Shape{kI, kH}));
  EXPECT_EQ(table.spec(mlp.up_id()).shape, (Shape{kI, kH}));
  EXPECT_EQ(table.spec(mlp.down_id()).shape, (Shape{kH, kI}));
  EXPECT_EQ(table.spec(mlp.down_id()).layer, 0);
}

TEST(DenseMlpTest, ForwardMatchesPerTokenLoop) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ParamTable table;
  DenseMlp mlp(table, "model.layers.0.mlp", kH, kI, 0);
  table.Finalize(DType::kF64);
  FillRandom(table.values(), rng, 0.3);
  Tensor x = RandomTensor({kB, kT, kH}, DType::kF64, rng);
  Tensor y = mlp.Forward(0, x);
  ASSERT_EQ(y.shape(), x.shape());
  const Tensor wg = table.value(mlp.gate_id()), wu = table.value(mlp.up_id()),
               wd = table.value(mlp.down_id());
  for (int64_t t = 0; t < kB * kT; ++t) {
    std::vector<double> h(kI);
    for (int64_t i = 0; i < kI; ++i) {
      double g = 0, u = 0;
      for (int64_t c = 0; c < kH; ++c) {
        g += wg.Item(i * kH + c) * x.Item(t * kH + c);
        u += wu.Item(i * kH + c) * x.Item(t * kH + c);
      }
      h[i] = g / (1.0 + std::exp(-g)) * u;
    }
    for (int64_t c = 0; c < kH; ++c) {
      double ref = 0;
      for (int64_t i = 0; i < kI; ++i) ref += wd.Item(c * kI + i) * h[i];
      EXPECT_NEAR(y.Item(t * kH + c), ref, 1e-12) << "token " << t << " channel " << c;
    }
  }
}

TEST(DenseMlpTest, GradientsMatchCentralDifferences) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ParamTable table;
  DenseMlp mlp(table, "model.layers.0.mlp", kH, kI, 0);
  table.Finalize(DType::kF64);
  FillRandom(table.values(), rng, 0.3);
  Tensor x = RandomTensor({kB, kT, kH}, DType::kF64, rng);
  Tensor r = RandomTensor({kB, kT, kH}, DType::kF64, rng);  // loss = sum(y * r)
  Tensor dx = Tensor::Zeros(x.shape(), DType::kF64);
  int mb = 0;
  auto loss = [&] { return Dot(mlp.Forward(mb++, x), r); };
  auto grads = [&] {
    table.ZeroGrads();
    const int id = mb++;
    mlp.Forward(id, x);
    dx.CopyFrom(mlp.BackwardInput(id, r));
    mlp.BackwardWeight(id);
  };
  std::vector<GradTarget> targets = {
      {"x", x, dx},
      {"gate_proj", table.value(mlp.gate_id()), table.grad(mlp.gate_id())},
      {"up_proj", table.value(mlp.up_id()), table.grad(mlp.up_id())},
      {"down_proj", table.value(mlp.down_id()), table.grad(mlp.down_id())},
  };
  for (const GradCheckReport& rep : GradCheck(targets, loss, grads, rng, /*samples=*/100)) {
    SCOPED_TRACE(rep.name);
    EXPECT_GT(rep.numeric_norm, 0.0);
    EXPECT_LE(rep.rel_error, 1e-6);
  }
}

}  // namespace
}  // namespace fathom
