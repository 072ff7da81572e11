#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "framework/cuda/check.h"
#include "framework/cuda/numeric.cuh"
#include "framework/kernels/cuda/cross_entropy.h"

namespace fathom::cuda {
namespace {

constexpr int kRowThreads = 512;      // one block per row, streaming the vocabulary in chunks of this width
constexpr int kReduceThreads = 1024;  // the single block summing the row losses

// Merges the online-softmax pair (m2, s2) into (m, s): s = sum of exp(x - m) over the elements seen. A pair
// with no elements is (-inf, 0); merging two of them must not form -inf - -inf.
__device__ __forceinline__ void MergeMaxSum(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;
  s = s * expf(m - mn) + s2 * expf(m2 - mn);
  m = mn;
}

template <class T>
__global__ void __launch_bounds__(kRowThreads)
    CrossEntropyRowKernel(float* row_loss, float* lse, const T* logits, const int32_t* labels, int64_t v,
                          int64_t ignore_index) {
  __shared__ float warp_m[kRowThreads / 32], warp_s[kRowThreads / 32];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * v;
  float m = -INFINITY, s = 0.f;
  for (int64_t j = threadIdx.x; j < v; j += kRowThreads) {
    const float val = LoadF32(x + j);
    if (val > m) {
      s = s * expf(m - val) + 1.f;  // first element: 0 * exp(-inf) = 0
      m = val;
    } else {
      s += expf(val - m);
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off), s2 = __shfl_xor_sync(0xffffffffu, s, off);
    MergeMaxSum(m, s, m2, s2);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_m[warp] = m;
    warp_s[warp] = s;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  // Thread 0 merges the warp pairs in warp order.
  m = warp_m[0];
  s = warp_s[0];
  for (int w = 1; w < kRowThreads / 32; ++w) MergeMaxSum(m, s, warp_m[w], warp_s[w]);
  const float l = m + logf(s);
  lse[row] = l;
  const int64_t label = labels[row];
  float loss = 0.f;
  if (label != ignore_index) loss = (label >= 0 && label < v) ? l - LoadF32(x + label) : NAN;
  row_loss[row] = loss;
}

__global__ void __launch_bounds__(kReduceThreads) SumKernel(float* total, const float* values, int64_t n) {
  __shared__ double warp_sum[kReduceThreads / 32];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kReduceThreads) s += values[i];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (threadIdx.x % 32 == 0) warp_sum[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x != 0) return;
  double t = 0;
  for (int w = 0; w < kReduceThreads / 32; ++w) t += warp_sum[w];
  *total = static_cast<float>(t);
}

// Each element is read and then written by the same thread, so dlogits may be logits.
template <class T>
__global__ void __launch_bounds__(kRowThreads)
    CrossEntropyBackwardKernel(T* dlogits, const T* logits, const float* lse, const int32_t* labels,
                               int64_t v, int64_t ignore_index, float scale) {
  const int64_t row = blockIdx.x;
  const int64_t label = labels[row];
  T* d = dlogits + row * v;
  if (label == ignore_index) {
    for (int64_t j = threadIdx.x; j < v; j += kRowThreads) StoreF32(d + j, 0.f);
    return;
  }
  const T* x = logits + row * v;
  const float l = lse[row];
  const bool bad = label < 0 || label >= v;
  for (int64_t j = threadIdx.x; j < v; j += kRowThreads) {
    float g = scale * expf(LoadF32(x + j) - l);
    if (j == label) g -= scale;
    StoreF32(d + j, bad ? NAN : g);
  }
}

void CheckCommon(const char* op, const Tensor& logits, const Tensor& lse, const Tensor& labels) {
  FATHOM_CHECK(logits.ndim() == 2, "[", op, "] logits ", logits.shape_str(), ", expected (N, V)");
  const int64_t n = logits.dim(0);
  FATHOM_CHECK(logits.dtype() == DType::kF32 || logits.dtype() == DType::kBF16, "[", op,
               "] logits must be f32 or bf16, got ", DTypeName(logits.dtype()));
  FATHOM_CHECK(labels.numel() == n && labels.dtype() == DType::kI32, "[", op, "] labels ", labels.shape_str(),
               " ", DTypeName(labels.dtype()), ", expected (", n, ") i32");
  FATHOM_CHECK(lse.numel() == n && lse.dtype() == DType::kF32, "[", op, "] lse ", lse.shape_str(), " ",
               DTypeName(lse.dtype()), ", expected (", n, ") f32");
  FATHOM_CHECK(n < (int64_t{1} << 31), "[", op, "] too many rows: ", logits.shape_str());
  for (const Tensor* t : {&logits, &lse, &labels})
    FATHOM_CHECK(t->device() == Device::kCUDA, "[", op, "] expects CUDA tensors, got a ",
                 DeviceName(t->device()), " tensor ", t->shape_str());
}

}  // namespace

void CrossEntropyForward(const Tensor& loss_sum, const Tensor& row_loss, const Tensor& lse,
                         const Tensor& logits, const Tensor& labels, int64_t ignore_index, Stream stream) {
  const char* op = "cross_entropy_cuda";
  CheckCommon(op, logits, lse, labels);
  const int64_t n = logits.dim(0), v = logits.dim(1);
  FATHOM_CHECK(row_loss.numel() == n && row_loss.dtype() == DType::kF32, "[", op, "] row_loss ",
               row_loss.shape_str(), " ", DTypeName(row_loss.dtype()), ", expected (", n, ") f32");
  FATHOM_CHECK(loss_sum.numel() == 1 && loss_sum.dtype() == DType::kF32, "[", op, "] loss_sum ",
               loss_sum.shape_str(), " ", DTypeName(loss_sum.dtype()), ", expected one f32");
  FATHOM_CHECK(v >= 1 || n == 0, "[", op, "] empty vocabulary: ", logits.shape_str());
  for (const Tensor* t : {&loss_sum, &row_loss})
    FATHOM_CHECK(t->device() == Device::kCUDA, "[", op, "] expects CUDA tensors, got a ",
                 DeviceName(t->device()), " tensor ", t->shape_str());
  if (n > 0) {
    if (logits.dtype() == DType::kF32) {
      CrossEntropyRowKernel<float><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(
          row_loss.data<float>(), lse.data<float>(), logits.data<float>(), labels.data<int32_t>(), v,
          ignore_index);
    } else {
      CrossEntropyRowKernel<__nv_bfloat16><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(
          row_loss.data<float>(), lse.data<float>(), static_cast<const __nv_bfloat16*>(logits.raw()),
          labels.data<int32_t>(), v, ignore_index);
    }
    FATHOM_CUDA_CHECK_LAUNCH();
  }
  // Also for n = 0: the sum of nothing is written as 0.
  SumKernel<<<1, kReduceThreads, 0, stream>>>(loss_sum.data<float>(), row_loss.data<float>(), n);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void CrossEntropyBackward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                          const Tensor& labels, int64_t ignore_index, double scale, Stream stream) {
  const char* op = "cross_entropy_backward_cuda";
  CheckCommon(op, logits, lse, labels);
  FATHOM_CHECK(dlogits.shape() == logits.shape() && dlogits.dtype() == logits.dtype(), "[", op, "] dlogits ",
               dlogits.shape_str(), " ", DTypeName(dlogits.dtype()), " for logits ", logits.shape_str(), " ",
               DTypeName(logits.dtype()));
  FATHOM_CHECK(dlogits.device() == Device::kCUDA, "[", op, "] dlogits is a ", DeviceName(dlogits.device()),
               " tensor");
  const int64_t n = logits.dim(0), v = logits.dim(1);
  if (n == 0 || v == 0) return;
  const float sc = static_cast<float>(scale);
  if (logits.dtype() == DType::kF32) {
    CrossEntropyBackwardKernel<float><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(
        dlogits.data<float>(), logits.data<float>(), lse.data<float>(), labels.data<int32_t>(), v,
        ignore_index, sc);
  } else {
    CrossEntropyBackwardKernel<__nv_bfloat16><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(
        static_cast<__nv_bfloat16*>(dlogits.raw()), static_cast<const __nv_bfloat16*>(logits.raw()),
        lse.data<float>(), labels.data<int32_t>(), v, ignore_index, sc);
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
