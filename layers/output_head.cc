#include "layers/output_head.h"

#include "framework/ops.h"
#include "layers/phases.h"

namespace fathom {

OutputHead::OutputHead(ParamTable& table, const std::string& norm_name, int64_t vocab, int64_t hidden,
                       double eps, int lm_head_id, int64_t ignore_index, int layer)
    : norm_(table, norm_name, hidden, eps, layer), ignore_index_(ignore_index) {
  lm_head_ = lm_head_id < 0 ? std::make_unique<Linear>(table, "lm_head", hidden, vocab)
                            : std::make_unique<Linear>(table, lm_head_id);
}

Tensor OutputHead::Forward(int mb, const Tensor& x, const Tensor& labels, double loss_scale) {
  ScopedPhase phase(phases::kHeadLoss);  // final norm, vocabulary GEMM and cross-entropy (MTP heads too)
  Tensor logits = lm_head_->Forward(mb, norm_.Forward(mb, x));
  Tensor flat = logits.Flatten2D();
  Ctx& c = saved_.Put(mb);
  c.logits = flat;
  c.labels = labels.Reshape({labels.numel()});
  c.lse = Tensor::Empty({flat.dim(0)}, ops::StatsDType(flat.dtype()), flat.device());
  c.loss_scale = loss_scale;
  c.x_shape = x.shape();
  return ops::CrossEntropyForward(c.lse, flat, c.labels, ignore_index_);
}

Tensor OutputHead::BackwardInput(int mb) {
  ScopedPhase phase(phases::kHeadLoss);
  Ctx& c = saved_.Get(mb);
  Tensor dlogits = Tensor::Empty(c.logits.shape(), c.logits.dtype(), c.logits.device());
  ops::CrossEntropyBackward(dlogits, c.logits, c.lse, c.labels, ignore_index_, c.loss_scale);
  if (!keep_logits_) c.logits = Tensor();
  Shape logits_shape = c.x_shape;
  logits_shape.back() = dlogits.dim(1);
  return norm_.BackwardInput(mb, lm_head_->BackwardInput(mb, dlogits.Reshape(logits_shape)));
}

void OutputHead::BackwardWeight(int mb) {
  ScopedPhase phase(phases::kHeadLoss);
  lm_head_->BackwardWeight(mb);
  norm_.BackwardWeight(mb);
  saved_.Drop(mb);
}

}  // namespace fathom
