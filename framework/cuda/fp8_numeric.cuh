// Device twins of framework/numeric.h's fp8 conversions, bit for bit (include from .cu files only). The
// explicit _rn intrinsics keep nvcc from contracting or reassociating anything, so every operation rounds
// exactly as the host code's does. Shared by the cast kernels (framework/kernels/cuda/fp8.cu) and the FP8
// GEMM operands (framework/kernels/cuda/fp8_operands.cu).
#ifndef FATHOM_FRAMEWORK_CUDA_FP8_NUMERIC_CUH_
#define FATHOM_FRAMEWORK_CUDA_FP8_NUMERIC_CUH_

#include <cstdint>

#include "framework/fp8_operands.h"

namespace fathom::cuda::fp8_numeric {

// numeric_detail::RoundToSmallFloat: |x| bits `a` below the overflow threshold -> unsigned code.
template <int kMant, int kBias>
__device__ __forceinline__ uint32_t RoundToSmallFloat(uint32_t a) {
  constexpr uint32_t kMinNormal = static_cast<uint32_t>(127 - kBias + 1) << 23;
  if (a < kMinNormal) {
    // The f32 ulp at the magic constant equals the format's subnormal step, so the FPU's nearest-even
    // rounding of this sum is the subnormal rounding (denormal f32 inputs included: no flush-to-zero).
    constexpr uint32_t kMagic = static_cast<uint32_t>((127 - kBias) + (23 - kMant) + 1) << 23;
    const float sum = __fadd_rn(__uint_as_float(a), __uint_as_float(kMagic));
    return __float_as_uint(sum) - kMagic;
  }
  constexpr int kShift = 23 - kMant;
  const uint32_t odd = (a >> kShift) & 1u;
  a += (static_cast<uint32_t>(kBias - 127) << 23) + ((1u << (kShift - 1)) - 1u) + odd;
  return a >> kShift;
}

__device__ __forceinline__ float ClampAbs(float f, float max) {
  if (f != f) return f;
  return f > max ? max : (f < -max ? -max : f);
}

__device__ __forceinline__ uint8_t FloatToE4M3(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a >= 0x43F00000u) return static_cast<uint8_t>(sign | 0x7F);  // >= 480, inf, NaN
  return static_cast<uint8_t>(sign | RoundToSmallFloat<3, 7>(a));
}

__device__ __forceinline__ uint8_t FloatToE5M2(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<uint8_t>(sign | 0x7F);   // NaN
  if (a >= 0x47800000u) return static_cast<uint8_t>(sign | 0x7C);  // >= 65536 -> inf
  return static_cast<uint8_t>(sign | RoundToSmallFloat<2, 15>(a));
}

__device__ __forceinline__ float E4M3ToFloat(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80) << 24;
  const uint32_t exp = (v >> 3) & 0xF, mant = v & 0x7;
  if (exp == 0xF && mant == 0x7) return __uint_as_float(sign | 0x7FC00000u);
  const float mag = exp == 0 ? __fmul_rn(static_cast<float>(mant), 1.0f / 512.0f)
                             : __uint_as_float(((exp + 127 - 7) << 23) | (mant << 20));
  return __uint_as_float(sign | __float_as_uint(mag));
}

__device__ __forceinline__ float E5M2ToFloat(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80) << 24;
  const uint32_t exp = (v >> 2) & 0x1F, mant = v & 0x3;
  if (exp == 0x1F) return __uint_as_float(sign | 0x7F800000u | (mant ? 0x400000u : 0u));
  const float mag = exp == 0 ? __fmul_rn(static_cast<float>(mant), 1.0f / 65536.0f)
                             : __uint_as_float(((exp + 127 - 15) << 23) | (mant << 21));
  return __uint_as_float(sign | __float_as_uint(mag));
}

// numeric.h's FloatToE4M3Saturate: the code of f clamped to +-448 (NaN stays NaN), in integer arithmetic
// (about 20 instructions).
__device__ __forceinline__ uint8_t FloatToE4M3SaturateSoftware(float f) {
  return FloatToE4M3(ClampAbs(f, 448.0f));
}

// The same code from one hardware conversion where the device has it (sm_89 and newer:
// cvt.rn.satfinite.e4m3x2.f32, nearest even with finite overflow to +-448, f the pair's low half), NaN
// answered by the integer path so that its sign survives. Equal to FloatToE4M3SaturateSoftware for every
// one of the 2^32 f32 inputs (tests/gpu/fp8_test.cc checks them all on the device); the quantisers spend
// most of their arithmetic here.
__device__ __forceinline__ uint8_t FloatToE4M3Saturate(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  if (f != f) return FloatToE4M3SaturateSoftware(f);
  uint16_t pair;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(0.0f), "f"(f));
  return static_cast<uint8_t>(pair & 0xFFu);
#else
  return FloatToE4M3SaturateSoftware(f);
#endif
}

// The scaling of one 1x128 tile or 128x128 block from the maximum |x| over it (reduced with fmaxf, so NaN
// never enters), framework/fp8_operands.h's formula: the codes are FloatToE4M3Saturate(x * inv) (one f32
// product) and the stored scale, which multiplies the codes back, is `scale`. The floor keeps an all-zero
// tile finite. Every quantiser (the cast kernels, the GEMM operands, the MoE's fused combine backward) and
// the CPU emulation (framework/kernels/cpu/fp8_gemm.cc) compute exactly this.
struct TileScaling {
  float inv, scale;
};
__device__ __forceinline__ TileScaling ScalingFromAmax(float amax) {
  amax = fmaxf(amax, kFp8ScaleFloor);
  return {__fdiv_rn(kFp8E4M3Max, amax), __fdiv_rn(amax, kFp8E4M3Max)};
}

}  // namespace fathom::cuda::fp8_numeric

#endif  // FATHOM_FRAMEWORK_CUDA_FP8_NUMERIC_CUH_
