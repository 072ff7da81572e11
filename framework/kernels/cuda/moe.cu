#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cub/block/block_scan.cuh>
#include <limits>
#include <memory>
#include <utility>

#include "framework/cuda/check.h"
#include "framework/kernels/cuda/moe.h"

namespace fathom::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxRouterExperts = 1024;  // a lane's taken-mask covers 32 elements of stride 32
constexpr int kMaxGroups = 32;           // kept groups travel as one warp ballot
constexpr int kMaxTopK = 32;             // lane j holds the j-th choice

cudaStream_t Raw(Stream s) { return s; }  // the same type, named without CUDA headers in moe.h

// ---- argument checks
// ---------------------------------------------------------------------------------------

void CheckDevice(const char* op, const char* name, const Tensor& t, DType dtype, const Shape& shape) {
  FATHOM_CHECK(t.defined() && t.device() == Device::kCUDA && t.dtype() == dtype && t.shape() == shape, "[",
               op, "] ", name, " ", t.defined() ? t.shape_str() : std::string("(undefined)"), " ",
               DTypeName(t.dtype()), " on ", DeviceName(t.device()), ", expected ", ShapeString(shape), " ",
               DTypeName(dtype), " on cuda");
}

void CheckRows(const char* op, int64_t rows) {
  FATHOM_CHECK(rows >= 0 && rows < std::numeric_limits<int32_t>::max(), "[", op, "] ", rows,
               " rows: the kernels index rows with int32");
}

void CheckActivationDType(const char* op, DType t) {
  FATHOM_CHECK(t == DType::kF32 || t == DType::kBF16, "[", op, "] token rows must be f32 or bf16, got ",
               DTypeName(t));
}

template <class T>
struct Tag {
  using type = T;
};

// Calls f(Tag<float>) or f(Tag<__nv_bfloat16>) for the token-row dtype.
template <class F>
void DispatchActivation(DType t, const char* op, F&& f) {
  CheckActivationDType(op, t);
  if (t == DType::kF32) {
    f(Tag<float>{});
  } else {
    f(Tag<__nv_bfloat16>{});
  }
}

// Grid for the grid-stride elementwise kernels: enough blocks to fill the GPU, never more than needed.
int GridFor(int64_t elements, int threads) {
  return static_cast<int>(std::min<int64_t>((elements + threads - 1) / threads, 8192));
}

// ---- device helpers
// ----------------------------------------------------------------------------------------

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// The CPU twin's formula (framework/kernels/cpu/activation.cc), which never overflows expf.
__device__ __forceinline__ float Sigmoid(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}

template <class V>
__device__ __forceinline__ V WarpSum(V v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// ---- router
// ------------------------------------------------------------------------------------------------

constexpr int kRouterWarps = 4;

// One warp per token. Per-warp shared memory: choice = s + bias (E), s (E), group scores (32).
// Selection is K rounds of a warp argmax under the total order (higher value, then lower index), so every
// lane agrees on the winner and the result is the CPU's partial_sort order.
__global__ void RouterSelectKernel(int64_t* __restrict__ topk_index, float* __restrict__ topk_weight,
                                   float* scores, const float* logits, const float* __restrict__ bias, int n,
                                   int e, int k, int n_group, int topk_group, bool norm, float scaling) {
  extern __shared__ float router_smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * kRouterWarps + warp;
  if (t >= n) return;  // whole warps leave; no block-wide barrier below
  float* choice = router_smem + warp * (2 * e + kMaxGroups);
  float* s_sh = choice + e;
  float* group_score = s_sh + e;
  const float* lg = logits + static_cast<int64_t>(t) * e;
  float* sc = scores + static_cast<int64_t>(t) * e;
  for (int i = lane; i < e; i += 32) {
    const float s = Sigmoid(lg[i]);  // read before the write: scores may alias logits
    sc[i] = s;
    s_sh[i] = s;
    choice[i] = s + bias[i];
  }
  __syncwarp();

  const int group_size = e / n_group;
  unsigned kept = kFullMask;  // bit g: group g is kept (all groups when topk_group == n_group)
  if (topk_group < n_group) {
    if (lane < n_group) {
      // The CPU's scan: strict comparisons, so equal values fill first and second alike.
      float first = -INFINITY, second = -INFINITY;
      for (int i = lane * group_size; i < (lane + 1) * group_size; ++i) {
        const float v = choice[i];
        if (v > first) {
          second = first;
          first = v;
        } else if (v > second) {
          second = v;
        }
      }
      group_score[lane] = first + second;
    }
    __syncwarp();
    bool keep = false;
    if (lane < n_group) {
      const float mine = group_score[lane];
      int rank = 0;
      for (int g = 0; g < n_group; ++g) {
        const float v = group_score[g];
        rank += (v > mine || (v == mine && g < lane)) ? 1 : 0;
      }
      keep = rank < topk_group;
    }
    kept = __ballot_sync(kFullMask, keep);
  }

  unsigned taken = 0;  // bit m: element lane + 32 m already chosen
  int my_index = 0;
  float my_s = 0.0f;
  for (int j = 0; j < k; ++j) {
    float best = 0.0f;
    int best_i = -1;
    for (int m = 0, i = lane; i < e; ++m, i += 32) {
      if ((taken >> m) & 1u) continue;
      if (!((kept >> (i / group_size)) & 1u)) continue;
      const float v = choice[i];
      if (best_i < 0 || v > best) {  // increasing i: the first of equal values (lower index) stays
        best = v;
        best_i = i;
      }
    }
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_xor_sync(kFullMask, best, off);
      const int oi = __shfl_xor_sync(kFullMask, best_i, off);
      if (oi >= 0 && (best_i < 0 || ov > best || (ov == best && oi < best_i))) {
        best = ov;
        best_i = oi;
      }
    }
    if (lane == (best_i & 31)) taken |= 1u << (best_i >> 5);
    if (lane == j) {
      my_index = best_i;
      my_s = s_sh[best_i];
    }
  }
  // The CPU's order: sum the chosen s for j = 0..K-1, then w = s / denom * scaling.
  float sum = 0.0f;
  for (int j = 0; j < k; ++j) sum += __shfl_sync(kFullMask, my_s, j);
  if (lane < k) {
    const float denom = norm ? sum + 1e-20f : 1.0f;
    topk_index[static_cast<int64_t>(t) * k + lane] = my_index;
    topk_weight[static_cast<int64_t>(t) * k + lane] = my_s / denom * scaling;
  }
}

// One warp per token: the K chosen experts' gradient terms are built by lanes 0..K-1 and broadcast through
// shared memory, then every lane finishes its elements with the sigmoid derivative.
__global__ void RouterSelectBackwardKernel(float* dlogits, const float* __restrict__ dweight,
                                           const float* dscores, const float* __restrict__ scores,
                                           const int64_t* __restrict__ topk_index, int n, int e, int k,
                                           bool norm, float scaling) {
  __shared__ int chosen[kRouterWarps][kMaxTopK];
  __shared__ float term[kRouterWarps][kMaxTopK];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * kRouterWarps + warp;
  if (t >= n) return;
  const int64_t row = static_cast<int64_t>(t) * e;
  int my_index = -1;
  float my_g = 0.0f, my_s = 0.0f;
  if (lane < k) {
    my_index = static_cast<int>(topk_index[static_cast<int64_t>(t) * k + lane]);
    my_g = dweight[static_cast<int64_t>(t) * k + lane];
    my_s = scores[row + my_index];
  }
  // w_j = c s_j / D, D = sum_k s_k + 1e-20: dL/ds_j = c (dw_j / D - sum_k dw_k s_k / D^2).
  float my_term = scaling * my_g;
  if (norm) {
    float denom = 0.0f, dot = 0.0f;
    for (int j = 0; j < k; ++j) {
      const float s = __shfl_sync(kFullMask, my_s, j);
      denom += s;
      dot += __shfl_sync(kFullMask, my_g, j) * s;
    }
    denom += 1e-20f;
    my_term = scaling * (my_g / denom - dot / (denom * denom));
  }
  if (lane < k) {
    chosen[warp][lane] = my_index;
    term[warp][lane] = my_term;
  }
  __syncwarp();
  for (int i = lane; i < e; i += 32) {
    float v = dscores != nullptr ? dscores[row + i] : 0.0f;  // read before the write: may alias dlogits
    for (int j = 0; j < k; ++j) {
      if (chosen[warp][j] == i) v += term[warp][j];
    }
    const float s = scores[row + i];
    dlogits[row + i] = v * s * (1.0f - s);
  }
}

// ---- balance loss
// ------------------------------------------------------------------------------------------

constexpr int kBalanceThreads = 256;
constexpr int kBalanceWarps = kBalanceThreads / 32;

// One block per sequence: integer histogram of its K*T choices (shared-memory integer atomics: the counts
// cannot depend on their order), then Bal_b = (1/T) sum_t (sum_i f_i s_it) / (sum_i s_it), each warp
// summing its tokens in order and the warps' partial sums added in warp order.
__global__ void BalanceForwardKernel(float* __restrict__ balance, int32_t* __restrict__ seq_counts,
                                     const float* __restrict__ scores, const int64_t* __restrict__ topk_index,
                                     int seq, int e, int k) {
  extern __shared__ int balance_counts[];
  __shared__ double partial[kBalanceWarps];
  const int b = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = threadIdx.x; i < e; i += blockDim.x) balance_counts[i] = 0;
  __syncthreads();
  const int64_t* idx = topk_index + static_cast<int64_t>(b) * seq * k;
  for (int j = threadIdx.x; j < seq * k; j += blockDim.x) {
    const int64_t v = idx[j];
    if (v < 0 || v >= e) __trap();
    atomicAdd(&balance_counts[v], 1);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < e; i += blockDim.x)
    seq_counts[static_cast<int64_t>(b) * e + i] = balance_counts[i];
  const double f_scale = static_cast<double>(e) / (static_cast<double>(k) * seq);
  double acc = 0.0;
  for (int t = warp; t < seq; t += kBalanceWarps) {
    const float* s = scores + (static_cast<int64_t>(b) * seq + t) * e;
    double sum = 0.0, dot = 0.0;
    for (int i = lane; i < e; i += 32) {
      const double v = s[i];
      sum += v;
      dot += balance_counts[i] * v;
    }
    sum = WarpSum(sum);
    dot = WarpSum(dot);
    acc += dot * f_scale / sum;
  }
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double bal = 0.0;
    for (int w = 0; w < kBalanceWarps; ++w) bal += partial[w];
    balance[b] = static_cast<float>(bal / seq);
  }
}

__global__ void BalanceMeanKernel(float* loss, const float* __restrict__ balance, int batch,
                                  bool accumulate) {
  double total = 0.0;
  for (int b = 0; b < batch; ++b) total += balance[b];
  const float mean = static_cast<float>(total / batch);
  loss[0] = accumulate ? loss[0] + mean : mean;
}

// One warp per token: with g_i = coef * count_i (= weight f_i / (B T)) and S = sum_j s_j,
// dL/ds_i = (g_i - g . s / S) / S.
__global__ void BalanceBackwardKernel(float* __restrict__ dscores, const float* __restrict__ scores,
                                      const int32_t* __restrict__ seq_counts, int n, int seq, int e,
                                      double coef) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * kBalanceWarps + warp;
  if (t >= n) return;
  const int32_t* cnt = seq_counts + static_cast<int64_t>(t / seq) * e;
  const float* s = scores + static_cast<int64_t>(t) * e;
  float* ds = dscores + static_cast<int64_t>(t) * e;
  double sum = 0.0, dot = 0.0;
  for (int i = lane; i < e; i += 32) {
    const double v = s[i];
    sum += v;
    dot += coef * cnt[i] * v;
  }
  sum = WarpSum(sum);
  dot = WarpSum(dot) / sum;
  for (int i = lane; i < e; i += 32) ds[i] += static_cast<float>((coef * cnt[i] - dot) / sum);
}

__global__ void AccumulateLoadKernel(int64_t* __restrict__ load, const int64_t* __restrict__ counts, int e) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < e) load[i] += counts[i];
}

// ---- counting sort by (expert, slot) ---------------------------------------------------------------------

constexpr int kSortWarps = 4;
constexpr int kSortIters = 16;
constexpr int kSlotsPerChunk = 32 * kSortIters;  // one warp walks one chunk, 32 slots per step
constexpr int kScanThreads = 1024;

// The expert of `slot` (-1 past the end) and the lanes of this step sharing it.
__device__ __forceinline__ int SlotExpert(const int64_t* topk_index, int slot, int r, int e) {
  if (slot >= r) return -1;
  const int64_t v = topk_index[slot];
  if (v < 0 || v >= e) __trap();
  return static_cast<int>(v);
}

// workspace[ex * chunks + c] = number of slots of chunk c routed to expert ex.
__global__ void SortCountKernel(int32_t* __restrict__ workspace, const int64_t* __restrict__ topk_index,
                                int r, int e, int chunks) {
  extern __shared__ int sort_counts[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunk = blockIdx.x * kSortWarps + warp;
  if (chunk >= chunks) return;
  int* cnt = sort_counts + warp * e;
  for (int i = lane; i < e; i += 32) cnt[i] = 0;
  __syncwarp();
  for (int it = 0; it < kSortIters; ++it) {
    const int slot = chunk * kSlotsPerChunk + it * 32 + lane;
    const int ex = SlotExpert(topk_index, slot, r, e);
    const unsigned same = __match_any_sync(kFullMask, ex);
    if (ex >= 0 && lane == __ffs(same) - 1) cnt[ex] += __popc(same);
    __syncwarp();
  }
  for (int i = lane; i < e; i += 32) workspace[static_cast<int64_t>(i) * chunks + chunk] = cnt[i];
}

// One block: exclusive scan of the (expert, chunk) counts in place (expert-major, so the scanned value is
// the first row of that chunk's slots of that expert), then counts and offsets per expert.
__global__ void SortScanKernel(int64_t* __restrict__ counts, int64_t* __restrict__ offsets,
                               int32_t* workspace, int e, int chunks) {
  using BlockScan = cub::BlockScan<int, kScanThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  const int64_t m = static_cast<int64_t>(e) * chunks;
  const int64_t per = (m + kScanThreads - 1) / kScanThreads;
  const int64_t begin = threadIdx.x * per, end = begin + per < m ? begin + per : m;
  int local = 0;
  for (int64_t j = begin; j < end; ++j) local += workspace[j];
  int prefix = 0, total = 0;
  BlockScan(scan_storage).ExclusiveSum(local, prefix, total);
  for (int64_t j = begin; j < end; ++j) {
    const int v = workspace[j];
    workspace[j] = prefix;
    prefix += v;
  }
  __syncthreads();  // makes this block's global writes visible to its other threads
  for (int i = threadIdx.x; i <= e; i += blockDim.x) {
    const int64_t start = i < e && chunks > 0 ? workspace[static_cast<int64_t>(i) * chunks] : total;
    offsets[i] = start;
    if (i < e) {
      const int64_t next = i + 1 < e && chunks > 0 ? workspace[static_cast<int64_t>(i + 1) * chunks] : total;
      counts[i] = next - start;
    }
  }
}

// Replays SortCountKernel's walk: row = scanned base + earlier matches in this chunk + lanes below in this
// step, which is exactly increasing slot order inside each expert block.
__global__ void SortScatterKernel(int64_t* __restrict__ row_slot, int64_t* __restrict__ slot_row,
                                  const int32_t* __restrict__ workspace,
                                  const int64_t* __restrict__ topk_index, int r, int e, int chunks) {
  extern __shared__ int sort_next[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunk = blockIdx.x * kSortWarps + warp;
  if (chunk >= chunks) return;
  int* next = sort_next + warp * e;
  for (int i = lane; i < e; i += 32) next[i] = workspace[static_cast<int64_t>(i) * chunks + chunk];
  __syncwarp();
  const unsigned lanes_below = (1u << lane) - 1u;
  for (int it = 0; it < kSortIters; ++it) {
    const int slot = chunk * kSlotsPerChunk + it * 32 + lane;
    const int ex = SlotExpert(topk_index, slot, r, e);
    const unsigned same = __match_any_sync(kFullMask, ex);
    if (ex >= 0) {
      const int row = next[ex] + __popc(same & lanes_below);
      row_slot[row] = slot;
      slot_row[slot] = row;
    }
    __syncwarp();  // every lane has read next[ex] before the leader moves it
    if (ex >= 0 && lane == __ffs(same) - 1) next[ex] += __popc(same);
    __syncwarp();
  }
}

// ---- row movement
// ------------------------------------------------------------------------------------------

// x_perm row r = x row (row_slot[r] / k), moved as `row_words` words of type W per row.
template <class W>
__global__ void PermuteRowsKernel(W* __restrict__ x_perm, const W* __restrict__ x,
                                  const int64_t* __restrict__ row_slot, int64_t rows, int64_t row_words,
                                  int k) {
  const int64_t total = rows * row_words;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / row_words, w = i - r * row_words;
    x_perm[i] = x[(row_slot[r] / k) * row_words + w];
  }
}

template <class W>
void LaunchPermuteRows(void* x_perm, const void* x, const int64_t* row_slot, int64_t rows, int64_t row_bytes,
                       int k, cudaStream_t stream) {
  const int64_t row_words = row_bytes / static_cast<int64_t>(sizeof(W));
  constexpr int kThreads = 256;
  PermuteRowsKernel<W><<<GridFor(rows * row_words, kThreads), kThreads, 0, stream>>>(
      static_cast<W*>(x_perm), static_cast<const W*>(x), row_slot, rows, row_words, k);
  FATHOM_CUDA_CHECK_LAUNCH();
}

// dx (N, H) element (t, c) = [dx] + sum_k dx_perm[slot_row[t*K+k], c], f32 accumulation in k order.
template <class T>
__global__ void PermuteBackwardKernel(T* dx, const T* __restrict__ dx_perm,
                                      const int64_t* __restrict__ slot_row, int64_t n, int64_t h, int k,
                                      bool accumulate) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n * h;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / h, c = i - t * h;
    float acc = accumulate ? ToFloat(dx[i]) : 0.0f;
    for (int j = 0; j < k; ++j) acc += ToFloat(dx_perm[slot_row[t * k + j] * h + c]);
    dx[i] = FromFloat<T>(acc);
  }
}

// out (N, H) element (t, c) = sum_k w[t, k] * y_perm[slot_row[t*K+k], c], f32 accumulation in k order.
template <class T>
__global__ void CombineKernel(T* __restrict__ out, const T* __restrict__ y_perm,
                              const int64_t* __restrict__ slot_row, const float* __restrict__ topk_weight,
                              int64_t n, int64_t h, int k) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n * h;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / h, c = i - t * h;
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) acc += topk_weight[t * k + j] * ToFloat(y_perm[slot_row[t * k + j] * h + c]);
    out[i] = FromFloat<T>(acc);
  }
}

constexpr int kCombineBackwardThreads = 128;

// One block per permuted row: dy_perm row and the row's dweight dot product, reduced lane-xor within warps
// and then across warps in warp order (fixed, so deterministic).
template <class T>
__global__ void CombineBackwardKernel(T* __restrict__ dy_perm, float* __restrict__ dweight,
                                      const T* __restrict__ dout, const T* __restrict__ y_perm,
                                      const int64_t* __restrict__ row_slot,
                                      const float* __restrict__ topk_weight, int64_t h, int k) {
  __shared__ float partial[kCombineBackwardThreads / 32];
  const int64_t r = blockIdx.x;
  const int64_t slot = row_slot[r];
  const T* g = dout + (slot / k) * h;
  const T* y = y_perm + r * h;
  T* dy = dy_perm + r * h;
  const float w = topk_weight[slot];
  float dot = 0.0f;
  for (int64_t c = threadIdx.x; c < h; c += kCombineBackwardThreads) {
    const float gc = ToFloat(g[c]);
    dy[c] = FromFloat<T>(w * gc);
    dot += gc * ToFloat(y[c]);
  }
  dot = WarpSum(dot);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = dot;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int i = 0; i < kCombineBackwardThreads / 32; ++i) total += partial[i];
    dweight[slot] = total;
  }
}

void CheckRouterDims(const char* op, const RouterDims& d) {
  FATHOM_CHECK(d.n_group >= 1 && d.num_experts % d.n_group == 0 && d.num_experts / d.n_group >= 2 &&
                   d.topk_group >= 1 && d.topk_group <= d.n_group && d.top_k >= 1 &&
                   d.top_k <= d.topk_group * (d.num_experts / d.n_group),
               "[", op, "] E ", d.num_experts, " K ", d.top_k, " n_group ", d.n_group, " topk_group ",
               d.topk_group);
  FATHOM_CHECK(d.num_experts <= kMaxRouterExperts && d.n_group <= kMaxGroups && d.top_k <= kMaxTopK, "[", op,
               "] E ", d.num_experts, " n_group ", d.n_group, " K ", d.top_k,
               " beyond the CUDA router's limits (", kMaxRouterExperts, ", ", kMaxGroups, ", ", kMaxTopK,
               ")");
}

}  // namespace

// ---- launchers
// ---------------------------------------------------------------------------------------------

void RouterSelect(const Tensor& topk_index, const Tensor& topk_weight, const Tensor& scores,
                  const Tensor& logits, const Tensor& bias, const RouterDims& d, Stream stream) {
  const char* op = "router_select_cuda";
  CheckRouterDims(op, d);
  FATHOM_CHECK(logits.ndim() == 2, "[", op, "] logits ", logits.shape_str(), ", expected (N, E)");
  const int64_t n = logits.dim(0), e = d.num_experts, k = d.top_k;
  CheckRows(op, n);
  CheckDevice(op, "logits", logits, DType::kF32, {n, e});
  CheckDevice(op, "scores", scores, DType::kF32, {n, e});
  CheckDevice(op, "bias", bias, DType::kF32, {e});
  CheckDevice(op, "topk_index", topk_index, DType::kI64, {n, k});
  CheckDevice(op, "topk_weight", topk_weight, DType::kF32, {n, k});
  if (n == 0) return;
  const size_t smem = kRouterWarps * (2 * static_cast<size_t>(e) + kMaxGroups) * sizeof(float);
  RouterSelectKernel<<<static_cast<unsigned>((n + kRouterWarps - 1) / kRouterWarps), kRouterWarps * 32, smem,
                       Raw(stream)>>>(topk_index.data<int64_t>(), topk_weight.data<float>(),
                                      scores.data<float>(), logits.data<float>(), bias.data<float>(),
                                      static_cast<int>(n), static_cast<int>(e), static_cast<int>(k),
                                      static_cast<int>(d.n_group), static_cast<int>(d.topk_group),
                                      d.norm_topk_prob, static_cast<float>(d.routed_scaling_factor));
  FATHOM_CUDA_CHECK_LAUNCH();
}

void RouterSelectBackward(const Tensor& dlogits, const Tensor& dweight, const Tensor& dscores,
                          const Tensor& scores, const Tensor& topk_index, const RouterDims& d,
                          Stream stream) {
  const char* op = "router_select_backward_cuda";
  CheckRouterDims(op, d);
  FATHOM_CHECK(scores.ndim() == 2, "[", op, "] scores ", scores.shape_str(), ", expected (N, E)");
  const int64_t n = scores.dim(0), e = d.num_experts, k = d.top_k;
  CheckRows(op, n);
  CheckDevice(op, "scores", scores, DType::kF32, {n, e});
  CheckDevice(op, "dlogits", dlogits, DType::kF32, {n, e});
  CheckDevice(op, "dweight", dweight, DType::kF32, {n, k});
  CheckDevice(op, "topk_index", topk_index, DType::kI64, {n, k});
  if (dscores.defined()) CheckDevice(op, "dscores", dscores, DType::kF32, {n, e});
  if (n == 0) return;
  RouterSelectBackwardKernel<<<static_cast<unsigned>((n + kRouterWarps - 1) / kRouterWarps),
                               kRouterWarps * 32, 0, Raw(stream)>>>(
      dlogits.data<float>(), dweight.data<float>(), dscores.defined() ? dscores.data<float>() : nullptr,
      scores.data<float>(), topk_index.data<int64_t>(), static_cast<int>(n), static_cast<int>(e),
      static_cast<int>(k), d.norm_topk_prob, static_cast<float>(d.routed_scaling_factor));
  FATHOM_CUDA_CHECK_LAUNCH();
}

void SequenceBalanceLoss(const Tensor& loss, const Tensor& balance, const Tensor& seq_counts,
                         const Tensor& scores, const Tensor& topk_index, int64_t batch, int64_t seq,
                         bool accumulate, Stream stream) {
  const char* op = "sequence_balance_loss_cuda";
  FATHOM_CHECK(batch >= 1 && seq >= 1 && scores.ndim() == 2 && topk_index.ndim() == 2, "[", op, "] batch ",
               batch, " seq ", seq, " scores ", scores.shape_str(), " topk_index ", topk_index.shape_str());
  const int64_t e = scores.dim(1), k = topk_index.dim(1);
  CheckRows(op, batch * seq * k);
  CheckDevice(op, "scores", scores, DType::kF32, {batch * seq, e});
  CheckDevice(op, "topk_index", topk_index, DType::kI64, {batch * seq, k});
  CheckDevice(op, "seq_counts", seq_counts, DType::kI32, {batch, e});
  CheckDevice(op, "balance", balance, DType::kF32, {batch});
  CheckDevice(op, "loss", loss, DType::kF32, {1});
  BalanceForwardKernel<<<static_cast<unsigned>(batch), kBalanceThreads, static_cast<size_t>(e) * sizeof(int),
                         Raw(stream)>>>(balance.data<float>(), seq_counts.data<int32_t>(),
                                        scores.data<float>(), topk_index.data<int64_t>(),
                                        static_cast<int>(seq), static_cast<int>(e), static_cast<int>(k));
  FATHOM_CUDA_CHECK_LAUNCH();
  BalanceMeanKernel<<<1, 1, 0, Raw(stream)>>>(loss.data<float>(), balance.data<float>(),
                                              static_cast<int>(batch), accumulate);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void SequenceBalanceLossBackward(const Tensor& dscores, const Tensor& scores, const Tensor& topk_index,
                                 const Tensor& seq_counts, int64_t batch, int64_t seq, double weight,
                                 Stream stream) {
  const char* op = "sequence_balance_loss_backward_cuda";
  FATHOM_CHECK(batch >= 1 && seq >= 1 && scores.ndim() == 2 && topk_index.ndim() == 2, "[", op, "] batch ",
               batch, " seq ", seq, " scores ", scores.shape_str(), " topk_index ", topk_index.shape_str());
  const int64_t e = scores.dim(1), k = topk_index.dim(1), n = batch * seq;
  CheckRows(op, n * k);
  CheckDevice(op, "scores", scores, DType::kF32, {n, e});
  CheckDevice(op, "dscores", dscores, DType::kF32, {n, e});
  CheckDevice(op, "topk_index", topk_index, DType::kI64, {n, k});
  CheckDevice(op, "seq_counts", seq_counts, DType::kI32, {batch, e});
  // g_i = weight * f_i / (B T) with f_i = count_i * E / (K T).
  const double coef = weight * static_cast<double>(e) / (static_cast<double>(k) * static_cast<double>(seq)) /
                      static_cast<double>(n);
  BalanceBackwardKernel<<<static_cast<unsigned>((n + kBalanceWarps - 1) / kBalanceWarps), kBalanceThreads, 0,
                          Raw(stream)>>>(dscores.data<float>(), scores.data<float>(),
                                         seq_counts.data<int32_t>(), static_cast<int>(n),
                                         static_cast<int>(seq), static_cast<int>(e), coef);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void AccumulateExpertLoad(const Tensor& load, const Tensor& counts, Stream stream) {
  const char* op = "accumulate_expert_load_cuda";
  FATHOM_CHECK(counts.ndim() == 1, "[", op, "] counts ", counts.shape_str());
  const int64_t e = counts.dim(0);
  CheckDevice(op, "counts", counts, DType::kI64, {e});
  CheckDevice(op, "load", load, DType::kI64, {e});
  if (e == 0) return;
  AccumulateLoadKernel<<<static_cast<unsigned>((e + 255) / 256), 256, 0, Raw(stream)>>>(
      load.data<int64_t>(), counts.data<int64_t>(), static_cast<int>(e));
  FATHOM_CUDA_CHECK_LAUNCH();
}

int64_t MoeSortWorkspaceElements(int64_t rows, int64_t num_experts) {
  return num_experts * ((rows + kSlotsPerChunk - 1) / kSlotsPerChunk);
}

Tensor PinnedExpertCounts(int64_t num_experts) {
  FATHOM_CHECK(num_experts >= 1, "[pinned_expert_counts] ", num_experts, " experts");
  void* p = nullptr;
  FATHOM_CUDA_CHECK(cudaMallocHost(&p, static_cast<size_t>(num_experts) * sizeof(int64_t)));
  std::shared_ptr<void> owner(p, [](void* q) { cudaFreeHost(q); });  // no check: may run while unwinding
  return Tensor::Wrap(p, {num_experts}, DType::kI64, Device::kCPU, std::move(owner));
}

void MoeSortByExpert(const Tensor& row_slot, const Tensor& slot_row, const Tensor& counts,
                     const Tensor& offsets, const Tensor& counts_host, const Tensor& topk_index,
                     const Tensor& workspace, Stream stream) {
  const char* op = "moe_sort_by_expert_cuda";
  FATHOM_CHECK(topk_index.ndim() == 2 && counts.ndim() == 1 && counts.dim(0) >= 1, "[", op, "] topk_index ",
               topk_index.shape_str(), " counts ", counts.shape_str());
  const int64_t r = topk_index.numel(), e = counts.dim(0);
  CheckRows(op, r);
  CheckDevice(op, "topk_index", topk_index, DType::kI64, topk_index.shape());
  CheckDevice(op, "row_slot", row_slot, DType::kI64, {r});
  CheckDevice(op, "slot_row", slot_row, DType::kI64, {r});
  CheckDevice(op, "counts", counts, DType::kI64, {e});
  CheckDevice(op, "offsets", offsets, DType::kI64, {e + 1});
  const int64_t need = MoeSortWorkspaceElements(r, e);
  FATHOM_CHECK(workspace.defined() && workspace.device() == Device::kCUDA &&
                   workspace.dtype() == DType::kI32 && workspace.numel() >= need,
               "[", op, "] workspace ", workspace.shape_str(), " ", DTypeName(workspace.dtype()), ", needs ",
               need, " i32 on cuda");
  FATHOM_CHECK(need < std::numeric_limits<int32_t>::max(), "[", op, "] ", need, " scan entries");
  const int chunks = static_cast<int>((r + kSlotsPerChunk - 1) / kSlotsPerChunk);
  const size_t smem = kSortWarps * static_cast<size_t>(e) * sizeof(int);
  FATHOM_CHECK(smem <= 48 * 1024, "[", op, "] ", e, " experts need ", smem, " bytes of shared memory");
  cudaStream_t s = Raw(stream);
  int32_t* ws = workspace.data<int32_t>();
  const int64_t* idx = topk_index.data<int64_t>();
  const unsigned blocks = static_cast<unsigned>((chunks + kSortWarps - 1) / kSortWarps);
  if (chunks > 0) {
    SortCountKernel<<<blocks, kSortWarps * 32, smem, s>>>(ws, idx, static_cast<int>(r), static_cast<int>(e),
                                                          chunks);
    FATHOM_CUDA_CHECK_LAUNCH();
  }
  SortScanKernel<<<1, kScanThreads, 0, s>>>(counts.data<int64_t>(), offsets.data<int64_t>(), ws,
                                            static_cast<int>(e), chunks);
  FATHOM_CUDA_CHECK_LAUNCH();
  if (chunks > 0) {
    SortScatterKernel<<<blocks, kSortWarps * 32, smem, s>>>(row_slot.data<int64_t>(),
                                                            slot_row.data<int64_t>(), ws, idx,
                                                            static_cast<int>(r), static_cast<int>(e), chunks);
    FATHOM_CUDA_CHECK_LAUNCH();
  }
  if (counts_host.defined()) {
    FATHOM_CHECK(counts_host.device() == Device::kCPU && counts_host.dtype() == DType::kI64 &&
                     counts_host.shape() == Shape{e},
                 "[", op, "] counts_host ", counts_host.shape_str(), " ", DTypeName(counts_host.dtype()),
                 ", expected a PinnedExpertCounts(", e, ") tensor");
    cudaPointerAttributes attr{};
    FATHOM_CUDA_CHECK(cudaPointerGetAttributes(&attr, counts_host.raw()));
    FATHOM_CHECK(
        attr.type == cudaMemoryTypeHost, "[", op,
        "] counts_host is not page-locked (use PinnedExpertCounts): the copy would not be asynchronous");
    FATHOM_CUDA_CHECK(
        cudaMemcpyAsync(counts_host.raw(), counts.raw(), counts.nbytes(), cudaMemcpyDeviceToHost, s));
  }
}

void MoePermuteRows(const Tensor& x_perm, const Tensor& x, const Tensor& row_slot, int64_t top_k,
                    Stream stream) {
  const char* op = "moe_permute_rows_cuda";
  FATHOM_CHECK(x.ndim() == 2 && top_k >= 1, "[", op, "] x ", x.shape_str(), " top_k ", top_k);
  CheckActivationDType(op, x.dtype());
  const int64_t n = x.dim(0), h = x.dim(1), r = n * top_k;
  CheckRows(op, r);
  CheckDevice(op, "x", x, x.dtype(), {n, h});
  CheckDevice(op, "x_perm", x_perm, x.dtype(), {r, h});
  CheckDevice(op, "row_slot", row_slot, DType::kI64, {r});
  if (r == 0 || h == 0) return;
  // The widest word that divides the row and both base addresses: 16-byte moves for usual hidden sizes.
  const int64_t row_bytes = h * static_cast<int64_t>(DTypeSize(x.dtype()));
  const uintptr_t align = reinterpret_cast<uintptr_t>(x.raw()) | reinterpret_cast<uintptr_t>(x_perm.raw()) |
                          static_cast<uintptr_t>(row_bytes);
  const int64_t* rs = row_slot.data<int64_t>();
  const int k = static_cast<int>(top_k);
  cudaStream_t s = Raw(stream);
  if (align % 16 == 0) {
    LaunchPermuteRows<uint4>(x_perm.raw(), x.raw(), rs, r, row_bytes, k, s);
  } else if (align % 8 == 0) {
    LaunchPermuteRows<uint2>(x_perm.raw(), x.raw(), rs, r, row_bytes, k, s);
  } else if (align % 4 == 0) {
    LaunchPermuteRows<uint32_t>(x_perm.raw(), x.raw(), rs, r, row_bytes, k, s);
  } else {
    LaunchPermuteRows<uint16_t>(x_perm.raw(), x.raw(), rs, r, row_bytes, k, s);
  }
}

void MoePermute(const Tensor& x_perm, const Tensor& row_slot, const Tensor& slot_row, const Tensor& counts,
                const Tensor& offsets, const Tensor& counts_host, const Tensor& x, const Tensor& topk_index,
                const Tensor& workspace, Stream stream) {
  FATHOM_CHECK(topk_index.ndim() == 2 && x.ndim() == 2 && topk_index.dim(0) == x.dim(0),
               "[moe_permute_cuda] x ", x.shape_str(), " topk_index ", topk_index.shape_str());
  MoeSortByExpert(row_slot, slot_row, counts, offsets, counts_host, topk_index, workspace, stream);
  MoePermuteRows(x_perm, x, row_slot, topk_index.dim(1), stream);
}

void MoePermuteBackward(const Tensor& dx, const Tensor& dx_perm, const Tensor& slot_row, bool accumulate,
                        Stream stream) {
  const char* op = "moe_permute_backward_cuda";
  FATHOM_CHECK(dx.ndim() == 2 && dx_perm.ndim() == 2, "[", op, "] dx ", dx.shape_str(), " dx_perm ",
               dx_perm.shape_str());
  const int64_t n = dx.dim(0), h = dx.dim(1), r = dx_perm.dim(0);
  FATHOM_CHECK(n > 0 ? r % n == 0 : r == 0, "[", op, "] ", r, " rows for ", n, " tokens");
  CheckRows(op, r);
  const int64_t k = n > 0 ? r / n : 0;
  CheckDevice(op, "dx", dx, dx.dtype(), {n, h});
  CheckDevice(op, "dx_perm", dx_perm, dx.dtype(), {r, h});
  CheckDevice(op, "slot_row", slot_row, DType::kI64, {r});
  DispatchActivation(dx.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (n * h == 0) return;
    constexpr int kThreads = 256;
    PermuteBackwardKernel<T><<<GridFor(n * h, kThreads), kThreads, 0, Raw(stream)>>>(
        static_cast<T*>(dx.raw()), static_cast<const T*>(dx_perm.raw()), slot_row.data<int64_t>(), n, h,
        static_cast<int>(k), accumulate);
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

void MoeCombine(const Tensor& out, const Tensor& y_perm, const Tensor& slot_row, const Tensor& topk_weight,
                Stream stream) {
  const char* op = "moe_combine_cuda";
  FATHOM_CHECK(out.ndim() == 2 && topk_weight.ndim() == 2, "[", op, "] out ", out.shape_str(),
               " topk_weight ", topk_weight.shape_str());
  const int64_t n = out.dim(0), h = out.dim(1), k = topk_weight.dim(1), r = n * k;
  CheckRows(op, r);
  CheckDevice(op, "out", out, out.dtype(), {n, h});
  CheckDevice(op, "y_perm", y_perm, out.dtype(), {r, h});
  CheckDevice(op, "slot_row", slot_row, DType::kI64, {r});
  CheckDevice(op, "topk_weight", topk_weight, DType::kF32, {n, k});
  DispatchActivation(out.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (n * h == 0) return;
    constexpr int kThreads = 256;
    CombineKernel<T><<<GridFor(n * h, kThreads), kThreads, 0, Raw(stream)>>>(
        static_cast<T*>(out.raw()), static_cast<const T*>(y_perm.raw()), slot_row.data<int64_t>(),
        topk_weight.data<float>(), n, h, static_cast<int>(k));
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

void MoeCombineBackward(const Tensor& dy_perm, const Tensor& dweight, const Tensor& dout,
                        const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight,
                        Stream stream) {
  const char* op = "moe_combine_backward_cuda";
  FATHOM_CHECK(dout.ndim() == 2 && topk_weight.ndim() == 2, "[", op, "] dout ", dout.shape_str(),
               " topk_weight ", topk_weight.shape_str());
  const int64_t n = dout.dim(0), h = dout.dim(1), k = topk_weight.dim(1), r = n * k;
  CheckRows(op, r);
  CheckDevice(op, "dout", dout, dout.dtype(), {n, h});
  CheckDevice(op, "y_perm", y_perm, dout.dtype(), {r, h});
  CheckDevice(op, "dy_perm", dy_perm, dout.dtype(), {r, h});
  CheckDevice(op, "row_slot", row_slot, DType::kI64, {r});
  CheckDevice(op, "topk_weight", topk_weight, DType::kF32, {n, k});
  CheckDevice(op, "dweight", dweight, DType::kF32, {n, k});
  DispatchActivation(dout.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (r == 0) return;
    CombineBackwardKernel<T><<<static_cast<unsigned>(r), kCombineBackwardThreads, 0, Raw(stream)>>>(
        static_cast<T*>(dy_perm.raw()), dweight.data<float>(), static_cast<const T*>(dout.raw()),
        static_cast<const T*>(y_perm.raw()), row_slot.data<int64_t>(), topk_weight.data<float>(), h,
        static_cast<int>(k));
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace fathom::cuda
