// The routed experts of layers/moe.h under train.precision fp8: FP8 dispatch, the expert GEMMs in e4m3 with
// block scaling (framework/ops.h Fp8GroupedMatmul*), combine in the activations' dtype.
#include "framework/ops.h"
#include "framework/phase_timer.h"
#include "layers/moe.h"

namespace fathom {

// The permuted rows leave as packed FP8 rows (codes and 1x128 scales in one row), so the all-to-all moves
// about half the bytes of bf16 and the experts read exactly what arrived; x_perm is not needed afterwards.
void MoE::DispatchFp8(Ctx& c) {
  Fp8Rows q = ops::QuantizeRows(c.x_perm);
  c.x_perm = Tensor();
  if (!exchange_) {
    c.xq_local = q;
    c.dispatch.local_counts = c.counts;
    return;
  }
  c.xq_local = Fp8Rows::Wrap(exchange_->Dispatch(q.data, c.counts, &c.dispatch), hidden_);
}

void MoE::ComputeExpertsFp8(Ctx& c) {
  Tensor y_local;
  {
    ScopedPhase phase(Phase::kExperts);
    const int64_t rows = c.xq_local.rows();
    const Device dev = c.xq_local.data.device();
    const Tensor& counts = c.dispatch.local_counts;
    c.gate = Tensor::Empty({rows, intermediate_}, c.dtype, dev);
    c.up = Tensor::Empty({rows, intermediate_}, c.dtype, dev);
    c.h = Tensor::Empty({rows, intermediate_}, c.dtype, dev);
    y_local = Tensor::Empty({rows, hidden_}, c.dtype, dev);
    ops::Fp8GroupedMatmulNT(c.gate, c.xq_local, table_->fp8_weight(gate_proj_).w, counts);
    ops::Fp8GroupedMatmulNT(c.up, c.xq_local, table_->fp8_weight(up_proj_).w, counts);
    ops::SwiGluForward(c.h, c.gate, c.up);
    ops::Fp8GroupedMatmulNT(y_local, ops::QuantizeRows(c.h), table_->fp8_weight(down_proj_).w, counts);
  }
  ScopedPhase combine(
      Phase::kDispatchCombine);  // the way back to the tokens' ranks, in the activations' dtype
  c.y_perm = exchange_ ? exchange_->Combine(y_local, c.dispatch) : y_local;
}

// The output gradient is quantised before it travels to the experts (the mirror of the dispatch) and is
// kept in FP8 for the down projection's weight gradient.
Tensor MoE::ExpertsBackwardInputFp8(Ctx& c, const Tensor& dy_perm) {
  Fp8Rows q = ops::QuantizeRows(dy_perm);
  c.dyq_local = exchange_ ? Fp8Rows::Wrap(exchange_->Dispatch(q.data, c.dispatch), hidden_) : q;
  ScopedPhase phase(Phase::kExperts);
  const int64_t rows = c.xq_local.rows();
  const Device dev = c.xq_local.data.device();
  const Tensor& counts = c.dispatch.local_counts;
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
// through their values, the bf16 activations directly); the input's columns serve gate and up.
void MoE::ExpertsBackwardWeightFp8(Ctx& c) {
  const Tensor& counts = c.dispatch.local_counts;
  ops::Fp8GroupedMatmulTN(table_->grad(down_proj_), ops::QuantizeCols(c.dyq_local, counts),
                          ops::QuantizeCols(c.h, counts));
  const Fp8Cols x_cols = ops::QuantizeCols(c.xq_local, counts);
  ops::Fp8GroupedMatmulTN(table_->grad(gate_proj_), ops::QuantizeCols(c.dgate, counts), x_cols);
  ops::Fp8GroupedMatmulTN(table_->grad(up_proj_), ops::QuantizeCols(c.dup, counts), x_cols);
}

}  // namespace fathom
