// The DeepSeek-V3 model as a static graph (DESIGN.md idea 2): the nodes of layers/graph.h's
// DescribeModelGraph (embedding, decoder blocks 0..N-1, head, MTP modules 1..D) that this rank's slice
// holds, built from a ModelConfig. Every node knows its parameters (HF names, in the one ParamTable); the
// executor runs them, the checkpoint code names tensors from them.
//
// Loss of a step with micro-batches m and sequences b (see LossNormalizers):
//   L = sum CE_main / N_main + (lambda / D) sum_k sum CE_k / N_k + alpha * mean_{layers} ... (balance)
// where N_* count the valid labels of the whole step, so micro-batching never changes L or its gradient.
#ifndef FATHOM_LAYERS_MODEL_H_
#define FATHOM_LAYERS_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "framework/config.h"
#include "framework/param_table.h"
#include "layers/decoder_block.h"
#include "layers/embedding.h"
#include "layers/expert_exchange.h"
#include "layers/graph.h"
#include "layers/mtp.h"
#include "layers/output_head.h"
#include "layers/stage_pass.h"

namespace fathom {

// A node of DescribeModelGraph held by this model, with the ids of the parameters it registered.
struct GraphNode : ModelNode {
  std::vector<int> param_ids;
};

// Host tensors always: the model copies them to its parameters' device.
struct MicroBatch {
  Tensor input_ids;  // (B, T) i32
  Tensor labels;     // (B, T) i32, labels[b, t] = input_ids[b, t+1] or ignore_index
};

// Step-wide normalisers (DESIGN: micro-batching must not change the loss).
struct LossNormalizers {
  double main_tokens = 1;          // valid main labels in the step
  std::vector<double> mtp_tokens;  // valid labels per MTP depth in the step
  double balance_weight = 0;       // alpha / (micro-batches in the step)
};

// What one micro-batch's forward through a slice produced besides its output: returned, never kept by
// the layers; the caller (the stage runtime) reduces them over micro-batches and ranks. Every tensor is on
// the model's device and was made without a host synchronisation; the loss sums are (1) tensors, f64 on
// the CPU and f32 on CUDA (ops::CrossEntropyForward).
struct MicroBatchStats {
  Tensor main_ce;  // sum of the main CE over valid labels (the slice with the head; else undefined)
  std::vector<Tensor> mtp_ce;  // per MTP depth, the same (the slice with the head; else empty)
  std::vector<MoeStats> moe;   // one per MoE layer of the slice, in moe_layers() order
};

// The same statistics on the host, in f64 (tests and tools; the runtime sums on the device instead).
struct HostMicroBatchStats {
  double main_ce = 0;                               // 0 without the head
  std::vector<double> mtp_ce;                       // per MTP depth
  std::vector<double> balance;                      // per MoE layer
  std::vector<std::vector<int64_t>> expert_counts;  // per MoE layer, per global expert
  double balance_sum() const;                       // over the MoE layers, in order
};
// Copies `stats` to the host. CUDA: SYNC POINT (one copy per tensor; for tests and tools).
HostMicroBatchStats ToHost(const MicroBatchStats& stats);

// A stage's forward of one micro-batch: the output for the next stage (undefined on the last stage) and
// the statistics.
struct StageOutput {
  Tensor hidden;  // (B, T, H)
  MicroBatchStats stats;
};

// Which part of the graph one rank holds (pipeline stage, expert shard). The default is the whole model.
struct ModelSlice {
  int64_t first_layer = 0;  // decoder layers [first_layer, end_layer)
  int64_t end_layer = -1;   // -1: num_hidden_layers
  bool embedding = true;    // the first stage: token embedding
  bool head = true;         // the last stage: final norm, lm_head, losses and the MTP modules. With MTP and
                            // no embedding here, the stage holds its own copy of "model.embed_tokens" whose
                            // gradient the caller sums with the first stage's (see Model::embedding_id).
  ExpertPlacement experts;  // the routed experts held, the same range in every MoE layer
  // Moves token rows when experts are spread over ranks (null: all experts local). Not owned; must outlive
  // the model. Stateless between calls (layers/expert_exchange.h), so every MoE layer shares it.
  ExpertExchange* exchange = nullptr;

  // Whether the slice runs `node`: the embedding on the first stage, decoder layers in
  // [first_layer, end_layer) (end_layer < 0: to the last), the head and the MTP modules on the last.
  bool Holds(const ModelNode& node) const;
};

class Model {
 public:
  Model(const ModelConfig& cfg, const LossConfig& loss, ModelSlice slice = {});
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Allocates the parameters (f32 or f64) and initialises them from `seed`: every tensor (every expert
  // of a stacked tensor) draws from a stream keyed by its HF name, so the values do not depend on the
  // table layout or on which rank holds the tensor.
  void Finalize(DType dtype, uint64_t seed);

  // The whole slice for one micro-batch. `input` is the previous stage's output (B, T, H) (ignored on
  // the first stage). Returns this stage's output for the next stage (undefined on the last stage, which
  // reports its losses in the stats instead) and the micro-batch's statistics.
  StageOutput ForwardStage(int mb, const MicroBatch& batch, const Tensor& input, const LossNormalizers& norm);
  // `grad_output`: gradient of the loss w.r.t. this stage's output (undefined on the last stage). Returns
  // the gradient w.r.t. the stage input (undefined on the first stage).
  Tensor BackwardInputStage(int mb, const Tensor& grad_output);
  void BackwardWeight(int mb);

  // The overlap hook (layers/stage_pass.h): the same work as ForwardStage, or BackwardInputStage followed
  // by BackwardWeight when `weight` (BW), as a pass whose steps are cut at the MoE layers' all-to-alls.
  // ForwardStage and BackwardInputStage are these passes run to their end. Results are written when the
  // last step has run: *out (the stats as the steps go), *grad_input; both must outlive the pass. The
  // inputs are held by the pass. Steps: "input" or "embedding", per decoder layer L "layer L" (dense) or
  // "attention L" / "experts L" / "combine L" (MoE: attention, routing and dispatch / routed experts and
  // combine / unpermute and residual), "head", per MTP depth "mtp k" / "experts L" / "combine L"; backward
  // "head", per MoE layer "combine-grad L" / "experts-grad L" / "attention-grad L", "layer-grad L" (dense),
  // "embedding-grad" (with `weight`, each node's W inside the step that ends its B).
  std::unique_ptr<StagePass> ForwardPass(int mb, const MicroBatch& batch, const Tensor& input,
                                         const LossNormalizers& norm, StageOutput* out);
  std::unique_ptr<StagePass> BackwardPass(int mb, const Tensor& grad_output, bool weight, Tensor* grad_input);

  // The whole model in one slice (single rank): the micro-batch's statistics.
  MicroBatchStats Forward(int mb, const MicroBatch& batch, const LossNormalizers& norm);
  void BackwardInput(int mb) { BackwardInputStage(mb, Tensor()); }

  // Counts the valid labels of a set of micro-batches for every loss (main and each MTP depth).
  LossNormalizers Normalizers(const std::vector<MicroBatch>& batches, int64_t micro_batches_in_step) const;

  ParamTable& params() { return params_; }
  const ModelConfig& config() const { return cfg_; }
  const LossConfig& loss_config() const { return loss_; }
  const std::vector<GraphNode>& graph() const { return graph_; }
  std::vector<MoE*> moe_layers();  // main layers first, then MTP layers (this slice's)
  OutputHead& head() { return *head_; }
  const ModelSlice& slice() const { return slice_; }
  // The token embedding's parameter id in this slice's table, or -1 when the slice has none.
  int embedding_id() const { return embed_ ? embed_->weight_id() : -1; }

 private:
  void RecordNode(const ModelNode& node, int first_param);

  ModelConfig cfg_;
  LossConfig loss_;
  ModelSlice slice_;
  ParamTable params_;
  std::unique_ptr<Embedding> embed_;
  std::vector<std::unique_ptr<DecoderBlock>> blocks_;
  std::unique_ptr<OutputHead> head_;
  std::vector<std::unique_ptr<MtpModule>> mtp_;
  std::vector<GraphNode> graph_;
};

// Fills the table's values as Model::Finalize does (exposed for tests and for sharded tables).
void InitParameters(ParamTable& table, double init_std, uint64_t seed);

}  // namespace fathom

#endif  // FATHOM_LAYERS_MODEL_H_
