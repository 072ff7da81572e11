// The tensors of a DeepSeek-V3 HF directory as DeepSeek-V3's own release lays them out, derived from the
// model graph (layers/model.h builds the parameter specs; this file only names and orders them):
//   model.embed_tokens.weight                                        (V, H)
//   model.layers.L.{input_layernorm, post_attention_layernorm}.weight
//   model.layers.L.self_attn.{q_proj | q_a_proj, q_a_layernorm, q_b_proj}.weight,
//     kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj
//   model.layers.L.mlp.{gate,up,down}_proj.weight                    dense layers (L < first_k_dense_replace)
//   model.layers.L.mlp.gate.weight, mlp.gate.e_score_correction_bias (f32 in every export)
//   model.layers.L.mlp.experts.{e}.{gate,up,down}_proj.weight, mlp.shared_experts.{gate,up,down}_proj.weight
//   model.norm.weight, lm_head.weight
//   MTP module k (1..D) as layer L = num_hidden_layers + k - 1: model.layers.L.embed_tokens.weight,
//     enorm, hnorm, eh_proj (H, 2H), the decoder layer's tensors, shared_head.norm,
//     shared_head.head.weight
// The MTP modules' embed_tokens and shared_head.head are copies of model.embed_tokens and lm_head: fathom
// shares them, as the report does, and the release stores them anyway (inference engines load each MTP
// layer on its own). An export writes the copies; an import ignores them.
//
// FP8 (`--dtype fp8`): the release quantizes exactly the Linear weights of attention and of the MLPs
// (q_proj, q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj, gate_proj, up_proj, down_proj of the
// dense MLPs, the routed and the shared experts). The embedding, lm_head, the router (mlp.gate.weight),
// eh_proj, the MTP copies and every norm stay bf16; the expert bias stays f32.
//
// Pure functions of the config; thread safe.
#ifndef FATHOM_CHECKPOINT_HF_LAYOUT_H_
#define FATHOM_CHECKPOINT_HF_LAYOUT_H_

#include <string>
#include <vector>

#include "framework/config.h"
#include "framework/tensor.h"

namespace fathom {

struct HfTensorSpec {
  std::string name;       // HF name, e.g. "model.layers.3.mlp.experts.5.gate_proj.weight"
  Shape shape;            // HF shape, e.g. (moe_intermediate_size, hidden_size)
  std::string source;     // the tensor of fathom's model (and checkpoints) that holds it: == name, except
                          // for the MTP copies (model.embed_tokens.weight, lm_head.weight)
  bool mtp_copy = false;  // an MTP module's embed_tokens / shared_head.head
  bool fp8 = false;       // quantized (e4m3 + weight_scale_inv) in an FP8 export
  bool f32 = false;       // stored f32 in every export (the expert bias)
};

// Every tensor of the HF directory of `model`, in the release's order (layer by layer, MTP last).
// REQUIRES: model.Validate().ok().
std::vector<HfTensorSpec> HfModelTensors(const ModelConfig& model);

// "<weight name>_scale_inv": "...o_proj.weight" -> "...o_proj.weight_scale_inv".
std::string Fp8ScaleName(const std::string& weight_name);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_HF_LAYOUT_H_
