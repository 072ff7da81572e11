// Output head with its loss: RMSNorm -> lm_head -> cross-entropy with an ignore index.
// The main model's head is ("model.norm", "lm_head"); MTP module L uses its own norm
// ("model.layers.L.shared_head.norm") and shares the main lm_head weight.
#ifndef FATHOM_LAYERS_OUTPUT_HEAD_H_
#define FATHOM_LAYERS_OUTPUT_HEAD_H_

#include <memory>
#include <string>

#include "framework/param_table.h"
#include "layers/layer.h"
#include "layers/linear.h"
#include "layers/rmsnorm.h"

namespace fathom {

class OutputHead {
 public:
  // lm_head_id < 0 registers "lm_head.weight" (V, H); otherwise shares that weight.
  OutputHead(ParamTable& table, const std::string& norm_name, int64_t vocab, int64_t hidden, double eps,
             int lm_head_id, int64_t ignore_index, int layer = -1);

  // x (B, T, H), labels (B, T) i32. Returns the sum of the per-token losses over valid labels as a (1)
  // tensor on x's device, not synchronised (ops::CrossEntropyForward: f64 on the CPU, f32 on CUDA). The
  // backward treats the total loss as `loss_scale` * that sum (loss_scale = weight / valid tokens of the
  // whole step).
  Tensor Forward(int mb, const Tensor& x, const Tensor& labels, double loss_scale);
  Tensor BackwardInput(int mb);  // -> dx (B, T, H)
  void BackwardWeight(int mb);

  // Keeps each micro-batch's logits (B, T, V) until BackwardWeight (tests, golden comparisons).
  void set_keep_logits(bool keep) { keep_logits_ = keep; }
  Tensor logits(int mb) { return saved_.Get(mb).logits; }
  int lm_head_id() const { return lm_head_->weight_id(); }

 private:
  struct Ctx {
    Tensor logits, lse, labels;  // (N, V), (N), (N)
    Shape x_shape;               // (B, T, H)
    double loss_scale = 0;
  };
  RmsNorm norm_;
  std::unique_ptr<Linear> lm_head_;
  int64_t ignore_index_;
  bool keep_logits_ = false;
  SavedByMicroBatch<Ctx> saved_;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_OUTPUT_HEAD_H_
