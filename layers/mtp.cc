#include "layers/mtp.h"

#include <string>

#include "framework/ops.h"

namespace fathom {

void MtpInputs(const Tensor& ids, const Tensor& labels, int depth, int64_t ignore_index, Tensor* mtp_ids,
               Tensor* mtp_labels) {
  // Token ids are shifted on the host, where the data loader produces them; the caller moves the result
  // to the model's device.
  FATHOM_CHECK(ids.device() == Device::kCPU && labels.device() == Device::kCPU,
               "[mtp] MtpInputs shifts HOST token ids and labels, got ids on ", DeviceName(ids.device()),
               " and labels on ", DeviceName(labels.device()));
  const int64_t b = ids.dim(0), t = ids.dim(1);
  *mtp_ids = Tensor::Empty({b, t}, DType::kI32);
  *mtp_labels = Tensor::Empty({b, t}, DType::kI32);
  const int32_t* id = ids.data<int32_t>();
  const int32_t* lb = labels.data<int32_t>();
  int32_t* mi = mtp_ids->data<int32_t>();
  int32_t* ml = mtp_labels->data<int32_t>();
  for (int64_t s = 0; s < b; ++s) {
    for (int64_t i = 0; i < t; ++i) {
      bool inside = i + depth < t;
      mi[s * t + i] = inside ? id[s * t + i + depth] : 0;
      ml[s * t + i] = inside ? lb[s * t + i + depth] : static_cast<int32_t>(ignore_index);
    }
  }
}

namespace {
std::string MtpPrefix(int layer) { return "model.layers." + std::to_string(layer); }
}  // namespace

MtpModule::MtpModule(ParamTable& table, const ModelConfig& cfg, int depth, int embed_id, int lm_head_id,
                     int64_t ignore_index, ExpertPlacement placement, ExpertExchange* exchange)
    : layer_(static_cast<int>(cfg.num_hidden_layers) + depth - 1),
      hidden_(cfg.hidden_size),
      embed_(table, embed_id),
      enorm_(table, MtpPrefix(layer_) + ".enorm", cfg.hidden_size, cfg.rms_norm_eps, layer_),
      hnorm_(table, MtpPrefix(layer_) + ".hnorm", cfg.hidden_size, cfg.rms_norm_eps, layer_),
      eh_proj_(table, MtpPrefix(layer_) + ".eh_proj", 2 * cfg.hidden_size, cfg.hidden_size, layer_),
      block_(table, cfg, layer_, placement, exchange),
      head_(table, MtpPrefix(layer_) + ".shared_head.norm", cfg.vocab_size, cfg.hidden_size, cfg.rms_norm_eps,
            lm_head_id, ignore_index, layer_) {}

Tensor MtpModule::Forward(int mb, const Tensor& h_prev, const Tensor& mtp_ids, const Tensor& mtp_labels,
                          double loss_scale, Tensor* ce_sum, double balance_weight, MoeStats* moe_stats) {
  ForwardBegin(mb, h_prev, mtp_ids, mtp_labels, loss_scale, balance_weight, moe_stats);
  ForwardExperts(mb);
  return ForwardEnd(mb, ce_sum);
}

void MtpModule::ForwardBegin(int mb, const Tensor& h_prev, const Tensor& mtp_ids, const Tensor& mtp_labels,
                             double loss_scale, double balance_weight, MoeStats* moe_stats) {
  Tensor e = enorm_.Forward(mb, embed_.Forward(mb, mtp_ids));
  Tensor h = hnorm_.Forward(mb, h_prev);
  block_.ForwardBegin(mb, eh_proj_.Forward(mb, ops::ConcatLastDim(e, h)), balance_weight, moe_stats);
  head_inputs_.Put(mb) = {mtp_labels, loss_scale};
}

Tensor MtpModule::ForwardEnd(int mb, Tensor* ce_sum) {
  const HeadInputs in = head_inputs_.Get(mb);
  head_inputs_.Drop(mb);
  Tensor hk = block_.ForwardEnd(mb);
  *ce_sum = head_.Forward(mb, hk, in.labels, in.loss_scale);
  return hk;
}

Tensor MtpModule::BackwardInput(int mb, const Tensor& dh_next) {
  BackwardInputBegin(mb, dh_next);
  BackwardInputExperts(mb);
  return BackwardInputEnd(mb);
}

void MtpModule::BackwardInputBegin(int mb, const Tensor& dh_next) {
  Tensor dhk = head_.BackwardInput(mb);
  if (dh_next.defined()) ops::AddInPlace(dhk, dh_next);
  block_.BackwardInputBegin(mb, dhk);
}

Tensor MtpModule::BackwardInputEnd(int mb) {
  Tensor dcat = eh_proj_.BackwardInput(mb, block_.BackwardInputEnd(mb));
  Shape half = dcat.shape();
  half.back() = hidden_;
  Tensor de = Tensor::Empty(half, dcat.dtype(), dcat.device());
  Tensor dh = Tensor::Empty(half, dcat.dtype(), dcat.device());
  ops::SplitLastDim(dcat, de, dh);
  embed_.BackwardInput(mb, enorm_.BackwardInput(mb, de));
  return hnorm_.BackwardInput(mb, dh);
}

void MtpModule::BackwardWeightBody(int mb) {
  head_.BackwardWeight(mb);
  block_.BackwardWeight(mb);
  eh_proj_.BackwardWeight(mb);
  enorm_.BackwardWeight(mb);
  hnorm_.BackwardWeight(mb);
}

void MtpModule::BackwardWeightEmbedding(int mb) { embed_.BackwardWeight(mb); }

}  // namespace fathom
