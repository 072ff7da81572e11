// Multi-token prediction module k (1-based depth) of the DeepSeek-V3 report, with the HF checkpoint names
// of layer L = num_hidden_layers + k - 1 ("model.layers.{L}.*"):
//
//   e   = Emb(t_{i+k})                                  (embedding shared with the main model)
//   x   = eh_proj([enorm(e); hnorm(h^{k-1}_i)])          eh_proj (H, 2H); embedding first, as inference
//                                                         engines (vLLM, SGLang) load V3's MTP weights
//   h^k = DecoderBlock_L(x)                              (MoE or dense by the same rule as main layers)
//   loss_k = CE(lm_head(shared_head.norm(h^k)), t_{i+k+1})   (lm_head shared with the main model)
//
// h^0 is the main model's last decoder-layer output, before the final norm. Positions whose shifted token
// falls outside the sequence are ignored (see MtpInputs).
//
// Phases (the overlap hook, layers/stage_pass.h): Forward = ForwardBegin (embedding, norms, eh_proj and the
// block's ForwardBegin) -> ForwardExperts -> ForwardEnd (the block's end and the head); BackwardInput =
// BackwardInputBegin (the head's dgrad and the block's Begin) -> BackwardInputExperts -> BackwardInputEnd.
#ifndef FATHOM_LAYERS_MTP_H_
#define FATHOM_LAYERS_MTP_H_

#include "framework/config.h"
#include "layers/decoder_block.h"
#include "layers/embedding.h"
#include "layers/linear.h"
#include "layers/output_head.h"
#include "layers/rmsnorm.h"

namespace fathom {

// ids (B, T) i32 and labels (B, T) i32 (labels[b, t] = ids[b, t+1], or ignore) -> the depth-k inputs:
// mtp_ids[b, i] = ids[b, i+k] (0 past the end), mtp_labels[b, i] = labels[b, i+k] (ignore past the end).
void MtpInputs(const Tensor& ids, const Tensor& labels, int depth, int64_t ignore_index, Tensor* mtp_ids,
               Tensor* mtp_labels);

class MtpModule {
 public:
  MtpModule(ParamTable& table, const ModelConfig& cfg, int depth, int embed_id, int lm_head_id,
            int64_t ignore_index, ExpertPlacement placement = {}, ExpertExchange* exchange = nullptr);

  // h_prev (B, T, H); returns h^k and sets *ce_sum to the CE sum over valid labels (a (1) tensor on the
  // device, as OutputHead::Forward returns it). loss_scale as in OutputHead (lambda / D / valid tokens of
  // the step). balance_weight and moe_stats as in DecoderBlock::Forward.
  Tensor Forward(int mb, const Tensor& h_prev, const Tensor& mtp_ids, const Tensor& mtp_labels,
                 double loss_scale, Tensor* ce_sum, double balance_weight = 0.0,
                 MoeStats* moe_stats = nullptr);
  // dh_next: gradient w.r.t. h^k from depth k+1 (undefined for the last depth). Returns d h^{k-1}.
  Tensor BackwardInput(int mb, const Tensor& dh_next);
  // W: BackwardWeight does all of it; a BW pass (Model::BackwardPass) runs BackwardWeightBody with the
  // main head's W and BackwardWeightEmbedding with the main embedding's, so that the shared lm_head and
  // embedding gradients get each micro-batch's terms in one step, in Model::BackwardWeight's order.
  void BackwardWeight(int mb) {
    BackwardWeightBody(mb);
    BackwardWeightEmbedding(mb);
  }
  void BackwardWeightBody(int mb);  // the head (lm_head, its norm), the block, eh_proj, the norms
  void BackwardWeightEmbedding(int mb);

  // The phases of Forward and BackwardInput (see the top); ForwardEnd sets *ce_sum as Forward does.
  void ForwardBegin(int mb, const Tensor& h_prev, const Tensor& mtp_ids, const Tensor& mtp_labels,
                    double loss_scale, double balance_weight = 0.0, MoeStats* moe_stats = nullptr);
  void ForwardExperts(int mb) { block_.ForwardExperts(mb); }
  Tensor ForwardEnd(int mb, Tensor* ce_sum);
  void BackwardInputBegin(int mb, const Tensor& dh_next);
  void BackwardInputExperts(int mb, bool expert_weights = false) {
    block_.BackwardInputExperts(mb, expert_weights);
  }
  Tensor BackwardInputEnd(int mb);

  int layer() const { return layer_; }
  DecoderBlock& block() { return block_; }
  OutputHead& head() { return head_; }

 private:
  int layer_;
  int64_t hidden_;
  Embedding embed_;
  RmsNorm enorm_, hnorm_;
  Linear eh_proj_;
  DecoderBlock block_;
  OutputHead head_;
  struct HeadInputs {  // what the head needs once the block's phases are done
    Tensor labels;
    double loss_scale = 0;
  };
  SavedByMicroBatch<HeadInputs> head_inputs_;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_MTP_H_
