// The model section of a recipe as JSON with HF config.json key names, stored in every checkpoint's
// index.json, and the comparison a resume makes against the recipe it runs.
//
// Pure functions; thread safe.
#ifndef FATHOM_CHECKPOINT_MODEL_CONFIG_JSON_H_
#define FATHOM_CHECKPOINT_MODEL_CONFIG_JSON_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "framework/config.h"

namespace fathom {

// Every ModelConfig field under its HF config.json key ("q_lora_rank": null when 0, "rope_scaling": null
// when the type is none, as HF writes them).
nlohmann::json ModelConfigToJson(const ModelConfig& model);

// How a checkpoint's model (ModelConfigToJson of the run that saved it) differs from `model`:
//   shape_keys  keys that decide which tensors exist and their shapes (vocab_size, hidden_size, ...,
//               n_routed_experts, num_nextn_predict_layers): "hidden_size: checkpoint 64, recipe 128";
//   other_keys  every other differing key (rope_theta, rms_norm_eps, routing constants, ...): the tensors
//               load, but the model computes something else (a warning, or a deliberate change such as a
//               longer context through rope_scaling).
// A key absent from the checkpoint counts as differing ("checkpoint (absent)").
struct ModelConfigDifferences {
  std::vector<std::string> shape_keys;
  std::vector<std::string> other_keys;
};
ModelConfigDifferences CompareModelConfig(const nlohmann::json& saved, const ModelConfig& model);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_MODEL_CONFIG_JSON_H_
