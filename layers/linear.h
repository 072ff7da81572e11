// Linear without bias, HF layout: y (B, T, out) = x (B, T, in) . W^T, W (out, in) f32/f64.
// The GEMMs read the table's compute copy (bf16 under mixed precision; x and dy are then bf16) and the
// weight gradient accumulates in f32 (bf16 inputs, f32 output).
// FP8 (a weight registered GemmPrecision::kFp8 in a table with FP8 weights enabled, train.precision fp8):
// the forward quantises x into 1x128 rows and multiplies by the weight's 128x128-block copy, the dgrad
// quantises dy likewise and multiplies by the transposed copy, and the wgrad quantises x and dy along the
// tokens (1x128 tiles of the transposes) and accumulates dy^T x in f32: all three GEMMs in e4m3 with f32
// accumulation (framework/ops.h Fp8GroupedMatmul*). Outputs keep x's dtype; x and dy are kept as they are
// for the wgrad, which quantises them along the tokens.
#ifndef FATHOM_LAYERS_LINEAR_H_
#define FATHOM_LAYERS_LINEAR_H_

#include <string>

#include "framework/param_table.h"
#include "layers/layer.h"

namespace fathom {

class Linear {
 public:
  // Registers "<name>.weight" of shape (out, in) in `table`; `gemm` says whether its GEMMs may run in FP8.
  Linear(ParamTable& table, const std::string& name, int64_t in, int64_t out, int layer = -1,
         ParamGroup group = ParamGroup::kReplicated, GemmPrecision gemm = GemmPrecision::kCompute);
  // A second user of an existing weight (MTP's shared output head): its own saved activations, the same
  // parameter and gradient.
  Linear(ParamTable& table, int weight_id);

  Tensor Forward(int mb, const Tensor& x);         // x (..., in) -> (..., out)
  Tensor BackwardInput(int mb, const Tensor& dy);  // dy (..., out) -> dx (..., in)
  // dx += dy . W for a dx (..., in) another branch already wrote (a shared input's gradient): in the
  // bf16/f32 path the GEMM adds into dx (f32 accumulator plus dx, rounded once) instead of writing a
  // temporary that a separate pass adds; in FP8 the product is added by that pass.
  void BackwardInputAdd(int mb, const Tensor& dy, const Tensor& dx);
  void BackwardWeight(int mb);  // dW += dy^T x

  int64_t in() const { return in_; }
  int64_t out() const { return out_; }
  int weight_id() const { return weight_; }
  Tensor weight() const { return table_->value(weight_); }

 private:
  struct Ctx {
    Tensor x, dy;  // (N, in), (N, out)
  };
  void InputGradient(Ctx& c, const Tensor& dy2, const Tensor& dx2, bool add);

  ParamTable* table_;
  int weight_;
  int64_t in_, out_;
  SavedByMicroBatch<Ctx> saved_;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_LINEAR_H_
