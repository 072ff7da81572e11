#include "layers/mlp.h"

#include "framework/ops.h"

namespace fathom {

DenseMlp::DenseMlp(ParamTable& table, const std::string& prefix, int64_t hidden, int64_t intermediate,
                   int layer)
    : hidden_(hidden),
      intermediate_(intermediate),
      gate_(table, prefix + ".gate_proj", hidden, intermediate, layer, ParamGroup::kReplicated,
            GemmPrecision::kFp8),
      up_(table, prefix + ".up_proj", hidden, intermediate, layer, ParamGroup::kReplicated,
          GemmPrecision::kFp8),
      down_(table, prefix + ".down_proj", intermediate, hidden, layer, ParamGroup::kReplicated,
            GemmPrecision::kFp8) {}

Tensor DenseMlp::Forward(int mb, const Tensor& x, const Fp8Rows* xq) {
  FATHOM_CHECK(x.dim(-1) == hidden_, "[mlp] input ", x.shape_str(), ", expected last dim ", hidden_);
  Tensor x2 = x.Flatten2D();
  // In FP8, x quantised once for both projections (or by the caller).
  const std::optional<Fp8Rows> own = xq ? std::nullopt : SharedRows(x2, gate_, up_);
  if (own) xq = &*own;
  Tensor gate = gate_.Forward(mb, x2, xq);
  Tensor up = up_.Forward(mb, x2, xq);
  Tensor h = Tensor::Empty(gate.shape(), x.dtype(), x.device());
  ops::SwiGluForward(h, gate, up);
  Ctx& c = saved_.Put(mb);
  c.gate = gate;
  c.up = up;
  return down_.Forward(mb, h).Reshape(x.shape());
}

Tensor DenseMlp::BackwardInput(int mb, const Tensor& dy) {
  Ctx& c = saved_.Get(mb);
  Tensor dh = down_.BackwardInput(mb, dy.Flatten2D());
  Tensor dgate = Tensor::Empty(dh.shape(), dh.dtype(), dh.device());
  Tensor dup = Tensor::Empty(dh.shape(), dh.dtype(), dh.device());
  ops::SwiGluBackward(dgate, dup, dh, c.gate, c.up);
  // x feeds both projections, so its gradient is the sum of the two branches.
  Tensor dx = gate_.BackwardInput(mb, dgate);
  up_.BackwardInputAdd(mb, dup, dx);
  return dx.Reshape(dy.shape());
}

void DenseMlp::BackwardWeight(int mb) {
  saved_.Get(mb);  // checks that Forward ran for mb
  const std::optional<Fp8Cols> x_cols = SharedCols(mb, gate_, up_);  // in FP8, x's columns quantised once
  gate_.BackwardWeight(mb, x_cols ? &*x_cols : nullptr);
  up_.BackwardWeight(mb, x_cols ? &*x_cols : nullptr);
  down_.BackwardWeight(mb);
  saved_.Drop(mb);
}

}  // namespace fathom
