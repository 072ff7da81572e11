#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
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

// One block per chunk. The expression order is optim/adamw.cc's UpdateRun, operation for operation; the
// _rn intrinsics forbid nvcc's default fused multiply-adds, which the CPU build does not use either.
template <class M>
__global__ void AdamWKernel(float* values, M* exp_avg, M* exp_avg_sq, const float* grads, const int64_t* list,
                            int64_t range_begin, AdamWCoeffs c) {
  const Chunk ch = ReadChunk(list, blockIdx.x);
  for (int64_t j = threadIdx.x; j < ch.length; j += blockDim.x) {
    const int64_t i = ch.begin + j, local = i - range_begin;
    const float g = grads[i];
    const float m =
        __fadd_rn(__fmul_rn(c.beta1, LoadMoment(exp_avg, local)), __fmul_rn(c.one_minus_beta1, g));
    const float v = __fadd_rn(__fmul_rn(c.beta2, LoadMoment(exp_avg_sq, local)),
                              __fmul_rn(__fmul_rn(c.one_minus_beta2, g), g));
    StoreMoment(exp_avg, local, m);
    StoreMoment(exp_avg_sq, local, v);
    float p = values[i];
    if (ch.decay) p = __fmul_rn(p, c.decay_factor);
    const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v), c.inv_sqrt_bc2), c.eps);
    values[i] = __fsub_rn(p, __fmul_rn(c.step_size, __fdiv_rn(m, denom)));
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

// Pass 1: block b sums chunks b, b + gridDim.x, ... into partials[b].
__global__ void NormPartialsKernel(double* partials, const float* grads, const int64_t* list, int64_t count) {
  double sum = 0.0;
  for (int64_t c = blockIdx.x; c < count; c += gridDim.x) {
    const Chunk ch = ReadChunk(list, c);
    for (int64_t j = threadIdx.x; j < ch.length; j += blockDim.x) {
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

}  // namespace

ParamChunks::ParamChunks(const ParamTable& table, DeviceArena& arena, int64_t begin, int64_t end)
    : begin_(begin), end_(end < 0 ? table.numel() : end), table_numel_(table.numel()) {
  FATHOM_CHECK(table.finalized(), "[param_chunks] the parameter table must be finalized first");
  FATHOM_CHECK(0 <= begin_ && begin_ <= end_ && end_ <= table.numel(), "[param_chunks] range [", begin_, ", ",
               end_, ") outside the table's ", table.numel(), " elements");
  std::vector<int64_t> host;
  for (const ParamSpec& s : table.specs()) {
    if (!s.trainable) continue;
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

void AdamWStep(const Tensor& values, const Tensor& exp_avg, const Tensor& exp_avg_sq, const Tensor& grads,
               const ParamChunks& chunks, const AdamWCoeffs& coeffs, Stream stream) {
  const char* op = "adamw_cuda";
  CheckFlat(op, values, "values", DType::kF32, chunks.table_numel());
  CheckFlat(op, grads, "grads", DType::kF32, chunks.table_numel());
  const DType md = exp_avg.dtype();
  FATHOM_CHECK(md == DType::kF32 || md == DType::kBF16, "[", op, "] moments must be f32 or bf16, got ",
               DTypeName(md));
  CheckFlat(op, exp_avg, "exp_avg", md, chunks.end() - chunks.begin());
  CheckFlat(op, exp_avg_sq, "exp_avg_sq", md, chunks.end() - chunks.begin());
  if (chunks.count() == 0) return;
  const int64_t* list = chunks.list().data<int64_t>();
  if (md == DType::kF32) {
    AdamWKernel<<<ChunkGrid(chunks), kThreads, 0, stream>>>(values.data<float>(), exp_avg.data<float>(),
                                                            exp_avg_sq.data<float>(), grads.data<float>(),
                                                            list, chunks.begin(), coeffs);
  } else {
    AdamWKernel<<<ChunkGrid(chunks), kThreads, 0, stream>>>(
        values.data<float>(), static_cast<uint16_t*>(exp_avg.raw()), static_cast<uint16_t*>(exp_avg_sq.raw()),
        grads.data<float>(), list, chunks.begin(), coeffs);
  }
  FATHOM_CUDA_CHECK_LAUNCH();
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
