// RMSNorm on the GPU, HF semantics: y = w * (x * rsqrt(mean(x^2) + eps)) over rows of length C (any C >= 1;
// DeepSeek-V3 uses 512, 1536 and 7168). CPU twin: framework/kernels/cpu/norm.h.
//
// dtypes: x, out, dx, dy share one activation dtype, f32 or bf16 (bf16: every sum and product in f32, one
// rounding per output); the weight w is f32 or the activation dtype; rstd (N) and dw (C) are always f32.
// Anything else fails loudly.
//
// Reductions are deterministic: per-row sums use a fixed thread/warp tree; the weight gradient is a two-stage
// reduction over rows (column partial sums of fixed row chunks into a caller-provided workspace, then one
// ordered sum per column), no float atomics. N = 0 (an expert with no tokens) is a no-op.
// Work is queued on `stream`; no host synchronisation, no allocation.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_NORM_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_NORM_H_

#include "framework/cuda/stream.h"
#include "framework/tensor.h"

namespace fathom::cuda {

// out (N, C) and rstd (N) f32 overwritten; x (N, C); w (C).
void RmsNormForward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w, double eps,
                    Stream stream);

// dx (N, C) overwritten: dx = rstd * (g - xhat * mean(g * xhat)), g = dy * w, xhat = x * rstd; dy, x (N, C);
// w (C); rstd (N) f32 from the forward. dx may alias dy. With `residual` (N, C) in x's dtype: dx = residual +
// that, the sum in f32 and rounded once (a residual stream's skip gradient added in the same pass; residual
// may alias dx or dy).
void RmsNormBackwardInput(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& w,
                          const Tensor& rstd, Stream stream, const Tensor& residual = Tensor());

// Shape of the f32 scratch RmsNormBackwardWeight needs for n rows of width c: (ceil(n / 128), c).
Shape RmsNormBackwardWeightWorkspaceShape(int64_t n, int64_t c);

// dw (C) f32 += sum over rows of dy * x * rstd; dy, x (N, C); rstd (N) f32; workspace f32 of exactly
// RmsNormBackwardWeightWorkspaceShape(N, C) (contents overwritten, then dead).
void RmsNormBackwardWeight(const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& rstd,
                           const Tensor& workspace, Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_NORM_H_
