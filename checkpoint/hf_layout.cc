#include "checkpoint/hf_layout.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/param_slices.h"
#include "layers/model.h"

namespace fathom {
namespace {

// The Linear weights DeepSeek-V3's release stores as FP8 (checked against its index: every *_proj of
// self_attn and mlp, the MTP's eh_proj excluded).
bool IsFp8Linear(const std::string& name) {
  static const char* const kProjections[] = {"q_proj",    "q_a_proj", "q_b_proj",  "kv_a_proj_with_mqa",
                                             "kv_b_proj", "o_proj",   "gate_proj", "up_proj",
                                             "down_proj"};
  if (!absl::StrContains(name, ".self_attn.") && !absl::StrContains(name, ".mlp.")) return false;
  for (const char* p : kProjections) {
    if (absl::EndsWith(name, absl::StrCat(".", p, ".weight"))) return true;
  }
  return false;
}

}  // namespace

std::string Fp8ScaleName(const std::string& weight_name) { return weight_name + "_scale_inv"; }

std::vector<HfTensorSpec> HfModelTensors(const ModelConfig& model) {
  // The whole model in one slice: its specs are every tensor once, registered in graph order (embedding,
  // layers, head, MTP modules), and nothing is allocated until Finalize, which is never called here.
  Model graph(model, LossConfig{});
  const ParamTable& table = graph.params();
  const Shape embed_shape = {model.vocab_size, model.hidden_size};
  const Shape head_shape = {model.vocab_size, model.hidden_size};
  std::vector<HfTensorSpec> out;
  for (const ParamSpec& spec : table.specs()) {
    const int64_t slots = IsStackedExpertSpec(spec) ? spec.shape[0] : 1;
    for (int64_t i = 0; i < slots; ++i) {
      HfTensorSpec t;
      t.name = HfTensorName(spec, i);
      t.shape = HfTensorShape(spec);
      t.source = t.name;
      t.fp8 = IsFp8Linear(t.name);
      t.f32 = absl::EndsWith(t.name, ".mlp.gate.e_score_correction_bias");
      const std::string layer = absl::StrCat("model.layers.", spec.layer, ".");
      // An MTP module's copy of the embedding comes first in its layer, the copy of the head right after
      // its shared_head.norm, as in the release.
      if (t.name == layer + "enorm.weight") {
        out.push_back({layer + "embed_tokens.weight", embed_shape, "model.embed_tokens.weight", true});
      }
      out.push_back(t);
      if (t.name == layer + "shared_head.norm.weight") {
        out.push_back({layer + "shared_head.head.weight", head_shape, "lm_head.weight", true});
      }
    }
  }
  return out;
}

}  // namespace fathom
