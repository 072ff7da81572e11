// Helpers shared by the MoE kernels (moe_routing.cu: router and balance loss; moe_permute.cu: the sort by
// expert, permutation and combine): argument checks that name the op, the token-row dtype dispatch and small
// device functions. Private to those two files (include from .cu files only).
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_MOE_COMMON_CUH_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_MOE_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "framework/cuda/check.h"
#include "framework/kernels/cuda/moe.h"

namespace fathom::cuda::moe_internal {
inline constexpr unsigned kFullMask = 0xffffffffu;

inline cudaStream_t Raw(Stream s) { return s; }  // the same type, named without CUDA headers in moe.h

// ---- argument checks
// ---------------------------------------------------------------------------------------

inline void CheckDevice(const char* op, const char* name, const Tensor& t, DType dtype, const Shape& shape) {
  FATHOM_CHECK(t.defined() && t.device() == Device::kCUDA && t.dtype() == dtype && t.shape() == shape, "[",
               op, "] ", name, " ", t.defined() ? t.shape_str() : std::string("(undefined)"), " ",
               DTypeName(t.dtype()), " on ", DeviceName(t.device()), ", expected ", ShapeString(shape), " ",
               DTypeName(dtype), " on cuda");
}

inline void CheckRows(const char* op, int64_t rows) {
  FATHOM_CHECK(rows >= 0 && rows < std::numeric_limits<int32_t>::max(), "[", op, "] ", rows,
               " rows: the kernels index rows with int32");
}

inline void CheckActivationDType(const char* op, DType t) {
  FATHOM_CHECK(t == DType::kF32 || t == DType::kBF16, "[", op, "] token rows must be f32 or bf16, got ",
               DTypeName(t));
}

template <class T>
struct Tag {
  using type = T;
};

// Calls f(Tag<float>) or f(Tag<__nv_bfloat16>) for the token-row dtype.
template <class F>
void DispatchActivation(DType t, const char* op, F&& f) {
  CheckActivationDType(op, t);
  if (t == DType::kF32) {
    f(Tag<float>{});
  } else {
    f(Tag<__nv_bfloat16>{});
  }
}

// Grid for the grid-stride elementwise kernels: enough blocks to fill the GPU, never more than needed.
inline int GridFor(int64_t elements, int threads) {
  return static_cast<int>(std::min<int64_t>((elements + threads - 1) / threads, 8192));
}

// ---- device helpers
// ----------------------------------------------------------------------------------------

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// The CPU twin's formula (framework/kernels/cpu/activation.cc), which never overflows expf.
__device__ __forceinline__ float Sigmoid(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}

template <class V>
__device__ __forceinline__ V WarpSum(V v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

}  // namespace fathom::cuda::moe_internal

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_MOE_COMMON_CUH_
