// fp8 on the GPU: element-wise casts bit-identical to framework/numeric.h, and the fine-grained block
// quantisation of the DeepSeek-V3 report (1x128 tiles for activations, 128x128 blocks for weights).
//
// Casts. CastToFp8 rounds f32 or bf16 (widened exactly to f32) to e4m3fn or e5m2 exactly as
// FloatToE4M3 / FloatToE5M2 do, or as FloatToE4M3Saturate / FloatToE5M2Saturate with `saturate`
// (NaN stays NaN either way). CastFromFp8 decodes exactly as E4M3ToFloat / E5M2ToFloat (to f32, or that
// f32 rounded by FloatToBf16 for a bf16 output). Same numel in and out; any shape.
//
// Block quantisation. Every tile or block of values x is stored as e4m3 codes q plus one f32 scale s:
//   amax = max(max |x| over the tile, 1e-12)      (NaNs in x do not enter amax; they stay NaN in q)
//   q    = FloatToE4M3Saturate(x * (448 / amax))  (448 / amax rounded once to f32, then one f32 product)
//   s    = amax / 448                             (rounded to f32)
// (framework/fp8_operands.h's formula and floor, kFp8ScaleFloor; one device function computes it for every
// quantiser, fp8_numeric::ScalingFromAmax in framework/cuda/fp8_numeric.cuh)
// and dequantisation is x' = E4M3ToFloat(q) * s (rounded to f32, then to bf16 for a bf16 output).
// s multiplies the codes back, as the `weight_scale_inv` of DeepSeek-V3's FP8 checkpoints does. The floor
// keeps an all-zero tile finite (its codes are zeros); it is far below any value that matters in training.
// A dimension that is not a multiple of 128 ends with a partial tile/block, scaled by its own amax.
//
// Scale layouts (f32, row-major):
//   activations x (T, H): scales (ceil(H/128), T) -- transposed, "MN-major": consecutive tokens of one
//     128-column tile are adjacent, which is how an fp8 GEMM (DeepGEMM-style, TMA) loads the LHS scales.
//   weights w (N, K): scales (ceil(N/128), ceil(K/128)) -- the layout of DeepSeek-V3's weight_scale_inv.
//
// dtypes: x and w f32 or bf16; codes e4m3 (kF8E4M3) only; dequantised outputs f32 or bf16. Anything else
// fails a FATHOM_CHECK. All tensors are CUDA tensors; work is queued on `stream`, nothing syncs the host.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_FP8_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_FP8_H_

#include <cstdint>

#include "framework/cuda/stream.h"
#include "framework/tensor.h"

namespace fathom::cuda {

inline constexpr int64_t kFp8Tile = 128;

// out e4m3 or e5m2 (n) = cast of in f32 or bf16 (n).
void CastToFp8(const Tensor& out, const Tensor& in, bool saturate, Stream stream);
// out f32 or bf16 (n) = decoded in e4m3 or e5m2 (n).
void CastFromFp8(const Tensor& out, const Tensor& in, Stream stream);

// q (T, H) e4m3, scales (ceil(H/128), T) f32 (both overwritten) from x (T, H) f32 or bf16.
void QuantizeActivation1x128(const Tensor& q, const Tensor& scales, const Tensor& x, Stream stream);
// out (T, H) f32 or bf16 = q (T, H) e4m3 * scales (ceil(H/128), T) f32.
void DequantizeActivation1x128(const Tensor& out, const Tensor& q, const Tensor& scales, Stream stream);

// q (N, K) e4m3, scales (ceil(N/128), ceil(K/128)) f32 (both overwritten) from w (N, K) f32 or bf16.
void QuantizeWeight128x128(const Tensor& q, const Tensor& scales, const Tensor& w, Stream stream);
// out (N, K) f32 or bf16 = q (N, K) e4m3 * scales (ceil(N/128), ceil(K/128)) f32.
void DequantizeWeight128x128(const Tensor& out, const Tensor& q, const Tensor& scales, Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_FP8_H_
