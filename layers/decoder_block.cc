#include "layers/decoder_block.h"

#include <string>

#include "framework/ops.h"

namespace fathom {
namespace {

std::string LayerPrefix(int layer) { return "model.layers." + std::to_string(layer); }

}  // namespace

DecoderBlock::DecoderBlock(ParamTable& table, const ModelConfig& cfg, int layer, ExpertPlacement placement,
                           ExpertExchange* exchange)
    : layer_(layer),
      input_norm_(table, LayerPrefix(layer) + ".input_layernorm", cfg.hidden_size, cfg.rms_norm_eps, layer),
      attn_(table, cfg, LayerPrefix(layer) + ".self_attn", layer),
      post_norm_(table, LayerPrefix(layer) + ".post_attention_layernorm", cfg.hidden_size, cfg.rms_norm_eps,
                 layer) {
  if (cfg.is_moe_layer(layer)) {
    moe_ = std::make_unique<MoE>(table, cfg, LayerPrefix(layer) + ".mlp", layer, placement, exchange);
  } else {
    dense_ = std::make_unique<DenseMlp>(table, LayerPrefix(layer) + ".mlp", cfg.hidden_size,
                                        cfg.intermediate_size, layer);
  }
}

Tensor DecoderBlock::Forward(int mb, const Tensor& x, double balance_weight, MoeStats* moe_stats) {
  ForwardBegin(mb, x, balance_weight, moe_stats);
  ForwardExperts(mb);
  return ForwardEnd(mb);
}

void DecoderBlock::ForwardBegin(int mb, const Tensor& x, double balance_weight, MoeStats* moe_stats) {
  Tensor h = ops::Add(x, attn_.Forward(mb, input_norm_.Forward(mb, x)));
  Tensor n = post_norm_.Forward(mb, h);
  if (moe_) {
    moe_->ForwardBegin(mb, n, balance_weight, moe_stats);
    between_phases_.Put(mb) = h;
  } else {
    between_phases_.Put(mb) = ops::Add(h, dense_->Forward(mb, n));
  }
}

void DecoderBlock::ForwardExperts(int mb) {
  if (moe_) moe_->ForwardExperts(mb);
}

Tensor DecoderBlock::ForwardEnd(int mb) {
  Tensor h = between_phases_.Get(mb);
  between_phases_.Drop(mb);
  return moe_ ? ops::Add(h, moe_->ForwardEnd(mb)) : h;
}

Tensor DecoderBlock::BackwardInput(int mb, const Tensor& dy) {
  BackwardInputBegin(mb, dy);
  BackwardInputExperts(mb);
  return BackwardInputEnd(mb);
}

void DecoderBlock::BackwardInputBegin(int mb, const Tensor& dy) {
  if (moe_) {
    moe_->BackwardInputBegin(mb, dy);
    between_phases_.Put(mb) = dy;
  } else {
    between_phases_.Put(mb) = BackwardFromMlpGradient(mb, dy, dense_->BackwardInput(mb, dy));
  }
}

void DecoderBlock::BackwardInputExperts(int mb, bool expert_weights) {
  if (moe_) moe_->BackwardInputExperts(mb, expert_weights);
}

Tensor DecoderBlock::BackwardInputEnd(int mb) {
  Tensor t = between_phases_.Get(mb);
  between_phases_.Drop(mb);
  return moe_ ? BackwardFromMlpGradient(mb, t, moe_->BackwardInputEnd(mb)) : t;
}

// The residual stream is the documented exception to "activation grads overwrite": the gradient of each
// residual add is the sum of the skip path and the branch, which each branch's first norm adds as it writes
// its input gradient.
Tensor DecoderBlock::BackwardFromMlpGradient(int mb, const Tensor& dy, const Tensor& dn) {
  Tensor dh = post_norm_.BackwardInput(mb, dn, dy);
  return input_norm_.BackwardInput(mb, attn_.BackwardInput(mb, dh), dh);
}

void DecoderBlock::BackwardWeight(int mb) {
  if (moe_) {
    moe_->BackwardWeight(mb);
  } else {
    dense_->BackwardWeight(mb);
  }
  post_norm_.BackwardWeight(mb);
  attn_.BackwardWeight(mb);
  input_norm_.BackwardWeight(mb);
}

}  // namespace fathom
