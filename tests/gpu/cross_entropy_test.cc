// CUDA fused chunked cross-entropy (framework/kernels/cuda/cross_entropy.h) against the CPU twin run in f64
// on the same (dtype-rounded) logits: lse, per-row losses, the loss sum, and dlogits written in place over
// the logits (bitwise equal to the out-of-place result), for the benchmark vocabulary 32768, DeepSeek-V3's
// 129280 (a single row and a small row block), odd V, ignored rows; and NaN for an out-of-range label.
//
// Tolerances: lse, row losses and the loss sum are f32 on both paths: 1e-5 relative (f32 sums over <= 253
// terms per thread then a tree; observed ~1e-7). dlogits: relative L2 1e-5 (f32) / 4e-3 (bf16: computed in
// f32 and rounded once, at most 2^-8 of each element, 3.9e-3 in L2). Because the L2 norm of dlogits is
// dominated by the label entries, the softmax entries are also checked one by one (relative error per
// element, label entries excluded): 2e-5 for f32 (the row's lse error plus expf's 2 ulp, both ~1e-6),
// 2^-8 + 2e-5 for bf16. Ignored rows must be exactly zero.
#include "framework/kernels/cuda/cross_entropy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "framework/cuda/device_arena.h"
#include "framework/kernels/cpu/cross_entropy.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using testing::Download;
using testing::RandomTensor;
using testing::RelError;
using testing::RoundTo;
using testing::SameBytes;
using testing::TestSeed;
using testing::Upload;

constexpr int64_t kIgnore = -100;

// Labels in [0, V); row 0 always valid, row 1 (when there is one) always ignored, the rest ignored 1 in 5.
Tensor MakeLabels(int64_t n, int64_t v, std::mt19937_64& rng) {
  Tensor labels = Tensor::Empty({n}, DType::kI32);
  std::uniform_int_distribution<int64_t> pick(0, v - 1), coin(0, 4);
  for (int64_t i = 0; i < n; ++i) {
    const bool ignore = i == 1 || (i > 1 && coin(rng) == 0);
    labels.data<int32_t>()[i] = static_cast<int32_t>(ignore ? kIgnore : pick(rng));
  }
  return labels;
}

void CheckCase(int64_t n, int64_t v, DType dtype, uint64_t seed) {
  SCOPED_TRACE("seed " + std::to_string(seed) + " (N, V) = (" + std::to_string(n) + ", " + std::to_string(v) +
               ") " + std::string(DTypeName(dtype)));
  std::mt19937_64 rng(seed);
  const Tensor logits = RoundTo(RandomTensor({n, v}, DType::kF64, rng, 2.0), dtype);
  const Tensor labels = MakeLabels(n, v, rng);
  const int64_t valid = cpu::CountValidLabels(labels, kIgnore);
  ASSERT_GT(valid, 0);
  const double scale = 1.0 / static_cast<double>(valid);

  cuda::DeviceArena arena("cross_entropy_test", 3 * static_cast<size_t>(n * v) * 4 + 5 * 4 * n + 16 * 256);
  const Tensor logits_d = Upload(arena, logits.To(dtype)), other_d = Upload(arena, logits.To(dtype));
  const Tensor labels_d = Upload(arena, labels);
  const Tensor lse_d = arena.Alloc({n}, DType::kF32), row_loss_d = arena.Alloc({n}, DType::kF32);
  const Tensor sum_d = arena.Alloc({1}, DType::kF32), dlogits_d = arena.Alloc({n, v}, dtype);
  cuda::CrossEntropyForward(sum_d, row_loss_d, lse_d, logits_d, labels_d, kIgnore, nullptr);
  cuda::CrossEntropyBackward(dlogits_d, other_d, lse_d, labels_d, kIgnore, scale, nullptr);  // out of place
  cuda::CrossEntropyBackward(logits_d, logits_d, lse_d, labels_d, kIgnore, scale, nullptr);  // in place

  Tensor lse_ref = Tensor::Empty({n}, DType::kF64), d_ref = Tensor::Empty({n, v}, DType::kF64);
  const double sum_ref = cpu::CrossEntropyForward(lse_ref, logits, labels, kIgnore);
  cpu::CrossEntropyBackward(d_ref, logits, lse_ref, labels, kIgnore, scale);
  Tensor row_ref = Tensor::Zeros({n}, DType::kF64);
  const int32_t* lab = labels.data<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    if (lab[i] != kIgnore) row_ref.data<double>()[i] = lse_ref.Item(i) - logits.Item(i * v + lab[i]);

  const Tensor sum = Download(sum_d);
  EXPECT_LT(RelError(Download(lse_d), lse_ref), 1e-5) << "lse";
  EXPECT_LT(RelError(Download(row_loss_d), row_ref), 1e-5) << "row losses";
  EXPECT_NEAR(sum.Item(0), sum_ref, 1e-5 * std::abs(sum_ref)) << "loss sum";

  const Tensor dlogits = Download(logits_d);
  EXPECT_TRUE(SameBytes(dlogits, Download(dlogits_d))) << "in place differs from out of place";
  const double tol = dtype == DType::kF32 ? 1e-5 : 4e-3;
  const double elem_tol = dtype == DType::kF32 ? 2e-5 : std::ldexp(1.0, -8) + 2e-5;
  EXPECT_LT(RelError(dlogits, d_ref), tol) << "dlogits";
  double worst = 0;
  int64_t nonzero_ignored = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < v; ++j) {
      const double got = dlogits.Item(i * v + j), want = d_ref.Item(i * v + j);
      if (lab[i] == kIgnore) {
        nonzero_ignored += got != 0.0;
      } else if (j != lab[i]) {
        worst = std::max(worst, std::abs(got - want) / std::abs(want));
      }
    }
  }
  EXPECT_LT(worst, elem_tol) << "worst relative error of a softmax entry";
  EXPECT_EQ(nonzero_ignored, 0) << "ignored rows must have zero gradient";
}

TEST(CudaCrossEntropy, MatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  const std::pair<int64_t, int64_t> shapes[] = {{37, 32768}, {1, 129280}, {6, 129280}, {29, 1001}, {4, 7}};
  for (const auto& [n, v] : shapes)
    for (DType dtype : {DType::kF32, DType::kBF16}) CheckCase(n, v, dtype, seed);
}

// A label outside [0, V) cannot be caught on the host without a sync: it must surface as NaN.
TEST(CudaCrossEntropy, OutOfRangeLabelIsNaN) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t n = 3, v = 11;
  const Tensor logits = RandomTensor({n, v}, DType::kF32, rng);
  Tensor labels = Tensor::Empty({n}, DType::kI32);
  labels.data<int32_t>()[0] = 4;
  labels.data<int32_t>()[1] = static_cast<int32_t>(v);  // one past the vocabulary
  labels.data<int32_t>()[2] = kIgnore;
  cuda::DeviceArena arena("cross_entropy_test", 16 * 1024);
  const Tensor logits_d = Upload(arena, logits), labels_d = Upload(arena, labels);
  const Tensor lse_d = arena.Alloc({n}, DType::kF32), row_loss_d = arena.Alloc({n}, DType::kF32);
  const Tensor sum_d = arena.Alloc({1}, DType::kF32);
  cuda::CrossEntropyForward(sum_d, row_loss_d, lse_d, logits_d, labels_d, kIgnore, nullptr);
  cuda::CrossEntropyBackward(logits_d, logits_d, lse_d, labels_d, kIgnore, 0.5, nullptr);
  const Tensor row_loss = Download(row_loss_d), d = Download(logits_d);
  EXPECT_TRUE(std::isfinite(row_loss.Item(0)));
  EXPECT_TRUE(std::isnan(row_loss.Item(1)));
  EXPECT_EQ(row_loss.Item(2), 0.0);
  EXPECT_TRUE(std::isnan(Download(sum_d).Item(0)));
  for (int64_t j = 0; j < v; ++j) {
    EXPECT_TRUE(std::isfinite(d.Item(j)));
    EXPECT_TRUE(std::isnan(d.Item(v + j)));
    EXPECT_EQ(d.Item(2 * v + j), 0.0);
  }
}

}  // namespace
}  // namespace fathom
