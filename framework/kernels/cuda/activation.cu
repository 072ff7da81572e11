#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

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

// V elements per access (16 bytes; V = 1 where the pointers or the length do not allow it): the same
// arithmetic either way.
template <class T, int V>
__global__ void SwiGluForwardKernel(T* out, const T* gate, const T* up, int64_t groups) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < groups;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float g[V], u[V];
    LoadVec<V>(gate + i * V, g);
    LoadVec<V>(up + i * V, u);
#pragma unroll
    for (int k = 0; k < V; ++k) g[k] = g[k] * Sigmoid(g[k]) * u[k];
    StoreVec<V>(out + i * V, g);
  }
}

// silu'(g) = s (1 + g (1 - s)), s = sigmoid(g). All inputs of element i are read before either output is
// written, which is what makes the documented aliasing safe.
template <class T, int V>
__global__ void SwiGluBackwardKernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up,
                                     int64_t groups) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < groups;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float g[V], u[V], d[V], dg[V], du[V];
    LoadVec<V>(gate + i * V, g);
    LoadVec<V>(up + i * V, u);
    LoadVec<V>(dout + i * V, d);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float s = Sigmoid(g[k]);
      dg[k] = d[k] * u[k] * s * (1.f + g[k] * (1.f - s));
      du[k] = d[k] * g[k] * s;
    }
    StoreVec<V>(dgate + i * V, dg);
    StoreVec<V>(dup + i * V, du);
  }
}

// 16-byte accesses: V = 16 / sizeof(T) elements.
template <class T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

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
    T* o = static_cast<T*>(out.raw());
    const T *g = static_cast<const T*>(gate.raw()), *u = static_cast<const T*>(up.raw());
    LaunchVectorized<kVec<T>>(n, {{o, sizeof(T)}, {g, sizeof(T)}, {u, sizeof(T)}},
                              [&](auto v, int64_t at, int64_t groups) {
                                SwiGluForwardKernel<T, decltype(v)::value>
                                    <<<Blocks(groups), kThreads, 0, stream>>>(o + at, g + at, u + at, groups);
                                FATHOM_CUDA_CHECK_LAUNCH();
                              });
  });
}

void SwiGluBackward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                    const Tensor& up, Stream stream) {
  CheckElementwise("swiglu_backward_cuda", {&gate, &up, &dout, &dgate, &dup});
  FATHOM_CHECK(gate.numel() == 0 || dgate.raw() != dup.raw(), "[swiglu_backward_cuda] dgate and dup alias");
  const int64_t n = gate.numel();
  if (n == 0) return;
  DispatchStorage(gate.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T *dg = static_cast<T*>(dgate.raw()), *du = static_cast<T*>(dup.raw());
    const T *d = static_cast<const T*>(dout.raw()), *g = static_cast<const T*>(gate.raw()),
            *u = static_cast<const T*>(up.raw());
    LaunchVectorized<kVec<T>>(
        n, {{dg, sizeof(T)}, {du, sizeof(T)}, {d, sizeof(T)}, {g, sizeof(T)}, {u, sizeof(T)}},
        [&](auto v, int64_t at, int64_t groups) {
          SwiGluBackwardKernel<T, decltype(v)::value>
              <<<Blocks(groups), kThreads, 0, stream>>>(dg + at, du + at, d + at, g + at, u + at, groups);
          FATHOM_CUDA_CHECK_LAUNCH();
        });
  });
}

}  // namespace fathom::cuda
