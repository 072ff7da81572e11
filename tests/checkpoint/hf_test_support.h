// Test support for HF export and import: a model whose widths cross the 128-wide FP8 blocks, a fathom
// checkpoint of it holding fresh random values, and hand-built HF directories for the bad-input cases.
#ifndef FATHOM_TESTS_CHECKPOINT_HF_TEST_SUPPORT_H_
#define FATHOM_TESTS_CHECKPOINT_HF_TEST_SUPPORT_H_

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_writer.h"
#include "checkpoint/hf_config.h"
#include "checkpoint/model_config_json.h"
#include "checkpoint/param_slices.h"
#include "checkpoint/safetensors.h"
#include "framework/file_io.h"
#include "layers/model.h"
#include "parallel/local_communicator.h"

namespace fathom::testing {

// Three layers (one dense), q LoRA, 4 routed experts and a shared one, MTP depth 1; hidden 136, the dense
// MLP 260 and kv_lora 130 wide, so FP8 blocks come whole and partial in both directions.
inline Recipe HfTestRecipe() {
  Recipe r;
  ModelConfig& m = r.model;
  m.vocab_size = 160;
  m.hidden_size = 136;
  m.intermediate_size = 260;
  m.moe_intermediate_size = 72;
  m.num_hidden_layers = 3;
  m.first_k_dense_replace = 1;
  m.num_attention_heads = 2;
  m.q_lora_rank = 40;
  m.kv_lora_rank = 130;
  m.qk_nope_head_dim = 16;
  m.qk_rope_head_dim = 8;
  m.v_head_dim = 16;
  m.n_routed_experts = 4;
  m.n_shared_experts = 1;
  m.num_experts_per_tok = 2;
  m.n_group = 2;
  m.topk_group = 1;
  m.routed_scaling_factor = 2.5;
  m.num_nextn_predict_layers = 1;
  m.max_position_embeddings = 64;
  m.rope_scaling.type = "yarn";
  m.rope_scaling.factor = 4;
  m.rope_scaling.original_max_position_embeddings = 16;
  m.rope_scaling.mscale = 0.707;
  m.rope_scaling.mscale_all_dim = 1.0;
  r.train.seq_len = 16;
  r.data.source = "synthetic";
  r.data.eod_token_id = 3;
  return r;
}

// Fills every value of `table` with N(0, 1) times a per-tensor magnitude 10^U(-3, 1): FP8 blocks then see
// very different scales, and no value is zero.
inline void FillRandomValues(ParamTable& table, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> exponent(-3.0, 1.0);
  for (int id = 0; id < table.size(); ++id) {
    Tensor v = table.value(id);
    const double scale = std::pow(10.0, exponent(rng));
    for (int64_t i = 0; i < v.numel(); ++i) {
      double x = normal(rng) * scale;
      if (x == 0) x = scale;
      v.SetItem(i, x);
    }
  }
}

// Saves `table` (the whole model of `recipe`) as the values of checkpoint step `step` in `dir`; returns its
// path.
inline std::string SaveValues(const std::string& dir, const Recipe& recipe, const ParamTable& table,
                              int64_t step = 7) {
  LocalCommunicator comm("world");
  CheckpointWriter writer(comm, dir, 0);
  CheckpointMetadata meta;
  meta.step = step;
  meta.lr_schedule_step = step;
  meta.model = ModelConfigToJson(recipe.model);
  meta.recipe = ResolvedRecipeYaml(recipe);
  std::vector<ShardSource> sources = {{kKindValue, TablePieces(table, 0, table.numel()), table.values(), 0}};
  absl::StatusOr<CheckpointSaveStats> stats = writer.Save(sources, meta);
  EXPECT_TRUE(stats.ok()) << stats.status();
  return stats.ok() ? stats->path : "";
}

// A model of `recipe` with FillRandomValues' values (then `adjust`, when given, may rescale them), saved
// by SaveValues as checkpoint step 7 in `dir`; returns its path.
inline std::string SaveRandomModel(const std::string& dir, const Recipe& recipe, std::mt19937_64& rng,
                                   const std::function<void(ParamTable&)>& adjust = {}) {
  Model model(recipe.model, recipe.loss);
  model.Finalize(DType::kF32, 1);
  FillRandomValues(model.params(), rng);
  if (adjust) adjust(model.params());
  return SaveValues(dir, recipe, model.params());
}

// The JSON document in the file at `path` (parse errors throw, failing the test).
inline nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

// A hand-built HF directory: config.json, the tensors in `shards` (one safetensors file each; named
// model-0000i-of-0000N) and the index, or one model.safetensors when `single_file`.
inline void WriteHfDirectory(const std::string& dir, const nlohmann::json& config,
                             const std::vector<std::vector<std::pair<std::string, Tensor>>>& shards,
                             bool single_file = false) {
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(WriteFileAtomically(dir + "/config.json", config.dump(2)).ok());
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name = single_file ? "model.safetensors"
                                         : "model-0000" + std::to_string(i + 1) + "-of-0000" +
                                               std::to_string(shards.size()) + ".safetensors";
    absl::Status s = WriteSafetensors(dir + "/" + name, shards[i], {{"format", "pt"}});
    ASSERT_TRUE(s.ok()) << s;
    for (const auto& [tensor, value] : shards[i]) weight_map[tensor] = name;
  }
  if (!single_file) {
    const nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
    ASSERT_TRUE(WriteFileAtomically(dir + "/model.safetensors.index.json", index.dump()).ok());
  }
}

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_CHECKPOINT_HF_TEST_SUPPORT_H_
