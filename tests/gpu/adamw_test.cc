// AdamW, grad norm and grad scaling on the GPU (framework/kernels/cuda/adamw.h) against optim/adamw.cc and
// optim/grad_clip.cc on the same ParamTable copied to the device.
//
// Tolerances: AdamW values and moments 1e-6 relative per element. The kernel performs the CPU's f32
// operations in the CPU's order with correctly rounded intrinsics, so it is expected to agree bit for bit;
// 1e-6 (about 8 f32 ulps) only allows for a host compiler that contracts to FMA. (Measured on an H100:
// every value bit-equal to the CPU after 5 steps, f32 and bf16 moments.) The grad norm sums in
// double in a different order than the CPU: 1e-12 relative (double round-off over ~1e5 terms is ~1e-14).
// Scaling is one f32 product per element: bit for bit.
#include "framework/kernels/cuda/adamw.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "framework/config.h"
#include "framework/cuda/device_arena.h"
#include "framework/param_table.h"
#include "gtest/gtest.h"
#include "optim/adamw.h"
#include "optim/grad_clip.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using testing::Download;
using testing::FillRandom;
using testing::TestSeed;
using testing::Upload;

// A table with every case the optimizer distinguishes: decayed and undecayed parameters, a non-trainable
// buffer (the expert bias), sizes that leave alignment padding, a one-element parameter, and parameters
// larger than one chunk (4096) that end mid-chunk.
void BuildTable(ParamTable& t) {
  auto add = [&](const char* name, Shape shape, bool decay, bool trainable) {
    ParamSpec s;
    s.name = name;
    s.shape = std::move(shape);
    s.weight_decay = decay;
    s.trainable = trainable;
    t.Add(s);
  };
  add("model.layers.0.self_attn.q_proj.weight", {37, 53}, true, true);
  add("model.layers.0.input_layernorm.weight", {53}, false, true);
  add("model.layers.1.mlp.gate.e_score_correction_bias", {7}, false, false);
  add("model.layers.1.mlp.experts.{e}.up_proj.weight", {3, 4097}, true, true);
  add("model.scalar", {1}, true, true);
  add("model.norm.weight", {9000}, false, true);
  t.Finalize(DType::kF32);
}

// |got - want| <= tol * |want| for every element of two equal-shape host tensors (f32 or bf16).
void ExpectClose(const Tensor& got, const Tensor& want, double tol, const char* what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  int64_t bad = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double g = got.Item(i), w = want.Item(i);
    if (!(std::fabs(g - w) <= tol * std::fabs(w)) && bad++ < 5) {
      ADD_FAILURE() << what << " element " << i << ": gpu " << g << " cpu " << w;
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

// Runs 3 steps of CPU and GPU AdamW over [begin, end) with fresh gradients each step and compares.
void CheckAdamW(const std::string& moment_dtype, int64_t begin, int64_t end) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " moments " + moment_dtype + " range [" +
               std::to_string(begin) + ", " + std::to_string(end) + ")");
  std::mt19937_64 rng(seed);
  ParamTable table;
  BuildTable(table);
  if (end < 0) end = table.numel();
  // Values and grads are random everywhere, padding and non-trainable elements included, so a kernel that
  // touches them is caught.
  FillRandom(table.values(), rng, 1.0);
  OptimConfig cfg;
  cfg.moment_dtype = moment_dtype;
  cfg.weight_decay = 0.1;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.95;
  cfg.eps = 1e-8;

  cuda::DeviceArena arena("adamw_test", size_t{8} << 20);
  cuda::ParamChunks chunks(table, arena, begin, end);
  Tensor values = Upload(arena, table.values());
  Tensor grads = arena.Alloc({table.numel()}, DType::kF32);
  const DType md = moment_dtype == "bf16" ? DType::kBF16 : DType::kF32;
  Tensor exp_avg = arena.Zeros({end - begin}, md), exp_avg_sq = arena.Zeros({end - begin}, md);
  const Tensor initial = table.values().Clone();

  AdamW cpu(table, cfg, begin, end);
  const double lrs[] = {1e-2, 3e-3, 5e-2};
  for (int step = 1; step <= 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    FillRandom(table.grads(), rng, 0.5);
    cuda::CopyToDevice(grads, table.grads());
    cpu.Step(lrs[step - 1]);
    cuda::AdamWStep(values, exp_avg, exp_avg_sq, grads, chunks,
                    cuda::MakeAdamWCoeffs(cfg, lrs[step - 1], step), nullptr);
    ExpectClose(Download(values), table.values(), 1e-6, "values");
    ExpectClose(Download(exp_avg), cpu.exp_avg(), 1e-6, "exp_avg");
    ExpectClose(Download(exp_avg_sq), cpu.exp_avg_sq(), 1e-6, "exp_avg_sq");
  }
  // Non-trainable parameters, padding and everything outside the range keep their bits; the rest moved.
  Tensor got = Download(values);
  int64_t changed = 0;
  std::vector<bool> updatable(static_cast<size_t>(table.numel()), false);
  for (const ParamSpec& s : table.specs()) {
    if (!s.trainable) continue;
    for (int64_t i = std::max(begin, s.offset); i < std::min(end, s.offset + NumElements(s.shape)); ++i) {
      updatable[static_cast<size_t>(i)] = true;
    }
  }
  for (int64_t i = 0; i < table.numel(); ++i) {
    const bool same = FloatBits(got.data<float>()[i]) == FloatBits(initial.data<float>()[i]);
    if (updatable[static_cast<size_t>(i)]) {
      changed += !same;
    } else {
      ASSERT_TRUE(same) << "element " << i << " is not updatable but changed";
    }
  }
  EXPECT_EQ(changed, cuda::ParamChunks(table, arena, begin, end).trainable_elements());
}

TEST(AdamWCudaTest, F32MomentsMatchCpuOverThreeSteps) {
  FATHOM_REQUIRE_GPU();
  CheckAdamW("f32", 0, -1);
}

TEST(AdamWCudaTest, Bf16MomentsMatchCpuOverThreeSteps) {
  FATHOM_REQUIRE_GPU();
  CheckAdamW("bf16", 0, -1);
}

TEST(AdamWCudaTest, ShardRangeMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  // A ZeRO-style shard that starts inside the first parameter and ends inside the last one.
  CheckAdamW("f32", 100, 12300);
  CheckAdamW("bf16", 2000, 22000);
}

TEST(AdamWCudaTest, GradNormAndScaleMatchCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ParamTable table;
  BuildTable(table);
  FillRandom(table.grads(), rng, 2.0);
  cuda::DeviceArena arena("adamw_test", size_t{4} << 20);
  Tensor grads = Upload(arena, table.grads());
  Tensor norm = arena.Alloc({1}, DType::kF64);
  for (auto [b, e] : {std::pair<int64_t, int64_t>{0, -1}, {100, 12300}, {5, 6}}) {
    SCOPED_TRACE("range [" + std::to_string(b) + ", " + std::to_string(e) + ")");
    cuda::ParamChunks chunks(table, arena, b, e);
    cuda::GradNormSquared(norm, grads, chunks, nullptr);
    const double first = Download(norm).data<double>()[0];
    const double want = GradNormSquared(table, b, e);
    ASSERT_GT(want, 0.0);
    EXPECT_LE(std::fabs(first - want), 1e-12 * want) << "gpu " << first << " cpu " << want;
    cuda::GradNormSquared(norm, grads, chunks, nullptr);
    const double second = Download(norm).data<double>()[0];
    EXPECT_EQ(std::memcmp(&first, &second, sizeof(double)), 0) << "the reduction is not reproducible";
  }

  // Clipping: the caller's scale from the total norm, as ClipGradients computes it.
  cuda::ParamChunks all(table, arena);
  const double total = std::sqrt(GradNormSquared(table));
  const double max_norm = 0.25 * total;
  const double scale = std::min(1.0, max_norm / (total + 1e-6));
  ASSERT_LT(scale, 1.0);
  cuda::ScaleGrads(grads, all, scale, nullptr);
  EXPECT_EQ(ClipGradients(table, max_norm, total), scale);
  Tensor got = Download(grads);
  for (int64_t i = 0; i < table.numel(); ++i) {
    ASSERT_EQ(FloatBits(got.data<float>()[i]), FloatBits(table.grads().data<float>()[i])) << "element " << i;
  }
}

}  // namespace
}  // namespace fathom
