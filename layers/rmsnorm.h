// RMSNorm over the last dimension with a learned scale "<name>.weight" (C), initialised to ones.
#ifndef FATHOM_LAYERS_RMSNORM_H_
#define FATHOM_LAYERS_RMSNORM_H_

#include <string>

#include "framework/param_table.h"
#include "layers/layer.h"

namespace fathom {

class RmsNorm {
 public:
  RmsNorm(ParamTable& table, const std::string& name, int64_t dim, double eps, int layer = -1);

  Tensor Forward(int mb, const Tensor& x);  // (..., C) -> (..., C)
  // (..., C) -> dx (..., C); with `residual` (dy's shape), dx + residual in the same pass (the gradient of a
  // residual stream whose branch starts with this norm).
  Tensor BackwardInput(int mb, const Tensor& dy, const Tensor& residual = Tensor());
  void BackwardWeight(int mb);  // dw += sum(dy * xhat)

 private:
  struct Ctx {
    Tensor x, rstd, dy;  // (N, C), (N), (N, C)
  };
  ParamTable* table_;
  int weight_;
  int64_t dim_;
  double eps_;
  SavedByMicroBatch<Ctx> saved_;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_RMSNORM_H_
