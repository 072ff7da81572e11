// TablePieces: flat table ranges -> pieces of HF tensors, on tables of layers/model.h slices (pipeline
// stages, expert shards). Checked against checkpoint/hf_params.h's CollectHfTensors, which names and
// slices the same tables independently.
#include "checkpoint/param_slices.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "checkpoint/hf_params.h"
#include "framework/config.h"
#include "layers/model.h"
#include "tests/checkpoint/checkpoint_test_support.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

ModelConfig SmallModel() {
  ModelConfig m;
  m.vocab_size = 40;
  m.hidden_size = 12;
  m.intermediate_size = 20;
  m.moe_intermediate_size = 6;
  m.num_hidden_layers = 3;
  m.first_k_dense_replace = 1;
  m.num_attention_heads = 2;
  m.q_lora_rank = 8;
  m.kv_lora_rank = 6;
  m.qk_nope_head_dim = 4;
  m.qk_rope_head_dim = 2;
  m.v_head_dim = 4;
  m.n_routed_experts = 6;
  m.n_shared_experts = 1;
  m.num_experts_per_tok = 2;
  m.num_nextn_predict_layers = 1;
  return m;
}

// Every HF tensor of the table by name (values, the table's dtype).
std::map<std::string, Tensor> HfTensors(const ParamTable& table) {
  std::map<std::string, Tensor> out;
  for (auto& [name, t] : CollectHfTensors(table, /*grads=*/false)) out[name] = t;
  return out;
}

// Each piece's elements, read at its table offset, are the HF tensor's elements [begin, end).
void ExpectPiecesMatchHfTensors(const ParamTable& table, const std::vector<TensorPiece>& pieces) {
  std::map<std::string, Tensor> hf = HfTensors(table);
  const float* values = table.values().data<float>();
  for (const TensorPiece& p : pieces) {
    auto it = hf.find(p.name);
    ASSERT_NE(it, hf.end()) << p.name;
    EXPECT_EQ(it->second.shape(), p.shape) << p.name;
    ASSERT_TRUE(0 <= p.begin && p.begin < p.end && p.end <= it->second.numel()) << p.name;
    const float* want = it->second.data<float>() + p.begin;
    for (int64_t i = 0; i < p.numel(); ++i) {
      ASSERT_EQ(values[p.table_offset + i], want[i]) << p.name << " element " << p.begin + i;
    }
  }
}

TEST(ParamSlicesTest, WholeTableIsEveryHfTensorOnceWithoutPadding) {
  std::mt19937_64 rng(testing::TestSeed());
  Model model(SmallModel(), LossConfig{});
  model.Finalize(DType::kF32, rng());
  const ParamTable& table = model.params();
  std::vector<TensorPiece> pieces = TablePieces(table, 0, table.numel());
  std::map<std::string, Tensor> hf = HfTensors(table);
  ASSERT_EQ(pieces.size(), hf.size());
  int64_t elements = 0;
  for (const TensorPiece& p : pieces) {
    EXPECT_EQ(p.begin, 0) << p.name;
    EXPECT_EQ(p.end, hf.at(p.name).numel()) << p.name;
    elements += p.numel();
  }
  int64_t spec_elements = 0;
  for (const ParamSpec& s : table.specs()) spec_elements += NumElements(s.shape);
  EXPECT_EQ(elements, spec_elements);
  EXPECT_LT(elements, table.numel()) << "the table pads tensors to 16 elements; pieces must skip it";
  for (size_t i = 1; i < pieces.size(); ++i) EXPECT_LT(pieces[i - 1].table_offset, pieces[i].table_offset);
  // Per-expert HF names, as transformers names them.
  EXPECT_TRUE(hf.count("model.layers.1.mlp.experts.5.down_proj.weight"));
  EXPECT_EQ(hf.at("model.layers.1.mlp.experts.5.down_proj.weight").shape(), (Shape{12, 6}));
  ExpectPiecesMatchHfTensors(table, pieces);
}

TEST(ParamSlicesTest, RandomCutsPartitionTheTensorsOfStageAndExpertSlices) {
  std::mt19937_64 rng(testing::TestSeed());
  const uint64_t seed = rng();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (bool last_stage : {false, true}) {
    // A middle stage with experts [2, 4), and the last stage (head, MTP module, the embedding's copy) with
    // experts [4, 6).
    ModelSlice slice = last_stage ? testing::TableSlice(SmallModel(), 2, 3, 4, 2)
                                  : testing::TableSlice(SmallModel(), 1, 2, 2, 2);
    Model model(SmallModel(), LossConfig{}, slice);
    model.Finalize(DType::kF32, seed);
    const ParamTable& table = model.params();
    // Random cut points: ZeRO-like shards that cross tensor and expert boundaries.
    std::uniform_int_distribution<int64_t> cut(0, table.numel());
    std::vector<int64_t> cuts = {0, table.numel(), cut(rng), cut(rng), cut(rng), cut(rng), cut(rng)};
    std::sort(cuts.begin(), cuts.end());
    std::map<std::string, int64_t> covered;  // elements per HF tensor over all shards
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      std::vector<TensorPiece> pieces = TablePieces(table, cuts[i], cuts[i + 1]);
      for (const TensorPiece& p : pieces) {
        EXPECT_GE(p.table_offset, cuts[i]);
        EXPECT_LE(p.table_offset + p.numel(), cuts[i + 1]);
        covered[p.name] += p.numel();
      }
      ExpectPiecesMatchHfTensors(table, pieces);
    }
    std::map<std::string, Tensor> hf = HfTensors(table);
    ASSERT_EQ(covered.size(), hf.size());
    for (const auto& [name, t] : hf) EXPECT_EQ(covered[name], t.numel()) << name;
    // The expert names are the global ids the slice holds.
    const std::string first = "model.layers." + std::to_string(slice.first_layer) + ".mlp.experts." +
                              std::to_string(slice.experts.begin) + ".gate_proj.weight";
    EXPECT_TRUE(hf.count(first)) << first;
    EXPECT_FALSE(
        hf.count("model.layers." + std::to_string(slice.first_layer) + ".mlp.experts.0.gate_proj.weight"));
  }
}

TEST(ParamSlicesTest, TrainableOnlySkipsTheExpertBias) {
  Model model(SmallModel(), LossConfig{});
  model.Finalize(DType::kF32, 7);
  const ParamTable& table = model.params();
  std::vector<TensorPiece> all = TablePieces(table, 0, table.numel());
  std::vector<TensorPiece> trainable = TablePieces(table, 0, table.numel(), PieceFilter::kTrainableOnly);
  auto is_bias = [](const TensorPiece& p) {
    return p.name.find("e_score_correction_bias") != std::string::npos;
  };
  EXPECT_TRUE(std::any_of(all.begin(), all.end(), is_bias));
  EXPECT_FALSE(std::any_of(trainable.begin(), trainable.end(), is_bias));
  for (const TensorPiece& p : all) EXPECT_EQ(p.trainable, !is_bias(p)) << p.name;
  EXPECT_TRUE(TablePieces(table, 5, 5).empty());
}

}  // namespace
}  // namespace fathom
