// The routed experts of layers/moe.h under train.precision fp8: FP8 dispatch, the expert GEMMs in e4m3 with
// block scaling (framework/ops.h Fp8GroupedMatmul*), combine in the activations' dtype.
#include "framework/ops.h"
#include "framework/phase_timer.h"
#include "layers/moe.h"
#include "layers/phases.h"

namespace fathom {

// The permuted rows (forward) and the output gradient (backward) leave as packed FP8 rows (codes and
// 1x128 scales in one row), so the all-to-all moves about half the bytes of bf16 and the experts read exactly
// what arrived; the gradient's rows are also what the down projection's weight gradient reads.
RowsInFlight MoE::StartRowsFp8(Ctx& c, const Fp8Rows& q, bool forward) {
  if (!exchange_) {
    if (forward) c.dispatch.local_counts = c.counts;
    return RowsInFlight(q.data);
  }
  return forward ? exchange_->StartDispatch(q.data, c.counts, &c.dispatch)
                 : exchange_->StartDispatch(q.data, c.dispatch);
}

Fp8Rows MoE::ArrivedFp8(Ctx& c) { return Fp8Rows::Wrap(c.in_flight.Wait(), hidden_); }

Tensor MoE::ComputeExpertsFp8(Ctx& c) {
  ScopedPhase phase(phases::kExperts);
  const int64_t rows = c.xq_local.rows();
  const Device dev = c.xq_local.data.device();
  const Tensor& counts = ExpertCounts(c);  // the padded layout's blocks, or the routed counts
  c.gate = Tensor::Empty({rows, intermediate_}, c.dtype, dev);
  c.up = Tensor::Empty({rows, intermediate_}, c.dtype, dev);
  c.h = Tensor::Empty({rows, intermediate_}, c.dtype, dev);
  Tensor y_local = Tensor::Empty({rows, hidden_}, c.dtype, dev);
  ops::Fp8GroupedMatmulNT(c.gate, c.xq_local, table_->fp8_weight(gate_proj_).w, counts);
  ops::Fp8GroupedMatmulNT(c.up, c.xq_local, table_->fp8_weight(up_proj_).w, counts);
  ops::SwiGluForward(c.h, c.gate, c.up);
  ops::Fp8GroupedMatmulNT(y_local, ops::QuantizeRows(c.h), table_->fp8_weight(down_proj_).w, counts);
  return y_local;
}

// dyq_local (R_local, H) in FP8 -> dx_local (R_local, H) through the local experts.
Tensor MoE::ExpertsBackwardInputFp8(Ctx& c) {
  ScopedPhase phase(phases::kExperts);
  const int64_t rows = c.xq_local.rows();
  const Device dev = c.xq_local.data.device();
  const Tensor& counts = ExpertCounts(c);  // the padded layout's blocks, or the routed counts
  Tensor dh = Tensor::Empty({rows, intermediate_}, c.dtype, dev);
  ops::Fp8GroupedMatmulNT(dh, c.dyq_local, table_->fp8_weight(down_proj_).wt, counts);
  c.dgate = Tensor::Empty({rows, intermediate_}, c.dtype, dev);
  c.dup = Tensor::Empty({rows, intermediate_}, c.dtype, dev);
  ops::SwiGluBackward(c.dgate, c.dup, dh, c.gate, c.up);
  Tensor dx_local = Tensor::Empty({rows, hidden_}, c.dtype, dev);
  ops::Fp8GroupedMatmulNT(dx_local, ops::QuantizeRows(c.dgate), table_->fp8_weight(gate_proj_).wt, counts);
  ops::Fp8GroupedMatmulNT(dx_local, ops::QuantizeRows(c.dup), table_->fp8_weight(up_proj_).wt, counts,
                          /*accumulate=*/true);
  return dx_local;
}

// dW_e += dy_e^T x_e for each expert, the operands quantised along each expert's tokens (the kept FP8 rows
// through their values, the bf16 activations directly); the input's columns serve gate and up. A step's
// first writer overwrites (ParamTable::GradForWrite: no zeroing pass, no read of the old sums), and then
// the experts without tokens get zeros.
void MoE::ExpertsBackwardWeightFp8(Ctx& c) {
  const Tensor& counts = ExpertCounts(c);  // the padded layout's blocks, or the routed counts
  auto wgrad = [&](int id, const Fp8Cols& dy_cols, const Fp8Cols& x_cols) {
    bool known_zero = false;
    const Tensor grad = table_->GradForWrite(id, &known_zero);
    ops::Fp8GroupedMatmulTN(grad, dy_cols, x_cols, /*accumulate=*/!known_zero);
  };
  wgrad(down_proj_, ops::QuantizeCols(c.dyq_local, counts), ops::QuantizeCols(c.h, counts));
  const Fp8Cols x_cols = ops::QuantizeCols(c.xq_local, counts);
  wgrad(gate_proj_, ops::QuantizeCols(c.dgate, counts), x_cols);
  wgrad(up_proj_, ops::QuantizeCols(c.dup, counts), x_cols);
}

}  // namespace fathom
