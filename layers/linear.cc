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

Tensor Linear::Forward(int mb, const Tensor& x, const Fp8Rows* xq) {
  FATHOM_CHECK(x.dim(-1) == in_, "[linear ", table_->spec(weight_).name, "] input ", x.shape_str(),
               ", expected last dim ", in_);
  Tensor x2 = x.Flatten2D();
  Tensor y = Tensor::Empty({x2.dim(0), out_}, x.dtype(), x.device());
  if (fp8()) {
    FATHOM_CHECK(xq == nullptr || (xq->rows() == x2.dim(0) && xq->cols == in_), "[linear ",
                 table_->spec(weight_).name, "] quantised input of ", xq ? xq->rows() : 0, " rows for ",
                 x2.dim(0));
    ops::Fp8GroupedMatmulNT(y, xq ? *xq : ops::QuantizeRows(x2), table_->fp8_weight(weight_).w, Tensor());
  } else {
    ops::MatmulNT(y, x2, table_->compute_value(weight_));
  }
  saved_.Put(mb).x = x2;
  Shape shape = x.shape();
  shape.back() = out_;
  return y.Reshape(shape);
}

// dx (=, or += with `add`) dy . W, and dy kept for the wgrad. Either way the GEMM adds (beta 1: f32 product
// plus dx, rounded once; on the CPU out + product, what a separate pass over the product added).
void Linear::InputGradient(Ctx& c, const Tensor& dy2, const Tensor& dx2, bool add) {
  if (fp8()) {
    ops::Fp8GroupedMatmulNT(dx2, ops::QuantizeRows(dy2), table_->fp8_weight(weight_).wt, Tensor(), add);
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

void Linear::BackwardWeight(int mb, const Fp8Cols* x_cols) {
  Ctx& c = saved_.Get(mb);
  FATHOM_CHECK(c.dy.defined(), "[linear] BackwardWeight before BackwardInput for micro-batch ", mb);
  // The first writer of a step overwrites (see ParamTable::GradForWrite); later ones add.
  bool known_zero = false;
  const Tensor grad = table_->GradForWrite(weight_, &known_zero);
  if (fp8()) {
    FATHOM_CHECK(
        x_cols == nullptr || (x_cols->cols() == in_ && x_cols->padded_tokens() == Fp8Padded(c.x.dim(0))),
        "[linear ", table_->spec(weight_).name, "] quantised input columns do not match the saved input ",
        c.x.shape_str());
    ops::Fp8GroupedMatmulTN(grad, ops::QuantizeCols(c.dy), x_cols ? *x_cols : ops::QuantizeCols(c.x),
                            /*accumulate=*/!known_zero);
  } else {
    ops::MatmulTN(grad, c.dy, c.x, /*accumulate=*/!known_zero);
  }
  saved_.Drop(mb);
}

std::optional<Fp8Rows> SharedRows(const Tensor& x, const Linear& a, const Linear& b) {
  if (!a.fp8() || !b.fp8()) return std::nullopt;
  return ops::QuantizeRows(x.Flatten2D());
}

std::optional<Fp8Cols> SharedCols(int mb, Linear& a, Linear& b) {
  if (!a.fp8() || !b.fp8()) return std::nullopt;
  const Tensor& x = a.saved_input(mb);
  FATHOM_CHECK(x.raw() == b.saved_input(mb).raw() && x.shape() == b.saved_input(mb).shape(),
               "[linear] SharedCols: the two Linears saved different inputs for micro-batch ", mb);
  return ops::QuantizeCols(x);
}

}  // namespace fathom
