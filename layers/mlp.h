// DenseMlp: the SwiGLU feed-forward of transformers' DeepseekV3MLP,
//   y (B, T, H) = down_proj(silu(gate_proj(x)) * up_proj(x)),  x (B, T, H),
// with "<prefix>.gate_proj.weight" (I, H), "<prefix>.up_proj.weight" (I, H) and
// "<prefix>.down_proj.weight" (H, I), all replicated. It is the MLP of the first `first_k_dense_replace`
// decoder layers (prefix "model.layers.{L}.mlp", I = intermediate_size) and the shared expert of a MoE
// layer (prefix "model.layers.{L}.mlp.shared_experts", I = moe_intermediate_size * n_shared_experts).
//
// Layer contract of layers/layer.h: parameter grads accumulate (+=), dx is returned fresh.
#ifndef FATHOM_LAYERS_MLP_H_
#define FATHOM_LAYERS_MLP_H_

#include <string>

#include "framework/param_table.h"
#include "layers/layer.h"
#include "layers/linear.h"

namespace fathom {

class DenseMlp {
 public:
  DenseMlp(ParamTable& table, const std::string& prefix, int64_t hidden, int64_t intermediate,
           int layer = -1);
  DenseMlp(const DenseMlp&) = delete;
  DenseMlp& operator=(const DenseMlp&) = delete;

  // x (..., H) -> y (..., H). In FP8, `xq` may carry x's rows already quantised (ops::QuantizeRows of x
  // flattened; the MoE's padded layout quantises them once for its routed rows too).
  Tensor Forward(int mb, const Tensor& x, const Fp8Rows* xq = nullptr);
  Tensor BackwardInput(int mb, const Tensor& dy);  // dy (..., H) -> dx (..., H)
  void BackwardWeight(int mb);                     // grads of gate_proj, up_proj, down_proj +=

  int64_t hidden() const { return hidden_; }
  int64_t intermediate() const { return intermediate_; }
  int gate_id() const { return gate_.weight_id(); }
  int up_id() const { return up_.weight_id(); }
  int down_id() const { return down_.weight_id(); }

 private:
  struct Ctx {
    Tensor gate, up;  // (N, I) pre-activation projections
  };
  int64_t hidden_, intermediate_;
  Linear gate_, up_, down_;
  SavedByMicroBatch<Ctx> saved_;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_MLP_H_
