// Causal softmax attention on the CPU, the reference twin of the fused (flash) attention kernels.
//
// For every batch b, head h and query position i (keys j <= i only):
//   s_ij = scale * q_i . k_j;   p_ij = exp(s_ij - lse_i),  lse_i = log(sum_{j<=i} exp(s_ij));
//   out_i = sum_{j<=i} p_ij v_j.
// The softmax is computed in the tensors' dtype with the row maximum subtracted. The forward keeps only
// out and the per-row log-sum-exp; the backward recomputes p row by row (flash-attention math):
//   D_i = dout_i . out_i,  dp_ij = dout_i . v_j,  ds_ij = p_ij (dp_ij - D_i),
//   dq_i = scale * sum_j ds_ij k_j,  dk_j = scale * sum_i ds_ij q_i,  dv_j = sum_i p_ij dout_i.
// Layout: (B, T, heads, dim) row-major, the layout projections produce; qk dim Dk and v dim Dv may differ.
// All tensors share one dtype, f32 or f64. Deterministic: summation order depends only on the shapes.
#ifndef FATHOM_FRAMEWORK_KERNELS_CPU_ATTENTION_H_
#define FATHOM_FRAMEWORK_KERNELS_CPU_ATTENTION_H_

#include "framework/tensor.h"

namespace fathom::cpu {

// out (B, T, H, Dv) and lse (B, H, T) overwritten; q, k (B, T, H, Dk); v (B, T, H, Dv).
void CausalAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, double scale);

// dq, dk (B, T, H, Dk) and dv (B, T, H, Dv) overwritten; dout (B, T, H, Dv); q, k, v as in the forward;
// out, lse saved by the forward.
void CausalAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                             const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, double scale);

}  // namespace fathom::cpu

#endif  // FATHOM_FRAMEWORK_KERNELS_CPU_ATTENTION_H_
