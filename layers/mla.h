// Multi-head latent attention (MLA), HF DeepseekV3Attention semantics, hand-written forward and backward.
//
// Parameters (HF names under `prefix`, Linear layout (out, in), no biases), with n = num_attention_heads,
// Dk = qk_nope_head_dim + qk_rope_head_dim, Dv = v_head_dim, d = qk_rope_head_dim:
//   q_lora_rank > 0:  q_a_proj (q_lora_rank, H), q_a_layernorm (q_lora_rank), q_b_proj (n*Dk, q_lora_rank)
//   (q_a_layernorm and kv_a_layernorm use eps 1e-6 whatever rms_norm_eps is, as transformers does)
//   q_lora_rank == 0: q_proj (n*Dk, H)
//   kv_a_proj_with_mqa (kv_lora_rank + d, H), kv_a_layernorm (kv_lora_rank),
//   kv_b_proj (n*(qk_nope + Dv), kv_lora_rank), o_proj (H, n*Dv)
// Forward for x (B, T, H):
//   q = q_path(x) -> (B, T, n, Dk) = [q_nope, q_rot];  ckv = kv_a_proj_with_mqa(x) = [kv, k_rot];
//   [k_nope, v] = kv_b_proj(kv_a_layernorm(kv)) -> (B, T, n, qk_nope + Dv);
//   q = [q_nope, rope(q_rot)], k = [k_nope, rope(k_rot) broadcast over heads] (positions 0 .. T-1);
//   o = causal_softmax(q k^T * cfg.softmax_scale()) v -> (B, T, n*Dv);  y = o_proj(o).
// Follows the layer contract of layers/layer.h (saved state keyed by micro-batch). Not thread safe.
#ifndef FATHOM_LAYERS_MLA_H_
#define FATHOM_LAYERS_MLA_H_

#include <map>
#include <optional>
#include <string>

#include "framework/config.h"
#include "framework/param_table.h"
#include "layers/layer.h"
#include "layers/linear.h"
#include "layers/rmsnorm.h"
#include "layers/rope.h"

namespace fathom {

class MlaAttention {
 public:
  // Registers every parameter under `prefix` (e.g. "model.layers.3.self_attn") with spec layer `layer`.
  MlaAttention(ParamTable& table, const ModelConfig& cfg, const std::string& prefix, int layer);
  MlaAttention(const MlaAttention&) = delete;
  MlaAttention& operator=(const MlaAttention&) = delete;

  // x (B, T, H) -> y (B, T, H). Saves q, k, v, the attention output and its log-sum-exp for `mb`.
  Tensor Forward(int mb, const Tensor& x);
  // dy (B, T, H) -> dx (B, T, H), the sum of the q-path and kv-path contributions.
  Tensor BackwardInput(int mb, const Tensor& dy);
  // Accumulates (+=) every parameter's gradient and drops `mb`'s saved state.
  void BackwardWeight(int mb);

  double softmax_scale() const { return scale_; }
  // The table for sequence length T, built on first use and kept.
  const RopeTable& rope(int64_t seq_len);

 private:
  struct Ctx {
    Tensor q, k;      // (B, T, n, Dk) after RoPE
    Tensor v;         // (B, T, n, Dv)
    Tensor out, lse;  // (B, T, n, Dv), (B, n, T): attention output and per-row log-sum-exp
  };

  ModelConfig cfg_;
  int64_t heads_, nope_, rope_dim_, qk_dim_, v_dim_, kv_rank_;
  double scale_;
  std::optional<Linear> q_proj_;    // q_lora_rank == 0
  std::optional<Linear> q_a_proj_;  // q_lora_rank > 0
  std::optional<RmsNorm> q_a_layernorm_;
  std::optional<Linear> q_b_proj_;
  Linear kv_a_proj_;
  RmsNorm kv_a_layernorm_;
  Linear kv_b_proj_;
  Linear o_proj_;
  std::map<int64_t, RopeTable> rope_by_len_;
  SavedByMicroBatch<Ctx> saved_;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_MLA_H_
