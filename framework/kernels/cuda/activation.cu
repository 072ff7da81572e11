#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "framework/cuda/check.h"
#include "framework/cuda/numeric.cuh"
#include "framework/kernels/cuda/activation.h"

namespace fathom::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;  // grid-stride beyond this: enough blocks to fill any GPU

// The CPU twin's formulation: exp(-|x|) never overflows.
__device__ __forceinline__ float Sigmoid(float x) {
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  const float e = expf(x);
  return e / (1.f + e);
}

template <class T>
__global__ void SigmoidForwardKernel(T* out, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    StoreF32(out + i, Sigmoid(LoadF32(x + i)));
}

template <class T>
__global__ void SigmoidBackwardKernel(T* dx, const T* dy, const T* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float yi = LoadF32(y + i);
    StoreF32(dx + i, LoadF32(dy + i) * yi * (1.f - yi));
  }
}

template <class T>
__global__ void SwiGluForwardKernel(T* out, const T* gate, const T* up, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = LoadF32(gate + i);
    StoreF32(out + i, g * Sigmoid(g) * LoadF32(up + i));
  }
}

// silu'(g) = s (1 + g (1 - s)), s = sigmoid(g). All inputs of element i are read before either output is
// written, which is what makes the documented aliasing safe.
template <class T>
__global__ void SwiGluBackwardKernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = LoadF32(gate + i), u = LoadF32(up + i), d = LoadF32(dout + i);
    const float s = Sigmoid(g);
    StoreF32(dgate + i, d * u * s * (1.f + g * (1.f - s)));
    StoreF32(dup + i, d * g * s);
  }
}

// Validates that every tensor matches the first in shape and dtype, is f32 or bf16 and lives on the GPU.
void CheckElementwise(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor& ref = **ts.begin();
  FATHOM_CHECK(ref.dtype() == DType::kF32 || ref.dtype() == DType::kBF16, "[", op,
               "] supports f32 and bf16, got ", DTypeName(ref.dtype()));
  for (const Tensor* t : ts) {
    FATHOM_CHECK(t->shape() == ref.shape() && t->dtype() == ref.dtype(), "[", op, "] ", t->shape_str(), " ",
                 DTypeName(t->dtype()), " vs ", ref.shape_str(), " ", DTypeName(ref.dtype()));
    FATHOM_CHECK(t->device() == Device::kCUDA, "[", op, "] expects CUDA tensors, got a ",
                 DeviceName(t->device()), " tensor ", t->shape_str());
  }
}

unsigned Blocks(int64_t n) {
  return static_cast<unsigned>(std::min((n + kThreads - 1) / kThreads, kMaxBlocks));
}

// Calls f(T{}) with T = float or __nv_bfloat16 (the dtype was validated).
template <class F>
void DispatchStorage(DType t, F&& f) {
  if (t == DType::kF32) {
    f(float{});
  } else {
    f(__nv_bfloat16{});
  }
}

}  // namespace

void SigmoidForward(const Tensor& out, const Tensor& x, Stream stream) {
  CheckElementwise("sigmoid_cuda", {&x, &out});
  const int64_t n = x.numel();
  if (n == 0) return;
  DispatchStorage(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    SigmoidForwardKernel<T>
        <<<Blocks(n), kThreads, 0, stream>>>(static_cast<T*>(out.raw()), static_cast<const T*>(x.raw()), n);
  });
  FATHOM_CUDA_CHECK_LAUNCH();
}

void SigmoidBackward(const Tensor& dx, const Tensor& dy, const Tensor& y, Stream stream) {
  CheckElementwise("sigmoid_backward_cuda", {&y, &dy, &dx});
  const int64_t n = y.numel();
  if (n == 0) return;
  DispatchStorage(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    SigmoidBackwardKernel<T><<<Blocks(n), kThreads, 0, stream>>>(
        static_cast<T*>(dx.raw()), static_cast<const T*>(dy.raw()), static_cast<const T*>(y.raw()), n);
  });
  FATHOM_CUDA_CHECK_LAUNCH();
}

void SwiGluForward(const Tensor& out, const Tensor& gate, const Tensor& up, Stream stream) {
  CheckElementwise("swiglu_cuda", {&gate, &up, &out});
  const int64_t n = gate.numel();
  if (n == 0) return;
  DispatchStorage(gate.dtype(), [&](auto tag) {
    using T = decltype(tag);
    SwiGluForwardKernel<T><<<Blocks(n), kThreads, 0, stream>>>(
        static_cast<T*>(out.raw()), static_cast<const T*>(gate.raw()), static_cast<const T*>(up.raw()), n);
  });
  FATHOM_CUDA_CHECK_LAUNCH();
}

void SwiGluBackward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                    const Tensor& up, Stream stream) {
  CheckElementwise("swiglu_backward_cuda", {&gate, &up, &dout, &dgate, &dup});
  FATHOM_CHECK(gate.numel() == 0 || dgate.raw() != dup.raw(), "[swiglu_backward_cuda] dgate and dup alias");
  const int64_t n = gate.numel();
  if (n == 0) return;
  DispatchStorage(gate.dtype(), [&](auto tag) {
    using T = decltype(tag);
    SwiGluBackwardKernel<T><<<Blocks(n), kThreads, 0, stream>>>(
        static_cast<T*>(dgate.raw()), static_cast<T*>(dup.raw()), static_cast<const T*>(dout.raw()),
        static_cast<const T*>(gate.raw()), static_cast<const T*>(up.raw()), n);
  });
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
