#include "checkpoint/model_config_json.h"

#include <set>

#include "absl/strings/str_cat.h"

namespace fathom {

using nlohmann::json;

json ModelConfigToJson(const ModelConfig& m) {
  json rope = nullptr;
  if (m.rope_scaling.type != "none") {
    const RopeScalingConfig& r = m.rope_scaling;
    rope = {{"type", r.type},
            {"factor", r.factor},
            {"original_max_position_embeddings", r.original_max_position_embeddings},
            {"beta_fast", r.beta_fast},
            {"beta_slow", r.beta_slow},
            {"mscale", r.mscale},
            {"mscale_all_dim", r.mscale_all_dim}};
  }
  return json{{"vocab_size", m.vocab_size},
              {"hidden_size", m.hidden_size},
              {"intermediate_size", m.intermediate_size},
              {"moe_intermediate_size", m.moe_intermediate_size},
              {"num_hidden_layers", m.num_hidden_layers},
              {"first_k_dense_replace", m.first_k_dense_replace},
              {"num_attention_heads", m.num_attention_heads},
              {"q_lora_rank", m.q_lora_rank == 0 ? json(nullptr) : json(m.q_lora_rank)},
              {"kv_lora_rank", m.kv_lora_rank},
              {"qk_nope_head_dim", m.qk_nope_head_dim},
              {"qk_rope_head_dim", m.qk_rope_head_dim},
              {"v_head_dim", m.v_head_dim},
              {"n_routed_experts", m.n_routed_experts},
              {"n_shared_experts", m.n_shared_experts},
              {"num_experts_per_tok", m.num_experts_per_tok},
              {"n_group", m.n_group},
              {"topk_group", m.topk_group},
              {"norm_topk_prob", m.norm_topk_prob},
              {"routed_scaling_factor", m.routed_scaling_factor},
              {"num_nextn_predict_layers", m.num_nextn_predict_layers},
              {"max_position_embeddings", m.max_position_embeddings},
              {"rms_norm_eps", m.rms_norm_eps},
              {"rope_theta", m.rope_theta},
              {"rope_interleave", m.rope_interleave},
              {"rope_scaling", std::move(rope)},
              {"initializer_range", m.initializer_range}};
}

ModelConfigDifferences CompareModelConfig(const json& saved, const ModelConfig& model) {
  // The keys the layers' parameter specs depend on (layers/*.cc): change one and tensors appear, vanish
  // or change shape.
  static const std::set<std::string> kShapeKeys = {
      "vocab_size",        "hidden_size",           "intermediate_size",       "moe_intermediate_size",
      "num_hidden_layers", "first_k_dense_replace", "num_attention_heads",     "q_lora_rank",
      "kv_lora_rank",      "qk_nope_head_dim",      "qk_rope_head_dim",        "v_head_dim",
      "n_routed_experts",  "n_shared_experts",      "num_nextn_predict_layers"};
  ModelConfigDifferences out;
  const json now = ModelConfigToJson(model);
  for (const auto& [key, value] : now.items()) {
    const bool present = saved.is_object() && saved.contains(key);
    if (present && saved.at(key) == value) continue;
    std::string line = absl::StrCat(key, ": checkpoint ", present ? saved.at(key).dump() : "(absent)",
                                    ", recipe ", value.dump());
    (kShapeKeys.count(key) ? out.shape_keys : out.other_keys).push_back(std::move(line));
  }
  return out;
}

}  // namespace fathom
