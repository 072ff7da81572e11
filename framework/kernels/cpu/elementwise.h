// Small element-wise helpers on CPU tensors of equal shape and dtype (f32/f64).
#ifndef FATHOM_FRAMEWORK_KERNELS_CPU_ELEMENTWISE_H_
#define FATHOM_FRAMEWORK_KERNELS_CPU_ELEMENTWISE_H_

#include "framework/tensor.h"

namespace fathom::cpu {

Tensor Add(const Tensor& a, const Tensor& b);       // fresh a + b
void AddInPlace(const Tensor& a, const Tensor& b);  // a += b
// out (N, Ca + Cb) = [a (N, Ca), b (N, Cb)] along the last dim; SplitLastDim is its inverse.
Tensor ConcatLastDim(const Tensor& a, const Tensor& b);
void SplitLastDim(const Tensor& x, const Tensor& a, const Tensor& b);

}  // namespace fathom::cpu

#endif  // FATHOM_FRAMEWORK_KERNELS_CPU_ELEMENTWISE_H_
