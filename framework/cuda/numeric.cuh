// Device-side element conversions shared by the kernels (include from .cu files only).
//
// Two bf16 conventions, deliberately distinct:
//   LoadF32 / StoreF32 on __nv_bfloat16   the hardware's round-to-nearest-even conversion
//   (__float2bfloat16_rn),
//                                         for activations and weights;
//   Bf16BitsToFloat / FloatToBf16Bits     the bit-exact twin of framework/numeric.h's FloatToBf16 (NaN ->
//                                         0x7FC0), for buffers that must equal the CPU's bit for bit (AdamW's
//                                         bf16 moments, casts).
#ifndef FATHOM_FRAMEWORK_CUDA_NUMERIC_CUH_
#define FATHOM_FRAMEWORK_CUDA_NUMERIC_CUH_

#include <cuda_bf16.h>

#include <cstdint>

namespace fathom::cuda {

__device__ __forceinline__ float LoadF32(const float* p) { return *p; }
__device__ __forceinline__ float LoadF32(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void StoreF32(float* p, float v) { *p = v; }
__device__ __forceinline__ void StoreF32(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

__device__ __forceinline__ float Bf16BitsToFloat(uint16_t b) {
  return __uint_as_float(static_cast<uint32_t>(b) << 16);
}

__device__ __forceinline__ uint16_t FloatToBf16Bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_CUDA_NUMERIC_CUH_
