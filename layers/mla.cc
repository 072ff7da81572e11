#include "layers/mla.h"

#include <cmath>

#include "framework/ops.h"
#include "layers/phases.h"

namespace fathom {
namespace {

// transformers' DeepseekV3Attention (like DeepSeek's own modeling code) builds q_a_layernorm and
// kv_a_layernorm with DeepseekV3RMSNorm's default eps, not config.rms_norm_eps: the reference wins.
constexpr double kLatentNormEps = 1e-6;

// Every MLA projection may run in FP8 (train.precision fp8); the attention core stays in the compute dtype.
constexpr GemmPrecision kProjection = GemmPrecision::kFp8;

}  // namespace

MlaAttention::MlaAttention(ParamTable& table, const ModelConfig& cfg, const std::string& prefix, int layer)
    : cfg_(cfg),
      heads_(cfg.num_attention_heads),
      nope_(cfg.qk_nope_head_dim),
      rope_dim_(cfg.qk_rope_head_dim),
      qk_dim_(cfg.qk_head_dim()),
      v_dim_(cfg.v_head_dim),
      kv_rank_(cfg.kv_lora_rank),
      scale_(cfg.softmax_scale()),
      kv_a_proj_(table, prefix + ".kv_a_proj_with_mqa", cfg.hidden_size,
                 cfg.kv_lora_rank + cfg.qk_rope_head_dim, layer, ParamGroup::kReplicated, kProjection),
      kv_a_layernorm_(table, prefix + ".kv_a_layernorm", cfg.kv_lora_rank, kLatentNormEps, layer),
      kv_b_proj_(table, prefix + ".kv_b_proj", cfg.kv_lora_rank,
                 cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), layer,
                 ParamGroup::kReplicated, kProjection),
      o_proj_(table, prefix + ".o_proj", cfg.num_attention_heads * cfg.v_head_dim, cfg.hidden_size, layer,
              ParamGroup::kReplicated, kProjection) {
  FATHOM_CHECK(heads_ > 0 && nope_ >= 0 && rope_dim_ > 0 && rope_dim_ % 2 == 0 && v_dim_ > 0 &&
                   kv_rank_ > 0 && cfg.q_lora_rank >= 0,
               "[mla ", prefix, "] invalid dims: heads ", heads_, " qk_nope ", nope_, " qk_rope ", rope_dim_,
               " v ", v_dim_, " kv_lora_rank ", kv_rank_, " q_lora_rank ", cfg.q_lora_rank);
  if (cfg.q_lora_rank > 0) {
    q_a_proj_.emplace(table, prefix + ".q_a_proj", cfg.hidden_size, cfg.q_lora_rank, layer,
                      ParamGroup::kReplicated, kProjection);
    q_a_layernorm_.emplace(table, prefix + ".q_a_layernorm", cfg.q_lora_rank, kLatentNormEps, layer);
    q_b_proj_.emplace(table, prefix + ".q_b_proj", cfg.q_lora_rank, heads_ * qk_dim_, layer,
                      ParamGroup::kReplicated, kProjection);
  } else {
    q_proj_.emplace(table, prefix + ".q_proj", cfg.hidden_size, heads_ * qk_dim_, layer,
                    ParamGroup::kReplicated, kProjection);
  }
}

const RopeTable& MlaAttention::rope(int64_t seq_len) {
  auto it = rope_by_len_.find(seq_len);
  if (it == rope_by_len_.end()) it = rope_by_len_.try_emplace(seq_len, cfg_, seq_len).first;
  return it->second;
}

Tensor MlaAttention::Forward(int mb, const Tensor& x) {
  ScopedPhase phase(phases::kAttention);  // projections, norms, RoPE; the core in its own phase
  FATHOM_CHECK(x.ndim() == 3 && x.dim(2) == cfg_.hidden_size, "[mla] input ", x.shape_str(),
               ", expected (B, T, ", cfg_.hidden_size, ")");
  const int64_t b = x.dim(0), t = x.dim(1), n = b * t;
  const RopeTable& rt = rope(t);

  // In FP8 the query and kv projections read x's rows quantised once.
  Linear& q_in = q_proj_ ? *q_proj_ : *q_a_proj_;
  const std::optional<Fp8Rows> xq = SharedRows(x, q_in, kv_a_proj_);
  const Fp8Rows* xq_ptr = xq ? &*xq : nullptr;
  // Queries: the projection output is not saved by any sub-layer, so RoPE may rotate q_rot in place.
  Tensor q = q_proj_ ? q_proj_->Forward(mb, x, xq_ptr)
                     : q_b_proj_->Forward(mb, q_a_layernorm_->Forward(mb, q_a_proj_->Forward(mb, x, xq_ptr)));
  q = q.Reshape({b, t, heads_, qk_dim_});
  rt.Apply(q, q);

  // Compressed kv: the latent is copied out for the norm before k_rot is rotated in place (one head).
  Tensor ckv = kv_a_proj_.Forward(mb, x, xq_ptr).Reshape({n, kv_rank_ + rope_dim_});
  Tensor kv = Tensor::Empty({n, kv_rank_}, x.dtype(), x.device());
  ops::CopyColumns(kv, 0, ckv, 0, kv_rank_);
  Tensor ckv4 = ckv.Reshape({b, t, 1, kv_rank_ + rope_dim_});
  rt.Apply(ckv4, ckv4);
  Tensor kvb = kv_b_proj_.Forward(mb, kv_a_layernorm_.Forward(mb, kv.Reshape({b, t, kv_rank_})));
  Tensor kvb2 = kvb.Reshape({n * heads_, nope_ + v_dim_});

  Tensor k = Tensor::Empty({b, t, heads_, qk_dim_}, x.dtype(), x.device());
  Tensor v = Tensor::Empty({b, t, heads_, v_dim_}, x.dtype(), x.device());
  ops::CopyColumns(k.Reshape({n * heads_, qk_dim_}), 0, kvb2, 0, nope_);
  ops::BroadcastColumnsToHeads(k.Reshape({n, heads_, qk_dim_}), nope_, ckv, kv_rank_);
  ops::CopyColumns(v.Reshape({n * heads_, v_dim_}), 0, kvb2, nope_, v_dim_);

  Tensor out = Tensor::Empty({b, t, heads_, v_dim_}, x.dtype(), x.device());
  Tensor lse = Tensor::Empty({b, heads_, t}, ops::StatsDType(x.dtype()), x.device());
  {
    ScopedPhase core(phases::kAttentionCore);
    ops::CausalAttentionForward(out, lse, q, k, v, scale_);
  }
  Tensor y = o_proj_.Forward(mb, out.Reshape({b, t, heads_ * v_dim_}));

  Ctx& c = saved_.Put(mb);
  c.q = q;
  c.k = k;
  c.v = v;
  c.out = out;
  c.lse = lse;
  return y;
}

Tensor MlaAttention::BackwardInput(int mb, const Tensor& dy) {
  ScopedPhase phase(phases::kAttention);
  Ctx& c = saved_.Get(mb);
  FATHOM_CHECK(c.q.defined(), "[mla] BackwardInput twice for micro-batch ", mb);
  const int64_t b = c.q.dim(0), t = c.q.dim(1), n = b * t;
  FATHOM_CHECK(dy.shape() == Shape({b, t, cfg_.hidden_size}), "[mla] dy ", dy.shape_str(), ", expected ",
               ShapeString({b, t, cfg_.hidden_size}));
  const RopeTable& rt = rope(t);
  const DType dt = dy.dtype();
  const Device dev = dy.device();

  Tensor dout = o_proj_.BackwardInput(mb, dy).Reshape({b, t, heads_, v_dim_});
  Tensor dq = Tensor::Empty(c.q.shape(), dt, dev);
  Tensor dk = Tensor::Empty(c.k.shape(), dt, dev);
  Tensor dv = Tensor::Empty(c.v.shape(), dt, dev);
  {
    ScopedPhase core(phases::kAttentionCore);
    ops::CausalAttentionBackward(dq, dk, dv, dout, c.q, c.k, c.v, c.out, c.lse, scale_);
  }
  // Nothing of ours is needed for the weight gradients (the sub-layers keep their own inputs).
  c = Ctx{};

  // q path: un-rotate q_rot in place, then back through the projection(s).
  rt.ApplyBackward(dq, dq);
  Tensor dq3 = dq.Reshape({b, t, heads_ * qk_dim_});
  Tensor dx = q_proj_ ? q_proj_->BackwardInput(mb, dq3)
                      : q_a_proj_->BackwardInput(
                            mb, q_a_layernorm_->BackwardInput(mb, q_b_proj_->BackwardInput(mb, dq3)));

  // kv path: [dk_nope, dv] per head into kv_b_proj; the shared k_rot collects every head's gradient.
  Tensor dkvb = Tensor::Empty({n * heads_, nope_ + v_dim_}, dt, dev);
  ops::CopyColumns(dkvb, 0, dk.Reshape({n * heads_, qk_dim_}), 0, nope_);
  ops::CopyColumns(dkvb, nope_, dv.Reshape({n * heads_, v_dim_}), 0, v_dim_);
  Tensor dkv = kv_a_layernorm_.BackwardInput(
      mb, kv_b_proj_.BackwardInput(mb, dkvb.Reshape({b, t, heads_ * (nope_ + v_dim_)})));
  Tensor dckv = Tensor::Empty({n, kv_rank_ + rope_dim_}, dt, dev);
  ops::CopyColumns(dckv, 0, dkv.Reshape({n, kv_rank_}), 0, kv_rank_);
  ops::SumHeadsToColumns(dckv, kv_rank_, dk.Reshape({n, heads_, qk_dim_}), nope_);
  Tensor dckv4 = dckv.Reshape({b, t, 1, kv_rank_ + rope_dim_});
  rt.ApplyBackward(dckv4, dckv4);
  kv_a_proj_.BackwardInputAdd(mb, dckv.Reshape({b, t, kv_rank_ + rope_dim_}), dx);
  return dx;
}

void MlaAttention::BackwardWeight(int mb) {
  ScopedPhase phase(phases::kAttention);
  Ctx& c = saved_.Get(mb);
  FATHOM_CHECK(!c.q.defined(), "[mla] BackwardWeight before BackwardInput for micro-batch ", mb);
  Linear& q_in = q_proj_ ? *q_proj_ : *q_a_proj_;
  const std::optional<Fp8Cols> x_cols = SharedCols(mb, q_in, kv_a_proj_);  // x's columns, quantised once
  const Fp8Cols* x_cols_ptr = x_cols ? &*x_cols : nullptr;
  if (q_proj_) {
    q_proj_->BackwardWeight(mb, x_cols_ptr);
  } else {
    q_a_proj_->BackwardWeight(mb, x_cols_ptr);
    q_a_layernorm_->BackwardWeight(mb);
    q_b_proj_->BackwardWeight(mb);
  }
  kv_a_proj_.BackwardWeight(mb, x_cols_ptr);
  kv_a_layernorm_.BackwardWeight(mb);
  kv_b_proj_.BackwardWeight(mb);
  o_proj_.BackwardWeight(mb);
  saved_.Drop(mb);
}

}  // namespace fathom
