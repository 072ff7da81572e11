#include "layers/model.h"

#include <random>

#include "framework/kernels/cpu/cross_entropy.h"
#include "framework/ops.h"

namespace fathom {

bool ModelSlice::Holds(const ModelNode& node) const {
  switch (node.kind) {
    case NodeKind::kEmbedding:
      return embedding;
    case NodeKind::kDenseBlock:
    case NodeKind::kMoeBlock:
      return node.layer >= first_layer && (end_layer < 0 || node.layer < end_layer);
    case NodeKind::kHead:
    case NodeKind::kMtp:
      return head;
  }
  return false;
}

Model::Model(const ModelConfig& cfg, const LossConfig& loss, ModelSlice slice)
    : cfg_(cfg), loss_(loss), slice_(std::move(slice)) {
  if (slice_.end_layer < 0) slice_.end_layer = cfg.num_hidden_layers;
  FATHOM_CHECK(0 <= slice_.first_layer && slice_.first_layer <= slice_.end_layer &&
                   slice_.end_layer <= cfg.num_hidden_layers,
               "model slice layers [", slice_.first_layer, ", ", slice_.end_layer, ") of ",
               cfg.num_hidden_layers);
  FATHOM_CHECK(
      slice_.exchange != nullptr || slice_.experts.count < 0 || slice_.experts.count == cfg.n_routed_experts,
      "model slice holds ", slice_.experts.count, " of ", cfg.n_routed_experts,
      " routed experts but has no expert exchange");
  const bool mtp = cfg.num_nextn_predict_layers > 0;
  // The layers are made in the graph's order, so the parameter table's layout follows it too.
  for (const ModelNode& node : DescribeModelGraph(cfg)) {
    const int first = params_.size();
    switch (node.kind) {
      case NodeKind::kEmbedding:
        // The last stage keeps its own copy of the embedding for MTP even when it is not the first stage.
        if (slice_.embedding || (slice_.head && mtp)) {
          embed_ =
              std::make_unique<Embedding>(params_, "model.embed_tokens", cfg.vocab_size, cfg.hidden_size);
        }
        break;
      case NodeKind::kDenseBlock:
      case NodeKind::kMoeBlock:
        if (!slice_.Holds(node)) continue;
        blocks_.push_back(std::make_unique<DecoderBlock>(params_, cfg, static_cast<int>(node.layer),
                                                         slice_.experts, node.moe ? slice_.exchange : nullptr));
        break;
      case NodeKind::kHead:
        if (!slice_.Holds(node)) continue;
        head_ = std::make_unique<OutputHead>(params_, "model.norm", cfg.vocab_size, cfg.hidden_size,
                                             cfg.rms_norm_eps, /*lm_head_id=*/-1, loss.ignore_index);
        break;
      case NodeKind::kMtp:
        if (!slice_.Holds(node)) continue;
        mtp_.push_back(std::make_unique<MtpModule>(
            params_, cfg, static_cast<int>(node.depth), embed_->weight_id(), head_->lm_head_id(),
            loss.ignore_index, slice_.experts, node.moe ? slice_.exchange : nullptr));
        break;
    }
    if (slice_.Holds(node)) RecordNode(node, first);
  }
}

void Model::RecordNode(const ModelNode& node, int first_param) {
  GraphNode g;
  static_cast<ModelNode&>(g) = node;
  for (int id = first_param; id < params_.size(); ++id) g.param_ids.push_back(id);
  graph_.push_back(std::move(g));
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

LossNormalizers Model::Normalizers(const std::vector<MicroBatch>& batches,
                                   int64_t micro_batches_in_step) const {
  LossNormalizers n;
  n.main_tokens = 0;
  const size_t depth = static_cast<size_t>(cfg_.num_nextn_predict_layers);
  n.mtp_tokens.assign(depth, 0);
  for (const MicroBatch& b : batches) {
    // Loss normalisers are host statistics over the loader's host labels.
    FATHOM_CHECK(b.labels.device() == Device::kCPU, "[model] Normalizers counts HOST labels, got labels on ",
                 DeviceName(b.labels.device()));
    n.main_tokens += static_cast<double>(cpu::CountValidLabels(b.labels, loss_.ignore_index));
    for (size_t k = 0; k < depth; ++k) {
      Tensor ids, labels;
      MtpInputs(b.input_ids, b.labels, static_cast<int>(k) + 1, loss_.ignore_index, &ids, &labels);
      n.mtp_tokens[k] += static_cast<double>(cpu::CountValidLabels(labels, loss_.ignore_index));
    }
  }
  n.balance_weight = loss_.balance_alpha / static_cast<double>(micro_batches_in_step);
  return n;
}

double MicroBatchStats::balance_sum() const {
  double sum = 0;
  for (const MoeStats& m : moe) sum += m.balance;
  return sum;
}

StageOutput Model::ForwardStage(int mb, const MicroBatch& batch, const Tensor& input,
                                const LossNormalizers& norm) {
  StageOutput out;
  ForwardPass(mb, batch, input, norm, &out)->RunToEnd();
  return out;
}

MicroBatchStats Model::Forward(int mb, const MicroBatch& batch, const LossNormalizers& norm) {
  FATHOM_CHECK(slice_.embedding && slice_.head, "Model::Forward runs a whole model; use ForwardStage");
  return ForwardStage(mb, batch, Tensor(), norm).stats;
}

Tensor Model::BackwardInputStage(int mb, const Tensor& grad_output) {
  Tensor dx;
  BackwardPass(mb, grad_output, /*weight=*/false, &dx)->RunToEnd();
  return dx;
}

void Model::BackwardWeight(int mb) {
  for (auto& m : mtp_) m->BackwardWeight(mb);
  if (head_) head_->BackwardWeight(mb);
  for (auto& b : blocks_) b->BackwardWeight(mb);
  if (slice_.embedding) embed_->BackwardWeight(mb);
}

}  // namespace fathom
