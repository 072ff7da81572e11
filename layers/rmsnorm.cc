#include "layers/rmsnorm.h"

#include "framework/ops.h"

namespace fathom {

RmsNorm::RmsNorm(ParamTable& table, const std::string& name, int64_t dim, double eps, int layer)
    : table_(&table), dim_(dim), eps_(eps) {
  weight_ = table.Add({.name = name + ".weight",
                       .shape = {dim},
                       .init = ParamInit::kOnes,
                       .weight_decay = false,
                       .layer = layer});
}

Tensor RmsNorm::Forward(int mb, const Tensor& x) {
  FATHOM_CHECK(x.dim(-1) == dim_, "[rms_norm ", table_->spec(weight_).name, "] input ", x.shape_str());
  Tensor x2 = x.Flatten2D();
  Tensor y = Tensor::Empty(x2.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::Empty({x2.dim(0)}, ops::StatsDType(x.dtype()), x.device());
  ops::RmsNormForward(y, rstd, x2, table_->value(weight_), eps_);
  Ctx& c = saved_.Put(mb);
  c.x = x2;
  c.rstd = rstd;
  return y.Reshape(x.shape());
}

Tensor RmsNorm::BackwardInput(int mb, const Tensor& dy, const Tensor& residual) {
  Ctx& c = saved_.Get(mb);
  Tensor dy2 = dy.Flatten2D();
  Tensor dx = Tensor::Empty(dy2.shape(), dy.dtype(), dy.device());
  ops::RmsNormBackwardInput(dx, dy2, c.x, table_->value(weight_), c.rstd,
                            residual.defined() ? residual.Flatten2D() : Tensor());
  c.dy = dy2;
  return dx.Reshape(dy.shape());
}

void RmsNorm::BackwardWeight(int mb) {
  Ctx& c = saved_.Get(mb);
  FATHOM_CHECK(c.dy.defined(), "[rms_norm] BackwardWeight before BackwardInput for micro-batch ", mb);
  ops::RmsNormBackwardWeight(table_->grad(weight_), c.dy, c.x, c.rstd);
  saved_.Drop(mb);
}

}  // namespace fathom
