#include <cuda_bf16.h>

#include <cstdint>

#include "framework/cuda/check.h"
#include "framework/cuda/numeric.cuh"
#include "framework/kernels/cuda/rope.h"

namespace fathom::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;  // one warp per row
constexpr int kMaxHalf = 512;

// A warp owns one row: it copies the leading columns (when not in place), stages the d rope columns in
// shared memory, and only after __syncwarp writes them back, so in-place rotation of the interleaved layout
// (which reads slots 2j, 2j+1 and writes slots j, j + d/2) never reads a slot another lane already wrote.
template <class T, bool kBackward>
__global__ void __launch_bounds__(kThreads)
    RopeKernel(T* out, const T* x, const float* cos, const float* sin, int64_t rows, int t, int h, int w,
               int half, bool interleaved) {
  extern __shared__ float stage[];  // (kRowsPerBlock, 2 * half)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= rows) return;  // whole warps only: the barrier below is __syncwarp
  const int pos = static_cast<int>((row / h) % t);
  const int d = 2 * half, lead = w - d;
  const T* src = x + row * w;
  T* dst = out + row * w;
  if (dst != src)
    for (int c = lane; c < lead; c += 32) dst[c] = src[c];
  float* buf = stage + warp * d;
  for (int c = lane; c < d; c += 32) buf[c] = LoadF32(src + lead + c);
  __syncwarp();
  const float* cr = cos + static_cast<int64_t>(pos) * half;
  const float* sr = sin + static_cast<int64_t>(pos) * half;
  // Pair j is (r[2j], r[2j+1]) interleaved, (r[j], r[j + d/2]) otherwise; the forward output is split halves.
  const int stride = interleaved ? 2 : 1, second = interleaved ? 1 : half;
  T* o = dst + lead;
  for (int j = lane; j < half; j += 32) {
    const float c = cr[j], s = sr[j];
    if (!kBackward) {
      const float a = buf[j * stride], b = buf[j * stride + second];
      StoreF32(o + j, a * c - b * s);
      StoreF32(o + j + half, b * c + a * s);
    } else {
      // The transpose of the rotation [[c, -s], [s, c]], sent back to the slots the forward read.
      const float lo = buf[j], hi = buf[j + half];
      StoreF32(o + j * stride, lo * c + hi * s);
      StoreF32(o + j * stride + second, hi * c - lo * s);
    }
  }
}

template <bool kBackward>
void Launch(const char* op, const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin,
            bool interleaved, cudaStream_t stream) {
  FATHOM_CHECK(x.ndim() == 4 && out.shape() == x.shape(), "[", op, "] x ", x.shape_str(), " out ",
               out.shape_str(), ", expected equal (B, T, H, W)");
  FATHOM_CHECK(cos.ndim() == 2 && sin.shape() == cos.shape() && cos.dim(0) >= x.dim(1) && cos.dim(1) >= 1 &&
                   2 * cos.dim(1) <= x.dim(3),
               "[", op, "] cos ", cos.shape_str(), " sin ", sin.shape_str(), " for x ", x.shape_str(),
               ", expected (>= T, d/2) with 0 < d <= W");
  FATHOM_CHECK(cos.dim(1) <= kMaxHalf, "[", op, "] d/2 = ", cos.dim(1), " above ", kMaxHalf);
  FATHOM_CHECK(cos.dtype() == DType::kF32 && sin.dtype() == DType::kF32, "[", op,
               "] tables must be f32, got ", DTypeName(cos.dtype()), "/", DTypeName(sin.dtype()));
  FATHOM_CHECK(out.dtype() == x.dtype() && (x.dtype() == DType::kF32 || x.dtype() == DType::kBF16), "[", op,
               "] supports f32 and bf16 with out of x's dtype, got x ", DTypeName(x.dtype()), " out ",
               DTypeName(out.dtype()));
  for (const Tensor* p : {&out, &x, &cos, &sin})
    FATHOM_CHECK(p->device() == Device::kCUDA, "[", op, "] expects CUDA tensors, got a ",
                 DeviceName(p->device()), " tensor ", p->shape_str());
  FATHOM_CHECK(x.dim(3) < (int64_t{1} << 30), "[", op, "] row width ", x.dim(3));
  const int64_t rows = x.dim(0) * x.dim(1) * x.dim(2);
  if (rows == 0) return;
  const int half = static_cast<int>(cos.dim(1));
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  FATHOM_CHECK(blocks < (int64_t{1} << 31), "[", op, "] too many rows: ", x.shape_str());
  const size_t smem = sizeof(float) * kRowsPerBlock * 2 * half;
  const int t = static_cast<int>(x.dim(1)), h = static_cast<int>(x.dim(2)), w = static_cast<int>(x.dim(3));
  if (x.dtype() == DType::kF32) {
    RopeKernel<float, kBackward><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
        out.data<float>(), x.data<float>(), cos.data<float>(), sin.data<float>(), rows, t, h, w, half,
        interleaved);
  } else {
    RopeKernel<__nv_bfloat16, kBackward><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
        static_cast<__nv_bfloat16*>(out.raw()), static_cast<const __nv_bfloat16*>(x.raw()), cos.data<float>(),
        sin.data<float>(), rows, t, h, w, half, interleaved);
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace

void RopeForward(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved,
                 Stream stream) {
  Launch<false>("rope_cuda", out, x, cos, sin, interleaved, stream);
}

void RopeBackward(const Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin,
                  bool interleaved, Stream stream) {
  Launch<true>("rope_backward_cuda", dx, dout, cos, sin, interleaved, stream);
}

}  // namespace fathom::cuda
