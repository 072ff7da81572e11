// CUDA RoPE (framework/kernels/cuda/rope.h) against the CPU twin run in f64 on the same inputs, with YaRN
// tables built by layers/rope.h (f32, uploaded once; the f64 reference uses the same tables widened exactly).
// Both layouts, out of place and in place, forward and backward; q-shaped rows (nope columns in front),
// MLA's kv rows (kv_lora_rank + rope), and the tiny recipe's d = 8 with W = d.
//
// Tolerances (relative L2): f32 1e-5 (each output is two f32 products and a sum, error ~1e-7); bf16 4e-3:
// one rounding of each output, at most 2^-8 relative per element, so at most 2^-8 = 3.9e-3 in L2, plus f32
// round-off. In-place results must equal the out-of-place ones bit for bit.
#include "framework/kernels/cuda/rope.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "framework/config.h"
#include "framework/cuda/device_arena.h"
#include "framework/kernels/cpu/rope.h"
#include "layers/rope.h"
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

ModelConfig YarnConfig(int64_t rope_dim) {
  ModelConfig cfg;
  cfg.qk_rope_head_dim = rope_dim;
  cfg.rope_theta = 10000.0;
  cfg.rope_scaling.type = "yarn";
  cfg.rope_scaling.factor = 40.0;
  cfg.rope_scaling.original_max_position_embeddings = 4096;
  cfg.rope_scaling.beta_fast = 32.0;
  cfg.rope_scaling.beta_slow = 1.0;
  cfg.rope_scaling.mscale = 1.0;
  cfg.rope_scaling.mscale_all_dim = 0.0;  // attention_factor = 0.1 ln(40) + 1: the tables are not unit-norm
  return cfg;
}

struct Case {
  int64_t b, t, h, w, d;
};

void CheckCase(const Case& c, DType dtype, bool interleaved, uint64_t seed) {
  const std::string name = "(B, T, H, W, d) = (" + std::to_string(c.b) + ", " + std::to_string(c.t) + ", " +
                           std::to_string(c.h) + ", " + std::to_string(c.w) + ", " + std::to_string(c.d) +
                           ") " + std::string(DTypeName(dtype)) + (interleaved ? " interleaved" : " half");
  SCOPED_TRACE("seed " + std::to_string(seed) + " " + name);
  std::mt19937_64 rng(seed);
  const RopeTable table(YarnConfig(c.d), c.t + 3);  // tables may be longer than the sequence
  const Shape shape{c.b, c.t, c.h, c.w};
  const Tensor x = RoundTo(RandomTensor(shape, DType::kF64, rng), dtype);
  const Tensor g = RoundTo(RandomTensor(shape, DType::kF64, rng), dtype);
  const double tol = dtype == DType::kF32 ? 1e-5 : 4e-3;

  cuda::DeviceArena arena("rope_test",
                          6 * static_cast<size_t>(x.numel()) * 4 + 2 * table.cos().nbytes() + 4096);
  const Tensor cos_d = Upload(arena, table.cos()), sin_d = Upload(arena, table.sin());
  const Tensor x_d = Upload(arena, x.To(dtype)), g_d = Upload(arena, g.To(dtype));
  const Tensor out_d = arena.Alloc(shape, dtype), dx_d = arena.Alloc(shape, dtype);
  cuda::RopeForward(out_d, x_d, cos_d, sin_d, interleaved, nullptr);
  cuda::RopeBackward(dx_d, g_d, cos_d, sin_d, interleaved, nullptr);
  const Tensor inplace_d = Upload(arena, x.To(dtype)), ginplace_d = Upload(arena, g.To(dtype));
  cuda::RopeForward(inplace_d, inplace_d, cos_d, sin_d, interleaved, nullptr);
  cuda::RopeBackward(ginplace_d, ginplace_d, cos_d, sin_d, interleaved, nullptr);

  Tensor out_ref = Tensor::Empty(shape, DType::kF64), dx_ref = Tensor::Empty(shape, DType::kF64);
  cpu::RopeForward(out_ref, x, table.cos(DType::kF64), table.sin(DType::kF64), interleaved);
  cpu::RopeBackward(dx_ref, g, table.cos(DType::kF64), table.sin(DType::kF64), interleaved);

  const Tensor out = Download(out_d), dx = Download(dx_d);
  EXPECT_LT(RelError(out, out_ref), tol) << "forward";
  EXPECT_LT(RelError(dx, dx_ref), tol) << "backward";
  EXPECT_TRUE(SameBytes(Download(inplace_d), out)) << "in-place forward differs from out-of-place";
  EXPECT_TRUE(SameBytes(Download(ginplace_d), dx)) << "in-place backward differs from out-of-place";
  // Non-vacuous: the reference really moved the rope columns (a kernel that copied x would fail above).
  double moved = 0;
  for (int64_t i = 0; i < x.numel(); ++i) moved += std::abs(out_ref.Item(i) - x.Item(i));
  EXPECT_GT(moved, 0.0);
}

TEST(CudaRope, ForwardBackwardMatchCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  const Case cases[] = {
      {2, 37, 3, 192, 64},  // q rows: 128 nope columns pass through, 64 rope columns rotate
      {2, 37, 1, 576, 64},  // MLA's compressed kv rows: kv_lora_rank 512 + rope 64
      {1, 5, 2, 8, 8},      // the tiny recipe: the whole row rotates
      {3, 130, 2, 64, 64},  // k_pe rows alone, T past a multiple of the block's rows
  };
  for (const Case& c : cases)
    for (DType dtype : {DType::kF32, DType::kBF16})
      for (bool interleaved : {true, false}) CheckCase(c, dtype, interleaved, seed);
}

}  // namespace
}  // namespace fathom
