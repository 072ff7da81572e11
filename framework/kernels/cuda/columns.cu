#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "framework/cuda/check.h"
#include "framework/cuda/numeric.cuh"
#include "framework/kernels/cuda/columns.h"
#include "framework/kernels/cuda/kernel_common.cuh"

namespace fathom::cuda {
namespace {

constexpr int kThreads = 256;

unsigned GridFor(int64_t n) { return common::GridFor(n, kThreads); }

#define FATHOM_COLUMNS_GRID_STRIDE(i, n)                                                 \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// One thread per copied element (r, j): a bit copy in the element type.
template <class E>
__global__ void CopyColumnsKernel(E* dst, int64_t wd, int64_t d0, const E* src, int64_t ws, int64_t s0,
                                  int64_t w, int64_t total) {
  FATHOM_COLUMNS_GRID_STRIDE(i, total) {
    const int64_t r = i / w, j = i % w;
    dst[r * wd + d0 + j] = src[r * ws + s0 + j];
  }
}

// One thread per written element (r, h, j).
template <class E>
__global__ void BroadcastKernel(E* k, int64_t heads, int64_t dk, int64_t off, const E* src, int64_t ws,
                                int64_t s0, int64_t total) {
  const int64_t d = dk - off;
  FATHOM_COLUMNS_GRID_STRIDE(i, total) {
    const int64_t j = i % d, rh = i / d;
    const int64_t r = rh / heads;
    k[rh * dk + off + j] = src[r * ws + s0 + j];
  }
}

// One thread per output element (r, j), summing the heads in order in f32.
template <class E>
__global__ void SumHeadsKernel(E* dst, int64_t wd, int64_t d0, const E* dk, int64_t heads, int64_t w,
                               int64_t off, int64_t total) {
  const int64_t d = w - off;
  FATHOM_COLUMNS_GRID_STRIDE(i, total) {
    const int64_t r = i / d, j = i % d;
    float s = 0.0f;
    for (int64_t h = 0; h < heads; ++h) s += LoadF32(dk + (r * heads + h) * w + off + j);
    StoreF32(dst + r * wd + d0 + j, s);
  }
}

// Calls f with a float (f32) or __nv_bfloat16 (bf16) tag; every tensor must have `dtype`.
template <class F>
void DispatchF32Bf16(const char* op, DType dtype, F&& f) {
  if (dtype == DType::kF32) return f(float{});
  FATHOM_CHECK(dtype == DType::kBF16, "[", op, "] unsupported dtype ", DTypeName(dtype), " (f32 or bf16)");
  f(__nv_bfloat16{});
}

}  // namespace

void CopyColumns(const Tensor& dst, int64_t d0, const Tensor& src, int64_t s0, int64_t w, Stream stream) {
  const char* op = "copy_columns";
  FATHOM_CHECK(dst.ndim() == 2 && src.ndim() == 2 && dst.dim(0) == src.dim(0) && d0 >= 0 && s0 >= 0 &&
                   w >= 0 && d0 + w <= dst.dim(1) && s0 + w <= src.dim(1) && dst.dtype() == src.dtype(),
               "[", op, "] columns [", s0, ", ", s0 + w, ") of ", src.shape_str(), " ",
               DTypeName(src.dtype()), " to [", d0, ", ", d0 + w, ") of ", dst.shape_str(), " ",
               DTypeName(dst.dtype()));
  const int64_t total = src.dim(0) * w;
  if (total == 0) return;
  // A bit copy: as 16-byte words when every width, offset and base pointer allows (MLA's splits do).
  const int64_t v = 16 / static_cast<int64_t>(DTypeSize(src.dtype()));
  if (dst.dim(1) % v == 0 && d0 % v == 0 && src.dim(1) % v == 0 && s0 % v == 0 && w % v == 0 &&
      AllAligned({dst.raw(), src.raw()}, 16)) {
    CopyColumnsKernel<uint4><<<GridFor(total / v), kThreads, 0, stream>>>(
        static_cast<uint4*>(dst.raw()), dst.dim(1) / v, d0 / v, static_cast<const uint4*>(src.raw()),
        src.dim(1) / v, s0 / v, w / v, total / v);
    FATHOM_CUDA_CHECK_LAUNCH();
    return;
  }
  DispatchF32Bf16(op, src.dtype(), [&](auto tag) {
    using E = decltype(tag);
    CopyColumnsKernel<E><<<GridFor(total), kThreads, 0, stream>>>(static_cast<E*>(dst.raw()), dst.dim(1), d0,
                                                                  static_cast<const E*>(src.raw()),
                                                                  src.dim(1), s0, w, total);
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

void BroadcastColumnsToHeads(const Tensor& k, int64_t off, const Tensor& src, int64_t s0, Stream stream) {
  const char* op = "broadcast_columns_to_heads";
  FATHOM_CHECK(k.ndim() == 3 && off >= 0 && off <= k.dim(2), "[", op, "] k ", k.shape_str(), " offset ", off);
  const int64_t n = k.dim(0), heads = k.dim(1), dk = k.dim(2), d = dk - off;
  FATHOM_CHECK(
      src.ndim() == 2 && src.dim(0) == n && s0 >= 0 && s0 + d <= src.dim(1) && src.dtype() == k.dtype(), "[",
      op, "] ", src.shape_str(), " ", DTypeName(src.dtype()), " into ", k.shape_str(), " ",
      DTypeName(k.dtype()));
  const int64_t total = n * heads * d;
  if (total == 0) return;
  DispatchF32Bf16(op, k.dtype(), [&](auto tag) {
    using E = decltype(tag);
    BroadcastKernel<E><<<GridFor(total), kThreads, 0, stream>>>(
        static_cast<E*>(k.raw()), heads, dk, off, static_cast<const E*>(src.raw()), src.dim(1), s0, total);
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

void SumHeadsToColumns(const Tensor& dst, int64_t d0, const Tensor& dk, int64_t off, Stream stream) {
  const char* op = "sum_heads_to_columns";
  FATHOM_CHECK(dk.ndim() == 3 && off >= 0 && off <= dk.dim(2), "[", op, "] dk ", dk.shape_str(), " offset ",
               off);
  const int64_t n = dk.dim(0), heads = dk.dim(1), w = dk.dim(2), d = w - off;
  FATHOM_CHECK(
      dst.ndim() == 2 && dst.dim(0) == n && d0 >= 0 && d0 + d <= dst.dim(1) && dst.dtype() == dk.dtype(), "[",
      op, "] ", dk.shape_str(), " ", DTypeName(dk.dtype()), " over heads into ", dst.shape_str(), " ",
      DTypeName(dst.dtype()));
  const int64_t total = n * d;
  if (total == 0) return;
  DispatchF32Bf16(op, dk.dtype(), [&](auto tag) {
    using E = decltype(tag);
    SumHeadsKernel<E><<<GridFor(total), kThreads, 0, stream>>>(
        static_cast<E*>(dst.raw()), dst.dim(1), d0, static_cast<const E*>(dk.raw()), heads, w, off, total);
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace fathom::cuda
