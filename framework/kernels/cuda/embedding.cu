#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cub/device/device_radix_sort.cuh>

#include "framework/cuda/check.h"
#include "framework/kernels/cuda/embedding.h"
#include "framework/kernels/cuda/kernel_common.cuh"

namespace fathom::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void CheckId(uint32_t id, int64_t vocab, int64_t position) {
  // Unsigned compare: a negative id is a huge unsigned value and fails here too.
  if (id >= static_cast<uint64_t>(vocab)) {
    printf("[embedding_cuda] token id %d at position %lld outside the vocabulary [0, %lld)\n",
           static_cast<int32_t>(id), static_cast<long long>(position), static_cast<long long>(vocab));
    __trap();
  }
}

// Element type E is a same-size integer for the stored dtype (a bit copy).
template <class E>
__global__ void GatherKernel(E* out, const uint32_t* ids, const E* table, int64_t tokens, int64_t cols,
                             int64_t vocab) {
  const int64_t n = tokens * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / cols;
    const uint32_t id = ids[t];
    CheckId(id, vocab, t);
    out[i] = table[static_cast<int64_t>(id) * cols + i % cols];
  }
}

__global__ void IotaKernel(uint32_t* positions, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    positions[i] = static_cast<uint32_t>(i);
  }
}

__device__ __forceinline__ float Load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float Load(const uint16_t* p, int64_t i) {
  return __uint_as_float(static_cast<uint32_t>(p[i]) << 16);
}

// Block i owns sorted position i if it starts a run of equal ids; the run's rows are added in increasing
// position order (the sort is stable and the values were 0..N-1).
template <class G>
__global__ void ScatterRunsKernel(float* dtable, const uint32_t* sorted_ids, const uint32_t* sorted_pos,
                                  const G* dy, int64_t tokens, int64_t cols, int64_t vocab) {
  const int64_t i = blockIdx.x;
  const uint32_t id = sorted_ids[i];
  if (i > 0 && sorted_ids[i - 1] == id) return;
  CheckId(id, vocab, sorted_pos[i]);
  int64_t run_end = i + 1;
  while (run_end < tokens && sorted_ids[run_end] == id) ++run_end;
  float* row = dtable + static_cast<int64_t>(id) * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float acc = row[c];
    for (int64_t j = i; j < run_end; ++j)
      acc = __fadd_rn(acc, Load(dy, static_cast<int64_t>(sorted_pos[j]) * cols + c));
    row[c] = acc;
  }
}

unsigned GridFor(int64_t n) { return common::GridFor(n, kThreads); }

int KeyBits(int64_t vocab) {
  int bits = 1;
  while (bits < 32 && (int64_t{1} << bits) < vocab) ++bits;
  return bits;
}

size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Workspace layout: sorted ids, positions, sorted positions (N u32 each, 256-byte aligned), CUB scratch.
size_t CubBytes(int64_t tokens, int64_t vocab) {
  size_t bytes = 0;
  FATHOM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr), tokens, 0, KeyBits(vocab)));
  return bytes;
}

using common::CheckCuda;

}  // namespace

void EmbeddingForward(const Tensor& out, const Tensor& ids, const Tensor& table, Stream stream) {
  const char* op = "embedding_cuda";
  CheckCuda(op, out, "out");
  CheckCuda(op, ids, "ids");
  CheckCuda(op, table, "table");
  FATHOM_CHECK(table.ndim() == 2 && ids.dtype() == DType::kI32 && out.dtype() == table.dtype() &&
                   (table.dtype() == DType::kF32 || table.dtype() == DType::kBF16),
               "[", op, "] table ", table.shape_str(), " ", DTypeName(table.dtype()), " (f32 or bf16), ids ",
               DTypeName(ids.dtype()), " (i32), out ", DTypeName(out.dtype()), " (table's dtype)");
  const int64_t tokens = ids.numel(), vocab = table.dim(0), cols = table.dim(1);
  FATHOM_CHECK(out.numel() == tokens * cols, "[", op, "] out ", out.shape_str(), " ids ", ids.shape_str(),
               " table ", table.shape_str());
  if (tokens * cols == 0) return;
  const auto* id = static_cast<const uint32_t*>(ids.raw());
  if (table.dtype() == DType::kF32) {
    GatherKernel<<<GridFor(tokens * cols), kThreads, 0, stream>>>(static_cast<uint32_t*>(out.raw()), id,
                                                                  static_cast<const uint32_t*>(table.raw()),
                                                                  tokens, cols, vocab);
  } else {
    GatherKernel<<<GridFor(tokens * cols), kThreads, 0, stream>>>(static_cast<uint16_t*>(out.raw()), id,
                                                                  static_cast<const uint16_t*>(table.raw()),
                                                                  tokens, cols, vocab);
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

size_t EmbeddingBackwardWorkspaceBytes(int64_t tokens, int64_t vocab) {
  FATHOM_CHECK(tokens >= 0 && tokens < (int64_t{1} << 31) && vocab > 0, "[embedding_backward_cuda] ", tokens,
               " tokens, vocabulary ", vocab);
  return 3 * Align256(static_cast<size_t>(tokens) * sizeof(uint32_t)) + CubBytes(tokens, vocab);
}

void EmbeddingBackward(const Tensor& dtable, const Tensor& ids, const Tensor& dy, const Tensor& workspace,
                       Stream stream) {
  const char* op = "embedding_backward_cuda";
  CheckCuda(op, dtable, "dtable");
  CheckCuda(op, ids, "ids");
  CheckCuda(op, dy, "dy");
  CheckCuda(op, workspace, "workspace");
  FATHOM_CHECK(dtable.ndim() == 2 && dtable.dtype() == DType::kF32 && ids.dtype() == DType::kI32 &&
                   (dy.dtype() == DType::kF32 || dy.dtype() == DType::kBF16),
               "[", op, "] dtable ", dtable.shape_str(), " ", DTypeName(dtable.dtype()), " (f32), ids ",
               DTypeName(ids.dtype()), " (i32), dy ", DTypeName(dy.dtype()), " (f32 or bf16)");
  const int64_t tokens = ids.numel(), vocab = dtable.dim(0), cols = dtable.dim(1);
  FATHOM_CHECK(dy.numel() == tokens * cols, "[", op, "] dy ", dy.shape_str(), " ids ", ids.shape_str(),
               " dtable ", dtable.shape_str());
  if (tokens == 0 || cols == 0) return;
  const size_t need = EmbeddingBackwardWorkspaceBytes(tokens, vocab);
  FATHOM_CHECK(workspace.nbytes() >= need && reinterpret_cast<uintptr_t>(workspace.raw()) % 256 == 0, "[", op,
               "] workspace of ", workspace.nbytes(), " bytes (256-byte aligned needed) < ", need, " for ",
               tokens, " tokens");
  const size_t slice = Align256(static_cast<size_t>(tokens) * sizeof(uint32_t));
  char* base = static_cast<char*>(workspace.raw());
  auto* sorted_ids = reinterpret_cast<uint32_t*>(base);
  auto* positions = reinterpret_cast<uint32_t*>(base + slice);
  auto* sorted_pos = reinterpret_cast<uint32_t*>(base + 2 * slice);
  void* cub_scratch = base + 3 * slice;
  size_t cub_bytes = need - 3 * slice;

  IotaKernel<<<GridFor(tokens), kThreads, 0, stream>>>(positions, tokens);
  FATHOM_CUDA_CHECK_LAUNCH();
  // Ids as unsigned keys over the bits the vocabulary needs; an id outside it is caught by the scatter.
  FATHOM_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(cub_scratch, cub_bytes, static_cast<const uint32_t*>(ids.raw()),
                                      sorted_ids, positions, sorted_pos, tokens, 0, KeyBits(vocab), stream));
  const unsigned blocks = static_cast<unsigned>(tokens);
  if (dy.dtype() == DType::kF32) {
    ScatterRunsKernel<<<blocks, kThreads, 0, stream>>>(dtable.data<float>(), sorted_ids, sorted_pos,
                                                       dy.data<float>(), tokens, cols, vocab);
  } else {
    ScatterRunsKernel<<<blocks, kThreads, 0, stream>>>(dtable.data<float>(), sorted_ids, sorted_pos,
                                                       static_cast<const uint16_t*>(dy.raw()), tokens, cols,
                                                       vocab);
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
