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
#include <initializer_list>
#include <type_traits>
#include <utility>

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

// One element as f32 and back, by the convention of its storage type: float; __nv_bfloat16 (the hardware's
// RNE); uint16_t (bf16 bits, the CPU twin's FloatToBf16).
__device__ __forceinline__ float ToF32(float v) { return v; }
__device__ __forceinline__ float ToF32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToF32(uint16_t v) { return Bf16BitsToFloat(v); }
template <class T>
__device__ __forceinline__ T FromF32(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else {
    static_assert(std::is_same_v<T, uint16_t>);
    return FloatToBf16Bits(v);
  }
}

// The word of one access of `bytes` bytes (2, 4, 8 or 16).
template <int kBytes>
using VecWord = std::conditional_t<
    kBytes == 16, uint4,
    std::conditional_t<kBytes == 8, uint2, std::conditional_t<kBytes == 4, uint32_t, uint16_t>>>;

// V consecutive elements at p in one 2-, 4-, 8- or 16-byte access (p aligned to V * sizeof(T)), as f32.
template <int V, class T>
__device__ __forceinline__ void LoadVec(const T* p, float (&v)[V]) {
  constexpr int kBytes = V * static_cast<int>(sizeof(T));
  static_assert(kBytes == 2 || kBytes == 4 || kBytes == 8 || kBytes == 16);
  using W = VecWord<kBytes>;
  alignas(16) T e[V];
  *reinterpret_cast<W*>(e) = *reinterpret_cast<const W*>(p);
#pragma unroll
  for (int k = 0; k < V; ++k) v[k] = ToF32(e[k]);
}
template <int V, class T>
__device__ __forceinline__ void StoreVec(T* p, const float (&v)[V]) {
  constexpr int kBytes = V * static_cast<int>(sizeof(T));
  static_assert(kBytes == 2 || kBytes == 4 || kBytes == 8 || kBytes == 16);
  using W = VecWord<kBytes>;
  alignas(16) T e[V];
#pragma unroll
  for (int k = 0; k < V; ++k) e[k] = FromF32<T>(v[k]);
  *reinterpret_cast<W*>(p) = *reinterpret_cast<const W*>(e);
}

// V consecutive elements as f32 in 16-byte pieces (V of them wider than one access: 8 f32 take two;
// REQUIRES p aligned to min(16, V * sizeof(T)) bytes).
template <int V, class T>
__device__ __forceinline__ void LoadWide(const T* p, float (&v)[V]) {
  constexpr int kPiece = V * sizeof(T) > 16 ? 16 / static_cast<int>(sizeof(T)) : V;
#pragma unroll
  for (int q = 0; q < V / kPiece; ++q)
    LoadVec<kPiece>(p + q * kPiece, *reinterpret_cast<float(*)[kPiece]>(v + q * kPiece));
}
template <int V, class T>
__device__ __forceinline__ void StoreWide(T* p, const float (&v)[V]) {
  constexpr int kPiece = V * sizeof(T) > 16 ? 16 / static_cast<int>(sizeof(T)) : V;
#pragma unroll
  for (int q = 0; q < V / kPiece; ++q)
    StoreVec<kPiece>(p + q * kPiece, *reinterpret_cast<const float(*)[kPiece]>(v + q * kPiece));
}

// Whether every pointer is aligned to `bytes` (host side: picks the vector path of a kernel).
inline bool AllAligned(std::initializer_list<const void*> pointers, uintptr_t bytes) {
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % bytes != 0) return false;
  return true;
}

// Host side, for an elementwise kernel over n elements that moves V per access: calls
// launch(std::integral_constant<int, V>, first, groups) for the longest prefix the operands allow (each
// {pointer, element size} aligned to V elements), then launch(std::integral_constant<int, 1>, first, count)
// for the rest (everything, when a pointer is not aligned).
template <int V, class Launch>
void LaunchVectorized(int64_t n, std::initializer_list<std::pair<const void*, size_t>> operands,
                      Launch&& launch) {
  bool aligned = true;
  for (const auto& [p, size] : operands) aligned = aligned && AllAligned({p}, V * size);
  const int64_t head = aligned ? n / V * V : 0;
  if (head > 0) launch(std::integral_constant<int, V>{}, int64_t{0}, head / V);
  if (n > head) launch(std::integral_constant<int, 1>{}, head, n - head);
}

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_CUDA_NUMERIC_CUH_
