// Model::ForwardPass and Model::BackwardPass: a stage's forward and backward as StagePass steps cut at the
// MoE layers' all-to-alls (layers/stage_pass.h). ForwardStage and BackwardInputStage (layers/model.cc) run
// these passes to their end, so the blocking path and the overlapped one are the same code.
#include <memory>
#include <string>

#include "framework/ops.h"
#include "layers/model.h"

namespace fathom {
namespace {

std::string Numbered(const char* what, int layer) { return std::string(what) + " " + std::to_string(layer); }

}  // namespace

std::unique_ptr<StagePass> Model::ForwardPass(int mb, const MicroBatch& batch, const Tensor& input,
                                              const LossNormalizers& norm, StageOutput* out) {
  FATHOM_CHECK(out != nullptr, "[model] ForwardPass needs an output");
  if (slice_.head) {
    FATHOM_CHECK(norm.mtp_tokens.size() == mtp_.size(), "normalisers for ", norm.mtp_tokens.size(),
                 " MTP depths, model has ", mtp_.size());
  }
  *out = StageOutput();
  // One MoeStats per MoE layer, in moe_layers() order (the steps run in that order): the main blocks',
  // then the MTP modules'. Reserved, so the pointers handed to the layers stay valid.
  out->stats.moe.reserve(blocks_.size() + mtp_.size());
  auto next_moe_stats = [out](bool moe) -> MoeStats* {
    if (!moe) return nullptr;
    out->stats.moe.emplace_back();
    return &out->stats.moe.back();
  };
  // What the steps share: the hidden state flowing through the stage, the inputs and the normalisers.
  struct State {
    Tensor h, ids, labels;
    MicroBatch batch;
    LossNormalizers norm;
  };
  auto st = std::make_shared<State>();
  st->batch = batch;
  st->norm = norm;
  auto pass = std::make_unique<StagePass>();

  pass->Add(slice_.embedding ? "embedding" : "input", [this, mb, st, input] {
    // Micro-batches are sampled on the host; the token ids and labels follow the parameters' device,
    // queued without a host wait (ops::ToDeviceAsync): the previous micro-batch's work keeps the GPU busy.
    const Device dev = params_.device();
    st->ids = dev == Device::kCPU ? st->batch.input_ids : ops::ToDeviceAsync(st->batch.input_ids);
    st->labels = dev == Device::kCPU ? st->batch.labels : ops::ToDeviceAsync(st->batch.labels);
    st->h = slice_.embedding ? embed_->Forward(mb, st->ids) : input;
    FATHOM_CHECK(st->h.defined(), "stage without the embedding needs the previous stage's output");
  });
  for (auto& owned : blocks_) {
    DecoderBlock* b = owned.get();
    if (!b->moe()) {
      pass->Add(Numbered("layer", b->layer()), [mb, st, b, next_moe_stats] {
        st->h = b->Forward(mb, st->h, st->norm.balance_weight, next_moe_stats(false));
      });
      continue;
    }
    pass->Add(
        Numbered("attention", b->layer()),
        [mb, st, b, next_moe_stats] {
          b->ForwardBegin(mb, st->h, st->norm.balance_weight, next_moe_stats(true));
        },
        /*leaves_in_flight=*/true);
    pass->Add(
        Numbered("experts", b->layer()), [mb, b] { b->ForwardExperts(mb); }, /*leaves_in_flight=*/true);
    pass->Add(Numbered("combine", b->layer()), [mb, st, b] { st->h = b->ForwardEnd(mb); });
  }
  if (slice_.head) {
    // Zero valid labels in a step means nothing to learn from that loss: scale 0, not a division by 0.
    auto scale = [](double weight, double tokens) { return tokens > 0 ? weight / tokens : 0.0; };
    pass->Add("head", [this, mb, st, out, scale] {
      out->stats.main_ce = head_->Forward(mb, st->h, st->labels, scale(1.0, st->norm.main_tokens));
      out->stats.mtp_ce.assign(mtp_.size(), Tensor());
    });
    const double depth_weight = mtp_.empty() ? 0.0 : loss_.mtp_lambda / static_cast<double>(mtp_.size());
    for (size_t k = 0; k < mtp_.size(); ++k) {
      MtpModule* m = mtp_[k].get();
      const bool moe = m->block().moe() != nullptr;
      pass->Add(
          Numbered("mtp", static_cast<int>(k) + 1),
          [this, mb, st, m, k, moe, depth_weight, scale, next_moe_stats] {
            Tensor ids, labels;
            MtpInputs(st->batch.input_ids, st->batch.labels, static_cast<int>(k) + 1, loss_.ignore_index,
                      &ids, &labels);
            if (st->h.device() != Device::kCPU) {  // the shifted host ids and labels go up, no host wait
              ids = ops::ToDeviceAsync(ids);
              labels = ops::ToDeviceAsync(labels);
            }
            m->ForwardBegin(mb, st->h, ids, labels, scale(depth_weight, st->norm.mtp_tokens[k]),
                            st->norm.balance_weight, next_moe_stats(moe));
          },
          moe);
      if (moe) {
        pass->Add(
            Numbered("experts", m->layer()), [mb, m] { m->ForwardExperts(mb); }, true);
      }
      pass->Add(Numbered(moe ? "combine" : "mtp head", m->layer()),
                [mb, st, m, k, out] { st->h = m->ForwardEnd(mb, &out->stats.mtp_ce[k]); });
    }
  }
  pass->Add("output", [this, st, out] {
    out->hidden = slice_.head ? Tensor() : st->h;  // the last stage reports losses instead
    st->h = Tensor();
  });
  return pass;
}

std::unique_ptr<StagePass> Model::BackwardPass(int mb, const Tensor& grad_output, bool weight,
                                               Tensor* grad_input) {
  FATHOM_CHECK(grad_input != nullptr, "[model] BackwardPass needs a place for the input gradient");
  FATHOM_CHECK(slice_.head || grad_output.defined(),
               "stage without the head needs the next stage's gradient");
  *grad_input = Tensor();
  struct State {
    Tensor dh, dmtp;  // the gradient flowing down the stage; the MTP chain's (deepest module seen so far)
  };
  auto st = std::make_shared<State>();
  st->dh = grad_output;
  auto pass = std::make_unique<StagePass>();

  // The phases of one block (a decoder layer or an MTP module's), from its Begin to its End.
  auto add_phases = [&pass, mb, weight](const std::string& begin_name, const std::function<void()>& begin,
                                        int layer, bool moe, const std::function<void(bool)>& experts,
                                        const std::function<void()>& end) {
    if (!moe) {
      pass->Add(begin_name, [begin, experts, end, weight] {
        begin();
        experts(weight);
        end();
      });
      return;
    }
    pass->Add(begin_name, begin, /*leaves_in_flight=*/true);
    pass->Add(
        Numbered("experts-grad", layer), [experts, weight] { experts(weight); }, true);
    pass->Add(Numbered("attention-grad", layer), end);
  };
  // With `weight`, each decoder block's W runs right after its B, so its saved activations and output
  // gradients are freed before the next block's B allocates (layers/activations.h, peak_bw). The head and
  // the MTP modules share the lm_head and embedding gradients: their W run with the head's B (the MTP
  // modules' bodies, then the head) and with the embedding's (their embeddings, then the main one), in
  // Model::BackwardWeight's order and each in ONE step, so that overlapped passes (two micro-batches
  // interleaved at every MoE layer) still add every parameter's terms micro-batch by micro-batch.
  if (slice_.head) {
    for (size_t k = mtp_.size(); k-- > 0;) {
      MtpModule* m = mtp_[k].get();
      add_phases(
          Numbered(m->block().moe() ? "combine-grad" : "layer-grad", m->layer()),
          [mb, st, m] { m->BackwardInputBegin(mb, st->dmtp); }, m->layer(), m->block().moe() != nullptr,
          [mb, m](bool w) { m->BackwardInputExperts(mb, w); },
          [mb, st, m] { st->dmtp = m->BackwardInputEnd(mb); });
    }
    pass->Add("head", [this, mb, st, weight] {
      st->dh = head_->BackwardInput(mb);
      if (st->dmtp.defined()) ops::AddInPlace(st->dh, st->dmtp);  // h^0 feeds the head and MTP module 1
      st->dmtp = Tensor();
      if (weight) {
        for (auto& m : mtp_) m->BackwardWeightBody(mb);
        head_->BackwardWeight(mb);
      }
    });
  }
  for (size_t l = blocks_.size(); l-- > 0;) {
    DecoderBlock* b = blocks_[l].get();
    add_phases(
        Numbered(b->moe() ? "combine-grad" : "layer-grad", b->layer()),
        [mb, st, b] { b->BackwardInputBegin(mb, st->dh); }, b->layer(), b->moe() != nullptr,
        [mb, b](bool w) { b->BackwardInputExperts(mb, w); },
        [mb, st, b, weight] {
          st->dh = b->BackwardInputEnd(mb);
          if (weight) b->BackwardWeight(mb);
        });
  }
  pass->Add(slice_.embedding ? "embedding-grad" : "input-grad", [this, mb, st, grad_input, weight] {
    if (weight) {
      for (auto& m : mtp_) m->BackwardWeightEmbedding(mb);
    }
    if (slice_.embedding) {
      embed_->BackwardInput(mb, st->dh);
      if (weight) embed_->BackwardWeight(mb);
    } else {
      *grad_input = st->dh;
    }
    st->dh = Tensor();
  });
  return pass;
}

}  // namespace fathom
