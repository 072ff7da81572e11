#include "layers/activations.h"

#include <algorithm>

#include "framework/kernels/cpu/moe.h"

namespace fathom {
namespace {

constexpr double kI32 = 4, kI64 = 8;

// Input norm, MLA, the residual add and the post-attention norm of a decoder block (layers/decoder_block.cc
// and layers/mla.cc). B also produces the output gradients that the attention's Linears and norms keep.
ActivationBytes AttentionPart(const ModelConfig& m, double a, double s) {
  const double H = static_cast<double>(m.hidden_size), nh = static_cast<double>(m.num_attention_heads);
  const double qk = static_cast<double>(m.qk_head_dim()), vd = static_cast<double>(m.v_head_dim);
  const double nope = static_cast<double>(m.qk_nope_head_dim), rope = static_cast<double>(m.qk_rope_head_dim);
  const double ql = static_cast<double>(m.q_lora_rank), kvl = static_cast<double>(m.kv_lora_rank);
  const double q = nh * qk * a, k = nh * qk * a, v = nh * vd * a, out = nh * vd * a, lse = nh * s;
  // Kept by the forward: the block input x and rstd (input norm), its output (q_a/q_proj and kv_a input),
  // with a q LoRA the q_a output and rstd (q_a norm) and its output (q_b input), q after RoPE, the kv latent
  // and rstd (kv_a norm) and its output (kv_b input), k, v, the attention output (also o_proj's input) and
  // lse, then h = x + attention (post norm input) with rstd, and the post norm's output (the MLP's input).
  const double lora = ql > 0 ? 2 * ql * a + s : 0;
  const double tail = H * a + s + H * a;  // h, rstd, post-norm output
  ActivationBytes p;
  p.held_f = H * a + s + H * a + lora + q + kvl * a + s + kvl * a + k + v + out + lse + tail;
  // Forward temporaries: the kv_a output (latent + k_rot) and kv_b's output live until MLA returns, o_proj's
  // output until the residual add.
  const double kv_a_out = (kvl + rope) * a, kv_b_out = nh * (nope + vd) * a;
  p.peak_f = std::max(p.held_f, p.held_f - tail + kv_a_out + kv_b_out + H * a);
  // Output gradients kept for W: o_proj's (dh), q_b's or q_proj's (dq), with a q LoRA the q_a norm's and
  // q_a's, kv_b's, the kv_a norm's and kv_a's, the input norm's (the attention's dx) and the post norm's (the
  // MLP's dx). B drops q, k, v and lse (MlaAttention resets its Ctx); `out` stays as o_proj's input.
  const double dys = H * a + q + (ql > 0 ? 2 * ql * a : 0) + kv_b_out + kvl * a + kv_a_out + H * a + H * a;
  p.held_b = p.held_f - (q + k + v + lse) + dys;
  // B peaks: the post norm's backward (its dy kept, its dx, then dh); the attention core's backward with
  // dout, dq, dk, dv beside q, k, v, out, lse; the end of MLA's backward (dout, dk, dv still local, the
  // kv latent's gradient and the two branches' dx); the block's last add.
  const double post = p.held_f + 3 * H * a;
  const double core = p.held_f + 2 * H * a + out + q + k + v;
  const double end = p.held_b - H * a + out + k + v + kvl * a + 2 * H * a;
  p.peak_b = std::max({post, core, end, p.held_b + 2 * H * a});
  return p;
}

// The dense SwiGLU MLP (layers/mlp.cc): gate and up (SwiGLU inputs) and the hidden (down_proj's input).
ActivationBytes DenseMlpPart(const ModelConfig& m, double a) {
  const double H = static_cast<double>(m.hidden_size), I = static_cast<double>(m.intermediate_size);
  ActivationBytes p;
  p.held_f = 3 * I * a;
  p.peak_f = p.held_f + 2 * H * a;  // the MLP output and the block output of the residual add
  // down_proj keeps the block's output gradient, gate_proj and up_proj their output gradients.
  p.held_b = p.held_f + H * a + 2 * I * a;
  p.peak_b = p.held_b + I * a + 2 * H * a;  // the hidden's gradient and the two branches' dx
  return p;
}

// The MoE (layers/moe.cc, layers/router.cc, the shared experts' DenseMlp).
ActivationBytes MoePart(const ModelConfig& m, double a, double s, double r) {
  const double H = static_cast<double>(m.hidden_size), I = static_cast<double>(m.moe_intermediate_size);
  const double E = static_cast<double>(m.n_routed_experts), K = static_cast<double>(m.num_experts_per_tok);
  const double shared_i = I * static_cast<double>(m.n_shared_experts);
  const bool shared = m.n_shared_experts > 0;
  ActivationBytes p;
  // Router: the scores, the chosen experts and their weights (its input is the post norm's output, counted
  // with the attention part). Experts: the permuted token copies (at r bytes per value: FP8 rows under
  // train.precision fp8) and their row slots, the gate, up and hidden of every copy, the expert outputs; the
  // shared experts' gate, up and hidden.
  p.held_f = E * s + K * kI64 + K * s + K * H * r + K * kI64 + 3 * K * I * a +
             K * H * a + (shared ? 3 * shared_i * a : 0);
  p.peak_f = p.held_f + 2 * H * a + K * kI64;  // combined output, shared output, the permutation's scratch
  // After B: the rows' output gradients (r bytes per value, as the rows), gate and up gradients, the router's
  // logit gradient, and with shared experts their down_proj's input gradient (the block's output gradient)
  // and gate/up gradients.
  p.held_b = p.held_f + K * H * r + 2 * K * I * a + E * s + (shared ? H * a + 2 * shared_i * a : 0);
  // B peaks: the combine's weight gradient and the rows' input gradient, with either the experts' hidden
  // gradient or the router's score gradients and its input-gradient copies; then the MoE's dx.
  p.peak_b = p.held_b + K * s + K * H * a + std::max(K * I * a, E * s + H * s + H * a) + H * a;
  return p;
}

}  // namespace

ActivationBytes Sequence(const std::vector<ActivationBytes>& parts) { return Sequence(parts, parts.size()); }

ActivationBytes Sequence(const std::vector<ActivationBytes>& parts, size_t w_group) {
  ActivationBytes out;
  for (const ActivationBytes& p : parts) out.held_b += p.held_b;
  double before_f = 0, after_b = out.held_b, group_after_b = 0;
  for (size_t i = w_group; i < parts.size(); ++i) group_after_b += parts[i].held_b;
  for (size_t i = 0; i < parts.size(); ++i) {
    const ActivationBytes& p = parts[i];
    after_b -= p.held_b;
    if (i >= w_group) group_after_b -= p.held_b;
    out.peak_f = std::max(out.peak_f, before_f + p.peak_f);
    out.peak_b = std::max(out.peak_b, before_f + p.peak_b + after_b);
    out.peak_bw = std::max(out.peak_bw, before_f + p.peak_b + (i >= w_group ? group_after_b : 0.0));
    before_f += p.held_f;
  }
  out.held_f = before_f;
  return out;
}

ActivationBytes FathomEmbeddingBytes(const ModelConfig& m, double a, double) {
  const double H = static_cast<double>(m.hidden_size);
  // The token ids on the device; the output is the first block's input. B keeps the output gradient.
  return {kI32, kI32 + H * a, kI32 + H * a, kI32 + H * a};
}

ActivationBytes FathomBlockBytes(const ModelConfig& m, bool moe, double a, double s, double r,
                                 double* exchange_bytes) {
  // With an exchange the MoE's local experts work on the received rows, a second copy of its permuted rows.
  *exchange_bytes = moe ? static_cast<double>(m.num_experts_per_tok * m.hidden_size) * r : 0;
  return Sequence({AttentionPart(m, a, s), moe ? MoePart(m, a, s, r) : DenseMlpPart(m, a)});
}

ActivationBytes FathomHeadBytes(const ModelConfig& m, double a, double s) {
  const double H = static_cast<double>(m.hidden_size), V = static_cast<double>(m.vocab_size);
  ActivationBytes p;
  // Its input and rstd, the norm output (lm_head's input), the logits, their log-sum-exp and the labels.
  p.held_f = H * a + s + H * a + V * a + s + kI32;
  p.peak_f = p.held_f + 4;  // the cross-entropy's per-row losses (f32)
  // B computes the logit gradient beside the logits, then drops the logits; lm_head keeps the logit
  // gradient and the norm its output gradient.
  p.peak_b = p.held_f + V * a + H * a;
  p.held_b = p.held_f + H * a;
  return p;
}

ActivationBytes FathomMtpBytes(const ModelConfig& m, bool moe, double a, double s, double r,
                               double* exchange_bytes) {
  const double H = static_cast<double>(m.hidden_size);
  ActivationBytes own;
  // The shifted ids and labels, the embedding of the shifted ids (enorm's input), the two norms' rstd, the
  // concatenation (eh_proj's input); its input h is the main head's and counted there.
  own.held_f = 2 * kI32 + H * a + 2 * s + 2 * H * a;
  own.peak_f = own.held_f + 2 * H * a;  // the two norm outputs beside their concatenation
  // eh_proj's, enorm's, the embedding's and hnorm's output gradients.
  own.held_b = own.held_f + 4 * H * a;
  own.peak_b = own.held_b + 2 * H * a + H * a;  // the concatenation's gradient, hnorm's dx
  return Sequence({own, FathomBlockBytes(m, moe, a, s, r, exchange_bytes), FathomHeadBytes(m, a, s)});
}

ActivationBytes TiledExpertPadding(const ModelConfig& m, double a, double r, int64_t tile_rows) {
  const double h = static_cast<double>(m.hidden_size), i = static_cast<double>(m.moe_intermediate_size);
  const double rows = static_cast<double>(m.n_routed_experts) * static_cast<double>(tile_rows - 1) / 2.0;
  const double forward = rows * (h * r + h * a + kI64 + 3 * i * a);
  const double backward = forward + rows * (h * r + 2 * i * a);
  return {forward, backward, forward, backward};
}

double DeviceLayoutPaddingFactor(const ModelConfig& m, int64_t tokens_per_micro_batch, int64_t tile_rows) {
  const int64_t routed = tokens_per_micro_batch * m.num_experts_per_tok;
  const double expected = static_cast<double>(m.n_routed_experts) * static_cast<double>(tile_rows - 1) / 2.0;
  return static_cast<double>(cpu::MaxPaddedRows(routed, m.n_routed_experts, tile_rows) - routed) / expected;
}

}  // namespace fathom
