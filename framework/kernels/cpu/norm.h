// RMSNorm, HF semantics: y = w * (x * rsqrt(mean(x^2) + eps)), rows of length C.
#ifndef FATHOM_FRAMEWORK_KERNELS_CPU_NORM_H_
#define FATHOM_FRAMEWORK_KERNELS_CPU_NORM_H_

#include "framework/tensor.h"

namespace fathom::cpu {

// out (N, C), rstd (N) saved for the backward; x (N, C); w (C).
void RmsNormForward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w, double eps);
// dx (N, C) overwritten; dy (N, C); x, w, rstd as in the forward. With `residual` (N, C): dx = residual + the
// input gradient (the residual stream's skip path, added as the gradient is written).
void RmsNormBackwardInput(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& w,
                          const Tensor& rstd, const Tensor& residual = Tensor());
// dw (C) += sum over rows of dy * x * rstd.
void RmsNormBackwardWeight(const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& rstd);

}  // namespace fathom::cpu

#endif  // FATHOM_FRAMEWORK_KERNELS_CPU_NORM_H_
