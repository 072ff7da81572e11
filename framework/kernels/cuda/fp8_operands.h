// The FP8 GEMM operands on the GPU: the quantisation kernels of framework/fp8_operands.h, bit-identical to
// the CPU twins of framework/kernels/cpu/fp8_gemm.h (same formula, same layouts, every rounding explicit).
//
//   QuantizeRows1x128      x (R, K) f32 or bf16 -> packed rows: 16-byte segments, 16 (bf16) or 32 (f32)
//                          lanes per (row, 128-column tile), where K is a multiple of a segment and x is
//                          16-byte aligned; else one warp per (row, tile) (the same bits)
//   DequantizeRows1x128    packed rows -> (R, K) f32 or bf16 (f32 product, then one rounding)
//   QuantizeCols1x128      x (R, C) f32 or bf16, or packed rows -> columns tiled along each group's tokens:
//                          one block per (128-token tile, 64 columns) read in 16-byte segments where
//                          the rows are 16-byte aligned (and, for f32/bf16, the width a multiple of a
//                          segment), else per (tile, 32 columns) element by element (the same bits);
//                          staged in shared memory so that both the read of x and the write of the
//                          transposed codes are coalesced
//   QuantizeWeight128x128  w (..., N, K) f32 or bf16 -> both Fp8Weight copies: one block per 128x128 block
//                          (its codes staged in shared memory for the transposed write)
// Grouped operands take at most kMaxFp8Groups groups (their offsets travel as a kernel parameter);
// more fail a FATHOM_CHECK. All tensors are CUDA tensors; work is queued on `stream`; nothing syncs the
// host. Shapes are checked as framework/fp8_operands.h's Check* functions state.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_FP8_OPERANDS_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_FP8_OPERANDS_H_

#include <cstdint>
#include <vector>

#include "framework/cuda/stream.h"
#include "framework/fp8_operands.h"
#include "framework/tensor.h"

namespace fathom::cuda {

inline constexpr int kMaxFp8Groups = 256;

void QuantizeRows1x128(const Fp8Rows& q, const Tensor& x, Stream stream);
void DequantizeRows1x128(const Tensor& out, const Fp8Rows& q, Stream stream);
void QuantizeCols1x128(const Fp8Cols& q, const Tensor& x, Stream stream);
void QuantizeCols1x128(const Fp8Cols& q, const Fp8Rows& x, Stream stream);
void QuantizeWeight128x128(const Fp8Weight& q, const Tensor& w, Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_FP8_OPERANDS_H_
