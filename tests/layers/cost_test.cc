// The cost model against Megatron's FLOP count, the report's parameter counts and the real model graph.
#include "layers/cost.h"

#include <cmath>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "layers/model.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

// recipes/small.yaml's shape (the single-GPU benchmark model).
ModelConfig SmallShape() {
  ModelConfig m;
  m.vocab_size = 32768;
  m.hidden_size = 2048;
  m.num_hidden_layers = 8;
  m.first_k_dense_replace = 1;
  m.intermediate_size = 5632;
  m.moe_intermediate_size = 1408;
  m.n_routed_experts = 32;
  m.n_shared_experts = 1;
  m.num_experts_per_tok = 4;
  m.num_attention_heads = 16;
  m.q_lora_rank = 768;
  m.kv_lora_rank = 512;
  m.qk_nope_head_dim = 128;
  m.qk_rope_head_dim = 64;
  m.v_head_dim = 128;
  m.num_nextn_predict_layers = 0;
  return m;
}

ModelConfig DeepSeekV3Shape() {
  ModelConfig m;
  m.vocab_size = 129280;
  m.hidden_size = 7168;
  m.num_hidden_layers = 61;
  m.first_k_dense_replace = 3;
  m.intermediate_size = 18432;
  m.moe_intermediate_size = 2048;
  m.n_routed_experts = 256;
  m.n_shared_experts = 1;
  m.num_experts_per_tok = 8;
  m.n_group = 8;
  m.topk_group = 4;
  m.num_attention_heads = 128;
  m.q_lora_rank = 1536;
  m.kv_lora_rank = 512;
  m.qk_nope_head_dim = 128;
  m.qk_rope_head_dim = 64;
  m.v_head_dim = 128;
  m.num_nextn_predict_layers = 1;
  return m;
}

// Megatron-LM's num_floating_point_operations for an MLA MoE model, per token, written out term by term
// as in megatron/training/training.py (qk_head_dim there is our qk_nope_head_dim, qk_pos_emb_head_dim our
// qk_rope_head_dim; causal attention ratio 0.5; MTP layers counted as extra MoE layers plus norms and
// projection; logits once per head).
double MegatronFlopsPerToken(const ModelConfig& m, double seq) {
  const double H = m.hidden_size, nh = m.num_attention_heads, nope = m.qk_nope_head_dim,
               rope = m.qk_rope_head_dim, v = m.v_head_dim;
  const double mtp = m.num_nextn_predict_layers;
  const double layers = m.num_hidden_layers + mtp;
  const double dense = m.first_k_dense_replace, moe = layers - dense;
  const double mlp = 12 * layers * H *
                     (m.intermediate_size * 1.5 * (dense / layers) +
                      m.moe_intermediate_size * m.num_experts_per_tok * 1.5 * (moe / layers) +
                      m.n_shared_experts * m.moe_intermediate_size * 1.5 * (moe / layers));
  const double q_term = m.q_lora_rank * (H + nh * (nope + rope) + 1);
  const double attn = 6 * layers *
                      (q_term + m.kv_lora_rank * (H + nh * (nope + v) + 1) + H * rope + nh * v * H +
                       seq * nh * (nope + rope) * 0.5 + seq * nh * v * 0.5);
  const double mtp_terms = 6 * mtp * (3 * H + 2 * H * H);
  const double logits = 6 * H * m.vocab_size * (mtp + 1);
  return mlp + attn + mtp_terms + logits;
}

TEST(CostModel, SmallShapeFlopsPerTokenIsMegatrons) {
  const ModelConfig m = SmallShape();
  const GraphTotals t = SumGraph(BuildCostGraph(m, 4096));
  // The benchmark document quotes 3.48e9 model FLOPs per token; the formula gives 3.4777e9.
  EXPECT_NEAR(t.model_flops, 3.48e9, 0.03 * 3.48e9);
  EXPECT_NEAR(t.model_flops, 3.477664e9, 1e4);
  EXPECT_NEAR(t.model_flops, MegatronFlopsPerToken(m, 4096), 1e-9 * t.model_flops);
}

TEST(CostModel, DeepSeekV3ParamsAndFlops) {
  const ModelConfig m = DeepSeekV3Shape();
  const GraphTotals t = SumGraph(BuildCostGraph(m, 4096));
  EXPECT_NEAR(static_cast<double>(t.params), 671e9, 0.01 * 671e9);
  EXPECT_NEAR(static_cast<double>(t.active_params), 37e9, 0.03 * 37e9);
  // The MTP module's own parameters: a MoE block, the projection and three norms (~11.6B; 14B in the HF
  // checkpoint, which stores copies of the embedding and head).
  EXPECT_NEAR(static_cast<double>(t.mtp_params), 11.6e9, 0.1e9);
  EXPECT_NEAR(t.model_flops, MegatronFlopsPerToken(m, 4096), 1e-9 * t.model_flops);
}

TEST(CostModel, MegatronFormulaHoldsForRandomShapes) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int trial = 0; trial < 20; ++trial) {
    ModelConfig m;
    m.vocab_size = 64 * pick(2, 100);
    m.hidden_size = 32 * pick(1, 16);
    m.num_hidden_layers = pick(2, 12);
    m.first_k_dense_replace = pick(0, m.num_hidden_layers - 1);
    m.intermediate_size = 16 * pick(1, 40);
    m.moe_intermediate_size = 16 * pick(1, 10);
    m.n_routed_experts = 8 * pick(1, 8);
    m.num_experts_per_tok = pick(1, 8);
    m.n_shared_experts = pick(0, 2);
    m.num_attention_heads = pick(1, 8);
    m.q_lora_rank = 16 * pick(1, 8);
    m.kv_lora_rank = 16 * pick(1, 8);
    m.qk_nope_head_dim = 8 * pick(1, 4);
    m.qk_rope_head_dim = 8 * pick(1, 2);
    m.v_head_dim = 8 * pick(1, 4);
    m.num_nextn_predict_layers = pick(0, 2);
    const double seq = 64 * pick(1, 64);
    const GraphTotals t = SumGraph(BuildCostGraph(m, static_cast<int64_t>(seq)));
    EXPECT_NEAR(t.model_flops, MegatronFlopsPerToken(m, seq), 1e-9 * t.model_flops);
  }
}

TEST(CostModel, ParamCountsMatchTheModelGraph) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int trial = 0; trial < 5; ++trial) {
    ModelConfig m;
    m.vocab_size = 256;
    m.hidden_size = 16 * pick(2, 6);
    m.num_hidden_layers = pick(2, 4);
    m.first_k_dense_replace = pick(0, 1);
    m.intermediate_size = 8 * pick(2, 10);
    m.moe_intermediate_size = 8 * pick(1, 4);
    m.n_group = pick(1, 2);
    m.topk_group = 1;
    m.n_routed_experts = 4 * m.n_group * pick(1, 2);
    m.num_experts_per_tok = pick(1, 3);
    m.n_shared_experts = pick(0, 1);
    m.num_attention_heads = pick(1, 4);
    m.q_lora_rank = pick(0, 1) * 16;
    m.kv_lora_rank = 16;
    m.qk_nope_head_dim = 8;
    m.qk_rope_head_dim = 8;
    m.v_head_dim = 8 * pick(1, 2);
    m.num_nextn_predict_layers = pick(0, 1);
    ASSERT_TRUE(m.Validate().ok()) << m.Validate();
    Model model(m, LossConfig{});
    const std::vector<NodeCost> cost = BuildCostGraph(m, 64);
    ASSERT_EQ(cost.size(), model.graph().size());
    for (size_t i = 0; i < cost.size(); ++i) {
      int64_t params = 0, expert = 0;
      for (int id : model.graph()[i].param_ids) {
        const ParamSpec& spec = model.params().spec(id);
        int64_t numel = 1;
        for (int64_t d : spec.shape) numel *= d;
        params += numel;
        if (spec.group == ParamGroup::kExpert) expert += numel;
      }
      SCOPED_TRACE("node " + cost[i].name);
      EXPECT_GT(params, 0);
      EXPECT_EQ(cost[i].params, params);
      EXPECT_EQ(cost[i].expert_params, expert);
    }
  }
}

TEST(CostModel, BackwardSplitAndRecompute) {
  const ModelConfig m = DeepSeekV3Shape();
  const std::vector<NodeCost> g = BuildCostGraph(m, 4096);
  const NodeCost& moe = g[1 + 10];
  ASSERT_EQ(moe.kind, NodeKind::kMoeBlock);
  // dgrad ~ wgrad ~ forward for GEMMs; the attention core's backward is 2.5x its forward, all in B.
  EXPECT_DOUBLE_EQ(moe.backward_weight_flops(), moe.gemm_flops + moe.gemm_bf16_flops);
  EXPECT_DOUBLE_EQ(moe.backward_input_flops(Recompute::None()),
                   moe.gemm_flops + moe.gemm_bf16_flops + 2.5 * moe.attn_flops);
  EXPECT_GT(moe.attn_flops, 0);
  // Recomputing the up-projections adds their forward to B and drops q, k, v of every head.
  const double up = 2.0 * (1536.0 * 128 * 192 + 512.0 * 128 * 256);
  EXPECT_DOUBLE_EQ(moe.mla_up_flops, up);
  EXPECT_DOUBLE_EQ(
      moe.backward_input_flops(Recompute::NormAndMlaUp()) - moe.backward_input_flops(Recompute::None()), up);
  EXPECT_DOUBLE_EQ(moe.act_saved_by_mla_up_recompute, 128.0 * (192 + 192 + 128) * 2);
  EXPECT_LT(moe.activation_bytes(Recompute::NormAndMlaUp()), moe.activation_bytes({true, false}));
  EXPECT_LT(moe.activation_bytes({true, false}), moe.activation_bytes(Recompute::None()));
  // About 160 KB per token per MoE layer under the report's recomputation and FP8 caching.
  EXPECT_NEAR(moe.activation_bytes(Recompute::NormAndMlaUp()), 164432, 1);
  // The loss keeps its logit gradient (bf16): the head's B is one GEMM and its memory vocab-wide.
  const NodeCost& head = g[1 + 61];
  ASSERT_EQ(head.kind, NodeKind::kHead);
  EXPECT_DOUBLE_EQ(head.backward_input_flops(Recompute::None()), 2.0 * 7168 * 129280);
  EXPECT_GT(head.activation_bytes(Recompute::NormAndMlaUp()), 129280.0 * 2);
}

TEST(CostModel, CommunicationAndMemoryBytes) {
  const ModelConfig m = DeepSeekV3Shape();
  PrecisionPolicy p;
  std::vector<NodeCost> g = BuildCostGraph(m, 4096, p);
  const NodeCost& moe = g[5];
  EXPECT_EQ(moe.routed_copies, 8);
  EXPECT_DOUBLE_EQ(moe.dispatch_bytes, 7168 + 7168 / 128 * 4);  // FP8 + one f32 scale per 128
  EXPECT_DOUBLE_EQ(moe.combine_bytes, 2 * 7168);                // bf16
  EXPECT_EQ(g[1].routed_copies, 0);                             // a dense layer sends nothing
  p.fp8_dispatch = false;
  g = BuildCostGraph(m, 4096, p);
  EXPECT_DOUBLE_EQ(g[5].dispatch_bytes, 2 * 7168);
  EXPECT_DOUBLE_EQ(PipelineMessageBytes(m, 2, 4096), 2.0 * 4096 * 7168 * 2);
  EXPECT_EQ(PrecisionPolicy{}.optimizer_bytes(), 4 + 2 * 2);  // f32 master + bf16 moments
  PrecisionPolicy f32;
  f32.moment_bytes = 4;
  EXPECT_EQ(f32.optimizer_bytes(), 12);
  // bf16 weights + f32 grads in full, f32 master + moments sharded by ZeRO-1.
  const ParameterStateBytes s = ParameterState(1e9, PrecisionPolicy{}, 8);
  EXPECT_DOUBLE_EQ(s.params, 2e9);
  EXPECT_DOUBLE_EQ(s.grads, 4e9);
  EXPECT_DOUBLE_EQ(s.optimizer, 8e9 / 8);
  EXPECT_DOUBLE_EQ(ParameterState(1e9, f32).optimizer, 12e9);
}

}  // namespace
}  // namespace fathom
