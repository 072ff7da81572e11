// Router: the DeepSeek-V3 gate of transformers' DeepseekV3TopkRouter.
//
// Parameters: "<prefix>.gate.weight" (E, H), normal init, trainable, replicated; and
// "<prefix>.gate.e_score_correction_bias" (E), zeros, trainable = false, no weight decay: a buffer moved by
// the auxiliary-loss-free bias update (optim/), never by gradients.
//
// Forward, for x (N, H): logits = x W^T, s = sigmoid(logits) (N, E); experts are chosen with s + bias
// under group-limited top-k and weighted by s (cpu::RouterSelect has the exact rule and tie breaking).
// Gradients reach W and x through the weights only (through s, the sigmoid, the normalisation and the
// scaling), plus whatever extra gradient on s the caller hands in (the balance loss); the discrete
// selection and the bias get none.
//
// Precision: the router runs in the statistics dtype (ops::StatsDType) with the f32 master weight, as
// transformers casts hidden states and gate weight to float32: under bf16 activations x is widened to f32
// (exactly) for the logits and the weight gradient, and the input gradient is rounded to bf16 once before it
// is added to dx. Selection decisions thus never see bf16 weights. The backward keeps the input as given
// and widens it again for the weight gradient (a transient), not an f32 copy from the forward on: under
// bf16 that saves 4 bytes per hidden value and token in every MoE layer.
#ifndef FATHOM_LAYERS_ROUTER_H_
#define FATHOM_LAYERS_ROUTER_H_

#include <string>

#include "framework/config.h"
#include "framework/kernels/cpu/moe.h"
#include "framework/param_table.h"
#include "layers/layer.h"

namespace fathom {

struct RouterOutput {
  Tensor scores;       // (N, E) sigmoid scores s, table dtype
  Tensor topk_index;   // (N, K) i64 chosen experts, by descending s + bias (ties: lower id first)
  Tensor topk_weight;  // (N, K) gating weights, table dtype
};

class Router {
 public:
  // `prefix` is the MoE block's, e.g. "model.layers.3.mlp". REQUIRES (FATHOM_CHECK): n_routed_experts
  // divisible by n_group with at least 2 experts per group, topk_group <= n_group, and
  // num_experts_per_tok <= topk_group * experts per group.
  Router(ParamTable& table, const ModelConfig& config, const std::string& prefix, int layer = -1);
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // x (N, H). The returned tensors stay valid (they are shared with the saved state); do not modify them.
  RouterOutput Forward(int mb, const Tensor& x);
  // dx (N, H) += the input gradient. dweight (N, K): gradient w.r.t. topk_weight. dscores (N, E): an extra
  // gradient w.r.t. the scores s (the balance loss), or an undefined Tensor for none; not modified.
  void BackwardInput(int mb, const Tensor& dx, const Tensor& dweight, const Tensor& dscores);
  void BackwardWeight(int mb);  // grad(W) += dlogits^T x; the bias grad is never touched

  int weight_id() const { return weight_; }
  int bias_id() const { return bias_; }
  const cpu::RouterDims& dims() const { return dims_; }

 private:
  struct Ctx {
    Tensor x;        // (N, H) the input as given (the MoE's input, kept anyway): widened again for W
    Tensor scores;   // (N, E)
    Tensor index;    // (N, K) i64
    Tensor dlogits;  // (N, E), set by BackwardInput
  };
  ParamTable* table_;
  int weight_, bias_;
  int64_t hidden_;
  cpu::RouterDims dims_;
  SavedByMicroBatch<Ctx> saved_;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_ROUTER_H_
