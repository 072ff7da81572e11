// ParamTable's lazy ZeroGrads: whatever reads a gradient through grad() or grads() after ZeroGrads() reads
// zeros, while a gradient handed to an overwriting writer (GradForWrite, known zero) is never zeroed.
// With FP8 weights on, an FP8 weight's compute copy is refused (the GPU optimizer does not refresh it).
#include "framework/param_table.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::FillRandom;
using testing::TestSeed;

void Build(ParamTable& t) {
  t.Add({.name = "a.weight", .shape = {9, 7}});
  t.Add({.name = "b.weight", .shape = {21}});
  t.Add({.name = "c.weight", .shape = {3, 10}});
  t.Finalize(DType::kF32);
}

bool AllZero(const Tensor& t) {
  for (int64_t i = 0; i < t.numel(); ++i)
    if (t.Item(i) != 0.0) return false;
  return true;
}

TEST(ParamTableTest, LazyZeroGradsReadsZerosAndSkipsOverwrittenGradients) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ParamTable t;
  Build(t);
  FillRandom(t.grads(), rng, 1.0);  // last step's gradients
  const float old_b0 = t.grads().data<float>()[t.spec(1).offset];
  ASSERT_NE(old_b0, 0.f);

  t.ZeroGrads();
  // a: an accumulating writer takes it: zeros.
  EXPECT_TRUE(AllZero(t.grad(0)));
  // b: an overwriting writer takes it: told it is known zero, and its memory was not written.
  bool known_zero = false;
  Tensor b = t.GradForWrite(1, &known_zero);
  EXPECT_TRUE(known_zero);
  EXPECT_EQ(b.data<float>()[0], old_b0) << "GradForWrite zeroed a gradient its writer overwrites";
  b.Fill(2.0);  // the writer overwrites
  // A second writer of b in the same step accumulates.
  t.GradForWrite(1, &known_zero);
  EXPECT_FALSE(known_zero);
  // c: no writer took it; the flat view zeroes it and keeps what b's writer wrote.
  const Tensor all = t.grads();
  EXPECT_TRUE(AllZero(t.grad(2)));
  EXPECT_TRUE(AllZero(t.grad(0)));
  EXPECT_EQ(all.data<float>()[t.spec(1).offset + 20], 2.0f);

  // Nothing taken at all: the whole buffer reads zeros.
  FillRandom(t.grads(), rng, 1.0);
  t.ZeroGrads();
  EXPECT_TRUE(AllZero(t.grads()));
}

TEST(ParamTableTest, Fp8WeightsHaveNoComputeCopyToRead) {
  ParamTable t;
  const int fp8 = t.Add({.name = "q.weight", .shape = {200, 136}, .gemm = GemmPrecision::kFp8});
  const int plain = t.Add({.name = "n.weight", .shape = {53}});
  t.Finalize(DType::kF32);
  t.SetComputeDType(DType::kBF16);
  EXPECT_EQ(t.compute_value(fp8).numel(), 200 * 136);  // FP8 off: an ordinary bf16 weight
  t.EnableFp8Weights();
  EXPECT_EQ(t.compute_value(plain).numel(), 53);
  // FP8 on: its GEMMs read the FP8 copies; the optimizer may leave its bf16 copy stale, so it is refused.
  EXPECT_DEATH(t.compute_value(fp8), "q.weight runs its GEMMs in FP8: read fp8_weight\\(id\\)");
}

}  // namespace
}  // namespace fathom
