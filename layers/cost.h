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
// Activation bytes per token, itemised in cost.cc, follow one of two models (PrecisionPolicy::activations):
//
//   kReport  the DeepSeek-V3 report's framework, which the planner assumes for the 671B model: what the
//            forward keeps for the backward. Always recomputed (never stored): the SwiGLU outputs (the report
//            caches the SwiGLU inputs and recomputes the output). The loss computes the logit gradient
//            (softmax - one-hot) inside its forward, keeps it in bf16 (vocab x 2 bytes per token) and drops
//            the logits, so the head's backward is two plain GEMMs. Routing weights are applied inside the
//            expert's SwiGLU, so the combine keeps no expert outputs. Optional (Recompute): every RMSNorm
//            output (then the Linear inputs that are norm outputs are not cached) and the MLA
//            up-projections (q and k/v of every head rebuilt from the latents before the attention
//            backward). The backward's working set is one node's un-recomputed activations.
//   kFathom  what fathom's layers keep today (the Ctx structs of layers/*.cc), in the compute dtype (bf16 on
//            GPU; statistics and router scores in the statistics dtype, f32): every Linear's input,
//            q/k/v/out and the log-sum-exp, the SwiGLU inputs AND outputs, the MoE's permuted token copies
//            and expert outputs, the logits; after a node's B pass each Linear, RMSNorm and expert keeps its
//            output gradient until the node's W, and q/k/v/lse are dropped. When W is split from B (ZB
//            schedules' B and W), a stage's peak with one micro-batch is at the end of its B; a BW pass
//            runs each node's W after its B and holds far less (layers/activations.h, peak_bw).
//            Peaks inside a pass (the attention backward's dq/dk/dv/dout, the logit gradient beside the
//            logits, the MLA forward's latents) are itemised too. Nothing is recomputed. With expert
//            parallelism the received token rows are a second copy (act_exchange_bytes).
// A node counts its input (the previous node's output); a stage's last output is sent and not counted.
#ifndef FATHOM_LAYERS_COST_H_
#define FATHOM_LAYERS_COST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "framework/config.h"
#include "layers/activations.h"
#include "layers/graph.h"

namespace fathom {

inline constexpr double kAttentionBackwardFactor = 2.5;

enum class ActivationModel { kReport, kFathom };  // see above

// Byte widths of the copies a training step keeps per parameter and of cached activations. The default is
// the DeepSeek-V3 report's policy (Report()); Fathom() is what fathom runs today.
struct PrecisionPolicy {
  int64_t param_bytes = 2;       // working weights the GEMMs read (bf16; 0 when they read the master weights)
  int64_t grad_bytes = 4;        // gradient accumulators (f32)
  int64_t master_bytes = 4;      // master weights (f32)
  bool master_sharded = true;    // ZeRO-1 shards the master weights over data parallelism (fathom: each rank
                                 // keeps the f32 values of all its parameters; only the moments are sharded)
  int64_t moment_bytes = 2;      // each of AdamW's two moments: 2 (bf16, the report) or 4 (f32); sharded too
  bool fp8_gemm = true;          // Linear GEMMs of attention, MLPs and experts in FP8 (head, router: bf16)
  bool fp8_cache = true;         // Linear inputs cached for the wgrad in FP8 + f32 scale per 128 (else bf16)
  bool fp8_dispatch = true;      // MoE dispatch in FP8 + f32 scale per 128 (else bf16); combine is bf16
  int64_t activation_bytes = 2;  // other saved activations (bf16)
  int64_t stats_bytes = 4;       // statistics (RMSNorm rstd, log-sum-exp), router scores (kFathom)
  ActivationModel activations = ActivationModel::kReport;

  // The report's policy with AdamW moments of `moment_bytes`.
  static PrecisionPolicy Report(int64_t moment_bytes = 2);
  // fathom today: compute and activations in `compute_bytes` (2: bf16 with f32 master weights and bf16
  // compute copies; 4 or 8: the GEMMs read the f32/f64 values), statistics in f32 under bf16 (else the
  // compute dtype), master weights unsharded, moments of `moment_bytes`, the kFathom activation model. `fp8`
  // (train.precision fp8): the Linear GEMMs in FP8 and the MoE dispatch in FP8 (fp8_gemm, fp8_dispatch);
  // the Linear inputs stay cached in the compute dtype (fp8_cache false); the activation model keeps the
  // MoE's routed rows and their gradients as FP8 rows (layers/activations.h's `r`).
  static PrecisionPolicy Fathom(int64_t compute_bytes, int64_t moment_bytes, bool fp8 = false);
  std::string Describe() const;  // "report (FP8 GEMMs, bf16 moments)", "fathom (bf16 compute, f32 moments)"

  // Optimizer state per parameter that ZeRO-1 shards: the moments, and the master weights when sharded.
  int64_t optimizer_bytes() const { return (master_sharded ? master_bytes : 0) + 2 * moment_bytes; }
  // Weights every replica keeps in full: the working copy, and the master weights when not sharded.
  int64_t replicated_param_bytes() const { return param_bytes + (master_sharded ? 0 : master_bytes); }
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

// The costs of one node of DescribeModelGraph (layers/graph.h): kind, name, HF layer and MTP depth are
// the graph's.
struct NodeCost : ModelNode {
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
  double routed_gemm_flops = 0;  // the routed experts' grouped GEMMs only: in expert_gemm_flops
  double head_gemm_flops = 0;    // the output head (main or an MTP depth's): in gemm_bf16_flops

  // Activation bytes kept per token: with nothing recomputed, and saved by each recomputation.
  ActivationModel act_model = ActivationModel::kReport;
  double act_bytes = 0;  // from the node's forward until its B
  double act_saved_by_norm_recompute = 0;
  double act_saved_by_mla_up_recompute = 0;
  // kFathom only (see activations()): kept from its B until its W, the most during its forward and during
  // its B (absolute, this node's own bytes), and the received expert rows kept under expert parallelism.
  double act_after_b_bytes = 0;
  double act_peak_f_bytes = 0;
  double act_peak_b_bytes = 0;
  double act_exchange_bytes = 0;
  // kFathom MoE nodes: without an exchange the routed experts take the tiled layout, whose pad rows add
  // these bytes per MICRO-BATCH, not per token (TiledExpertPadding; the simulator and the memory plan add
  // them where the layout applies; under FP8 its bf16 rows overestimate the FP8 rows kept, as the per-token
  // model does).
  ActivationBytes act_tiled_padding;

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
  // Bytes per token kept from the forward until the B pass (the report model: until the W pass too).
  double activation_bytes(const Recompute& recompute) const;
  // The node's activation bytes per token through its passes; `exchange`: the MoE's rows travel to other
  // ranks (expert parallelism). kReport: held from F to W, with one node's un-recomputed bytes on top during
  // a pass; kFathom: the itemised fields (fathom's layers recompute nothing; `recompute` is ignored).
  ActivationBytes activations(const Recompute& recompute, bool exchange) const;
};

// One NodeCost per node of DescribeModelGraph(model), in its order: embedding, decoder blocks 0..L-1, head,
// MTP modules 1..D.
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

// What a GPU keeps for `params` parameters: the working copy (and unsharded master weights) and the gradients
// in full, the optimizer state (sharded master weights and two moments) sharded `zero_shards` ways by ZeRO-1.
struct ParameterStateBytes {
  double params = 0, grads = 0, optimizer = 0;
  double total() const { return params + grads + optimizer; }
};
ParameterStateBytes ParameterState(double params, const PrecisionPolicy& precision, double zero_shards = 1);

// Bytes the optimizer step moves through memory on a rank that updates `shard` parameters (its ZeRO-1
// shards) and holds `local` parameters: AdamW reads the gradients, reads and writes the master weights and
// both moments, and writes the working copy (the report: bf16 weights come out of the shard's update);
// with unsharded master weights (fathom) the working copies of all local parameters are refreshed from the
// f32 values after the gather (read 4, write 2). The bench divides this by the optimizer phase's time.
double OptimizerStepBytes(const PrecisionPolicy& precision, double shard, double local);
// Bytes per parameter the data-parallel all-gather moves after the step: the working copy (the report),
// the f32 values when the master weights are not sharded (fathom).
int64_t GatheredBytesPerParameter(const PrecisionPolicy& precision);

// Bytes of one pipeline message (activation or its gradient) for a micro-batch: B*T*H*2 (bf16).
double PipelineMessageBytes(const ModelConfig& model, int64_t micro_batch_size, int64_t seq_len);

}  // namespace fathom

#endif  // FATHOM_LAYERS_COST_H_
