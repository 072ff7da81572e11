#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "framework/cuda/check.h"
#include "framework/cuda/numeric.cuh"
#include "framework/kernels/cuda/adamw.h"

namespace fathom::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float LoadMoment(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float LoadMoment(const uint16_t* p, int64_t i) { return Bf16BitsToFloat(p[i]); }
__device__ __forceinline__ void StoreMoment(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void StoreMoment(uint16_t* p, int64_t i, float v) { p[i] = FloatToBf16Bits(v); }

struct Chunk {
  int64_t begin, length;
  bool decay;
};
__device__ __forceinline__ Chunk ReadChunk(const int64_t* list, int64_t c) {
  const int64_t packed = list[2 * c + 1];
  return {list[2 * c], packed >> 1, (packed & 1) != 0};
}

// The AdamW arithmetic of one element. The expression order is optim/adamw.cc's UpdateRun, operation for
// operation; the _rn intrinsics forbid nvcc's default fused multiply-adds, which the CPU build does not use
// either. `g` arrives clipped (ClipGradients' one f32 product). Returns the new value; m and v are updated.
__device__ __forceinline__ float AdamWElement(float p, float g, float& m, float& v, bool decay,
                                              const AdamWCoeffs& c) {
  m = __fadd_rn(__fmul_rn(c.beta1, m), __fmul_rn(c.one_minus_beta1, g));
  v = __fadd_rn(__fmul_rn(c.beta2, v), __fmul_rn(__fmul_rn(c.one_minus_beta2, g), g));
  if (decay) p = __fmul_rn(p, c.decay_factor);
  const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v), c.inv_sqrt_bc2), c.eps);
  return __fsub_rn(p, __fmul_rn(c.step_size, __fdiv_rn(m, denom)));
}

// Where the fused step writes besides values and moments.
struct FusedOutputs {
  uint16_t* compute;  // bf16 compute copy (table_numel), or null: not refreshed
};

// The fused optimizer pass over the chunk list: blocks stride over the chunks (a grid sized to fill the
// device, not one block per chunk). Per element: clip, AdamW, compute-copy refresh; the grads are read
// once, the values read and written once, the compute copy written once. Each thread takes V consecutive
// elements (V = 4 or 8) in rounds of kUnroll groups, every load of a round issued before the first
// arithmetic; a round covers V * kUnroll * kThreads elements (4096 for the 8 x 2 launched: one chunk,
// kParamChunkElements). Chunks whose flat and moment offsets are multiples of V (all of them on one GPU:
// ParamTable aligns tensors to 16 elements) take the vector accesses; others (ZeRO shards starting
// mid-vector) and the tail of a chunk run element by element, with the same arithmetic.
template <class M, int V, int kUnroll>
__global__ void __launch_bounds__(kThreads)
    FusedAdamWKernel(float* __restrict__ values, M* __restrict__ exp_avg, M* __restrict__ exp_avg_sq,
                     const float* __restrict__ grads, const int64_t* __restrict__ list, int64_t count,
                     int64_t range_begin, AdamWCoeffs c, float clip, FusedOutputs out) {
  for (int64_t chunk = blockIdx.x; chunk < count; chunk += gridDim.x) {
    const Chunk ch = ReadChunk(list, chunk);
    const int64_t local0 = ch.begin - range_begin;
    const bool vector = ch.begin % V == 0 && local0 % V == 0;
    const int64_t nv = vector ? ch.length / V : 0;
    for (int64_t base = threadIdx.x; base < nv; base += kUnroll * kThreads) {
      float g[kUnroll][V], p[kUnroll][V], m[kUnroll][V], v[kUnroll][V];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = V * (base + u * kThreads);
        if (base + u * kThreads < nv) {
          LoadWide(grads + ch.begin + j, g[u]);
          LoadWide(values + ch.begin + j, p[u]);
          LoadWide(exp_avg + local0 + j, m[u]);
          LoadWide(exp_avg_sq + local0 + j, v[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = V * (base + u * kThreads);
        if (base + u * kThreads >= nv) continue;
#pragma unroll
        for (int e = 0; e < V; ++e)
          p[u][e] = AdamWElement(p[u][e], __fmul_rn(g[u][e], clip), m[u][e], v[u][e], ch.decay, c);
        StoreWide(exp_avg + local0 + j, m[u]);
        StoreWide(exp_avg_sq + local0 + j, v[u]);
        StoreWide(values + ch.begin + j, p[u]);
        if (out.compute != nullptr) StoreWide(out.compute + ch.begin + j, p[u]);
      }
    }
    for (int64_t j = V * nv + threadIdx.x; j < ch.length; j += kThreads) {
      const int64_t i = ch.begin + j, local = local0 + j;
      float m = LoadMoment(exp_avg, local), v = LoadMoment(exp_avg_sq, local);
      const float p = AdamWElement(values[i], __fmul_rn(grads[i], clip), m, v, ch.decay, c);
      StoreMoment(exp_avg, local, m);
      StoreMoment(exp_avg_sq, local, v);
      values[i] = p;
      if (out.compute != nullptr) out.compute[i] = FloatToBf16Bits(p);
    }
  }
}

// Fixed-shape tree over a block's per-thread double sums (blockDim.x == kThreads, a power of two).
__device__ double BlockSum(double x) {
  __shared__ double partial[kThreads];
  partial[threadIdx.x] = x;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  return partial[0];
}

// Pass 1: block b sums chunks b, b + gridDim.x, ... into partials[b] (16-byte loads where the chunk start
// allows; which thread adds which element depends only on the chunk list, so the sum is reproducible).
__global__ void NormPartialsKernel(double* partials, const float* __restrict__ grads, const int64_t* list,
                                   int64_t count) {
  double sum = 0.0;
  for (int64_t c = blockIdx.x; c < count; c += gridDim.x) {
    const Chunk ch = ReadChunk(list, c);
    const int64_t n4 = ch.begin % 4 == 0 ? ch.length / 4 : 0;
    for (int64_t j = threadIdx.x; j < n4; j += blockDim.x) {
      const float4 g = *reinterpret_cast<const float4*>(grads + ch.begin + 4 * j);
      const double a = g.x, b = g.y, d = g.z, e = g.w;
      sum += a * a + b * b + d * d + e * e;
    }
    for (int64_t j = 4 * n4 + threadIdx.x; j < ch.length; j += blockDim.x) {
      const double g = grads[ch.begin + j];
      sum += g * g;
    }
  }
  const double total = BlockSum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// Pass 2: one block over the partials.
__global__ void NormFinishKernel(double* out, const double* partials, int64_t n) {
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += partials[i];
  const double total = BlockSum(sum);
  if (threadIdx.x == 0) out[0] = total;
}

__global__ void ScaleKernel(float* grads, const int64_t* list, float scale) {
  const Chunk ch = ReadChunk(list, blockIdx.x);
  for (int64_t j = threadIdx.x; j < ch.length; j += blockDim.x) {
    grads[ch.begin + j] = __fmul_rn(grads[ch.begin + j], scale);
  }
}

void CheckFlat(const char* op, const Tensor& t, const char* name, DType dtype, int64_t numel) {
  FATHOM_CHECK(t.device() == Device::kCUDA && t.dtype() == dtype && t.numel() == numel, "[", op, "] ", name,
               " ", t.shape_str(), " ", DTypeName(t.dtype()), " on ", DeviceName(t.device()), ", expected ",
               numel, " elements of ", DTypeName(dtype), " on cuda");
}

// The chunk count fits one grid dimension (2^31 - 1 blocks: 8.8e12 elements).
unsigned ChunkGrid(const ParamChunks& chunks) { return static_cast<unsigned>(chunks.count()); }

// Blocks that keep every multiprocessor full (kThreads-thread blocks, 2048 threads per SM on Hopper) for a
// kernel that strides over `count` chunks; never more blocks than chunks.
unsigned FillingGrid(int64_t count) {
  static const int sms = [] {
    int device = 0, n = 0;
    FATHOM_CUDA_CHECK(cudaGetDevice(&device));
    FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    return n;
  }();
  const int64_t blocks = static_cast<int64_t>(sms) * (2048 / kThreads);
  return static_cast<unsigned>(std::min(count, blocks));
}

}  // namespace

ParamChunks::ParamChunks(const ParamTable& table, DeviceArena& arena, int64_t begin, int64_t end,
                         Fp8Weights fp8)
    : begin_(begin), end_(end < 0 ? table.numel() : end), table_numel_(table.numel()) {
  FATHOM_CHECK(table.finalized(), "[param_chunks] the parameter table must be finalized first");
  FATHOM_CHECK(0 <= begin_ && begin_ <= end_ && end_ <= table.numel(), "[param_chunks] range [", begin_, ", ",
               end_, ") outside the table's ", table.numel(), " elements");
  std::vector<int64_t> host;
  for (int id = 0; id < table.size(); ++id) {
    const ParamSpec& s = table.spec(id);
    if (!s.trainable) continue;
    if ((fp8 == Fp8Weights::kExclude && table.fp8(id)) || (fp8 == Fp8Weights::kOnly && !table.fp8(id))) continue;
    // The parameter's own elements only: the alignment padding after it never joins a chunk.
    const int64_t b = std::max(begin_, s.offset);
    const int64_t e = std::min(end_, s.offset + NumElements(s.shape));
    for (int64_t at = b; at < e; at += kParamChunkElements) {
      const int64_t length = std::min(kParamChunkElements, e - at);
      host.push_back(at);
      host.push_back((length << 1) | (s.weight_decay ? 1 : 0));
      elements_ += length;
    }
  }
  count_ = static_cast<int64_t>(host.size() / 2);
  FATHOM_CHECK(count_ < (int64_t{1} << 31), "[param_chunks] ", count_, " chunks exceed one grid dimension");
  list_ = arena.Alloc({count_, 2}, DType::kI64);
  scratch_ = arena.Alloc({kNormBlocks}, DType::kF64);
  if (count_ > 0) {
    Tensor staged = Tensor::Empty({count_, 2}, DType::kI64);
    std::copy(host.begin(), host.end(), staged.data<int64_t>());
    CopyToDevice(list_, staged);
  }
}

AdamWCoeffs MakeAdamWCoeffs(const OptimConfig& cfg, double lr, int64_t step) {
  FATHOM_CHECK(step >= 1, "[adamw_cuda] step ", step, " (the first step is 1)");
  const double t = static_cast<double>(step);
  const double bc1 = 1.0 - std::pow(cfg.beta1, t);
  const double bc2 = 1.0 - std::pow(cfg.beta2, t);
  return {static_cast<float>(cfg.beta1), static_cast<float>(1.0 - cfg.beta1),
          static_cast<float>(cfg.beta2), static_cast<float>(1.0 - cfg.beta2),
          static_cast<float>(cfg.eps),   static_cast<float>(1.0 - lr * cfg.weight_decay),
          static_cast<float>(lr / bc1),  static_cast<float>(1.0 / std::sqrt(bc2))};
}

void FusedAdamWStep(const Tensor& values, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                    const Tensor& grads, const Tensor& compute, const ParamChunks& chunks,
                    const AdamWCoeffs& coeffs, double clip_scale, Stream stream) {
  const char* op = "fused_adamw_cuda";
  CheckFlat(op, values, "values", DType::kF32, chunks.table_numel());
  CheckFlat(op, grads, "grads", DType::kF32, chunks.table_numel());
  if (compute.defined()) CheckFlat(op, compute, "compute copy", DType::kBF16, chunks.table_numel());
  const DType md = exp_avg.dtype();
  FATHOM_CHECK(md == DType::kF32 || md == DType::kBF16, "[", op, "] moments must be f32 or bf16, got ",
               DTypeName(md));
  CheckFlat(op, exp_avg, "exp_avg", md, chunks.end() - chunks.begin());
  CheckFlat(op, exp_avg_sq, "exp_avg_sq", md, chunks.end() - chunks.begin());
  for (const Tensor* t : {&values, &grads, &exp_avg, &exp_avg_sq, &compute})
    FATHOM_CHECK(!t->defined() || reinterpret_cast<uintptr_t>(t->raw()) % 16 == 0, "[", op,
                 "] buffers must be 16-byte aligned, got ", t->raw());
  if (chunks.count() == 0) return;
  const FusedOutputs out{compute.defined() ? static_cast<uint16_t*>(compute.raw()) : nullptr};
  const unsigned grid = FillingGrid(chunks.count());
  const float clip = static_cast<float>(clip_scale);
  const int64_t* list = chunks.list().data<int64_t>();
  // 8 elements per thread in rounds of 2 (measured on an H200 at 512M elements, norm + fused pass: 3.52 ms
  // against 3.83 for 4 x 4, 3.62 for 4 x 2, 3.59 for 4 x 1 and 3.56 for 8 x 1; in the small recipe's step
  // the optimizer phase went from 18.3 to 15.7 ms): fewer registers per byte in flight than 4 x 4 leave
  // more warps to overlap one round's arithmetic with another's loads. A ZeRO shard whose range starts off
  // a multiple of 8 can never align values and moments to 8 at once, so it takes 4 x 4 (vector accesses
  // wherever the start is a multiple of 4, as before) rather than going element by element.
  const bool wide = chunks.begin() % 8 == 0;
  auto launch = [&](auto* m1, auto* m2) {
    using M = std::remove_pointer_t<decltype(m1)>;
    auto kernel = wide ? FusedAdamWKernel<M, 8, 2> : FusedAdamWKernel<M, 4, 4>;
    kernel<<<grid, kThreads, 0, stream>>>(values.data<float>(), m1, m2, grads.data<float>(), list,
                                          chunks.count(), chunks.begin(), coeffs, clip, out);
  };
  if (md == DType::kF32) {
    launch(exp_avg.data<float>(), exp_avg_sq.data<float>());
  } else {
    launch(static_cast<uint16_t*>(exp_avg.raw()), static_cast<uint16_t*>(exp_avg_sq.raw()));
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

void AdamWStep(const Tensor& values, const Tensor& exp_avg, const Tensor& exp_avg_sq, const Tensor& grads,
               const ParamChunks& chunks, const AdamWCoeffs& coeffs, Stream stream) {
  FusedAdamWStep(values, exp_avg, exp_avg_sq, grads, Tensor(), chunks, coeffs, 1.0, stream);
}

void GradNormSquared(const Tensor& out, const Tensor& grads, const ParamChunks& chunks, Stream stream) {
  const char* op = "grad_norm_cuda";
  CheckFlat(op, grads, "grads", DType::kF32, chunks.table_numel());
  CheckFlat(op, out, "out", DType::kF64, 1);
  if (chunks.count() == 0) {
    FATHOM_CUDA_CHECK(cudaMemsetAsync(out.raw(), 0, sizeof(double), stream));
    return;
  }
  // The grid depends only on the chunk count, so the summation order is fixed for a given table.
  const int64_t blocks = std::min(chunks.count(), ParamChunks::kNormBlocks);
  double* partials = chunks.norm_scratch().data<double>();
  NormPartialsKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      partials, grads.data<float>(), chunks.list().data<int64_t>(), chunks.count());
  FATHOM_CUDA_CHECK_LAUNCH();
  NormFinishKernel<<<1, kThreads, 0, stream>>>(out.data<double>(), partials, blocks);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void ScaleGrads(const Tensor& grads, const ParamChunks& chunks, double scale, Stream stream) {
  CheckFlat("scale_grads_cuda", grads, "grads", DType::kF32, chunks.table_numel());
  if (chunks.count() == 0) return;
  ScaleKernel<<<ChunkGrid(chunks), kThreads, 0, stream>>>(grads.data<float>(), chunks.list().data<int64_t>(),
                                                          static_cast<float>(scale));
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
