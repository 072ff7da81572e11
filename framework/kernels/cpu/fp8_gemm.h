// FP8 block-scaled GEMMs emulated exactly on the CPU: the reference twin of framework/kernels/cuda/fp8_gemm.h
// and the path train.precision fp8 takes on train.device cpu. Operand layouts and the quantisation formula
// are framework/fp8_operands.h's; the codes and scales produced here are bit-identical to the GPU's.
//
// The products (what cuBLASLt's block-scaling modes compute, up to the order of f32 additions inside a block
// and the tensor cores' internal accumulation): every output element is
//   acc = 0 (f32);  for each 128-wide block of the reduction axis, in order:
//     partial = sum over the block's k, in increasing k, of E4M3ToFloat(a_k) * E4M3ToFloat(b_k)   (f32)
//     acc = acc + partial * (scale_a * scale_b)                                                    (f32)
//   out = acc, or out + acc when accumulating (one rounding into out's dtype, as cuBLASLt's beta = 1).
// Padding codes are zero, so only the logical reduction length is visited.
//
// dtypes: float inputs and outputs are f32 or f64 (f64 is rounded to f32 before quantising; products are
// f32 either way). Deterministic; single-threaded.
#ifndef FATHOM_FRAMEWORK_KERNELS_CPU_FP8_GEMM_H_
#define FATHOM_FRAMEWORK_KERNELS_CPU_FP8_GEMM_H_

#include "framework/fp8_operands.h"
#include "framework/tensor.h"

namespace fathom::cpu {

// q (R, K) <- x (R, K): 1x128 tiles along each row.
void QuantizeRows1x128(const Fp8Rows& q, const Tensor& x);
// out (R, K) = E4M3ToFloat(code) * scale of q (f32 product, then out's dtype).
void DequantizeRows1x128(const Tensor& out, const Fp8Rows& q);
// q (C, Tp) <- x (R, C) grouped by q.counts: 1x128 tiles along the tokens of each group.
void QuantizeCols1x128(const Fp8Cols& q, const Tensor& x);
// The same from FP8 rows: the values E4M3ToFloat(code) * row scale (f32), e.g. dispatched expert inputs.
void QuantizeCols1x128(const Fp8Cols& q, const Fp8Rows& x);
// q <- w (..., N, K) in 128x128 blocks, both copies (see Fp8Weight).
void QuantizeWeight128x128(const Fp8Weight& q, const Tensor& w);

// out (R, N) (=, or += when accumulate) row block g of x (R, K) . w[g]^T, w (G, N, K) (or (N, K) with
// G = 1); counts (G) i64 HOST, sum R. Forward: w = Fp8Weight::w; dgrad: x = dy's rows, w = Fp8Weight::wt.
void Fp8GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w, const Tensor& counts,
                        bool accumulate);
// out[g] (G, M, N) (or (M, N) with G = 1) (+=/=) a_g (M, T_g) . b_g (N, T_g)^T over group g's tokens: the
// weight gradient dW += dy^T x with a = dy's columns, b = x's. A group without tokens leaves out[g] as it is
// when accumulating and zeroes it when overwriting.
void Fp8GroupedMatmulTN(const Tensor& out, const Fp8Cols& a, const Fp8Cols& b, bool accumulate = true);

}  // namespace fathom::cpu

#endif  // FATHOM_FRAMEWORK_KERNELS_CPU_FP8_GEMM_H_
