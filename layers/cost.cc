#include "layers/cost.h"

#include "framework/check.h"
#include "framework/fp8_operands.h"
#include "layers/moe.h"

namespace fathom {
namespace {

// Counts and per-token costs of one decoder block (MLA attention + dense MLP or MoE), shared by the
// decoder layers and the MTP modules.
struct BlockCost {
  int64_t params = 0, expert_params = 0, active_params = 0;
  double gemm_flops = 0, gemm_bf16_flops = 0, attn_flops = 0, model_flops = 0, mla_up_flops = 0;
  double attn_gemm_flops = 0, expert_gemm_flops = 0, routed_gemm_flops = 0;
  double act_always = 0, act_norm = 0, act_mla_up = 0;
  int64_t routed_copies = 0;
};

BlockCost DecoderBlockCost(const ModelConfig& m, bool moe, int64_t seq_len, const PrecisionPolicy& p) {
  const double H = static_cast<double>(m.hidden_size);
  const int64_t nh = m.num_attention_heads, qk = m.qk_head_dim(), vd = m.v_head_dim;
  const int64_t ql = m.q_lora_rank, kvl = m.kv_lora_rank, rope = m.qk_rope_head_dim;
  const double a = static_cast<double>(p.activation_bytes), c = p.cache_bytes();
  BlockCost b;

  // --- MLA attention. Weights (in, out) of each projection.
  const int64_t q_a = ql > 0 ? m.hidden_size * ql : 0;
  const int64_t q_b = ql > 0 ? ql * nh * qk : m.hidden_size * nh * qk;  // q_proj when q_lora_rank == 0
  const int64_t kv_a = m.hidden_size * (kvl + rope);
  const int64_t kv_b = kvl * nh * (m.qk_nope_head_dim + vd);
  const int64_t o = nh * vd * m.hidden_size;
  const int64_t attn_weights = q_a + q_b + kv_a + kv_b + o;
  const int64_t norms = 2 * m.hidden_size + (ql > 0 ? ql : 0) + kvl;  // input, post-attention, q_a, kv_a
  b.params += attn_weights + norms;
  b.active_params += attn_weights + norms;
  b.gemm_flops += 2.0 * static_cast<double>(attn_weights);
  b.attn_gemm_flops = 2.0 * static_cast<double>(attn_weights);
  b.mla_up_flops = 2.0 * static_cast<double>((ql > 0 ? q_b : 0) + kv_b);
  // Causal attention: each query sees seq_len/2 keys on average; QK^T over qk dims, PV over v dims.
  b.attn_flops = static_cast<double>(seq_len) * static_cast<double>(nh * (qk + vd));
  // Megatron's MLA term (norm terms "+1" included; qk_head_dim there is our qk_nope, qk_pos_emb ours rope).
  const double q_term = ql > 0 ? static_cast<double>(ql) * (H + static_cast<double>(nh * qk) + 1)
                               : H * static_cast<double>(nh * qk);
  const double kv_term =
      static_cast<double>(kvl) * (H + static_cast<double>(nh * (m.qk_nope_head_dim + vd)) + 1) +
      H * static_cast<double>(rope);
  b.model_flops += 6.0 * (q_term + kv_term + static_cast<double>(o) +
                          0.5 * static_cast<double>(seq_len) * static_cast<double>(nh * (qk + vd)));

  // Saved for the backward. Always: the residual-stream inputs of the two norms (x, h) with their rstd,
  // the latents c_q and [c_kv, k_pe] (inputs of the q_a/kv_a norms and of the rope), the attention output
  // o (input of o_proj, also read by the attention backward) and the log-sum-exp per head.
  b.act_always += 2 * (H * a + 4) + (ql > 0 ? static_cast<double>(ql) * a + 4 : 0) +
                  static_cast<double>(kvl + rope) * a + 4 + static_cast<double>(nh * vd) * a +
                  static_cast<double>(nh) * 4;
  // Norm outputs cached as Linear inputs: input norm (q_a/kv_a), q_a norm (q_b), kv_a norm (kv_b).
  b.act_norm += H * c + (ql > 0 ? static_cast<double>(ql) * c : 0) + static_cast<double>(kvl) * c;
  // Up-projection outputs: q, k (rope applied, per head) and v of every head, read by the attention
  // backward. With q_lora_rank == 0, q comes from q_proj of the norm output and is kept.
  b.act_mla_up += static_cast<double>(nh * (qk + vd)) * a;
  if (ql > 0) {
    b.act_mla_up += static_cast<double>(nh * qk) * a;
  } else {
    b.act_always += static_cast<double>(nh * qk) * a;
  }

  if (!moe) {
    const int64_t mlp = 3 * m.hidden_size * m.intermediate_size;
    b.params += mlp;
    b.active_params += mlp;
    b.gemm_flops += 2.0 * static_cast<double>(mlp);
    b.model_flops += 18.0 * H * static_cast<double>(m.intermediate_size);
    b.act_norm += H * c;                                                 // post-attention norm output
    b.act_always += 2.0 * static_cast<double>(m.intermediate_size) * c;  // SwiGLU input (gate, up)
    return b;
  }
  const int64_t expert = 3 * m.hidden_size * m.moe_intermediate_size;
  const int64_t shared = m.n_shared_experts * expert;
  const int64_t router = m.n_routed_experts * m.hidden_size;
  const int64_t k = m.num_experts_per_tok;
  b.expert_params = m.n_routed_experts * expert;
  b.params += b.expert_params + shared + router + m.n_routed_experts;  // + e_score_correction_bias
  b.active_params += k * expert + shared + router + m.n_routed_experts;
  b.gemm_flops += 2.0 * static_cast<double>(k * expert + shared);
  b.expert_gemm_flops = 2.0 * static_cast<double>(k * expert + shared);
  b.routed_gemm_flops = 2.0 * static_cast<double>(k * expert);
  b.gemm_bf16_flops += 2.0 * static_cast<double>(router);
  b.model_flops += 18.0 * H * static_cast<double>(m.moe_intermediate_size * (k + m.n_shared_experts));
  b.routed_copies = k;
  // Post-attention norm output: bf16 for the router GEMM, and its FP8 cache for the shared experts.
  b.act_norm += H * a + H * c;
  // Router: sigmoid scores (f32) and the top-k ids and weights.
  b.act_always += static_cast<double>(m.n_routed_experts) * 4 + static_cast<double>(k) * 8;
  // Experts: each routed copy's input as received (the dispatch buffer doubles as the wgrad cache) and its
  // SwiGLU input; the shared experts' SwiGLU input.
  const double dispatch_value = p.fp8_dispatch ? 1.0 + 4.0 / 128.0 : 2.0;
  b.act_always +=
      static_cast<double>(k) * H * dispatch_value +
      static_cast<double>(k + m.n_shared_experts) * 2.0 * static_cast<double>(m.moe_intermediate_size) * c;
  return b;
}

void SetBlock(NodeCost& n, const BlockCost& b) {
  n.params += b.params;
  n.expert_params += b.expert_params;
  n.active_params += b.active_params;
  n.gemm_flops += b.gemm_flops;
  n.gemm_bf16_flops += b.gemm_bf16_flops;
  n.attn_flops += b.attn_flops;
  n.model_flops += b.model_flops;
  n.mla_up_flops += b.mla_up_flops;
  n.attn_gemm_flops += b.attn_gemm_flops;
  n.expert_gemm_flops += b.expert_gemm_flops;
  n.routed_gemm_flops += b.routed_gemm_flops;
  n.act_bytes += b.act_always + b.act_norm + b.act_mla_up;
  n.act_saved_by_norm_recompute += b.act_norm;
  n.act_saved_by_mla_up_recompute += b.act_mla_up;
  n.routed_copies = b.routed_copies;
}

// Final norm + output head + cross-entropy: keeps the norm input (and rstd), the head input (the head's
// wgrad reads it) and the logit gradient the loss computed in its forward (bf16).
void AddHead(NodeCost& n, const ModelConfig& m, const PrecisionPolicy& p) {
  const double H = static_cast<double>(m.hidden_size), a = static_cast<double>(p.activation_bytes);
  const double head = 2.0 * H * static_cast<double>(m.vocab_size);
  n.gemm_bf16_flops += head;
  n.head_gemm_flops += head;
  n.model_flops += 3.0 * head;
  n.act_bytes += H * a + 4 + H * a + static_cast<double>(m.vocab_size) * a;
  n.act_saved_by_norm_recompute += H * a;
}

// fathom's layers (layers/activations.h) replace the report's itemisation of `n` when the policy says so.
void SetFathomActivations(NodeCost& n, const ModelConfig& m, const PrecisionPolicy& p) {
  const double a = static_cast<double>(p.activation_bytes), s = static_cast<double>(p.stats_bytes);
  // The MoE keeps its routed rows as they were dispatched: FP8 rows (codes + a scale per 128) under fp8.
  const double H = static_cast<double>(m.hidden_size);
  const double r = p.fp8_dispatch ? static_cast<double>(Fp8RowBytes(m.hidden_size)) / H : a;
  double exchange = 0;
  ActivationBytes bytes;
  switch (n.kind) {
    case NodeKind::kEmbedding:
      bytes = FathomEmbeddingBytes(m, a, s);
      break;
    case NodeKind::kDenseBlock:
    case NodeKind::kMoeBlock:
      bytes = FathomBlockBytes(m, n.moe, a, s, r, &exchange);
      break;
    case NodeKind::kHead:
      bytes = FathomHeadBytes(m, a, s);
      break;
    case NodeKind::kMtp:
      bytes = FathomMtpBytes(m, n.moe, a, s, r, &exchange);
      break;
  }
  n.act_model = ActivationModel::kFathom;
  n.act_bytes = bytes.held_f;
  n.act_after_b_bytes = bytes.held_b;
  n.act_peak_f_bytes = bytes.peak_f;
  n.act_peak_b_bytes = bytes.peak_b;
  n.act_exchange_bytes = exchange;
  if (n.moe) n.act_tiled_padding = TiledExpertPadding(m, a, r, MoE::kTileRows);
  n.act_saved_by_norm_recompute = n.act_saved_by_mla_up_recompute = 0;  // nothing is recomputed
}

}  // namespace

PrecisionPolicy PrecisionPolicy::Report(int64_t moment_bytes) {
  PrecisionPolicy p;
  p.moment_bytes = moment_bytes;
  return p;
}

PrecisionPolicy PrecisionPolicy::Fathom(int64_t compute_bytes, int64_t moment_bytes, bool fp8) {
  FATHOM_CHECK(compute_bytes == 2 || compute_bytes == 4 || compute_bytes == 8, "[cost] compute bytes ",
               compute_bytes);
  PrecisionPolicy p;
  p.param_bytes = compute_bytes == 2 ? 2 : 0;  // bf16 copies for the GEMMs; f32/f64 GEMMs read the values
  p.master_bytes = compute_bytes == 8 ? 8 : 4;
  p.grad_bytes = p.master_bytes;
  p.master_sharded = false;
  p.moment_bytes = moment_bytes;
  p.fp8_gemm = p.fp8_dispatch = fp8;
  p.fp8_cache = false;
  p.activation_bytes = compute_bytes;
  p.stats_bytes = compute_bytes == 2 ? 4 : compute_bytes;
  p.activations = ActivationModel::kFathom;
  return p;
}

std::string PrecisionPolicy::Describe() const {
  const std::string moments = moment_bytes == 2 ? "bf16 moments" : "f32 moments";
  if (activations == ActivationModel::kFathom) {
    const std::string compute = activation_bytes == 2 ? "bf16" : activation_bytes == 4 ? "f32" : "f64";
    return "fathom (" + compute + " compute" + (fp8_gemm ? ", FP8 GEMMs and dispatch" : "") + ", " +
           (master_sharded ? "sharded" : "unsharded") + " f32 master weights, " + moments +
           ", its layers' activations, nothing recomputed)";
  }
  return std::string("report (") + (fp8_gemm ? "FP8 GEMMs" : "bf16 GEMMs") + ", bf16 weights, f32 master " +
         "weights and gradients, " + moments + ", its activation policy)";
}

double NodeCost::backward_input_flops(const Recompute& recompute) const {
  return gemm_flops + gemm_bf16_flops + kAttentionBackwardFactor * attn_flops +
         (recompute.mla_up ? mla_up_flops : 0.0);
}

double NodeCost::activation_bytes(const Recompute& recompute) const {
  return act_bytes - (recompute.norm ? act_saved_by_norm_recompute : 0.0) -
         (recompute.mla_up ? act_saved_by_mla_up_recompute : 0.0);
}

ActivationBytes NodeCost::activations(const Recompute& recompute, bool exchange) const {
  if (act_model == ActivationModel::kFathom) {
    const double x = exchange ? act_exchange_bytes : 0;  // the received rows live from F to W
    return {act_bytes + x, act_after_b_bytes + x, act_peak_f_bytes + x, act_peak_b_bytes + x};
  }
  // The report's framework: what the forward keeps lives until W; while a pass runs, what recomputation
  // dropped is rebuilt and its gradients exist (one node's un-recomputed bytes on top).
  const double held = activation_bytes(recompute), working = activation_bytes(Recompute::None());
  return {held, held, held + working, held + working};
}

std::vector<NodeCost> BuildCostGraph(const ModelConfig& m, int64_t seq_len, const PrecisionPolicy& p) {
  FATHOM_CHECK(seq_len > 0, "[cost] seq_len ", seq_len);
  const int64_t H = m.hidden_size;
  const double dispatch = static_cast<double>(H) * (p.fp8_dispatch ? 1.0 + 4.0 / 128.0 : 2.0);
  const double combine = 2.0 * static_cast<double>(H);
  std::vector<NodeCost> graph;
  for (const ModelNode& node : DescribeModelGraph(m)) {
    NodeCost n;
    static_cast<ModelNode&>(n) = node;
    switch (node.kind) {
      case NodeKind::kEmbedding:
        n.params = n.active_params = m.vocab_size * H;
        n.act_bytes = 4;  // the token id; the backward scatter-adds into the table (W)
        break;
      case NodeKind::kDenseBlock:
      case NodeKind::kMoeBlock:
        SetBlock(n, DecoderBlockCost(m, node.moe, seq_len, p));
        break;
      case NodeKind::kHead:
        n.params = n.active_params = H + m.vocab_size * H;  // final norm + lm_head
        AddHead(n, m, p);
        break;
      case NodeKind::kMtp: {
        // MTP module k: enorm(embedding of token t+k+1), hnorm(previous depth's hidden) -> concat -> eh_proj
        // (2H -> H) -> one decoder block -> shared_head.norm -> the shared head. Embedding and head weights
        // are the main model's.
        const int64_t proj = 2 * H * H;
        n.params = n.active_params = 3 * H + proj;  // enorm, hnorm, shared_head.norm, eh_proj
        n.gemm_bf16_flops = 2.0 * static_cast<double>(proj);
        n.model_flops = 6.0 * (3.0 * static_cast<double>(H) + 2.0 * static_cast<double>(H * H));
        const double a = static_cast<double>(p.activation_bytes);
        n.act_bytes = 2.0 * static_cast<double>(H) * a + 8 + 2.0 * static_cast<double>(H) * a;
        n.act_saved_by_norm_recompute = 2.0 * static_cast<double>(H) * a;  // concat of the two norm outputs
        SetBlock(n, DecoderBlockCost(m, node.moe, seq_len, p));
        AddHead(n, m, p);  // costs only: the head's weight is the main model's
        break;
      }
    }
    if (p.activations == ActivationModel::kFathom) SetFathomActivations(n, m, p);
    if (node.moe) {
      n.dispatch_bytes = dispatch;
      n.combine_bytes = combine;
    }
    graph.push_back(std::move(n));
  }
  return graph;
}

GraphTotals SumGraph(const std::vector<NodeCost>& graph) {
  GraphTotals t;
  for (const NodeCost& n : graph) {
    if (n.kind == NodeKind::kMtp) {
      t.mtp_params += n.params;
    } else {
      t.params += n.params;
      t.active_params += n.active_params;
    }
    t.model_flops += n.model_flops;
  }
  return t;
}

ParameterStateBytes ParameterState(double params, const PrecisionPolicy& p, double zero_shards) {
  FATHOM_CHECK(zero_shards >= 1, "[cost] zero_shards ", zero_shards);
  return {params * static_cast<double>(p.replicated_param_bytes()),
          params * static_cast<double>(p.grad_bytes),
          params * static_cast<double>(p.optimizer_bytes()) / zero_shards};
}

double OptimizerStepBytes(const PrecisionPolicy& p, double shard, double local) {
  const double update = static_cast<double>(p.grad_bytes + 2 * p.master_bytes + 4 * p.moment_bytes);
  if (p.master_sharded) return shard * (update + static_cast<double>(p.param_bytes));
  return shard * update +
         (p.param_bytes > 0 ? local * static_cast<double>(p.master_bytes + p.param_bytes) : 0.0);
}

int64_t GatheredBytesPerParameter(const PrecisionPolicy& p) {
  return p.master_sharded ? p.param_bytes : p.master_bytes;
}

double PipelineMessageBytes(const ModelConfig& model, int64_t micro_batch_size, int64_t seq_len) {
  return static_cast<double>(micro_batch_size) * static_cast<double>(seq_len) *
         static_cast<double>(model.hidden_size) * 2.0;
}

}  // namespace fathom
