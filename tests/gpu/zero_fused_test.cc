// ZeroOptimizer's fused GPU step (parallel/zero.h, framework/kernels/cuda/adamw.h FusedAdamWStep) on one
// rank against the CPU ZeroOptimizer on the same table:
//   - values and moments bit for bit (the CPU's operations in the CPU's order; 1e-6 relative allowed only
//     for a host compiler that contracts to FMA, as tests/gpu/adamw_test.cc explains), clipping active,
//     inactive and disabled;
//   - the compute copy equals bf16(values) (round to nearest even) for every trainable element: the fused
//     pass did the refresh, so the table's next RefreshComputeValues() is skipped, once (a later refresh
//     converts again); the gradients are left to the table's lazy ZeroGrads, whose grads() reads zeros;
//   - the kernel alone on a ZeRO-style shard whose start is not a multiple of 4 (the element-wise path);
//   - with FP8 weights on: the values still the CPU step's, the compute copy refreshed for the other
//     parameters and untouched for the FP8 weights (the table keeps none for them), and after the refresh
//     the FP8 copies equal, code for code and scale for scale, the CPU's QuantizeWeight128x128 of the new
//     values.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "framework/config.h"
#include "framework/cuda/device_arena.h"
#include "framework/cuda/device_pool.h"
#include "framework/fp8_operands.h"
#include "framework/kernels/cuda/adamw.h"
#include "framework/numeric.h"
#include "framework/ops.h"
#include "framework/param_table.h"
#include "gtest/gtest.h"
#include "optim/adamw.h"
#include "optim/grad_clip.h"
#include "parallel/local_communicator.h"
#include "parallel/zero.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using testing::Download;
using testing::TestSeed;

// Decayed and undecayed parameters, a non-trainable buffer, sizes that leave padding or end mid-chunk, a
// one-element parameter, and both groups (replicated and expert).
void BuildTable(ParamTable& t) {
  auto add = [&](const char* name, Shape shape, bool decay, bool trainable, ParamGroup group) {
    ParamSpec s;
    s.name = name;
    s.shape = std::move(shape);
    s.weight_decay = decay;
    s.trainable = trainable;
    s.group = group;
    t.Add(s);
  };
  add("model.layers.0.self_attn.q_proj.weight", {37, 53}, true, true, ParamGroup::kReplicated);
  add("model.layers.0.input_layernorm.weight", {53}, false, true, ParamGroup::kReplicated);
  add("model.layers.1.mlp.gate.e_score_correction_bias", {7}, false, false, ParamGroup::kReplicated);
  add("model.scalar", {1}, true, true, ParamGroup::kReplicated);
  add("model.norm.weight", {9000}, false, true, ParamGroup::kReplicated);
  add("model.layers.1.mlp.experts.{e}.up_proj.weight", {3, 4097}, true, true, ParamGroup::kExpert);
  t.Finalize(DType::kF32);
}

// Random gradients on the trainable elements only (what a backward writes), zeros elsewhere.
void FillTrainableGrads(const ParamTable& t, std::mt19937_64& rng) {
  std::normal_distribution<double> nd(0.0, 0.5);
  float* g = t.grads().data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) g[i] = 0.f;
  for (const ParamSpec& s : t.specs()) {
    if (!s.trainable) continue;
    for (int64_t i = s.offset; i < s.offset + NumElements(s.shape); ++i) g[i] = static_cast<float>(nd(rng));
  }
}

void ExpectClose(const Tensor& got, const Tensor& want, const char* what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  int64_t bad = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double g = got.Item(i), w = want.Item(i);
    if (!(std::fabs(g - w) <= 1e-6 * std::fabs(w)) && bad++ < 5) {
      ADD_FAILURE() << what << " element " << i << ": gpu " << g << " cpu " << w;
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

// AdamW as the model trains it: bf16 moments, decay 0.1, betas (0.9, 0.95).
OptimConfig Bf16MomentsConfig() {
  OptimConfig cfg;
  cfg.moment_dtype = "bf16";
  cfg.weight_decay = 0.1;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.95;
  cfg.eps = 1e-8;
  return cfg;
}

// A CPU table and its GPU twin (`build`'s parameters, the same random values; the GPU one with a bf16
// compute copy and, with `fp8`, FP8 weights on), each with a one-rank ZeroOptimizer, and the device pool and
// op context the GPU side needs.
struct Twins {
  cuda::DevicePool pool{"zero_fused_test", size_t{64} << 20};
  cuda::PoolScope pool_scope{pool};
  ops::OpContext context;
  ops::OpContextScope context_scope{context};
  ParamTable cpu, gpu;
  LocalCommunicator cpu_dp{"dp"}, cpu_edp{"edp"}, gpu_dp{"dp"}, gpu_edp{"edp"};
  std::unique_ptr<ZeroOptimizer> zc, zg;

  Twins(void (*build)(ParamTable&), const OptimConfig& cfg, std::mt19937_64& rng, bool fp8) {
    build(cpu);
    build(gpu);
    testing::FillRandom(cpu.values(), rng, 1.0);
    gpu.values().CopyFrom(cpu.values());
    gpu.MoveTo(Device::kCUDA);
    gpu.SetComputeDType(DType::kBF16);
    if (fp8) gpu.EnableFp8Weights();
    zc = std::make_unique<ZeroOptimizer>(cpu, cfg, cpu_dp, cpu_edp);
    zg = std::make_unique<ZeroOptimizer>(gpu, cfg, gpu_dp, gpu_edp);
  }
  // The same fresh gradients into both, reduced: {the CPU's norm^2, the GPU's}.
  std::pair<double, double> Gradients(std::mt19937_64& rng) {
    FillTrainableGrads(cpu, rng);
    ops::Copy(gpu.grads(), cpu.grads());
    zc->ReduceGradients();
    zg->ReduceGradients();
    return {zc->LocalNormSquared(), zg->LocalNormSquared()};
  }
  // Both steps with the same norm and clip, then the gather and the tables' refresh.
  void Step(double lr, double total, double max_norm) {
    zc->Step(lr, total, max_norm);
    zg->Step(lr, total, max_norm);
    zc->GatherParameters();
    zg->GatherParameters();
    cpu.RefreshComputeValues();
    gpu.RefreshComputeValues();
  }
};

TEST(ZeroFusedStep, OneRankMatchesCpuAndLeavesCopyFreshAndGradsZero) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  Twins t(BuildTable, Bf16MomentsConfig(), rng, /*fp8=*/false);
  ParamTable& cpu = t.cpu;
  ParamTable& gpu = t.gpu;
  const double lrs[] = {1e-2, 3e-3, 5e-2};
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    cpu.ZeroGrads();
    gpu.ZeroGrads();  // lazy: the step left last step's gradients, grads() below zeroes them
    if (step > 0) {
      const Tensor g = Download(gpu.grads());
      for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(g.data<float>()[i], 0.f) << "grad element " << i;
    }
    const auto [norm_c, norm_g] = t.Gradients(rng);
    ASSERT_GT(norm_c, 0.0);
    EXPECT_LE(std::fabs(norm_g - norm_c), 1e-12 * norm_c) << "gpu " << norm_g << " cpu " << norm_c;
    const double total = std::sqrt(norm_c);
    // Clipping inactive, active (half the norm), disabled. Both optimizers get the CPU's norm so the clip
    // factors are the same double. The GPU table's refresh is skipped: the fused pass refreshed the copy.
    t.Step(lrs[step], total, step == 0 ? 2 * total : step == 1 ? 0.5 * total : 0.0);

    ExpectClose(Download(gpu.values()), cpu.values(), "values");
    const Tensor compute = Download(gpu.compute_values());
    const float* want = cpu.values().data<float>();
    for (const ParamSpec& s : cpu.specs()) {
      if (!s.trainable) continue;
      for (int64_t i = s.offset; i < s.offset + NumElements(s.shape); ++i) {
        ASSERT_EQ(static_cast<const uint16_t*>(compute.raw())[i], FloatToBf16(want[i]).bits)
            << s.name << " compute copy element " << i;
      }
    }
  }

  // The skip is one-shot: new values and a refresh give their rounding.
  testing::FillRandom(cpu.values(), rng, 2.0);
  ops::Copy(gpu.values(), cpu.values());
  gpu.RefreshComputeValues();
  const Tensor compute = Download(gpu.compute_values());
  for (int64_t i = 0; i < cpu.numel(); ++i)
    ASSERT_EQ(static_cast<const uint16_t*>(compute.raw())[i], FloatToBf16(cpu.values().data<float>()[i]).bits)
        << "element " << i << " after a refresh of new values";
}

// FusedAdamWStep on shards that start off the 4-element grid (the element-wise path), at 4 mod 8 and on the
// whole table, bf16 and f32 moments: bitwise ScaleGrads + AdamWStep, the refresh confined to the range, the
// gradients only read.
TEST(ZeroFusedStep, KernelOnUnalignedShardsMatchesUnfusedSteps) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ParamTable table;
  BuildTable(table);
  testing::FillRandom(table.values(), rng, 1.0);
  testing::FillRandom(table.grads(), rng, 0.5);
  OptimConfig cfg;
  cfg.weight_decay = 0.1;
  for (const char* moments : {"bf16", "f32"}) {
    cfg.moment_dtype = moments;
    const DType md = cfg.moment_dtype == "bf16" ? DType::kBF16 : DType::kF32;
    // Starts off the 4-element grid (element-wise), at 4 mod 8 (the 4-wide kernel) and at 0 (the 8-wide one).
    for (auto [begin, end] :
         {std::pair<int64_t, int64_t>{101, 12301}, {2002, 22003}, {2004, 20004}, {0, table.numel()}}) {
      SCOPED_TRACE(std::string(moments) + " range [" + std::to_string(begin) + ", " + std::to_string(end) +
                   ")");
      cuda::DeviceArena arena("zero_fused_test", size_t{16} << 20);
      cuda::ParamChunks chunks(table, arena, begin, end);
      const Tensor values_a = testing::Upload(arena, table.values()),
                   grads_a = testing::Upload(arena, table.grads());
      const Tensor values_b = testing::Upload(arena, table.values()),
                   grads_b = testing::Upload(arena, table.grads());
      const Tensor m_a = arena.Zeros({end - begin}, md), v_a = arena.Zeros({end - begin}, md);
      const Tensor m_b = arena.Zeros({end - begin}, md), v_b = arena.Zeros({end - begin}, md);
      Tensor compute = arena.Alloc({table.numel()}, DType::kBF16);
      cuda::CopyToDevice(compute, table.values().To(DType::kBF16));
      const Tensor compute_before = Download(compute);
      const cuda::AdamWCoeffs coeffs = cuda::MakeAdamWCoeffs(cfg, 2e-2, 3);
      cuda::ScaleGrads(grads_a, chunks, 0.3, nullptr);
      cuda::AdamWStep(values_a, m_a, v_a, grads_a, chunks, coeffs, nullptr);
      cuda::FusedAdamWStep(values_b, m_b, v_b, grads_b, compute, chunks, coeffs, 0.3, nullptr);
      testing::ExpectBitEqual(Download(values_b), Download(values_a), "values");
      testing::ExpectBitEqual(Download(m_b), Download(m_a), "exp_avg");
      testing::ExpectBitEqual(Download(v_b), Download(v_a), "exp_avg_sq");
      const Tensor want = Download(values_a), got_compute = Download(compute), got_grads = Download(grads_b);
      std::vector<bool> in_chunks(static_cast<size_t>(table.numel()), false);
      for (const ParamSpec& s : table.specs()) {
        if (!s.trainable) continue;
        for (int64_t i = std::max(begin, s.offset); i < std::min(end, s.offset + NumElements(s.shape)); ++i)
          in_chunks[static_cast<size_t>(i)] = true;
      }
      for (int64_t i = 0; i < table.numel(); ++i) {
        const uint16_t c = static_cast<const uint16_t*>(got_compute.raw())[i];
        if (in_chunks[static_cast<size_t>(i)]) {
          ASSERT_EQ(c, FloatToBf16(want.data<float>()[i]).bits) << "compute element " << i;
        } else {
          ASSERT_EQ(c, static_cast<const uint16_t*>(compute_before.raw())[i])
              << "compute element " << i << " outside";
        }
        // The pass only reads the gradients, inside the range and out.
        ASSERT_EQ(FloatBits(got_grads.data<float>()[i]), FloatBits(table.grads().data<float>()[i]))
            << "gradient element " << i << " changed";
      }
    }
  }
}

// Every FP8 case of the fused pass: a 2-D weight whose blocks are partial in both directions, one of exact
// blocks, an expert stack with partial blocks, an undecayed FP8 weight, beside parameters that stay bf16.
void BuildFp8Table(ParamTable& t) {
  using G = ParamGroup;
  using P = GemmPrecision;
  t.Add({.name = "model.embed_tokens.weight", .shape = {37, 52}});
  t.Add({.name = "model.layers.0.self_attn.q_a_proj.weight", .shape = {200, 136}, .gemm = P::kFp8});
  t.Add({.name = "model.layers.0.input_layernorm.weight", .shape = {53}, .weight_decay = false});
  t.Add({.name = "model.layers.0.self_attn.o_proj.weight", .shape = {256, 128}, .weight_decay = false,
         .gemm = P::kFp8});
  t.Add({.name = "model.layers.1.mlp.experts.{e}.up_proj.weight", .shape = {3, 136, 260}, .group = G::kExpert,
         .gemm = P::kFp8});
  t.Finalize(DType::kF32);
}

TEST(ZeroFusedStep, Fp8WeightsSkipTheComputeCopyAndAreQuantisedByTheRefresh) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  Twins t(BuildFp8Table, Bf16MomentsConfig(), rng, /*fp8=*/true);
  ParamTable& gpu = t.gpu;
  const double lrs[] = {1e-2, 3e-3, 5e-2};
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    t.cpu.ZeroGrads();
    gpu.ZeroGrads();
    const double total = std::sqrt(t.Gradients(rng).first);
    const Tensor compute_before = Download(gpu.compute_values());
    // Clipping active in step 1; the refresh quantises the FP8 weights (the bf16 copy is the step's).
    t.Step(lrs[step], total, step == 1 ? 0.5 * total : 2 * total);
    ExpectClose(Download(gpu.values()), t.cpu.values(), "values");

    const Tensor compute = Download(gpu.compute_values());
    const Tensor values = Download(gpu.values());
    const auto* got = static_cast<const uint16_t*>(compute.raw());
    const auto* old = static_cast<const uint16_t*>(compute_before.raw());
    for (int id = 0; id < gpu.size(); ++id) {
      const ParamSpec& s = gpu.spec(id);
      if (!s.trainable) continue;
      for (int64_t i = s.offset; i < s.offset + NumElements(s.shape); ++i) {
        const uint16_t want = gpu.fp8(id) ? old[i] : FloatToBf16(values.data<float>()[i]).bits;
        ASSERT_EQ(got[i], want) << s.name << " compute copy element " << i
                                << (gpu.fp8(id) ? " (an FP8 weight: not written)" : "");
      }
      if (!gpu.fp8(id)) continue;
      const Fp8Weight want = Fp8Weight::Empty(s.shape, Device::kCPU);
      ops::QuantizeWeight128x128(want, Download(gpu.value(id)));
      const Fp8Weight& q = gpu.fp8_weight(id);
      SCOPED_TRACE(s.name);
      testing::ExpectBitEqual(Download(q.w.codes), want.w.codes, "w codes");
      testing::ExpectBitEqual(Download(q.w.scales), want.w.scales, "w scales");
      testing::ExpectBitEqual(Download(q.wt.codes), want.wt.codes, "wt codes");
      testing::ExpectBitEqual(Download(q.wt.scales), want.wt.scales, "wt scales");
    }
  }
}

}  // namespace
}  // namespace fathom
