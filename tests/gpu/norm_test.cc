// CUDA RMSNorm (framework/kernels/cuda/norm.h) against the CPU twin run in f64 on the same (dtype-rounded)
// inputs: forward (out, rstd), backward input (also in place over dy), backward weight (accumulating onto a
// non-zero dw, bitwise identical when repeated), for widths 64 .. 7168 and row counts that leave a partial
// row chunk; and zero rows (an expert that received no tokens) as a no-op.
//
// Tolerances (relative L2): f32 outputs (rstd, dw, and out/dx on the f32 path) 1e-5: sums of at most 7168
// f32 terms, observed ~1e-7. bf16 out/dx 4e-3: computed in f32 and rounded once to bf16, which moves each
// element by at most 2^-8 of itself, so at most 3.9e-3 in L2, plus f32 round-off.
#include "framework/kernels/cuda/norm.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <utility>

#include "framework/cuda/device_arena.h"
#include "framework/kernels/cpu/norm.h"
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

constexpr double kEps = 1e-6;

void CheckCase(int64_t n, int64_t c, DType xt, DType wt, uint64_t seed) {
  SCOPED_TRACE("seed " + std::to_string(seed) + " (N, C) = (" + std::to_string(n) + ", " + std::to_string(c) +
               ") x " + std::string(DTypeName(xt)) + " w " + std::string(DTypeName(wt)));
  std::mt19937_64 rng(seed);
  Tensor x = RandomTensor({n, c}, DType::kF64, rng, 2.0);
  for (int64_t i = 0; i < n; ++i)  // rows of different scales, so rstd varies per row
    for (int64_t j = 0; j < c; ++j) x.data<double>()[i * c + j] *= 0.25 + static_cast<double>(i % 7);
  x = RoundTo(x, xt);
  Tensor w = RandomTensor({c}, DType::kF64, rng, 0.1);
  for (int64_t j = 0; j < c; ++j) w.data<double>()[j] += 1.0;
  w = RoundTo(w, wt);
  const Tensor dy = RoundTo(RandomTensor({n, c}, DType::kF64, rng), xt);
  const Tensor dw0 = RoundTo(RandomTensor({c}, DType::kF64, rng), DType::kF32);
  const double tol = xt == DType::kF32 ? 1e-5 : 4e-3;

  const Shape ws_shape = cuda::RmsNormBackwardWeightWorkspaceShape(n, c);
  cuda::DeviceArena arena("norm_test",
                          4 * static_cast<size_t>(8 * n * c + 4 * c + n + NumElements(ws_shape)) + 20 * 256);
  const Tensor x_d = Upload(arena, x, xt), w_d = Upload(arena, w, wt), dy_d = Upload(arena, dy, xt);
  const Tensor out_d = arena.Alloc({n, c}, xt), rstd_d = arena.Alloc({n}, DType::kF32);
  const Tensor dx_d = arena.Alloc({n, c}, xt), ws_d = arena.Alloc(ws_shape, DType::kF32);
  const Tensor dw_d = Upload(arena, dw0, DType::kF32), dw2_d = Upload(arena, dw0, DType::kF32);
  const Tensor dy_inplace_d = Upload(arena, dy, xt);
  const Tensor residual = RoundTo(RandomTensor({n, c}, DType::kF64, rng), xt);
  const Tensor residual_d = Upload(arena, residual, xt), dxr_d = arena.Alloc({n, c}, xt);
  cuda::RmsNormForward(out_d, rstd_d, x_d, w_d, kEps, nullptr);
  cuda::RmsNormBackwardInput(dx_d, dy_d, x_d, w_d, rstd_d, nullptr);
  cuda::RmsNormBackwardInput(dy_inplace_d, dy_inplace_d, x_d, w_d, rstd_d, nullptr);
  cuda::RmsNormBackwardInput(dxr_d, dy_d, x_d, w_d, rstd_d, nullptr, residual_d);
  cuda::RmsNormBackwardWeight(dw_d, dy_d, x_d, rstd_d, ws_d, nullptr);
  cuda::RmsNormBackwardWeight(dw2_d, dy_d, x_d, rstd_d, ws_d, nullptr);

  Tensor out_ref = Tensor::Empty({n, c}, DType::kF64), rstd_ref = Tensor::Empty({n}, DType::kF64);
  Tensor dx_ref = Tensor::Empty({n, c}, DType::kF64), dw_ref = dw0.Clone();
  cpu::RmsNormForward(out_ref, rstd_ref, x, w, kEps);
  cpu::RmsNormBackwardInput(dx_ref, dy, x, w, rstd_ref);
  Tensor dxr_ref = Tensor::Empty({n, c}, DType::kF64);
  cpu::RmsNormBackwardInput(dxr_ref, dy, x, w, rstd_ref, residual);
  cpu::RmsNormBackwardWeight(dw_ref, dy, x, rstd_ref);

  const Tensor dx = Download(dx_d), dw = Download(dw_d);
  EXPECT_LT(RelError(Download(out_d), out_ref), tol) << "out";
  EXPECT_LT(RelError(Download(rstd_d), rstd_ref), 1e-5) << "rstd";
  EXPECT_LT(RelError(dx, dx_ref), tol) << "dx";
  EXPECT_LT(RelError(Download(dxr_d), dxr_ref), tol) << "dx + residual";
  EXPECT_LT(RelError(dw, dw_ref), 1e-5) << "dw";
  // The accumulated part alone, so that dw0 cannot hide an error in the sum.
  Tensor acc = dw.To(DType::kF64), acc_ref = dw_ref.Clone();
  for (int64_t j = 0; j < c; ++j) {
    acc.data<double>()[j] -= dw0.Item(j);
    acc_ref.data<double>()[j] -= dw0.Item(j);
  }
  EXPECT_LT(RelError(acc, acc_ref), 1e-4) << "dw - dw0";  // cancellation against dw0 costs ~|dw0|/|acc| ulps
  EXPECT_TRUE(SameBytes(Download(dy_inplace_d), dx)) << "dx in place over dy differs";
  EXPECT_TRUE(SameBytes(Download(dw2_d), dw)) << "weight gradient not deterministic";
}

TEST(CudaRmsNorm, MatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  const std::pair<int64_t, int64_t> shapes[] = {{37, 64},    {300, 100}, {129, 512}, {5, 1536},
                                                {300, 7168}, {1, 7168},  {3, 32}};
  for (const auto& [n, c] : shapes) {
    CheckCase(n, c, DType::kF32, DType::kF32, seed);
    CheckCase(n, c, DType::kBF16, DType::kBF16, seed);
    CheckCase(n, c, DType::kBF16, DType::kF32, seed);
  }
}

// An expert that received no tokens: zero rows leave every output, and dw, untouched.
TEST(CudaRmsNorm, ZeroRowsIsANoOp) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t c = 512;
  cuda::DeviceArena arena("norm_test", 64 * 1024);
  const Tensor empty_d = arena.Alloc({0, c}, DType::kBF16), rstd_d = arena.Alloc({0}, DType::kF32);
  const Tensor w_d = Upload(arena, RandomTensor({c}, DType::kF64, rng), DType::kF32);
  const Tensor dw0 = RandomTensor({c}, DType::kF64, rng).To(DType::kF32);
  const Tensor dw_d = Upload(arena, dw0, DType::kF32);
  const Tensor ws_d = arena.Alloc(cuda::RmsNormBackwardWeightWorkspaceShape(0, c), DType::kF32);
  cuda::RmsNormForward(empty_d, rstd_d, empty_d, w_d, kEps, nullptr);
  cuda::RmsNormBackwardInput(empty_d, empty_d, empty_d, w_d, rstd_d, nullptr);
  cuda::RmsNormBackwardWeight(dw_d, empty_d, empty_d, rstd_d, ws_d, nullptr);
  EXPECT_TRUE(SameBytes(Download(dw_d), dw0));
}

}  // namespace
}  // namespace fathom
