// config.json both ways (checkpoint/hf_config.h): fathom's export reads back as the same model; DeepSeek-V3's
// released config.json and transformers 5's saved form read as the models they describe; configs fathom
// does not compute are refused naming the key; a model that differs from the recipe names every key.
#include "checkpoint/hf_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "checkpoint/model_config_json.h"
#include "tests/checkpoint/hf_test_support.h"

namespace fathom {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

// DeepSeek-V3's config.json as released (deepseek-ai/DeepSeek-V3; golden data, copied key by key).
const char kReleaseConfig[] = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
  "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
  "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432,
  "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3",
  "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
  "n_shared_experts": 1, "norm_topk_prob": true, "num_attention_heads": 128, "num_experts_per_tok": 8,
  "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "pretraining_tp": 1,
  "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 4096, "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": true,
  "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
  "transformers_version": "4.33.1", "use_cache": true, "v_head_dim": 128, "vocab_size": 129280})";

TEST(HfConfig, ExportReadsBackAsTheSameModel) {
  for (bool yarn : {true, false}) {
    for (int64_t q_lora : {0, 40}) {
      ModelConfig m = testing::HfTestRecipe().model;
      m.q_lora_rank = q_lora;
      m.rms_norm_eps = 1e-5;
      m.norm_topk_prob = !yarn;
      if (!yarn) m.rope_scaling = RopeScalingConfig{};
      for (HfDType dtype : {HfDType::kBF16, HfDType::kFP8, HfDType::kF32}) {
        const json config = HfConfigJson(m, dtype, {std::nullopt, 7});
        EXPECT_EQ(config["architectures"], json({"DeepseekV3ForCausalLM"}));
        EXPECT_EQ(config["model_type"], "deepseek_v3");
        EXPECT_EQ(config["eos_token_id"], 7);
        EXPECT_TRUE(config["bos_token_id"].is_null());
        EXPECT_EQ(config.contains("quantization_config"), dtype == HfDType::kFP8);
        EXPECT_EQ(config["torch_dtype"], dtype == HfDType::kF32 ? "float32" : "bfloat16");
        if (yarn) {
          EXPECT_EQ(config["rope_scaling"]["rope_type"], "yarn");
        }
        absl::StatusOr<ModelConfig> back = ModelConfigFromHfConfig(config, "config.json", 0);
        ASSERT_TRUE(back.ok()) << back.status();
        EXPECT_EQ(ModelConfigToJson(*back), ModelConfigToJson(m));
        EXPECT_TRUE(ModelConfigMismatches(*back, m).empty());
      }
    }
  }
}

TEST(HfConfig, ReadsDeepSeekV3sReleasedConfig) {
  absl::StatusOr<ModelConfig> m = ModelConfigFromHfConfig(json::parse(kReleaseConfig), "config.json", 0);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->hidden_size, 7168);
  EXPECT_EQ(m->num_hidden_layers, 61);
  EXPECT_EQ(m->q_lora_rank, 1536);
  EXPECT_EQ(m->n_routed_experts, 256);
  EXPECT_EQ(m->num_nextn_predict_layers, 1);
  EXPECT_EQ(m->rope_scaling.type, "yarn");
  EXPECT_EQ(m->rope_scaling.factor, 40);
  EXPECT_EQ(m->rope_scaling.mscale_all_dim, 1.0);
  EXPECT_EQ(m->routed_scaling_factor, 2.5);
}

TEST(HfConfig, ReadsTransformersFiveSavedForm) {
  // save_pretrained writes rope_parameters (rope_theta inside), "dtype", derived keys, and no
  // num_nextn_predict_layers.
  ModelConfig m = testing::HfTestRecipe().model;
  json config = HfConfigJson(m, HfDType::kF32, {});
  config.erase("rope_scaling");
  config.erase("rope_theta");
  config.erase("num_nextn_predict_layers");
  config.erase("torch_dtype");
  config["dtype"] = "float32";
  config["qk_head_dim"] = 24;
  config["head_dim"] = 8;
  config["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 5000.0},
                               {"factor", 4.0},       {"original_max_position_embeddings", 16},
                               {"beta_fast", 32.0},   {"beta_slow", 1.0},
                               {"mscale", 0.707},     {"mscale_all_dim", 1.0},
                               {"truncate", true}};
  absl::StatusOr<ModelConfig> back = ModelConfigFromHfConfig(config, "config.json", /*mtp_layers_found=*/2);
  ASSERT_TRUE(back.ok()) << back.status();
  m.rope_theta = 5000;
  m.num_nextn_predict_layers = 2;
  EXPECT_EQ(ModelConfigToJson(*back), ModelConfigToJson(m));

  config["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  back = ModelConfigFromHfConfig(config, "config.json", 0);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->rope_scaling.type, "none");
  EXPECT_EQ(back->num_nextn_predict_layers, 0);
}

TEST(HfConfig, RefusesWhatFathomDoesNotComputeNamingTheKey) {
  const json good = HfConfigJson(testing::HfTestRecipe().model, HfDType::kBF16, {});
  struct Case {
    const char* key;
    json value;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"model_type", "llama", "model_type is \"llama\""},
      {"hidden_act", "gelu", "hidden_act"},
      {"scoring_func", "softmax", "scoring_func"},
      {"tie_word_embeddings", true, "tie_word_embeddings"},
      {"num_key_value_heads", 1, "num_key_value_heads"},
      {"quantization_config", {{"quant_method", "gptq"}}, "quantization_config"},
      {"hidden_size", "wide", "hidden_size"},
      {"n_group", 3, "n_group"},  // 4 experts do not split into 3 groups
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key);
    json config = good;
    config[c.key] = c.value;
    absl::StatusOr<ModelConfig> m = ModelConfigFromHfConfig(config, "/x/config.json", 0);
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(m.status().message()), HasSubstr("/x/config.json"));
    EXPECT_THAT(std::string(m.status().message()), HasSubstr(c.expect));
  }
  json config = good;
  config.erase("hidden_size");
  config.erase("kv_lora_rank");
  absl::StatusOr<ModelConfig> m = ModelConfigFromHfConfig(config, "/x/config.json", 0);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("lacks hidden_size, kv_lora_rank"));
  config = good;
  config["rope_scaling"]["truncate"] = false;
  m = ModelConfigFromHfConfig(config, "/x/config.json", 0);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("rope_scaling.truncate is false"));
}

TEST(HfConfig, MismatchesNameEveryDifferingKey) {
  const ModelConfig a = testing::HfTestRecipe().model;
  ModelConfig b = a;
  EXPECT_TRUE(ModelConfigMismatches(a, b).empty());
  b.hidden_size = 128;
  b.rope_theta = 20000;
  b.q_lora_rank = 0;
  b.initializer_range = 0.5;  // not compared
  const std::vector<std::string> d = ModelConfigMismatches(a, b);
  ASSERT_EQ(d.size(), 3u) << ::testing::PrintToString(d);
  EXPECT_THAT(d, ::testing::Contains("hidden_size: config.json 136, recipe 128"));
  EXPECT_THAT(d, ::testing::Contains("q_lora_rank: config.json 40, recipe null"));
  EXPECT_THAT(d, ::testing::Contains(HasSubstr("rope_theta")));
}

}  // namespace
}  // namespace fathom
