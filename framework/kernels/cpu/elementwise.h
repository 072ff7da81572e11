// Small element-wise helpers on CPU tensors of equal shape and dtype (f32/f64), and the f64 accumulation
// of step statistics.
#ifndef FATHOM_FRAMEWORK_KERNELS_CPU_ELEMENTWISE_H_
#define FATHOM_FRAMEWORK_KERNELS_CPU_ELEMENTWISE_H_

#include <cstdint>
#include <vector>

#include "framework/tensor.h"

namespace fathom::cpu {

Tensor Add(const Tensor& a, const Tensor& b);       // fresh a + b
void AddInPlace(const Tensor& a, const Tensor& b);  // a += b
// out (N, Ca + Cb) = [a (N, Ca), b (N, Cb)] along the last dim; SplitLastDim is its inverse.
Tensor ConcatLastDim(const Tensor& a, const Tensor& b);
void SplitLastDim(const Tensor& x, const Tensor& a, const Tensor& b);

// One term of AccumulateF64: sums[offset + i] += double(values[i]) for i < values.numel().
struct AccumulationTerm {
  int64_t offset = 0;
  Tensor values;  // f32, f64 or i64 (i64 is exact below 2^53)
};
// sums (n) f64 += every term, in the order given: an element several terms add to receives them in list
// order, so the result equals the plain host loop `for term: for i: sums[offset + i] += values[i]`.
// REQUIRES: each term inside [0, n).
void AccumulateF64(const Tensor& sums, const std::vector<AccumulationTerm>& terms);

}  // namespace fathom::cpu

#endif  // FATHOM_FRAMEWORK_KERNELS_CPU_ELEMENTWISE_H_
