#include "checkpoint/hf_config.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "checkpoint/model_config_json.h"

namespace fathom {
namespace {

using nlohmann::json;

// Keys of DeepSeek-V3's config.json without a ModelConfig field whose value decides the mathematics; the
// recipe parser (framework/config.cc) holds each to the one value fathom implements, and an import passes
// them through it. Every other key without a ModelConfig field (token ids, dtype, transformers' own
// settings) is ignored.
constexpr const char* kCheckedHfKeys[] = {"hidden_act",        "scoring_func",        "topk_method",
                                          "attention_bias",    "tie_word_embeddings", "num_key_value_heads",
                                          "attention_dropout", "moe_layer_freq"};

absl::Status Invalid(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

// transformers' YaRN truncates the correction range unless `truncate` is false; DeepSeek's code and
// fathom always truncate, so true is dropped (the parser knows no such key) and false refused.
absl::Status DropTruncate(json& rope, const std::string& path, const std::string& where) {
  if (!rope.contains("truncate")) return absl::OkStatus();
  if (rope["truncate"] != json(true)) {
    return Invalid(path, absl::StrCat(where, ".truncate is ", rope["truncate"].dump(),
                                      ": fathom's YaRN truncates the correction range (DeepSeek-V3's rule)"));
  }
  rope.erase("truncate");
  return absl::OkStatus();
}

// rope_scaling as the recipe parser reads it, from transformers 5's rope_parameters ({"rope_theta",
// "rope_type", and the scaling's own keys}); null for rope_type "default".
absl::StatusOr<json> RopeScalingFromParameters(const json& params, const std::string& path) {
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (params.contains(key) && params[key].is_string()) type = params[key].get<std::string>();
  }
  if (type == "default") return json(nullptr);
  json rope = json::object();
  for (const auto& [key, value] : params.items()) {
    if (!value.is_null()) rope[key] = value;  // transformers may write unset parameters as null
  }
  rope.erase("rope_theta");
  rope.erase("type");
  rope["rope_type"] = type;  // any other key stays, for the parser to name
  if (absl::Status s = DropTruncate(rope, path, "rope_parameters"); !s.ok()) return s;
  return rope;
}

}  // namespace

absl::StatusOr<HfDType> ParseHfDType(const std::string& name) {
  if (name == "bf16") return HfDType::kBF16;
  if (name == "f32") return HfDType::kF32;
  if (name == "fp8") return HfDType::kFP8;
  return absl::InvalidArgumentError(absl::StrCat("--dtype must be bf16, fp8 or f32, got '", name, "'"));
}

const char* HfDTypeName(HfDType dtype) {
  switch (dtype) {
    case HfDType::kBF16:
      return "bf16";
    case HfDType::kF32:
      return "f32";
    case HfDType::kFP8:
      return "fp8";
  }
  return "?";
}

json HfConfigJson(const ModelConfig& model, HfDType dtype, const HfTokenIds& tokens) {
  json config = ModelConfigToJson(model);  // every model key, HF-named, q_lora_rank null when 0
  if (config["rope_scaling"].is_object()) {
    // The release writes "type"; transformers since 4.45 also "rope_type". Both, as newer files carry.
    config["rope_scaling"]["rope_type"] = config["rope_scaling"]["type"];
  }
  config["architectures"] = json::array({"DeepseekV3ForCausalLM"});
  config["model_type"] = "deepseek_v3";
  config["hidden_act"] = "silu";
  config["scoring_func"] = "sigmoid";
  config["topk_method"] = "noaux_tc";
  config["num_key_value_heads"] = model.num_attention_heads;
  config["moe_layer_freq"] = 1;
  config["attention_bias"] = false;
  config["attention_dropout"] = 0.0;
  config["tie_word_embeddings"] = false;
  config["use_cache"] = true;
  config["bos_token_id"] = tokens.bos ? json(*tokens.bos) : json(nullptr);
  config["eos_token_id"] = tokens.eos ? json(*tokens.eos) : json(nullptr);
  config["torch_dtype"] = dtype == HfDType::kF32 ? "float32" : "bfloat16";
  if (dtype == HfDType::kFP8) {
    config["quantization_config"] = {{"activation_scheme", "dynamic"},
                                     {"fmt", "e4m3"},
                                     {"quant_method", "fp8"},
                                     {"weight_block_size", {128, 128}}};
  }
  return config;
}

absl::StatusOr<ModelConfig> ModelConfigFromHfConfig(const json& config, const std::string& path,
                                                    int64_t mtp_layers_found) {
  if (!config.is_object()) return Invalid(path, "not a JSON object");
  if (config.contains("model_type") && config["model_type"] != json("deepseek_v3")) {
    return Invalid(path, absl::StrCat("model_type is ", config["model_type"].dump(),
                                      "; fathom reads DeepSeek-V3 models (deepseek_v3)"));
  }
  if (config.contains("quantization_config") && !config["quantization_config"].is_null()) {
    const json& q = config["quantization_config"];
    const bool fp8_blocks = q.is_object() && q.value("quant_method", "") == "fp8" &&
                            q.value("fmt", "e4m3") == "e4m3" &&
                            (!q.contains("weight_block_size") || q["weight_block_size"] == json({128, 128}));
    if (!fp8_blocks) {
      return Invalid(path, absl::StrCat("quantization_config ", q.dump(),
                                        " is not the one fathom reads: quant_method fp8, fmt e4m3, "
                                        "weight_block_size [128, 128]"));
    }
  }

  // The model section a recipe would state, from the keys config.json has.
  json model = json::object();
  std::set<std::string> read;
  const json fathom_keys = ModelConfigToJson(ModelConfig{});
  for (const auto& [key, value] : fathom_keys.items()) read.insert(key);
  for (const char* key : kCheckedHfKeys) read.insert(key);
  for (const auto& [key, value] : config.items()) {
    if (read.count(key)) model[key] = value;
  }
  // transformers 5 saves rope_parameters; it reads rope_scaling first when both are present, and so does
  // fathom.
  if (config.contains("rope_parameters") && config["rope_parameters"].is_object()) {
    const json& params = config["rope_parameters"];
    if (!model.contains("rope_theta") && params.contains("rope_theta"))
      model["rope_theta"] = params["rope_theta"];
    if (!model.contains("rope_scaling") || model["rope_scaling"].is_null()) {
      absl::StatusOr<json> rope = RopeScalingFromParameters(params, path);
      if (!rope.ok()) return rope.status();
      model["rope_scaling"] = *rope;
    }
  }
  if (model.contains("rope_scaling") && model["rope_scaling"].is_object()) {
    if (absl::Status s = DropTruncate(model["rope_scaling"], path, "rope_scaling"); !s.ok()) return s;
  }
  if (!model.contains("num_nextn_predict_layers")) model["num_nextn_predict_layers"] = mtp_layers_found;

  std::vector<std::string> missing;
  for (const std::string& key : RequiredModelKeys()) {
    if (!model.contains(key)) missing.push_back(key);
  }
  if (!missing.empty()) {
    return Invalid(path, absl::StrCat("lacks ", absl::StrJoin(missing, ", "),
                                      "; a DeepSeek-V3 config.json states every shape key of the model"));
  }
  // Parsed as a recipe's model section, so the same rules apply to the same keys (types, the fixed
  // constants, ModelConfig::Validate). The other sections are set so that they accept any model.
  std::string yaml = "model:\n";
  for (const auto& [key, value] : model.items()) absl::StrAppend(&yaml, "  ", key, ": ", value.dump(), "\n");
  absl::StrAppend(&yaml, "train:\n  seq_len: 2\ndata:\n  source: synthetic\n");
  absl::StatusOr<Recipe> recipe = ParseRecipe(yaml, path, {}, RecipeUse::kPlan);
  if (!recipe.ok()) return recipe.status();
  return recipe->model;
}

std::vector<std::string> ModelConfigMismatches(const ModelConfig& hf, const ModelConfig& recipe) {
  const json a = ModelConfigToJson(hf), b = ModelConfigToJson(recipe);
  std::vector<std::string> out;
  for (const auto& [key, value] : b.items()) {
    if (key == "initializer_range") continue;
    const json theirs = a.contains(key) ? a[key] : json(nullptr);
    if (theirs != value)
      out.push_back(absl::StrCat(key, ": config.json ", theirs.dump(), ", recipe ", value.dump()));
  }
  return out;
}

}  // namespace fathom
