// The one description of the model: DescribeModelGraph's names and HF prefixes, and the layer graph (Model)
// and the cost graph (BuildCostGraph) built from it agreeing node by node.
#include "layers/graph.h"

#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "layers/cost.h"
#include "layers/model.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

// A small random DeepSeek-V3-like config; `dense` decoder layers come first, `mtp` MTP modules last.
ModelConfig RandomConfig(std::mt19937_64& rng, int64_t dense, int64_t mtp) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  ModelConfig m;
  m.vocab_size = 64 * pick(1, 4);
  m.hidden_size = 16 * pick(1, 3);
  m.num_hidden_layers = pick(2, 4);
  m.first_k_dense_replace = std::min<int64_t>(dense, m.num_hidden_layers);
  m.intermediate_size = 8 * pick(2, 4);
  m.moe_intermediate_size = 8 * pick(1, 2);
  m.n_routed_experts = 4 * pick(1, 2);
  m.num_experts_per_tok = pick(1, 2);
  m.n_shared_experts = pick(0, 1);
  m.num_attention_heads = pick(1, 2);
  m.q_lora_rank = 16 * pick(0, 1);
  m.kv_lora_rank = 16;
  m.qk_nope_head_dim = 8;
  m.qk_rope_head_dim = 8;
  m.v_head_dim = 8;
  m.num_nextn_predict_layers = mtp;
  EXPECT_TRUE(m.Validate().ok()) << m.Validate();
  return m;
}

TEST(ModelGraph, NamesLayersAndPrefixesOfDeepSeekV3) {
  ModelConfig m;
  m.num_hidden_layers = 61;
  m.first_k_dense_replace = 3;
  m.num_nextn_predict_layers = 1;
  const std::vector<ModelNode> g = DescribeModelGraph(m);
  ASSERT_EQ(g.size(), 1u + 61 + 1 + 1);
  EXPECT_EQ(g[0].kind, NodeKind::kEmbedding);
  EXPECT_EQ(g[0].name, "embedding");
  EXPECT_EQ(g[0].hf_prefixes, std::vector<std::string>{"model.embed_tokens"});
  EXPECT_EQ(g[3].kind, NodeKind::kDenseBlock);  // layers 0, 1, 2 dense
  EXPECT_EQ(g[4].kind, NodeKind::kMoeBlock);
  EXPECT_EQ(g[4].name, "layers.3");
  EXPECT_EQ(g[4].layer, 3);
  EXPECT_TRUE(g[4].moe);
  EXPECT_FALSE(g[3].moe);
  EXPECT_EQ(g[4].hf_prefixes, std::vector<std::string>{"model.layers.3"});
  EXPECT_EQ(g[62].kind, NodeKind::kHead);
  EXPECT_EQ(g[62].hf_prefixes, (std::vector<std::string>{"model.norm", "lm_head"}));
  // The MTP module of depth 1 is HF layer 61, a MoE layer by the same rule.
  EXPECT_EQ(g[63].kind, NodeKind::kMtp);
  EXPECT_EQ(g[63].name, "mtp.1");
  EXPECT_EQ(g[63].depth, 1);
  EXPECT_EQ(g[63].layer, 61);
  EXPECT_TRUE(g[63].moe);
  EXPECT_EQ(g[63].hf_prefixes, std::vector<std::string>{"model.layers.61"});
}

// Model's nodes and the cost nodes agree by name, kind, layer and depth, and every parameter a node
// registered carries one of the node's HF prefixes; first_k_dense_replace 0 (no dense layer) and MTP
// depths 0..2 included.
TEST(ModelGraph, LayerGraphAndCostGraphAgree) {
  std::mt19937_64 rng(testing::TestSeed());
  for (int64_t dense : {0, 1, 2}) {
    for (int64_t mtp : {0, 1, 2}) {
      const ModelConfig m = RandomConfig(rng, dense, mtp);
      SCOPED_TRACE("first_k_dense_replace " + std::to_string(dense) + ", MTP depth " + std::to_string(mtp));
      Model model(m, LossConfig{});
      const std::vector<NodeCost> cost = BuildCostGraph(m, 32);
      ASSERT_EQ(model.graph().size(), cost.size());
      for (size_t i = 0; i < cost.size(); ++i) {
        const GraphNode& node = model.graph()[i];
        SCOPED_TRACE(node.name);
        EXPECT_EQ(node.name, cost[i].name);
        EXPECT_EQ(node.kind, cost[i].kind);
        EXPECT_EQ(node.layer, cost[i].layer);
        EXPECT_EQ(node.depth, cost[i].depth);
        EXPECT_EQ(node.moe, cost[i].moe);
        ASSERT_FALSE(node.param_ids.empty());
        for (int id : node.param_ids) {
          const std::string& name = model.params().spec(id).name;
          bool prefixed = false;
          for (const std::string& prefix : node.hf_prefixes) prefixed |= absl::StartsWith(name, prefix + ".");
          EXPECT_TRUE(prefixed) << name;
        }
      }
      int64_t moe_blocks = 0;
      for (const NodeCost& n : cost) moe_blocks += n.kind == NodeKind::kMoeBlock;
      EXPECT_EQ(moe_blocks, m.num_hidden_layers - m.first_k_dense_replace);
    }
  }
}

// A pipeline slice holds exactly the nodes ModelSlice::Holds names, in the graph's order.
TEST(ModelGraph, SlicesHoldTheirNodes) {
  std::mt19937_64 rng(testing::TestSeed() + 1);
  const ModelConfig m = RandomConfig(rng, 1, 1);
  const std::vector<ModelNode> all = DescribeModelGraph(m);
  for (int64_t cut = 1; cut < m.num_hidden_layers; ++cut) {
    for (bool first : {true, false}) {
      ModelSlice slice;
      slice.embedding = first;
      slice.head = !first;
      slice.first_layer = first ? 0 : cut;
      slice.end_layer = first ? cut : -1;
      Model model(m, LossConfig{}, slice);
      std::vector<std::string> expected, got;
      for (const ModelNode& n : all) {
        if (slice.Holds(n)) expected.push_back(n.name);
      }
      for (const GraphNode& n : model.graph()) got.push_back(n.name);
      EXPECT_EQ(got, expected) << "cut " << cut << (first ? " first" : " last");
      EXPECT_EQ(got.front(), first ? "embedding" : "layers." + std::to_string(cut));
    }
  }
}

}  // namespace
}  // namespace fathom
