#include "layers/model.h"

#include <random>

#include "framework/kernels/cpu/cross_entropy.h"
#include "framework/kernels/cpu/elementwise.h"

namespace fathom {

std::string NodeKindName(NodeKind k) {
  switch (k) {
    case NodeKind::kEmbedding: return "embedding";
    case NodeKind::kDenseBlock: return "dense block";
    case NodeKind::kMoeBlock: return "moe block";
    case NodeKind::kHead: return "head";
    case NodeKind::kMtp: return "mtp";
  }
  return "?";
}

Model::Model(const ModelConfig& cfg, const LossConfig& loss) : cfg_(cfg), loss_(loss) {
  int first = params_.size();
  embed_ = std::make_unique<Embedding>(params_, "model.embed_tokens", cfg.vocab_size, cfg.hidden_size);
  RecordNode(NodeKind::kEmbedding, "embedding", -1, first);
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    first = params_.size();
    blocks_.push_back(std::make_unique<DecoderBlock>(params_, cfg, l));
    bool moe = cfg.is_moe_layer(l);
    RecordNode(moe ? NodeKind::kMoeBlock : NodeKind::kDenseBlock,
               "layer " + std::to_string(l) + (moe ? " (moe)" : " (dense)"), l, first);
  }
  first = params_.size();
  head_ = std::make_unique<OutputHead>(params_, "model.norm", cfg.vocab_size, cfg.hidden_size, cfg.rms_norm_eps,
                                       /*lm_head_id=*/-1, loss.ignore_index);
  RecordNode(NodeKind::kHead, "head", -1, first);
  for (int k = 1; k <= cfg.num_nextn_predict_layers; ++k) {
    first = params_.size();
    mtp_.push_back(std::make_unique<MtpModule>(params_, cfg, k, embed_->weight_id(), head_->lm_head_id(),
                                               loss.ignore_index));
    RecordNode(NodeKind::kMtp, "mtp " + std::to_string(k), mtp_.back()->layer(), first);
  }
}

void Model::RecordNode(NodeKind kind, std::string name, int layer, int first_param) {
  GraphNode node{kind, std::move(name), layer, {}};
  for (int id = first_param; id < params_.size(); ++id) node.param_ids.push_back(id);
  graph_.push_back(std::move(node));
}

namespace {

// FNV-1a of the name mixed with the seed: an independent stream per tensor (or expert).
uint64_t StreamSeed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string ExpertName(const std::string& name, int expert) {
  std::string out = name;
  size_t at = out.find("{e}");
  return out.replace(at, 3, std::to_string(expert));
}

}  // namespace

void InitParameters(ParamTable& table, double init_std, uint64_t seed) {
  for (int id = 0; id < table.size(); ++id) {
    const ParamSpec& s = table.spec(id);
    Tensor v = table.value(id);
    if (s.init != ParamInit::kNormal) {
      v.Fill(s.init == ParamInit::kOnes ? 1.0 : 0.0);
      continue;
    }
    bool stacked = s.name.find("{e}") != std::string::npos;
    int64_t slices = stacked ? s.shape[0] : 1;
    int64_t per = v.numel() / slices;
    for (int64_t e = 0; e < slices; ++e) {
      std::mt19937_64 rng(StreamSeed(seed, stacked ? ExpertName(s.name, s.expert_begin + e) : s.name));
      std::normal_distribution<double> nd(0.0, init_std);
      DispatchFloat(v.dtype(), "init", [&](auto tag) {
        using T = decltype(tag);
        T* p = v.data<T>() + e * per;
        for (int64_t i = 0; i < per; ++i) p[i] = static_cast<T>(nd(rng));
      });
    }
  }
}

void Model::Finalize(DType dtype, uint64_t seed) {
  params_.Finalize(dtype);
  InitParameters(params_, cfg_.initializer_range, seed);
}

std::vector<MoE*> Model::moe_layers() {
  std::vector<MoE*> out;
  for (auto& b : blocks_)
    if (b->moe()) out.push_back(b->moe());
  for (auto& m : mtp_)
    if (m->block().moe()) out.push_back(m->block().moe());
  return out;
}

LossNormalizers Model::Normalizers(const std::vector<MicroBatch>& batches, int64_t micro_batches_in_step) const {
  LossNormalizers n;
  n.main_tokens = 0;
  n.mtp_tokens.assign(mtp_.size(), 0);
  for (const MicroBatch& b : batches) {
    n.main_tokens += static_cast<double>(cpu::CountValidLabels(b.labels, loss_.ignore_index));
    for (size_t k = 0; k < mtp_.size(); ++k) {
      Tensor ids, labels;
      MtpInputs(b.input_ids, b.labels, static_cast<int>(k) + 1, loss_.ignore_index, &ids, &labels);
      n.mtp_tokens[k] += static_cast<double>(cpu::CountValidLabels(labels, loss_.ignore_index));
    }
  }
  n.balance_weight = loss_.balance_alpha / static_cast<double>(micro_batches_in_step);
  return n;
}

LossSums Model::Forward(int mb, const MicroBatch& batch, const LossNormalizers& norm) {
  FATHOM_CHECK(norm.mtp_tokens.size() == mtp_.size(), "normalisers for ", norm.mtp_tokens.size(),
               " MTP depths, model has ", mtp_.size());
  for (MoE* moe : moe_layers()) moe->set_balance_weight(norm.balance_weight);
  std::vector<double> balance_before;
  for (MoE* moe : moe_layers()) balance_before.push_back(moe->balance_loss_sum());

  LossSums sums;
  Tensor h = embed_->Forward(mb, batch.input_ids);
  for (auto& b : blocks_) h = b->Forward(mb, h);
  // Zero-token normalisers mean nothing to learn from this loss in the step: scale 0, not a division by 0.
  auto scale = [](double weight, double tokens) { return tokens > 0 ? weight / tokens : 0.0; };
  sums.main_ce = head_->Forward(mb, h, batch.labels, scale(1.0, norm.main_tokens));
  sums.mtp_ce.assign(mtp_.size(), 0.0);
  const double depth_weight = mtp_.empty() ? 0.0 : loss_.mtp_lambda / static_cast<double>(mtp_.size());
  for (size_t k = 0; k < mtp_.size(); ++k) {
    Tensor ids, labels;
    MtpInputs(batch.input_ids, batch.labels, static_cast<int>(k) + 1, loss_.ignore_index, &ids, &labels);
    h = mtp_[k]->Forward(mb, h, ids, labels, scale(depth_weight, norm.mtp_tokens[k]), &sums.mtp_ce[k]);
  }
  std::vector<MoE*> moes = moe_layers();
  for (size_t i = 0; i < moes.size(); ++i) sums.balance += moes[i]->balance_loss_sum() - balance_before[i];
  return sums;
}

void Model::BackwardInput(int mb) {
  Tensor dh;  // gradient w.r.t. the output of the deepest MTP module seen so far
  for (size_t k = mtp_.size(); k-- > 0;) dh = mtp_[k]->BackwardInput(mb, dh);
  Tensor dmain = head_->BackwardInput(mb);
  if (dh.defined()) cpu::AddInPlace(dmain, dh);  // h^0 feeds both the head and MTP module 1
  for (size_t l = blocks_.size(); l-- > 0;) dmain = blocks_[l]->BackwardInput(mb, dmain);
  embed_->BackwardInput(mb, dmain);
}

void Model::BackwardWeight(int mb) {
  for (auto& m : mtp_) m->BackwardWeight(mb);
  head_->BackwardWeight(mb);
  for (auto& b : blocks_) b->BackwardWeight(mb);
  embed_->BackwardWeight(mb);
}

}  // namespace fathom
