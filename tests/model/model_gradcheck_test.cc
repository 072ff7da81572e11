// Whole-model gradient check in f64: embedding, dense and MoE blocks, head, MTP (depth 2) and the balance
// loss, against central differences of the total loss. Tolerance 1e-6 relative (DESIGN: f64 is truth).
#include <algorithm>
#include <random>

#include "gtest/gtest.h"
#include "layers/model.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

ModelConfig TinyConfig() {
  ModelConfig c;
  c.vocab_size = 19;
  c.hidden_size = 12;
  c.intermediate_size = 16;
  c.moe_intermediate_size = 6;
  c.num_hidden_layers = 2;
  c.first_k_dense_replace = 1;
  c.num_attention_heads = 2;
  c.q_lora_rank = 6;
  c.kv_lora_rank = 6;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 3;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  c.num_nextn_predict_layers = 2;
  c.rope_scaling.type = "yarn";
  c.rope_scaling.factor = 4;
  c.rope_scaling.original_max_position_embeddings = 4;
  c.rope_scaling.mscale = 0.8;
  c.rope_scaling.mscale_all_dim = 1.0;
  return c;
}

// The shared random batch, plus an ignored label inside the sequence.
MicroBatch RandomBatch(std::mt19937_64& rng, int64_t b, int64_t t, int64_t vocab) {
  MicroBatch mb = testing::RandomBatch(rng, b, t, vocab);
  mb.labels.data<int32_t>()[1] = -100;  // an ignored label inside the sequence
  return mb;
}

// Norm weights around 1, matrices large enough that every nonlinearity matters, a small non-zero bias.
void RandomizeParameters(ParamTable& p, std::mt19937_64& rng) {
  for (int id = 0; id < p.size(); ++id) {
    const ParamSpec& s = p.spec(id);
    Tensor v = p.value(id);
    testing::FillRandom(v, rng, s.init == ParamInit::kOnes ? 0.1 : (s.trainable ? 0.4 : 0.05));
    if (s.init == ParamInit::kOnes)
      for (int64_t i = 0; i < v.numel(); ++i) v.data<double>()[i] += 1.0;
  }
}

TEST(ModelGradCheck, WholeModelWithMtpAndBalanceLoss) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ModelConfig cfg = TinyConfig();
  LossConfig loss;
  loss.mtp_lambda = 0.4;
  loss.balance_alpha = 0.3;
  Model model(cfg, loss);
  model.Finalize(DType::kF64, seed);
  ParamTable& p = model.params();
  for (MoE* moe : model.moe_layers()) moe->set_track_selection_margin(true);
  std::vector<MicroBatch> batches;
  LossNormalizers norm;
  // Redraw until every routing decision has a margin far above what the 2h perturbations can move
  // (|delta score| <~ 2h * |x| * max sigmoid' ~ 1e-4), so no selection flips inside the stencil.
  for (int attempt = 0;; ++attempt) {
    ASSERT_LT(attempt, 50) << "no draw with routing margins > 2e-3";
    RandomizeParameters(p, rng);
    batches = {RandomBatch(rng, 2, 6, cfg.vocab_size), RandomBatch(rng, 2, 6, cfg.vocab_size)};
    norm = model.Normalizers(batches, 2);
    double margin = 1e9;
    for (int mb = 0; mb < 2; ++mb) {
      for (const MoeStats& m : model.Forward(1000 + attempt * 2 + mb, batches[mb], norm).moe) {
        margin = std::min(margin, m.min_selection_margin);
      }
    }
    if (margin > 2e-3) break;
  }
  int next_mb = 100000;
  auto total_loss = [&]() {
    double l = 0;
    for (const MicroBatch& b : batches) {
      const HostMicroBatchStats s = ToHost(model.Forward(next_mb++, b, norm));
      l += s.main_ce / norm.main_tokens + norm.balance_weight * s.balance_sum();
      for (size_t k = 0; k < s.mtp_ce.size(); ++k)
        l += loss.mtp_lambda / s.mtp_ce.size() * s.mtp_ce[k] / norm.mtp_tokens[k];
    }
    return l;
  };
  auto grads = [&]() {
    p.ZeroGrads();
    for (int mb = 0; mb < 2; ++mb) model.Forward(mb, batches[mb], norm);
    for (int mb = 0; mb < 2; ++mb) {
      model.BackwardInput(mb);
      model.BackwardWeight(mb);
    }
  };
  std::vector<testing::GradTarget> targets;
  for (int id = 0; id < p.size(); ++id)
    if (p.spec(id).trainable) targets.push_back({p.spec(id).name, p.value(id), p.grad(id)});
  ASSERT_GT(targets.size(), 40u);
  for (const auto& r : testing::GradCheck(targets, total_loss, grads, rng, 12, 1e-4, /*five_point=*/true)) {
    EXPECT_LE(r.rel_error, 1e-6) << r.name;
    EXPECT_GT(r.numeric_norm, 0) << r.name;
  }
}

}  // namespace
}  // namespace fathom
