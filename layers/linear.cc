#include "layers/linear.h"

#include "framework/ops.h"

namespace fathom {

Linear::Linear(ParamTable& table, const std::string& name, int64_t in, int64_t out, int layer,
               ParamGroup group, GemmPrecision gemm)
    : table_(&table), in_(in), out_(out) {
  weight_ =
      table.Add({.name = name + ".weight", .shape = {out, in}, .group = group, .layer = layer, .gemm = gemm});
}

Linear::Linear(ParamTable& table, int weight_id)
    : table_(&table),
      weight_(weight_id),
      in_(table.spec(weight_id).shape.at(1)),
      out_(table.spec(weight_id).shape.at(0)) {}

Tensor Linear::Forward(int mb, const Tensor& x) {
  FATHOM_CHECK(x.dim(-1) == in_, "[linear ", table_->spec(weight_).name, "] input ", x.shape_str(),
               ", expected last dim ", in_);
  Tensor x2 = x.Flatten2D();
  Tensor y = Tensor::Empty({x2.dim(0), out_}, x.dtype(), x.device());
  if (table_->fp8(weight_)) {
    ops::Fp8GroupedMatmulNT(y, ops::QuantizeRows(x2), table_->fp8_weight(weight_).w, Tensor());
  } else {
    ops::MatmulNT(y, x2, table_->compute_value(weight_));
  }
  saved_.Put(mb).x = x2;
  Shape shape = x.shape();
  shape.back() = out_;
  return y.Reshape(shape);
}

// dx (=, or += with `add`) dy . W, and dy kept for the wgrad. In FP8 the addition is a separate pass over a
// temporary (the product rounded to dx's dtype first); otherwise the GEMM adds (beta 1).
void Linear::InputGradient(Ctx& c, const Tensor& dy2, const Tensor& dx2, bool add) {
  if (table_->fp8(weight_)) {
    const Tensor product = add ? Tensor::Empty(dx2.shape(), dx2.dtype(), dx2.device()) : dx2;
    ops::Fp8GroupedMatmulNT(product, ops::QuantizeRows(dy2), table_->fp8_weight(weight_).wt, Tensor());
    if (add) ops::AddInPlace(dx2, product);
  } else {
    ops::MatmulNN(dx2, dy2, table_->compute_value(weight_), /*accumulate=*/add);
  }
  c.dy = dy2;
}

Tensor Linear::BackwardInput(int mb, const Tensor& dy) {
  Ctx& c = saved_.Get(mb);
  Tensor dy2 = dy.Flatten2D();
  FATHOM_CHECK(dy2.dim(0) == c.x.dim(0) && dy2.dim(1) == out_, "[linear] dy ", dy.shape_str());
  Tensor dx = Tensor::Empty({dy2.dim(0), in_}, dy.dtype(), dy.device());
  InputGradient(c, dy2, dx, /*add=*/false);
  Shape shape = dy.shape();
  shape.back() = in_;
  return dx.Reshape(shape);
}

void Linear::BackwardInputAdd(int mb, const Tensor& dy, const Tensor& dx) {
  Ctx& c = saved_.Get(mb);
  Tensor dy2 = dy.Flatten2D();
  Tensor dx2 = dx.Flatten2D();
  FATHOM_CHECK(
      dy2.dim(0) == c.x.dim(0) && dy2.dim(1) == out_ && dx2.dim(0) == dy2.dim(0) && dx2.dim(1) == in_,
      "[linear ", table_->spec(weight_).name, "] dy ", dy.shape_str(), " dx ", dx.shape_str());
  InputGradient(c, dy2, dx2, /*add=*/true);
}

void Linear::BackwardWeight(int mb) {
  Ctx& c = saved_.Get(mb);
  FATHOM_CHECK(c.dy.defined(), "[linear] BackwardWeight before BackwardInput for micro-batch ", mb);
  // The first writer of a step overwrites (see ParamTable::GradForWrite); later ones add.
  bool known_zero = false;
  const Tensor grad = table_->GradForWrite(weight_, &known_zero);
  if (table_->fp8(weight_)) {
    ops::Fp8GroupedMatmulTN(grad, ops::QuantizeCols(c.dy), ops::QuantizeCols(c.x), /*accumulate=*/!known_zero);
  } else {
    ops::MatmulTN(grad, c.dy, c.x, /*accumulate=*/!known_zero);
  }
  saved_.Drop(mb);
}

}  // namespace fathom
