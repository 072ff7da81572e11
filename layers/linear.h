// Linear without bias, HF layout: y (B, T, out) = x (B, T, in) . W^T, W (out, in) f32/f64.
// The GEMMs read the table's compute copy (bf16 under mixed precision; x and dy are then bf16) and the
// weight gradient accumulates in f32 (bf16 inputs, f32 output).
#ifndef FATHOM_LAYERS_LINEAR_H_
#define FATHOM_LAYERS_LINEAR_H_

#include <string>

#include "framework/param_table.h"
#include "layers/layer.h"

namespace fathom {

class Linear {
 public:
  // Registers "<name>.weight" of shape (out, in) in `table`.
  Linear(ParamTable& table, const std::string& name, int64_t in, int64_t out, int layer = -1,
         ParamGroup group = ParamGroup::kReplicated);
  // A second user of an existing weight (MTP's shared output head): its own saved activations, the same
  // parameter and gradient.
  Linear(ParamTable& table, int weight_id);

  Tensor Forward(int mb, const Tensor& x);         // x (..., in) -> (..., out)
  Tensor BackwardInput(int mb, const Tensor& dy);  // dy (..., out) -> dx (..., in)
  void BackwardWeight(int mb);                     // dW += dy^T x

  int64_t in() const { return in_; }
  int64_t out() const { return out_; }
  int weight_id() const { return weight_; }
  Tensor weight() const { return table_->value(weight_); }

 private:
  struct Ctx {
    Tensor x, dy;  // (N, in), (N, out)
  };
  ParamTable* table_;
  int weight_;
  int64_t in_, out_;
  SavedByMicroBatch<Ctx> saved_;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_LINEAR_H_
