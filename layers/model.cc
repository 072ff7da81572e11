#include "layers/model.h"

#include <algorithm>
#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
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
                                                         slice_.experts,
                                                         node.moe ? slice_.exchange : nullptr));
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

// Each normal-initialised tensor (each expert of a stacked one) draws from its own stream, seeded by its
// name, so every rank and every layout draws the same values; a slice longer than kInitChunk continues in
// further streams, one per chunk (the first keeps the slice's own seed). The chunks are independent, so they
// are drawn on all cores: recipes/small.yaml's 2.26B values took about 35 s on one core.
void InitParameters(ParamTable& table, double init_std, uint64_t seed) {
  constexpr int64_t kInitChunk = int64_t{1} << 22;
  struct Work {
    Tensor v;
    uint64_t stream;
    int64_t begin, end;
  };
  std::vector<Work> work;
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
      const std::string name = stacked ? ExpertName(s.name, s.expert_begin + e) : s.name;
      for (int64_t at = 0; at < per; at += kInitChunk) {
        const uint64_t stream =
            at == 0 ? StreamSeed(seed, name) : StreamSeed(seed, absl::StrCat(name, "#", at / kInitChunk));
        work.push_back({v, stream, e * per + at, e * per + std::min(per, at + kInitChunk)});
      }
    }
  }
  std::atomic<size_t> next{0};
  auto drain = [&] {
    for (size_t i = next++; i < work.size(); i = next++) {
      const Work& w = work[i];
      std::mt19937_64 rng(w.stream);
      std::normal_distribution<double> nd(0.0, init_std);
      DispatchFloat(w.v.dtype(), "init", [&](auto tag) {
        using T = decltype(tag);
        T* p = w.v.data<T>();
        for (int64_t j = w.begin; j < w.end; ++j) p[j] = static_cast<T>(nd(rng));
      });
    }
  };
  const size_t threads =
      std::min<size_t>({work.size(), std::max(1u, std::thread::hardware_concurrency()), 32});
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(drain);
  drain();
  for (std::thread& t : pool) t.join();
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

double HostMicroBatchStats::balance_sum() const {
  double sum = 0;
  for (double b : balance) sum += b;
  return sum;
}

HostMicroBatchStats ToHost(const MicroBatchStats& stats) {
  auto host = [](const Tensor& t) { return t.device() == Device::kCPU ? t : ops::To(t, Device::kCPU); };
  HostMicroBatchStats h;
  if (stats.main_ce.defined()) h.main_ce = host(stats.main_ce).Item(0);
  for (const Tensor& t : stats.mtp_ce) h.mtp_ce.push_back(host(t).Item(0));
  for (const MoeStats& m : stats.moe) {
    h.balance.push_back(m.balance.defined() ? host(m.balance).Item(0) : 0.0);
    const Tensor c = host(m.expert_counts);
    h.expert_counts.emplace_back(c.data<int64_t>(), c.data<int64_t>() + c.numel());
  }
  return h;
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
