// The one description of the DeepSeek-V3 model graph (DESIGN.md idea 2): the nodes a ModelConfig makes,
// in execution order,
//   embedding                      "embedding"   HF "model.embed_tokens"
//   decoder blocks L = 0 .. N-1     "layers.L"    HF "model.layers.L"   dense for L < first_k_dense_replace,
//                                                                        MoE after
//   head (final norm, lm_head,     "head"        HF "model.norm", "lm_head"
//         cross-entropy)
//   MTP modules k = 1 .. D          "mtp.k"       HF "model.layers.{N+k-1}" (the report's depth k, 1-based)
// Everything that walks the model walks this list: Model (layers/model.h) builds its layers and its
// GraphNodes from it, the cost model (layers/cost.h) costs each of its nodes, the planner and simulator
// (parallel/) cut it into stages, the checkpoint code names tensors by its HF prefixes. Names and kinds
// are therefore the same everywhere by construction. Pure function of the config; no state.
#ifndef FATHOM_LAYERS_GRAPH_H_
#define FATHOM_LAYERS_GRAPH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "framework/config.h"

namespace fathom {

enum class NodeKind { kEmbedding, kDenseBlock, kMoeBlock, kHead, kMtp };
const char* NodeKindName(NodeKind kind);  // "embedding", "dense", "moe", "head", "mtp"

struct ModelNode {
  NodeKind kind = NodeKind::kEmbedding;
  std::string name;    // "embedding", "layers.3", "head", "mtp.1"
  int64_t layer = -1;  // HF layer index: L for block L, N + k - 1 for MTP module k; -1 otherwise
  int64_t depth = 0;   // MTP depth k (1-based) for kMtp; 0 otherwise
  bool moe = false;    // the node's decoder block has routed experts (kMoeBlock; kMtp by the same rule)
  std::vector<std::string> hf_prefixes;  // the HF parameter name prefixes the node owns (no trailing dot)

  bool is_block() const { return kind == NodeKind::kDenseBlock || kind == NodeKind::kMoeBlock; }
};

// The nodes of `model` in execution order (see the table above). REQUIRES: model.Validate().ok() for the
// counts it reads (num_hidden_layers >= 1, num_nextn_predict_layers >= 0).
std::vector<ModelNode> DescribeModelGraph(const ModelConfig& model);

}  // namespace fathom

#endif  // FATHOM_LAYERS_GRAPH_H_
