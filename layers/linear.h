// Linear without bias, HF layout: y (B, T, out) = x (B, T, in) . W^T, W (out, in) f32/f64.
// The GEMMs read the table's compute copy (bf16 under mixed precision; x and dy are then bf16) and the
// weight gradient accumulates in f32 (bf16 inputs, f32 output).
// FP8 (a weight registered GemmPrecision::kFp8 in a table with FP8 weights enabled, train.precision fp8):
// the forward quantises x into 1x128 rows and multiplies by the weight's 128x128-block copy, the dgrad
// quantises dy likewise and multiplies by the transposed copy, and the wgrad quantises x and dy along the
// tokens (1x128 tiles of the transposes) and accumulates dy^T x in f32: all three GEMMs in e4m3 with f32
// accumulation (framework/ops.h Fp8GroupedMatmul*). Outputs keep x's dtype; x and dy are kept as they are
// for the wgrad, which quantises them along the tokens. Linears that read one input quantise it once
// (SharedRows / SharedCols below).
#ifndef FATHOM_LAYERS_LINEAR_H_
#define FATHOM_LAYERS_LINEAR_H_

#include <optional>
#include <string>

#include "framework/fp8_operands.h"
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

  // x (..., in) -> (..., out). In FP8 (fp8()), `xq` may carry x's rows already quantised
  // (ops::QuantizeRows of x flattened), so Linears that read one x (MLA's q_a/kv_a, an MLP's gate/up)
  // quantise it once; null: this Linear quantises them.
  Tensor Forward(int mb, const Tensor& x, const Fp8Rows* xq = nullptr);
  Tensor BackwardInput(int mb, const Tensor& dy);  // dy (..., out) -> dx (..., in)
  // dx += dy . W for a dx (..., in) another branch already wrote (a shared input's gradient): the GEMM adds
  // into dx (f32 accumulator plus dx, rounded once) instead of writing a temporary that a separate pass adds.
  void BackwardInputAdd(int mb, const Tensor& dy, const Tensor& dx);
  // dW += dy^T x. In FP8, `x_cols` may carry the saved input's columns already quantised
  // (ops::QuantizeCols of saved_input(mb)), shared like Forward's xq.
  void BackwardWeight(int mb, const Fp8Cols* x_cols = nullptr);

  bool fp8() const { return table_->fp8(weight_); }  // whether its GEMMs run in FP8 (train.precision fp8)
  const Tensor& saved_input(int mb) { return saved_.Get(mb).x; }  // x flattened, as Forward saved it

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

// Two FP8 Linears that read the same input x (MLA's query and kv projections, an MLP's gate and up): x's rows
// quantised once for both Forwards, and (after both Forwards) the saved input's columns quantised once for
// both BackwardWeights. nullopt unless both run in FP8 (then each quantises for itself, or not at all).
std::optional<Fp8Rows> SharedRows(const Tensor& x, const Linear& a, const Linear& b);
std::optional<Fp8Cols> SharedCols(int mb, Linear& a, Linear& b);

}  // namespace fathom

#endif  // FATHOM_LAYERS_LINEAR_H_
