#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "framework/cuda/check.h"
#include "framework/cuda/fp8_numeric.cuh"
#include "framework/cuda/numeric.cuh"
#include "framework/kernels/cuda/fp8.h"
#include "framework/kernels/cuda/kernel_common.cuh"

namespace fathom::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// The device twins of framework/numeric.h's casts (framework/cuda/fp8_numeric.cuh).
using fp8_numeric::ClampAbs;
using fp8_numeric::E4M3ToFloat;
using fp8_numeric::E5M2ToFloat;
using fp8_numeric::FloatToE4M3;
using fp8_numeric::FloatToE5M2;

// Storage access: f32 as float, bf16 as its bit pattern.
__device__ __forceinline__ float Load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float Load(const uint16_t* p, int64_t i) { return Bf16BitsToFloat(p[i]); }
__device__ __forceinline__ void Store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void Store(uint16_t* p, int64_t i, float v) { p[i] = FloatToBf16Bits(v); }

// ---- kernels ----

template <class In, bool kE4M3, bool kSaturate>
__global__ void CastToFp8Kernel(uint8_t* out, const In* in, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float f = Load(in, i);
    if constexpr (kE4M3) {
      out[i] = FloatToE4M3(kSaturate ? ClampAbs(f, 448.0f) : f);
    } else {
      out[i] = FloatToE5M2(kSaturate ? ClampAbs(f, 57344.0f) : f);
    }
  }
}

template <class Out, bool kE4M3>
__global__ void CastFromFp8Kernel(Out* out, const uint8_t* in, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Store(out, i, kE4M3 ? E4M3ToFloat(in[i]) : E5M2ToFloat(in[i]));
  }
}

// One warp per (row, 128-column tile): lane l holds columns l, l + 32, l + 64, l + 96 of the tile, so each
// of the four loads is one coalesced 128-element row segment. grid (ceil(rows / 8), tiles).
template <class In>
__global__ void QuantizeActivationKernel(uint8_t* q, float* scales, const In* x, int64_t rows, int64_t cols) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t tile = blockIdx.y;
  if (row >= rows) return;
  const int64_t c0 = tile * kFp8Tile;
  const int64_t width = min(static_cast<int64_t>(kFp8Tile), cols - c0);
  const In* src = x + row * cols + c0;
  float v[4];
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int c = lane + 32 * j;
    v[j] = c < width ? Load(src, c) : 0.0f;
    amax = fmaxf(amax, fabsf(v[j]));  // fmaxf drops NaN operands
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, off));
  const fp8_numeric::TileScaling scaling = fp8_numeric::ScalingFromAmax(amax);
  uint8_t* dst = q + row * cols + c0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int c = lane + 32 * j;
    if (c < width) dst[c] = FloatToE4M3(ClampAbs(__fmul_rn(v[j], scaling.inv), 448.0f));
  }
  if (lane == 0) scales[tile * rows + row] = scaling.scale;
}

template <class Out>
__global__ void DequantizeActivationKernel(Out* out, const uint8_t* q, const float* scales, int64_t rows,
                                           int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / cols, col = i % cols;
    Store(out, i, __fmul_rn(E4M3ToFloat(q[i]), scales[(col / kFp8Tile) * rows + row]));
  }
}

// One block per 128x128 block of one matrix (grid (col blocks, row blocks, matrices)): a block-wide amax,
// then the codes. The second pass re-reads the 64 KiB block from L2.
template <class In>
__global__ void QuantizeWeightKernel(uint8_t* q, float* scales, const In* w, int64_t rows, int64_t cols) {
  __shared__ float warp_max[kWarps];
  const int64_t row_blocks = (rows + kFp8Tile - 1) / kFp8Tile, col_blocks = (cols + kFp8Tile - 1) / kFp8Tile;
  const int64_t r0 = blockIdx.y * kFp8Tile, c0 = blockIdx.x * kFp8Tile;
  const int h = static_cast<int>(min(static_cast<int64_t>(kFp8Tile), rows - r0));
  const int wd = static_cast<int>(min(static_cast<int64_t>(kFp8Tile), cols - c0));
  const int64_t base = blockIdx.z * rows * cols + r0 * cols + c0;
  float amax = 0.0f;
  for (int i = threadIdx.x; i < kFp8Tile * kFp8Tile; i += kThreads) {
    const int r = i / kFp8Tile, c = i % kFp8Tile;
    if (r < h && c < wd) amax = fmaxf(amax, fabsf(Load(w, base + r * cols + c)));
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, off));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = warp_max[0];
  for (int i = 1; i < kWarps; ++i) amax = fmaxf(amax, warp_max[i]);
  const fp8_numeric::TileScaling scaling = fp8_numeric::ScalingFromAmax(amax);
  for (int i = threadIdx.x; i < kFp8Tile * kFp8Tile; i += kThreads) {
    const int r = i / kFp8Tile, c = i % kFp8Tile;
    if (r < h && c < wd) {
      const int64_t at = base + r * cols + c;
      q[at] = FloatToE4M3(ClampAbs(__fmul_rn(Load(w, at), scaling.inv), 448.0f));
    }
  }
  if (threadIdx.x == 0)
    scales[(blockIdx.z * row_blocks + blockIdx.y) * col_blocks + blockIdx.x] = scaling.scale;
}

template <class Out>
__global__ void DequantizeWeightKernel(Out* out, const uint8_t* q, const float* scales, int64_t matrices,
                                       int64_t rows, int64_t cols) {
  const int64_t row_blocks = (rows + kFp8Tile - 1) / kFp8Tile, col_blocks = (cols + kFp8Tile - 1) / kFp8Tile;
  const int64_t n = matrices * rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t mat = i / (rows * cols), rem = i % (rows * cols);
    const int64_t r = rem / cols, c = rem % cols;
    const float s = scales[(mat * row_blocks + r / kFp8Tile) * col_blocks + c / kFp8Tile];
    Store(out, i, __fmul_rn(E4M3ToFloat(q[i]), s));
  }
}

// ---- host side ----

unsigned GridFor(int64_t n) { return common::GridFor(n, kThreads); }

using common::CheckCuda;

void CheckFloatIn(const char* op, const Tensor& t, const char* name) {
  FATHOM_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kBF16, "[", op, "] ", name,
               " must be f32 or bf16, got ", DTypeName(t.dtype()));
}

int64_t Tiles(int64_t n) { return (n + kFp8Tile - 1) / kFp8Tile; }

using common::WithFloatIn;
template <class F>
void WithFloatOut(const Tensor& t, F&& f) {
  if (t.dtype() == DType::kF32) {
    f(static_cast<float*>(t.raw()));
  } else {
    f(static_cast<uint16_t*>(t.raw()));
  }
}

}  // namespace

void CastToFp8(const Tensor& out, const Tensor& in, bool saturate, Stream stream) {
  const char* op = "cast_to_fp8_cuda";
  CheckCuda(op, out, "out");
  CheckCuda(op, in, "in");
  CheckFloatIn(op, in, "in");
  FATHOM_CHECK(out.dtype() == DType::kF8E4M3 || out.dtype() == DType::kF8E5M2, "[", op,
               "] out must be e4m3 or e5m2, got ", DTypeName(out.dtype()));
  FATHOM_CHECK(out.numel() == in.numel(), "[", op, "] out ", out.shape_str(), " in ", in.shape_str());
  const int64_t n = in.numel();
  if (n == 0) return;
  uint8_t* o = static_cast<uint8_t*>(out.raw());
  const bool e4m3 = out.dtype() == DType::kF8E4M3;
  WithFloatIn(in, [&](auto* src) {
    using In = std::remove_const_t<std::remove_pointer_t<decltype(src)>>;
    auto kernel = e4m3 ? (saturate ? CastToFp8Kernel<In, true, true> : CastToFp8Kernel<In, true, false>)
                       : (saturate ? CastToFp8Kernel<In, false, true> : CastToFp8Kernel<In, false, false>);
    kernel<<<GridFor(n), kThreads, 0, stream>>>(o, src, n);
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

void CastFromFp8(const Tensor& out, const Tensor& in, Stream stream) {
  const char* op = "cast_from_fp8_cuda";
  CheckCuda(op, out, "out");
  CheckCuda(op, in, "in");
  CheckFloatIn(op, out, "out");
  FATHOM_CHECK(in.dtype() == DType::kF8E4M3 || in.dtype() == DType::kF8E5M2, "[", op,
               "] in must be e4m3 or e5m2, got ", DTypeName(in.dtype()));
  FATHOM_CHECK(out.numel() == in.numel(), "[", op, "] out ", out.shape_str(), " in ", in.shape_str());
  const int64_t n = in.numel();
  if (n == 0) return;
  const uint8_t* src = static_cast<const uint8_t*>(in.raw());
  const bool e4m3 = in.dtype() == DType::kF8E4M3;
  WithFloatOut(out, [&](auto* dst) {
    using Out = std::remove_pointer_t<decltype(dst)>;
    auto kernel = e4m3 ? CastFromFp8Kernel<Out, true> : CastFromFp8Kernel<Out, false>;
    kernel<<<GridFor(n), kThreads, 0, stream>>>(dst, src, n);
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

void QuantizeActivation1x128(const Tensor& q, const Tensor& scales, const Tensor& x, Stream stream) {
  const char* op = "quantize_activation_1x128_cuda";
  CheckCuda(op, q, "q");
  CheckCuda(op, scales, "scales");
  CheckCuda(op, x, "x");
  CheckFloatIn(op, x, "x");
  FATHOM_CHECK(x.ndim() == 2 && q.shape() == x.shape() && q.dtype() == DType::kF8E4M3, "[", op, "] q ",
               q.shape_str(), " ", DTypeName(q.dtype()), " for x ", x.shape_str(),
               " (expected e4m3, same 2-D shape)");
  const int64_t rows = x.dim(0), cols = x.dim(1);
  FATHOM_CHECK(scales.dtype() == DType::kF32 && scales.shape() == Shape({Tiles(cols), rows}), "[", op,
               "] scales ", scales.shape_str(), " ", DTypeName(scales.dtype()), ", expected f32 (",
               Tiles(cols), ", ", rows, ")");
  if (rows == 0 || cols == 0) return;
  FATHOM_CHECK(Tiles(cols) <= 65535, "[", op, "] ", cols, " columns exceed the grid's y limit");
  dim3 grid(static_cast<unsigned>((rows + kWarps - 1) / kWarps), static_cast<unsigned>(Tiles(cols)));
  WithFloatIn(x, [&](auto* src) {
    QuantizeActivationKernel<<<grid, kThreads, 0, stream>>>(
        static_cast<uint8_t*>(q.raw()), static_cast<float*>(scales.raw()), src, rows, cols);
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

void DequantizeActivation1x128(const Tensor& out, const Tensor& q, const Tensor& scales, Stream stream) {
  const char* op = "dequantize_activation_1x128_cuda";
  CheckCuda(op, out, "out");
  CheckCuda(op, q, "q");
  CheckCuda(op, scales, "scales");
  CheckFloatIn(op, out, "out");
  FATHOM_CHECK(q.ndim() == 2 && out.shape() == q.shape() && q.dtype() == DType::kF8E4M3, "[", op, "] out ",
               out.shape_str(), " q ", q.shape_str(), " ", DTypeName(q.dtype()));
  const int64_t rows = q.dim(0), cols = q.dim(1);
  FATHOM_CHECK(scales.dtype() == DType::kF32 && scales.shape() == Shape({Tiles(cols), rows}), "[", op,
               "] scales ", scales.shape_str(), ", expected f32 (", Tiles(cols), ", ", rows, ")");
  const int64_t n = rows * cols;
  if (n == 0) return;
  WithFloatOut(out, [&](auto* dst) {
    DequantizeActivationKernel<<<GridFor(n), kThreads, 0, stream>>>(
        dst, static_cast<const uint8_t*>(q.raw()), static_cast<const float*>(scales.raw()), rows, cols);
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

namespace {

// Leading dims of a (..., N, K) weight and the scale shape (..., ceil(N/128), ceil(K/128)).
Shape WeightScaleShape(const Tensor& w) {
  Shape s = w.shape();
  s[s.size() - 2] = Tiles(w.dim(-2));
  s[s.size() - 1] = Tiles(w.dim(-1));
  return s;
}

}  // namespace

void QuantizeWeight128x128(const Tensor& q, const Tensor& scales, const Tensor& w, Stream stream) {
  const char* op = "quantize_weight_128x128_cuda";
  CheckCuda(op, q, "q");
  CheckCuda(op, scales, "scales");
  CheckCuda(op, w, "w");
  CheckFloatIn(op, w, "w");
  FATHOM_CHECK(w.ndim() >= 2 && q.shape() == w.shape() && q.dtype() == DType::kF8E4M3, "[", op, "] q ",
               q.shape_str(), " ", DTypeName(q.dtype()), " for w ", w.shape_str());
  FATHOM_CHECK(scales.dtype() == DType::kF32 && scales.shape() == WeightScaleShape(w), "[", op, "] scales ",
               scales.shape_str(), ", expected f32 ", ShapeString(WeightScaleShape(w)));
  const int64_t rows = w.dim(-2), cols = w.dim(-1);
  if (w.numel() == 0) return;
  const int64_t matrices = w.numel() / (rows * cols);
  FATHOM_CHECK(Tiles(rows) <= 65535 && matrices <= 65535, "[", op, "] ", w.shape_str(),
               " exceeds the grid limits");
  dim3 grid(static_cast<unsigned>(Tiles(cols)), static_cast<unsigned>(Tiles(rows)),
            static_cast<unsigned>(matrices));
  WithFloatIn(w, [&](auto* src) {
    QuantizeWeightKernel<<<grid, kThreads, 0, stream>>>(static_cast<uint8_t*>(q.raw()),
                                                        static_cast<float*>(scales.raw()), src, rows, cols);
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

void DequantizeWeight128x128(const Tensor& out, const Tensor& q, const Tensor& scales, Stream stream) {
  const char* op = "dequantize_weight_128x128_cuda";
  CheckCuda(op, out, "out");
  CheckCuda(op, q, "q");
  CheckCuda(op, scales, "scales");
  CheckFloatIn(op, out, "out");
  FATHOM_CHECK(q.ndim() >= 2 && out.shape() == q.shape() && q.dtype() == DType::kF8E4M3, "[", op, "] out ",
               out.shape_str(), " q ", q.shape_str(), " ", DTypeName(q.dtype()));
  FATHOM_CHECK(scales.dtype() == DType::kF32 && scales.shape() == WeightScaleShape(q), "[", op, "] scales ",
               scales.shape_str(), ", expected f32 ", ShapeString(WeightScaleShape(q)));
  const int64_t rows = q.dim(-2), cols = q.dim(-1);
  const int64_t n = q.numel();
  if (n == 0) return;
  WithFloatOut(out, [&](auto* dst) {
    DequantizeWeightKernel<<<GridFor(n), kThreads, 0, stream>>>(dst, static_cast<const uint8_t*>(q.raw()),
                                                                static_cast<const float*>(scales.raw()),
                                                                n / (rows * cols), rows, cols);
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace fathom::cuda
