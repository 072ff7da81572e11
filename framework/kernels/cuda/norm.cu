#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "framework/cuda/check.h"
#include "framework/cuda/numeric.cuh"
#include "framework/kernels/cuda/norm.h"

namespace fathom::cuda {
namespace {

constexpr int kDwRows = 128;      // rows per partial sum of the weight gradient
constexpr int kDwCols = 32;       // columns per partial-sum block (one warp wide: coalesced rows)
constexpr int kDwRowThreads = 8;  // row lanes per partial-sum block
constexpr int kFinalThreads = 256;

// Threads per row block: enough for ~4 elements each, one warp at least, 256 at most. Depends only on C, so
// the reduction tree (and every result) is a function of the shapes.
int RowThreads(int64_t c) { return static_cast<int>(std::clamp<int64_t>((c / 4 + 31) / 32 * 32, 32, 256)); }

// The vector width of the grouped row kernels for activations of type T (16 bytes of them), or 0 where a
// row's length or a pointer does not allow it; and their threads per row block (one group each where
// possible, one warp at least, 256 at most).
template <class T>
int RowVector(int64_t c, std::initializer_list<const void*> pointers) {
  constexpr int kV = 16 / static_cast<int>(sizeof(T));
  return c % kV == 0 && AllAligned(pointers, 16) ? kV : 0;
}
int VecRowThreads(int64_t c, int v) {
  return static_cast<int>(std::clamp<int64_t>((c / v + 31) / 32 * 32, 32, 256));
}

// Sum over the block, same value returned to every thread; fixed tree (butterfly in warps, then the warp
// partials in lane order). `scratch` holds 32 floats.
__device__ float BlockSum(float v, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // an earlier call may still be reading scratch
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float s = lane < warps ? scratch[lane] : 0.f;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  return s;
}

template <class T, class W>
__global__ void RmsNormForwardKernel(T* out, float* rstd, const T* x, const W* w, int c, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * c;
  float ss = 0.f;
  for (int j = threadIdx.x; j < c; j += blockDim.x) {
    const float v = LoadF32(xr + j);
    ss = fmaf(v, v, ss);
  }
  ss = BlockSum(ss, scratch);
  const float r = 1.f / sqrtf(ss / static_cast<float>(c) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  T* orow = out + row * c;
  for (int j = threadIdx.x; j < c; j += blockDim.x)
    StoreF32(orow + j, LoadF32(w + j) * (LoadF32(xr + j) * r));
}

// The same row by V-element groups (16-byte accesses of bf16 rows; REQUIRES c % V == 0 and 16-byte
// aligned rows): each thread squares its groups' elements in order, then the block tree.
template <class T, class W, int V>
__global__ void RmsNormForwardVecKernel(T* out, float* rstd, const T* x, const W* w, int c, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * c;
  const int groups = c / V;
  float ss = 0.f;
  for (int g = threadIdx.x; g < groups; g += blockDim.x) {
    float v[V];
    LoadWide(xr + g * V, v);
#pragma unroll
    for (int k = 0; k < V; ++k) ss = fmaf(v[k], v[k], ss);
  }
  ss = BlockSum(ss, scratch);
  const float r = 1.f / sqrtf(ss / static_cast<float>(c) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  T* orow = out + row * c;
  for (int g = threadIdx.x; g < groups; g += blockDim.x) {
    float v[V], wv[V];
    LoadWide(xr + g * V, v);
    LoadWide(w + g * V, wv);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = wv[k] * (v[k] * r);
    StoreWide(orow + g * V, v);
  }
}

// Group g (V elements) of a row's dy, the weight and the row's x, as f32.
template <class T, class W, int V>
__device__ __forceinline__ void LoadGroup(const T* gr, const W* w, const T* xr, int g, float (&gv)[V],
                                          float (&wv)[V], float (&xv)[V]) {
  LoadWide(gr + g * V, gv);
  LoadWide(w + g * V, wv);
  LoadWide(xr + g * V, xv);
}

// The backward by V-element groups, as RmsNormForwardVecKernel; dx may alias dy (each group is read and
// written by one thread).
template <class T, class W, int V>
__global__ void RmsNormBackwardInputVecKernel(T* dx, const T* dy, const T* x, const W* w, const float* rstd,
                                              int c, const T* residual) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * c;
  const T* gr = dy + row * c;
  const float r = rstd[row];
  const int groups = c / V;
  float dot = 0.f;
  for (int g = threadIdx.x; g < groups; g += blockDim.x) {
    float gv[V], wv[V], xv[V];
    LoadGroup(gr, w, xr, g, gv, wv, xv);
#pragma unroll
    for (int k = 0; k < V; ++k) dot += gv[k] * wv[k] * xv[k] * r;
  }
  dot = BlockSum(dot, scratch) / static_cast<float>(c);
  T* drow = dx + row * c;
  for (int g = threadIdx.x; g < groups; g += blockDim.x) {
    float gv[V], wv[V], xv[V];
    LoadGroup(gr, w, xr, g, gv, wv, xv);
#pragma unroll
    for (int k = 0; k < V; ++k) gv[k] = r * (gv[k] * wv[k] - xv[k] * r * dot);
    if (residual != nullptr) {
      float rv[V];
      LoadWide(residual + row * c + g * V, rv);
#pragma unroll
      for (int k = 0; k < V; ++k) gv[k] = rv[k] + gv[k];
    }
    StoreWide(drow + g * V, gv);
  }
}

// Each element of dy is read and dx written by the same thread, after the row's reduction: dx may alias dy.
template <class T, class W>
__global__ void RmsNormBackwardInputKernel(T* dx, const T* dy, const T* x, const W* w, const float* rstd,
                                           int c, const T* residual) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * c;
  const T* gr = dy + row * c;
  const float r = rstd[row];
  float dot = 0.f;
  for (int j = threadIdx.x; j < c; j += blockDim.x)
    dot += LoadF32(gr + j) * LoadF32(w + j) * LoadF32(xr + j) * r;
  dot = BlockSum(dot, scratch) / static_cast<float>(c);
  T* drow = dx + row * c;
  for (int j = threadIdx.x; j < c; j += blockDim.x) {
    const float g = LoadF32(gr + j) * LoadF32(w + j);
    const float d = r * (g - LoadF32(xr + j) * r * dot);
    StoreF32(drow + j, residual != nullptr ? LoadF32(residual + row * c + j) + d : d);
  }
}

// Stage 1: partial[chunk][col] = sum over the chunk's kDwRows rows of dy * x * rstd (row lanes, then the
// kDwRowThreads lane sums in order).
template <class T>
__global__ void RmsNormDwPartialKernel(float* partial, const T* dy, const T* x, const float* rstd, int64_t n,
                                       int c) {
  __shared__ float lanes[kDwRowThreads][kDwCols + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int col = blockIdx.x * kDwCols + tx;
  const int64_t chunk = blockIdx.y, row0 = chunk * kDwRows, row_end = min(row0 + kDwRows, n);
  float s = 0.f;
  if (col < c)
    for (int64_t row = row0 + ty; row < row_end; row += kDwRowThreads)
      s += LoadF32(dy + row * c + col) * LoadF32(x + row * c + col) * rstd[row];
  lanes[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && col < c) {
    float total = 0.f;
    for (int k = 0; k < kDwRowThreads; ++k) total += lanes[k][tx];
    partial[chunk * c + col] = total;
  }
}

// Stage 2: dw[col] += the chunks' partial sums in chunk order.
__global__ void RmsNormDwFinalKernel(float* dw, const float* partial, int64_t chunks, int c) {
  const int col = blockIdx.x * kFinalThreads + threadIdx.x;
  if (col >= c) return;
  float s = 0.f;
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * c + col];
  dw[col] += s;
}

void CheckCuda(const char* op, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    FATHOM_CHECK(t->device() == Device::kCUDA, "[", op, "] expects CUDA tensors, got a ",
                 DeviceName(t->device()), " tensor ", t->shape_str());
}

void CheckActivation(const char* op, const Tensor& x) {
  FATHOM_CHECK(x.ndim() == 2, "[", op, "] x ", x.shape_str(), ", expected (N, C)");
  FATHOM_CHECK(x.dtype() == DType::kF32 || x.dtype() == DType::kBF16, "[", op,
               "] supports f32 and bf16, got ", DTypeName(x.dtype()));
  FATHOM_CHECK(x.dim(1) >= 1 && x.dim(1) < (int64_t{1} << 31) && x.dim(0) < (int64_t{1} << 31), "[", op,
               "] x ", x.shape_str());
}

void CheckWeight(const char* op, const Tensor& w, const Tensor& x) {
  FATHOM_CHECK(w.numel() == x.dim(1) && w.ndim() == 1, "[", op, "] w ", w.shape_str(), " for x ",
               x.shape_str());
  FATHOM_CHECK(w.dtype() == DType::kF32 || w.dtype() == x.dtype(), "[", op, "] w is ", DTypeName(w.dtype()),
               ", expected f32 or x's ", DTypeName(x.dtype()));
}

// Calls f(T{}, W{}) for the (activation, weight) dtype pair: (f32, f32), (bf16, bf16) or (bf16, f32).
template <class F>
void DispatchActWeight(DType x, DType w, F&& f) {
  if (x == DType::kF32) {
    f(float{}, float{});
  } else if (w == DType::kBF16) {
    f(__nv_bfloat16{}, __nv_bfloat16{});
  } else {
    f(__nv_bfloat16{}, float{});
  }
}

}  // namespace

void RmsNormForward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w, double eps,
                    Stream stream) {
  const char* op = "rms_norm_cuda";
  CheckActivation(op, x);
  CheckWeight(op, w, x);
  FATHOM_CHECK(out.shape() == x.shape() && out.dtype() == x.dtype(), "[", op, "] out ", out.shape_str(), " ",
               DTypeName(out.dtype()), " for x ", x.shape_str(), " ", DTypeName(x.dtype()));
  FATHOM_CHECK(rstd.numel() == x.dim(0) && rstd.dtype() == DType::kF32, "[", op, "] rstd ", rstd.shape_str(),
               " ", DTypeName(rstd.dtype()), ", expected (", x.dim(0), ") f32");
  CheckCuda(op, {&out, &rstd, &x, &w});
  const int64_t n = x.dim(0);
  const int c = static_cast<int>(x.dim(1));
  if (n == 0) return;
  DispatchActWeight(x.dtype(), w.dtype(), [&](auto t_tag, auto w_tag) {
    using T = decltype(t_tag);
    using W = decltype(w_tag);
    constexpr int kV = 16 / static_cast<int>(sizeof(T));
    if (RowVector<T>(c, {out.raw(), x.raw(), w.raw()}) == kV) {
      RmsNormForwardVecKernel<T, W, kV><<<static_cast<unsigned>(n), VecRowThreads(c, kV), 0, stream>>>(
          static_cast<T*>(out.raw()), rstd.data<float>(), static_cast<const T*>(x.raw()),
          static_cast<const W*>(w.raw()), c, static_cast<float>(eps));
    } else {
      RmsNormForwardKernel<T, W><<<static_cast<unsigned>(n), RowThreads(c), 0, stream>>>(
          static_cast<T*>(out.raw()), rstd.data<float>(), static_cast<const T*>(x.raw()),
          static_cast<const W*>(w.raw()), c, static_cast<float>(eps));
    }
  });
  FATHOM_CUDA_CHECK_LAUNCH();
}

void RmsNormBackwardInput(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& w,
                          const Tensor& rstd, Stream stream, const Tensor& residual) {
  const char* op = "rms_norm_backward_cuda";
  CheckActivation(op, x);
  CheckWeight(op, w, x);
  FATHOM_CHECK(dx.shape() == x.shape() && dy.shape() == x.shape() && dx.dtype() == x.dtype() &&
                   dy.dtype() == x.dtype(),
               "[", op, "] dx ", dx.shape_str(), " ", DTypeName(dx.dtype()), " dy ", dy.shape_str(), " ",
               DTypeName(dy.dtype()), " for x ", x.shape_str(), " ", DTypeName(x.dtype()));
  FATHOM_CHECK(rstd.numel() == x.dim(0) && rstd.dtype() == DType::kF32, "[", op, "] rstd ", rstd.shape_str(),
               " ", DTypeName(rstd.dtype()), ", expected (", x.dim(0), ") f32");
  CheckCuda(op, {&dx, &dy, &x, &w, &rstd});
  if (residual.defined()) {
    FATHOM_CHECK(residual.shape() == x.shape() && residual.dtype() == x.dtype(), "[", op, "] residual ",
                 residual.shape_str(), " ", DTypeName(residual.dtype()), " for x ", x.shape_str(), " ",
                 DTypeName(x.dtype()));
    CheckCuda(op, {&residual});
  }
  const int64_t n = x.dim(0);
  const int c = static_cast<int>(x.dim(1));
  if (n == 0) return;
  DispatchActWeight(x.dtype(), w.dtype(), [&](auto t_tag, auto w_tag) {
    using T = decltype(t_tag);
    using W = decltype(w_tag);
    constexpr int kV = 16 / static_cast<int>(sizeof(T));
    const T* res = residual.defined() ? static_cast<const T*>(residual.raw()) : nullptr;
    if (RowVector<T>(c, {dx.raw(), dy.raw(), x.raw(), w.raw(), res}) == kV) {
      RmsNormBackwardInputVecKernel<T, W, kV><<<static_cast<unsigned>(n), VecRowThreads(c, kV), 0, stream>>>(
          static_cast<T*>(dx.raw()), static_cast<const T*>(dy.raw()), static_cast<const T*>(x.raw()),
          static_cast<const W*>(w.raw()), rstd.data<float>(), c, res);
    } else {
      RmsNormBackwardInputKernel<T, W><<<static_cast<unsigned>(n), RowThreads(c), 0, stream>>>(
          static_cast<T*>(dx.raw()), static_cast<const T*>(dy.raw()), static_cast<const T*>(x.raw()),
          static_cast<const W*>(w.raw()), rstd.data<float>(), c, res);
    }
  });
  FATHOM_CUDA_CHECK_LAUNCH();
}

Shape RmsNormBackwardWeightWorkspaceShape(int64_t n, int64_t c) { return {(n + kDwRows - 1) / kDwRows, c}; }

void RmsNormBackwardWeight(const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& rstd,
                           const Tensor& workspace, Stream stream) {
  const char* op = "rms_norm_backward_weight_cuda";
  CheckActivation(op, x);
  FATHOM_CHECK(dy.shape() == x.shape() && dy.dtype() == x.dtype(), "[", op, "] dy ", dy.shape_str(), " ",
               DTypeName(dy.dtype()), " for x ", x.shape_str(), " ", DTypeName(x.dtype()));
  FATHOM_CHECK(dw.ndim() == 1 && dw.numel() == x.dim(1) && dw.dtype() == DType::kF32, "[", op, "] dw ",
               dw.shape_str(), " ", DTypeName(dw.dtype()), ", expected (", x.dim(1), ") f32");
  FATHOM_CHECK(rstd.numel() == x.dim(0) && rstd.dtype() == DType::kF32, "[", op, "] rstd ", rstd.shape_str(),
               " ", DTypeName(rstd.dtype()), ", expected (", x.dim(0), ") f32");
  const Shape ws = RmsNormBackwardWeightWorkspaceShape(x.dim(0), x.dim(1));
  FATHOM_CHECK(workspace.shape() == ws && workspace.dtype() == DType::kF32, "[", op, "] workspace ",
               workspace.shape_str(), " ", DTypeName(workspace.dtype()), ", expected ", ShapeString(ws),
               " f32");
  CheckCuda(op, {&dw, &dy, &x, &rstd, &workspace});
  const int64_t n = x.dim(0), chunks = ws[0];
  const int c = static_cast<int>(x.dim(1));
  if (n == 0) return;
  FATHOM_CHECK(chunks <= 65535, "[", op, "] ", n, " rows exceed the ", 65535 * kDwRows,
               " rows of one launch");
  const dim3 grid((c + kDwCols - 1) / kDwCols, static_cast<unsigned>(chunks));
  const dim3 block(kDwCols, kDwRowThreads);
  if (x.dtype() == DType::kF32) {
    RmsNormDwPartialKernel<float><<<grid, block, 0, stream>>>(workspace.data<float>(), dy.data<float>(),
                                                              x.data<float>(), rstd.data<float>(), n, c);
  } else {
    RmsNormDwPartialKernel<__nv_bfloat16>
        <<<grid, block, 0, stream>>>(workspace.data<float>(), static_cast<const __nv_bfloat16*>(dy.raw()),
                                     static_cast<const __nv_bfloat16*>(x.raw()), rstd.data<float>(), n, c);
  }
  FATHOM_CUDA_CHECK_LAUNCH();
  RmsNormDwFinalKernel<<<(c + kFinalThreads - 1) / kFinalThreads, kFinalThreads, 0, stream>>>(
      dw.data<float>(), workspace.data<float>(), chunks, c);
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
