// config.json of a DeepSeek-V3 HF directory, both ways.
//
// Writing (export): every model key under its HF name, as DeepSeek-V3's release spells them
// (architectures ["DeepseekV3ForCausalLM"], model_type deepseek_v3, q_lora_rank null without q LoRA,
// rope_theta, rope_scaling null or {"type": "yarn", "rope_type": "yarn", factor, ...},
// num_nextn_predict_layers, ...), the constants fathom implements (hidden_act silu, scoring_func sigmoid,
// topk_method noaux_tc, num_key_value_heads = num_attention_heads, ...), torch_dtype, and for FP8 the
// release's quantization_config. transformers (which maps rope_scaling to its rope_parameters), vLLM and
// SGLang read this form.
//
// Reading (import): config.json as the release writes it or as transformers 5 saves it (rope_parameters
// holding rope_theta and the scaling; "dtype" for torch_dtype; no num_nextn_predict_layers, which is then
// the caller's count of MTP layers found among the weights). Keys fathom has no use for are ignored; keys
// whose value changes the model's mathematics must hold the value fathom implements (the recipe parser's
// rules for the same keys, framework/config.cc), and the model must pass ModelConfig::Validate.
//
// Pure functions; thread safe.
#ifndef FATHOM_CHECKPOINT_HF_CONFIG_H_
#define FATHOM_CHECKPOINT_HF_CONFIG_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "framework/config.h"

namespace fathom {

// The dtype an export writes its weights in.
enum class HfDType { kBF16, kF32, kFP8 };
// "bf16", "f32", "fp8" (InvalidArgument naming the accepted values otherwise).
absl::StatusOr<HfDType> ParseHfDType(const std::string& name);
const char* HfDTypeName(HfDType dtype);

// What config.json says beyond the model: token ids (absent when unknown).
struct HfTokenIds {
  std::optional<int64_t> bos;
  std::optional<int64_t> eos;
};

// config.json of an export of `model` in `dtype` (FP8: torch_dtype bfloat16 plus quantization_config);
// keys sorted, as transformers writes them.
nlohmann::json HfConfigJson(const ModelConfig& model, HfDType dtype, const HfTokenIds& tokens);

// The model config.json describes. `path` names the file in messages; `mtp_layers_found` is the number of
// MTP modules the directory's weights hold (num_hidden_layers + k - 1 layers with an eh_proj), used when
// config.json has no num_nextn_predict_layers. Errors: InvalidArgument naming the file and every missing
// required key, or the first key with a wrong type or a value fathom does not implement.
absl::StatusOr<ModelConfig> ModelConfigFromHfConfig(const nlohmann::json& config, const std::string& path,
                                                    int64_t mtp_layers_found);

// Every key (HF name) on which `hf` (a directory's model) and `recipe` (the recipe's model section)
// differ, "hidden_size: config.json 64, recipe 128"; empty when they agree. initializer_range is not
// compared: it shapes no tensor and no result once the weights are loaded.
std::vector<std::string> ModelConfigMismatches(const ModelConfig& hf, const ModelConfig& recipe);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_HF_CONFIG_H_
