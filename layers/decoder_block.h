// One DeepSeek-V3 decoder layer "model.layers.{L}" (HF DeepseekV3DecoderLayer):
//   h = x + self_attn(input_layernorm(x));  y = h + mlp(post_attention_layernorm(h))
// where mlp is the dense SwiGLU MLP for L < first_k_dense_replace and the MoE otherwise.
//
// Phases (the overlap hook, layers/stage_pass.h): Forward = ForwardBegin (attention, residual, norm, and
// the MoE's ForwardBegin: its dispatch in flight) -> ForwardExperts -> ForwardEnd; BackwardInput =
// BackwardInputBegin -> BackwardInputExperts -> BackwardInputEnd (attention's backward in the last). A dense
// block does all its work in the Begin phase; the others do nothing but hand the result over. Each phase of
// a micro-batch once, in this order; other micro-batches' phases may run in between.
#ifndef FATHOM_LAYERS_DECODER_BLOCK_H_
#define FATHOM_LAYERS_DECODER_BLOCK_H_

#include <memory>

#include "framework/config.h"
#include "framework/param_table.h"
#include "layers/layer.h"
#include "layers/mla.h"
#include "layers/mlp.h"
#include "layers/moe.h"
#include "layers/rmsnorm.h"

namespace fathom {

class DecoderBlock {
 public:
  // A MoE block holds the routed experts of `placement` and reaches the others through `exchange`.
  DecoderBlock(ParamTable& table, const ModelConfig& cfg, int layer, ExpertPlacement placement = {},
               ExpertExchange* exchange = nullptr);

  // (B, T, H) -> (B, T, H). A MoE block passes `balance_weight` to its MoE layer and fills `moe_stats`
  // (may be null; untouched by a dense block).
  Tensor Forward(int mb, const Tensor& x, double balance_weight = 0.0, MoeStats* moe_stats = nullptr);
  Tensor BackwardInput(int mb, const Tensor& dy);  // -> dx (B, T, H)
  void BackwardWeight(int mb);

  // The phases of Forward and BackwardInput (see the top). `expert_weights` as MoE::BackwardInputExperts.
  void ForwardBegin(int mb, const Tensor& x, double balance_weight = 0.0, MoeStats* moe_stats = nullptr);
  void ForwardExperts(int mb);
  Tensor ForwardEnd(int mb);
  void BackwardInputBegin(int mb, const Tensor& dy);
  void BackwardInputExperts(int mb, bool expert_weights = false);
  Tensor BackwardInputEnd(int mb);

  int layer() const { return layer_; }
  MoE* moe() { return moe_.get(); }  // null for a dense layer

 private:
  // dy and the MLP's input gradient dn -> dx: post-norm, attention and both residual adds.
  Tensor BackwardFromMlpGradient(int mb, const Tensor& dy, const Tensor& dn);

  int layer_;
  RmsNorm input_norm_;
  MlaAttention attn_;
  RmsNorm post_norm_;
  std::unique_ptr<DenseMlp> dense_;
  std::unique_ptr<MoE> moe_;
  // Between the phases of a micro-batch: the residual h (MoE forward), dy (MoE backward), or the finished
  // result of a dense block.
  SavedByMicroBatch<Tensor> between_phases_;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_DECODER_BLOCK_H_
