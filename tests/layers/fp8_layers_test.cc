// Layers under train.precision fp8 on the CPU (the emulated block-scaled GEMMs): a Linear's three GEMMs are
// exactly the FP8 ops of framework/ops.h on its quantised operands; Linear, DenseMlp, MLA and MoE outputs,
// input gradients and weight gradients stay close to the f32 layers' with the same parameters (and are not
// simply the f32 results); the FP8 weights follow the master values after every refresh, even when the
// fused optimizer marked the bf16 copy fresh.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>

#include "framework/ops.h"
#include "layers/linear.h"
#include "layers/mla.h"
#include "layers/mlp.h"
#include "layers/moe.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::FillRandom;
using testing::RandomTensor;
using testing::TestSeed;

bool SameBytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

double RelError(const Tensor& got, const Tensor& want) {
  double d = 0, n = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    d += (got.Item(i) - want.Item(i)) * (got.Item(i) - want.Item(i));
    n += want.Item(i) * want.Item(i);
  }
  EXPECT_GT(n, 0.0) << "reference is all zeros";
  return std::sqrt(d / n);
}

// The same layer built twice over f32 tables with equal values, the second with FP8 weights.
template <class Layer>
struct Pair {
  template <class Make>
  Pair(Make&& make, std::mt19937_64& rng, double scale) : ref(make(ref_table)), fp8(make(fp8_table)) {
    ref_table.Finalize(DType::kF32);
    fp8_table.Finalize(DType::kF32);
    FillRandom(ref_table.values(), rng, scale);
    fp8_table.values().CopyFrom(ref_table.values());
    fp8_table.EnableFp8Weights();
  }
  ParamTable ref_table, fp8_table;
  Layer ref, fp8;
};

// Tolerances. e4m3 rounds to 3 mantissa bits: ~2.4% RMS relative error per quantised value, so a product
// of two quantised operands is off by ~3.4% in norm, and a chain of two FP8 GEMMs (an MLP, an expert) or of
// the projections around attention by ~5-6%. The bounds leave about a factor two; the lower bound shows the
// FP8 path was taken (f32 would agree to ~1e-6).
constexpr double kOneGemm = 0.07, kChain = 0.12, kTaken = 1e-3;

TEST(Fp8Layers, LinearRunsItsThreeGemmsInFp8) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t in = 200, out = 48;
  auto make = [&](ParamTable& t) {
    return Linear(t, "proj", in, out, 0, ParamGroup::kReplicated, GemmPrecision::kFp8);
  };
  Pair<Linear> p(make, rng, 0.05);
  Tensor x = RandomTensor({3, 47, in}, DType::kF32, rng);
  Tensor dy = RandomTensor({3, 47, out}, DType::kF32, rng);
  Tensor y_ref = p.ref.Forward(0, x), y = p.fp8.Forward(0, x);
  Tensor dx_ref = p.ref.BackwardInput(0, dy), dx = p.fp8.BackwardInput(0, dy);
  p.ref.BackwardWeight(0);
  p.fp8.BackwardWeight(0);

  // Exactly the FP8 ops on the quantised operands.
  const Fp8Weight& q = p.fp8_table.fp8_weight(p.fp8.weight_id());
  Tensor y_ops = Tensor::Empty({141, out}, DType::kF32), dx_ops = Tensor::Empty({141, in}, DType::kF32);
  ops::Fp8GroupedMatmulNT(y_ops, ops::QuantizeRows(x.Flatten2D()), q.w, Tensor());
  ops::Fp8GroupedMatmulNT(dx_ops, ops::QuantizeRows(dy.Flatten2D()), q.wt, Tensor());
  Tensor dw_ops = Tensor::Zeros({out, in}, DType::kF32);
  ops::Fp8GroupedMatmulTN(dw_ops, ops::QuantizeCols(dy.Flatten2D()), ops::QuantizeCols(x.Flatten2D()));
  EXPECT_TRUE(SameBytes(y, y_ops));
  EXPECT_TRUE(SameBytes(dx, dx_ops));
  EXPECT_TRUE(SameBytes(p.fp8_table.grad(p.fp8.weight_id()), dw_ops));

  for (auto [got, want, name] :
       {std::tuple{y, y_ref, "y"}, std::tuple{dx, dx_ref, "dx"},
        std::tuple{p.fp8_table.grad(p.fp8.weight_id()), p.ref_table.grad(p.ref.weight_id()), "dW"}}) {
    const double e = RelError(got, want);
    EXPECT_LT(e, kOneGemm) << name;
    EXPECT_GT(e, kTaken) << name;
  }
}

TEST(Fp8Layers, ComputePrecisionLinearsIgnoreFp8Weights) {
  std::mt19937_64 rng(TestSeed());
  ParamTable table;
  Linear head(table, "lm_head", 32, 64);  // GemmPrecision::kCompute: the output head stays in f32/bf16
  table.Finalize(DType::kF32);
  FillRandom(table.values(), rng, 0.1);
  table.EnableFp8Weights();
  EXPECT_FALSE(table.fp8(head.weight_id()));
  Tensor x = RandomTensor({5, 32}, DType::kF32, rng);
  Tensor y = head.Forward(0, x), want = Tensor::Empty({5, 64}, DType::kF32);
  ops::MatmulNT(want, x, table.value(head.weight_id()));
  EXPECT_TRUE(SameBytes(y, want));
}

// A layer of width 64 on fresh (2, seq, 64) inputs: its output, input gradient and weight gradients in FP8
// stay within the chain bound of f32's, and far enough from them to show the FP8 path ran.
template <class L>
void ExpectChainCloseToF32(Pair<L>& p, int64_t seq, std::mt19937_64& rng) {
  Tensor x = RandomTensor({2, seq, 64}, DType::kF32, rng), dy = RandomTensor({2, seq, 64}, DType::kF32, rng);
  const double ey = RelError(p.fp8->Forward(0, x), p.ref->Forward(0, x));
  const double edx = RelError(p.fp8->BackwardInput(0, dy), p.ref->BackwardInput(0, dy));
  p.fp8->BackwardWeight(0);
  p.ref->BackwardWeight(0);
  const double edw = RelError(p.fp8_table.grads(), p.ref_table.grads());
  for (auto [e, name] : {std::pair{ey, "y"}, std::pair{edx, "dx"}, std::pair{edw, "dW"}}) {
    EXPECT_LT(e, kChain) << name;
    EXPECT_GT(e, kTaken) << name;
  }
}

TEST(Fp8Layers, DenseMlpStaysCloseToF32) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto make = [&](ParamTable& t) { return std::make_unique<DenseMlp>(t, "model.layers.0.mlp", 64, 160, 0); };
  Pair<std::unique_ptr<DenseMlp>> p(make, rng, 0.1);
  ExpectChainCloseToF32(p, 40, rng);
}

ModelConfig SmallModel() {
  ModelConfig cfg;
  cfg.hidden_size = 64;
  cfg.num_attention_heads = 4;
  cfg.q_lora_rank = 32;
  cfg.kv_lora_rank = 32;
  cfg.qk_nope_head_dim = 16;
  cfg.qk_rope_head_dim = 8;
  cfg.v_head_dim = 16;
  cfg.moe_intermediate_size = 48;
  cfg.n_routed_experts = 8;
  cfg.n_shared_experts = 1;
  cfg.num_experts_per_tok = 2;
  cfg.n_group = 2;
  cfg.topk_group = 1;
  cfg.routed_scaling_factor = 2.5;
  return cfg;
}

TEST(Fp8Layers, MlaProjectionsStayCloseToF32) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const ModelConfig cfg = SmallModel();
  auto make = [&](ParamTable& t) {
    return std::make_unique<MlaAttention>(t, cfg, "model.layers.0.self_attn", 0);
  };
  Pair<std::unique_ptr<MlaAttention>> p(make, rng, 0.1);
  // RMSNorm weights start at 1 as the model initialises them (the random fill above made them N(0, 0.1)).
  for (ParamTable* t : {&p.ref_table, &p.fp8_table}) {
    for (int id = 0; id < t->size(); ++id) {
      if (t->spec(id).name.find("layernorm") != std::string::npos) t->value(id).Fill(1.0);
    }
    t->RefreshComputeValues();
  }
  ExpectChainCloseToF32(p, 24, rng);
}

// The routed experts with FP8 rows (no exchange: every expert local), the shared expert through Linear.
TEST(Fp8Layers, MoeStaysCloseToF32) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const ModelConfig cfg = SmallModel();
  auto make = [&](ParamTable& t) { return std::make_unique<MoE>(t, cfg, "model.layers.1.mlp", 1); };
  Pair<std::unique_ptr<MoE>> p(make, rng, 0.1);
  Tensor x = RandomTensor({2, 40, 64}, DType::kF32, rng), dy = RandomTensor({2, 40, 64}, DType::kF32, rng);
  MoeStats ref_stats, fp8_stats;
  const double ey = RelError(p.fp8->Forward(0, x, 1e-3, &fp8_stats), p.ref->Forward(0, x, 1e-3, &ref_stats));
  // The router reads x in f32 either way: the same experts are chosen.
  for (int64_t e = 0; e < cfg.n_routed_experts; ++e)
    EXPECT_EQ(fp8_stats.expert_counts.data<int64_t>()[e], ref_stats.expert_counts.data<int64_t>()[e]);
  const double edx = RelError(p.fp8->BackwardInput(0, dy), p.ref->BackwardInput(0, dy));
  p.fp8->BackwardWeight(0);
  p.ref->BackwardWeight(0);
  for (auto [id, name] :
       {std::pair{p.ref->gate_proj_id(), "gate_proj"}, std::pair{p.ref->up_proj_id(), "up_proj"},
        std::pair{p.ref->down_proj_id(), "down_proj"}}) {
    const double e = RelError(p.fp8_table.grad(id), p.ref_table.grad(id));
    EXPECT_LT(e, kChain) << name;
    EXPECT_GT(e, kTaken) << name;
  }
  for (double e : {ey, edx}) {
    EXPECT_LT(e, kChain);
    EXPECT_GT(e, kTaken);
  }
}

// The padded (tiled) expert layout under FP8 (16-row tiles here, 128 on CUDA) gives the packed layout's
// output, input gradient and weight gradients bit for bit: each row is quantised along the hidden size
// alone, so its codes do not depend on where it sits, and the wgrad's 128-token column blocks of an expert
// hold the same values (its rows first, zeros after) as the packed layout's zero-padded blocks.
TEST(Fp8Layers, MoePaddedLayoutMatchesPacked) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const ModelConfig cfg = SmallModel();
  ParamTable packed_table, padded_table;
  MoE packed(packed_table, cfg, "model.layers.1.mlp", 1), padded(padded_table, cfg, "model.layers.1.mlp", 1);
  packed_table.Finalize(DType::kF32);
  padded_table.Finalize(DType::kF32);
  FillRandom(packed_table.values(), rng, 0.1);
  padded_table.values().CopyFrom(packed_table.values());
  packed_table.EnableFp8Weights();
  padded_table.EnableFp8Weights();
  constexpr int64_t kTile = 16;
  packed.set_expert_layout(MoE::ExpertLayout::kPacked);
  padded.set_expert_layout(MoE::ExpertLayout::kPadded, kTile);
  Tensor x = RandomTensor({2, 40, 64}, DType::kF32, rng), dy = RandomTensor({2, 40, 64}, DType::kF32, rng);
  MoeStats stats;
  const Tensor y0 = packed.Forward(0, x, 1e-3, &stats), y1 = padded.Forward(0, x, 1e-3);
  ASSERT_GT(cpu::PaddedRows(stats.expert_counts, kTile), 2 * 40 * cfg.num_experts_per_tok);  // pad rows exist
  EXPECT_TRUE(SameBytes(y0, y1));
  EXPECT_TRUE(SameBytes(packed.BackwardInput(0, dy), padded.BackwardInput(0, dy)));
  packed.BackwardWeight(0);
  padded.BackwardWeight(0);
  for (int id : {packed.gate_proj_id(), packed.up_proj_id(), packed.down_proj_id(), packed.router_weight_id()}) {
    const Tensor g = packed_table.grad(id);
    double norm = 0;
    for (int64_t i = 0; i < g.numel(); ++i) norm += g.Item(i) * g.Item(i);
    EXPECT_GT(norm, 0.0) << packed_table.spec(id).name;
    EXPECT_TRUE(SameBytes(g, padded_table.grad(id))) << packed_table.spec(id).name;
  }
}

// RefreshComputeValues re-quantises the FP8 weights from the masters; the fused optimizer's mark skips
// only the bf16 copy.
TEST(Fp8Layers, Fp8WeightsFollowTheMastersEveryRefresh) {
  std::mt19937_64 rng(TestSeed());
  ParamTable table;
  Linear proj(table, "proj", 40, 24, 0, ParamGroup::kReplicated, GemmPrecision::kFp8);
  table.Finalize(DType::kF32);
  FillRandom(table.values(), rng, 0.1);
  table.SetComputeDType(DType::kBF16);
  table.EnableFp8Weights();
  const int id = proj.weight_id();
  auto fresh = [&] {
    Fp8Weight q = Fp8Weight::Empty(table.spec(id).shape, Device::kCPU);
    ops::QuantizeWeight128x128(q, table.value(id));
    return q;
  };
  EXPECT_TRUE(SameBytes(table.fp8_weight(id).w.codes, fresh().w.codes));
  FillRandom(table.value(id), rng, 0.1);
  table.MarkComputeValuesRefreshed();
  table.RefreshComputeValues();
  const Fp8Weight want = fresh();
  for (auto [got, expected] : {std::pair{table.fp8_weight(id).w.codes, want.w.codes},
                               std::pair{table.fp8_weight(id).w.scales, want.w.scales},
                               std::pair{table.fp8_weight(id).wt.codes, want.wt.codes},
                               std::pair{table.fp8_weight(id).wt.scales, want.wt.scales}}) {
    EXPECT_TRUE(SameBytes(got, expected));
  }
  EXPECT_EQ(table.Fp8WeightBytes(), Fp8Weight::Bytes({24, 40}));
}

}  // namespace
}  // namespace fathom
