// Per-node cost model of the DeepSeek-V3 graph: FLOPs, parameters, memory and communication volume of each
// node (embedding, dense decoder block, MoE decoder block, final norm + head + loss, each MTP module), per
// token, computed from a ModelConfig. The planner and the simulator (parallel/) turn these into times and
// bytes per GPU; this file knows nothing about ranks or schedules.
//
// FLOP conventions (2 FLOPs per multiply-add):
//   - model_flops: training FLOPs per token as Megatron-LM's num_floating_point_operations counts them,
//     i.e. 3 x forward (forward, dgrad, wgrad) for every GEMM Megatron counts (6 x weights touched per
//     token) plus causal attention at half the square (seq/2 keys per query), plus Megatron's MLA norm terms;
//     it leaves out the router GEMM. This is the number MFU is quoted against.
//   - forward / backward FLOPs used for timing: a GEMM's dgrad and wgrad each cost its forward
//     (dgrad ~ wgrad ~ forward); the attention core's backward costs kAttentionBackwardFactor = 2.5 x its
//     forward (FlashAttention recomputes QK^T and runs four more matmuls: 5 against the forward's 2) and is
//     all input gradient (no weights); recomputation adds its forward GEMMs to the backward-for-input (B).
//
// Activation bytes per token are what the forward keeps for the backward, itemised in cost.cc. Always
// recomputed (never stored): the SwiGLU outputs (the report caches the SwiGLU inputs and recomputes the
// output). The loss computes the logit gradient (softmax - one-hot) inside its forward, keeps it in bf16
// (vocab x 2 bytes per token) and drops the logits, so the head's backward is two plain GEMMs. Routing
// weights are applied inside the expert's SwiGLU, so the combine keeps no expert outputs. Optional
// (Recompute): every RMSNorm output (then the Linear inputs that are norm outputs are not cached) and the MLA
// up-projections (q and k/v of every head rebuilt from the latents before the attention backward).
#ifndef FATHOM_LAYERS_COST_H_
#define FATHOM_LAYERS_COST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "framework/config.h"

namespace fathom {

inline constexpr double kAttentionBackwardFactor = 2.5;

// Byte widths of the copies a training step keeps per parameter and of cached activations.
struct PrecisionPolicy {
  int64_t param_bytes = 2;       // working weights the GEMMs read (bf16)
  int64_t grad_bytes = 4;        // gradient accumulators (f32)
  int64_t master_bytes = 4;      // master weights (f32); ZeRO-1 shards them over data parallelism
  int64_t moment_bytes = 2;      // each of AdamW's two moments: 2 (bf16, the report) or 4 (f32); sharded too
  bool fp8_gemm = true;          // Linear GEMMs of attention, MLPs and experts in FP8 (head, router: bf16)
  bool fp8_cache = true;         // Linear inputs cached for the wgrad in FP8 + f32 scale per 128 (else bf16)
  bool fp8_dispatch = true;      // MoE dispatch in FP8 + f32 scale per 128 (else bf16); combine is bf16
  int64_t activation_bytes = 2;  // other saved activations (bf16)

  int64_t optimizer_bytes() const { return master_bytes + 2 * moment_bytes; }
  // Bytes per value of a cached Linear input: 1 + 4/128 in FP8, else activation_bytes.
  double cache_bytes() const { return fp8_cache ? 1.0 + 4.0 / 128.0 : static_cast<double>(activation_bytes); }
};

// What the backward rebuilds instead of keeping (the report recomputes both).
struct Recompute {
  bool norm = false;    // every RMSNorm output
  bool mla_up = false;  // MLA up-projections (q_b_proj, kv_b_proj outputs)
  static Recompute None() { return {false, false}; }
  static Recompute NormAndMlaUp() { return {true, true}; }
};

enum class CostNodeKind { kEmbedding, kDenseBlock, kMoeBlock, kHead, kMtp };
const char* CostNodeKindName(CostNodeKind kind);  // "embedding", "dense", "moe", "head", "mtp"

struct NodeCost {
  CostNodeKind kind = CostNodeKind::kEmbedding;
  int64_t index = 0;  // decoder layer (blocks), MTP depth (kMtp), 0 otherwise
  std::string name;   // "embed", "layers.3", "head", "mtp.0"

  // Parameters (counts). An MTP module counts only its own: it shares the embedding and head.
  int64_t params = 0;         // all of the node's parameters
  int64_t expert_params = 0;  // routed experts' part of `params` (sharded over expert parallelism)
  int64_t active_params = 0;  // touched per token (routed experts: top-k of them)

  // Forward FLOPs per token, by kernel class.
  double gemm_flops = 0;       // Linear GEMMs that run in FP8 under PrecisionPolicy::fp8_gemm
  double gemm_bf16_flops = 0;  // GEMMs kept in bf16: router, output head, MTP projection
  double attn_flops = 0;       // attention core, causal
  double model_flops = 0;      // training FLOPs per token, Megatron convention (see above)
  double mla_up_flops = 0;     // forward FLOPs of the MLA up-projections (recomputed under Recompute::mla_up)
  // Parts of the forward FLOPs by the phase `fathom bench` times them in (framework/phase_timer.h):
  double attn_gemm_flops = 0;    // the MLA projections (q_a/q_b or q, kv_a, kv_b, o): in gemm_flops
  double expert_gemm_flops = 0;  // routed (top-k) and shared experts: in gemm_flops
  double head_gemm_flops = 0;    // the output head (main or an MTP depth's): in gemm_bf16_flops

  // Activation bytes kept per token: with nothing recomputed, and saved by each recomputation.
  double act_bytes = 0;
  double act_saved_by_norm_recompute = 0;
  double act_saved_by_mla_up_recompute = 0;

  // Expert-parallel all-to-all, per token and per routed copy (top-k copies per token): the forward sends
  // one dispatch and one combine, the backward the mirror (gradients into the experts in the dispatch
  // format, gradients out of them in bf16).
  int64_t routed_copies = 0;  // top-k (0 for nodes without routed experts)
  double dispatch_bytes = 0;  // hidden in FP8 + one f32 scale per 128 values (or bf16)
  double combine_bytes = 0;   // hidden in bf16

  double forward_flops() const { return gemm_flops + gemm_bf16_flops + attn_flops; }
  // Backward for inputs (dgrad) including what `recompute` rebuilds first.
  double backward_input_flops(const Recompute& recompute) const;
  double backward_weight_flops() const { return gemm_flops + gemm_bf16_flops; }
  double activation_bytes(const Recompute& recompute) const;
};

// The graph's nodes in execution order: embedding, decoder blocks 0..L-1, head, MTP modules 0..D-1.
// Per-token quantities use `seq_len` for the attention (each query sees seq_len/2 keys on average).
std::vector<NodeCost> BuildCostGraph(const ModelConfig& model, int64_t seq_len,
                                     const PrecisionPolicy& precision = {});

struct GraphTotals {
  int64_t params = 0;         // without MTP modules (the "671B" convention of the report)
  int64_t active_params = 0;  // without MTP modules (the "37B")
  int64_t mtp_params = 0;     // the MTP modules' own parameters
  double model_flops = 0;     // per token, Megatron convention, MTP included
};
GraphTotals SumGraph(const std::vector<NodeCost>& graph);

// What a GPU keeps for `params` parameters: the working copy and the gradients in full, the optimizer state
// (master weights and two moments) sharded `zero_shards` ways by ZeRO-1.
struct ParameterStateBytes {
  double params = 0, grads = 0, optimizer = 0;
  double total() const { return params + grads + optimizer; }
};
ParameterStateBytes ParameterState(double params, const PrecisionPolicy& precision, double zero_shards = 1);

// Bytes of one pipeline message (activation or its gradient) for a micro-batch: B*T*H*2 (bf16).
double PipelineMessageBytes(const ModelConfig& model, int64_t micro_batch_size, int64_t seq_len);

}  // namespace fathom

#endif  // FATHOM_LAYERS_COST_H_
