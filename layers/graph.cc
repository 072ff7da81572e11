#include "layers/graph.h"

#include "absl/strings/str_cat.h"
#include "framework/check.h"

namespace fathom {

const char* NodeKindName(NodeKind kind) {
  switch (kind) {
    case NodeKind::kEmbedding:
      return "embedding";
    case NodeKind::kDenseBlock:
      return "dense";
    case NodeKind::kMoeBlock:
      return "moe";
    case NodeKind::kHead:
      return "head";
    case NodeKind::kMtp:
      return "mtp";
  }
  return "?";
}

std::vector<ModelNode> DescribeModelGraph(const ModelConfig& m) {
  FATHOM_CHECK(m.num_hidden_layers >= 1 && m.num_nextn_predict_layers >= 0, "[graph] num_hidden_layers ",
               m.num_hidden_layers, ", num_nextn_predict_layers ", m.num_nextn_predict_layers);
  std::vector<ModelNode> nodes;
  nodes.reserve(static_cast<size_t>(m.num_hidden_layers + m.num_nextn_predict_layers + 2));
  nodes.push_back({.kind = NodeKind::kEmbedding, .name = "embedding", .hf_prefixes = {"model.embed_tokens"}});
  for (int64_t l = 0; l < m.num_hidden_layers; ++l) {
    const bool moe = m.is_moe_layer(l);
    nodes.push_back({.kind = moe ? NodeKind::kMoeBlock : NodeKind::kDenseBlock,
                     .name = absl::StrCat("layers.", l),
                     .layer = l,
                     .moe = moe,
                     .hf_prefixes = {absl::StrCat("model.layers.", l)}});
  }
  nodes.push_back({.kind = NodeKind::kHead, .name = "head", .hf_prefixes = {"model.norm", "lm_head"}});
  // MTP module k is HF layer N + k - 1, and its block is dense or MoE by the main layers' rule.
  for (int64_t k = 1; k <= m.num_nextn_predict_layers; ++k) {
    const int64_t layer = m.num_hidden_layers + k - 1;
    nodes.push_back({.kind = NodeKind::kMtp,
                     .name = absl::StrCat("mtp.", k),
                     .layer = layer,
                     .depth = k,
                     .moe = m.is_moe_layer(layer),
                     .hf_prefixes = {absl::StrCat("model.layers.", layer)}});
  }
  return nodes;
}

}  // namespace fathom
