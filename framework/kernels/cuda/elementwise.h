// Element-wise helpers on CUDA tensors, the twins of framework/kernels/cpu/elementwise.h plus the dtype
// conversions and fills the GPU step needs. Tensors are contiguous; shapes are checked by element count
// (and by rows/columns for the last-dim concat and split). Work is queued on `stream`; nothing
// synchronises with the host. Argument order is outputs first (the CPU twins return or take outputs last).
//
// dtypes, per op (anything else fails a FATHOM_CHECK naming the op):
//   Add:          out = a + b, all f32; or all bf16 (the sum in f32, rounded once to bf16)
//   AddInPlace:   a += b, a f32 with b f32 or bf16 (gradient accumulation in f32); or a bf16 with b bf16 or
//                 f32 (the sum in f32, rounded once)
//   Convert:      f32 -> bf16 (round to nearest even, NaN -> 0x7FC0: FloatToBf16 bit for bit),
//                 bf16 -> f32 (exact)
//   ConcatLastDim, SplitLastDim: f32, bf16, e4m3, e5m2, i32, i64 (bit copies; every tensor one dtype)
//   Fill:         f32 (float(value)) or bf16 (FloatToBf16(float(value)))
//   Zero:         any dtype (all-zero bytes)
//   AccumulateF64: sums f64; term values f32, f64 or i64
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_ELEMENTWISE_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_ELEMENTWISE_H_

#include <vector>

#include "framework/cuda/stream.h"
#include "framework/kernels/cpu/elementwise.h"
#include "framework/tensor.h"

namespace fathom::cuda {

void Add(const Tensor& out, const Tensor& a, const Tensor& b, Stream stream);
void AddInPlace(const Tensor& a, const Tensor& b, Stream stream);
void Convert(const Tensor& out, const Tensor& in, Stream stream);

// out (N, Ca + Cb) = [a (N, Ca), b (N, Cb)] along the last dim (leading dims flattened into N);
// SplitLastDim is its inverse: a (N, Ca), b (N, Cb) from x (N, Ca + Cb).
void ConcatLastDim(const Tensor& out, const Tensor& a, const Tensor& b, Stream stream);
void SplitLastDim(const Tensor& a, const Tensor& b, const Tensor& x, Stream stream);

void Fill(const Tensor& out, double value, Stream stream);
void Zero(const Tensor& out, Stream stream);

// cpu::AccumulateF64 on device tensors: sums (n) f64 += every term in list order (the same f64 additions
// in the same order per element, so the result is bitwise the CPU twin's). The terms go to the kernel by
// value, up to 32 per launch (one launch per 32 terms: a step's statistics are a few dozen small tensors,
// and a launch per tensor would cost more than the additions).
void AccumulateF64(const Tensor& sums, const std::vector<cpu::AccumulationTerm>& terms, Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_ELEMENTWISE_H_
