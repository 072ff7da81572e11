#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/block/block_scan.cuh>
#include <initializer_list>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>

#include "framework/cuda/check.h"
#include "framework/cuda/fp8_numeric.cuh"
#include "framework/cuda/numeric.cuh"
#include "framework/fp8_operands.h"
#include "framework/kernels/cuda/moe.h"
#include "framework/kernels/cuda/moe_common.cuh"

// The counting sort of token copies by expert, the row permutation and the weighted combine
// (framework/kernels/cuda/moe.h); the router and the balance loss are in moe_routing.cu.
namespace fathom::cuda {
namespace {

using moe_internal::CheckActivationDType;
using moe_internal::CheckDevice;
using moe_internal::CheckRows;
using moe_internal::DispatchActivation;
using moe_internal::kFullMask;
using moe_internal::Raw;
using moe_internal::WarpSum;

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

// The row kernels give one warp to one row (kRowWarps rows per block): a warp reads its row's k indices and
// weights once and moves the row in 16-byte packs when the row and the base pointers allow it (every usual
// hidden size), else element by element. The sums run over j = 0..k-1 in f32, as the CPU twin orders them.
constexpr int kRowWarps = 4;

inline unsigned RowBlocks(int64_t rows) { return static_cast<unsigned>((rows + kRowWarps - 1) / kRowWarps); }

// x_perm row r = x row (row_slot[r] / k), moved as `row_words` words of type W per row.
template <class W>
__global__ void PermuteRowsKernel(W* __restrict__ x_perm, const W* __restrict__ x,
                                  const int64_t* __restrict__ row_slot, int64_t rows, int64_t row_words,
                                  int k) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (r >= rows) return;
  W* dst = x_perm + r * row_words;
  const int64_t slot = row_slot[r];
  if (slot < 0) {  // a pad row of MoePadLayout's layout
    for (int64_t w = threadIdx.x % 32; w < row_words; w += 32) dst[w] = W{};
    return;
  }
  const W* src = x + (slot / k) * row_words;
  for (int64_t w = threadIdx.x % 32; w < row_words; w += 32) dst[w] = src[w];
}

template <class W>
void LaunchPermuteRows(void* x_perm, const void* x, const int64_t* row_slot, int64_t rows, int64_t row_bytes,
                       int k, cudaStream_t stream) {
  const int64_t row_words = row_bytes / static_cast<int64_t>(sizeof(W));
  PermuteRowsKernel<W><<<RowBlocks(rows), kRowWarps * 32, 0, stream>>>(
      static_cast<W*>(x_perm), static_cast<const W*>(x), row_slot, rows, row_words, k);
  FATHOM_CUDA_CHECK_LAUNCH();
}

// P elements per access: numeric.cuh's LoadVec / StoreVec (a 16-byte pack, or P = 1 for rows that do not
// allow packs), with the activations' conversions (RNE to bf16).
// dx (N, H) row t = [dx row t] + sum_k dx_perm row slot_row[t*K+k], f32 accumulation in k order.
template <class T, int P>
__global__ void PermuteBackwardKernel(T* dx, const T* __restrict__ dx_perm,
                                      const int64_t* __restrict__ slot_row, int64_t n, int64_t h, int k,
                                      bool accumulate) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (t >= n) return;
  const int64_t* rows = slot_row + t * k;
  for (int64_t c = (threadIdx.x % 32) * P; c < h; c += 32 * P) {
    float acc[P], in[P];
    if (accumulate) {
      LoadVec<P>(dx + t * h + c, acc);
    } else {
#pragma unroll
      for (int i = 0; i < P; ++i) acc[i] = 0.0f;
    }
    for (int j = 0; j < k; ++j) {
      LoadVec<P>(dx_perm + rows[j] * h + c, in);
#pragma unroll
      for (int i = 0; i < P; ++i) acc[i] += in[i];
    }
    StoreVec<P>(dx + t * h + c, acc);
  }
}

// out (N, H) row t = sum_k w[t, k] * y_perm row slot_row[t*K+k], f32 accumulation in k order.
template <class T, int P>
__global__ void CombineKernel(T* __restrict__ out, const T* __restrict__ y_perm,
                              const int64_t* __restrict__ slot_row, const float* __restrict__ topk_weight,
                              int64_t n, int64_t h, int k) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (t >= n) return;
  const int64_t* rows = slot_row + t * k;
  const float* w = topk_weight + t * k;
  for (int64_t c = (threadIdx.x % 32) * P; c < h; c += 32 * P) {
    float acc[P], in[P];
#pragma unroll
    for (int i = 0; i < P; ++i) acc[i] = 0.0f;
    for (int j = 0; j < k; ++j) {
      LoadVec<P>(y_perm + rows[j] * h + c, in);
      const float wj = w[j];
#pragma unroll
      for (int i = 0; i < P; ++i) acc[i] += wj * in[i];
    }
    StoreVec<P>(out + t * h + c, acc);
  }
}

// One warp per permuted row: the dy_perm row and the row's dweight dot product (each lane's partial sums in
// column order, then a lane-xor reduction: a fixed order, so deterministic).
template <class T, int P>
__global__ void CombineBackwardKernel(T* __restrict__ dy_perm, float* __restrict__ dweight,
                                      const T* __restrict__ dout, const T* __restrict__ y_perm,
                                      const int64_t* __restrict__ row_slot,
                                      const float* __restrict__ topk_weight, int64_t rows, int64_t h, int k) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (r >= rows) return;
  const int64_t slot = row_slot[r];
  T* dy = dy_perm + r * h;
  if (slot < 0) {  // a pad row of MoePadLayout's layout: no gradient
    float zero[P];
#pragma unroll
    for (int i = 0; i < P; ++i) zero[i] = 0.0f;
    for (int64_t c = (threadIdx.x % 32) * P; c < h; c += 32 * P) StoreVec<P>(dy + c, zero);
    return;
  }
  const T* g = dout + (slot / k) * h;
  const T* y = y_perm + r * h;
  const float w = topk_weight[slot];
  float dot = 0.0f;
  for (int64_t c = (threadIdx.x % 32) * P; c < h; c += 32 * P) {
    float gv[P], yv[P], o[P];
    LoadVec<P>(g + c, gv);
    LoadVec<P>(y + c, yv);
#pragma unroll
    for (int i = 0; i < P; ++i) {
      o[i] = w * gv[i];
      dot = __fmaf_rn(gv[i], yv[i], dot);  // one rounding, spelled out: both kernels the same bits
    }
    StoreVec<P>(dy + c, o);
  }
  dot = WarpSum(dot);
  if (threadIdx.x % 32 == 0) dweight[slot] = dot;
}

// CombineBackwardKernel<__nv_bfloat16, 8> and QuantizeRows of its output in one pass: each dy_perm value is
// rounded to bf16 exactly as CombineBackwardKernel stores it, and each 128-column tile (half a warp's pass:
// lane l holds columns 8 l .. 8 l + 7 of the pass's 256) is quantised from those values exactly as
// QuantizeRowsSegmentKernel does (amax floored, 448 / amax and amax / 448 rounded once, saturating codes), so
// the codes and scales are the same bits; a pad row (-1) is a zero row's (zero codes, the floor's scale).
// dweight gets CombineBackwardKernel's sum in the same order. REQUIRES h % 128 == 0 and 16-byte rows.
__global__ void CombineBackwardFp8Kernel(uint8_t* __restrict__ dyq, float* __restrict__ dweight,
                                         const __nv_bfloat16* __restrict__ dout,
                                         const __nv_bfloat16* __restrict__ y_perm,
                                         const int64_t* __restrict__ row_slot,
                                         const float* __restrict__ topk_weight, int64_t rows, int64_t h,
                                         int k, int64_t row_bytes, int scale_stride) {
  constexpr int P = 8;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (r >= rows) return;
  const int64_t slot = row_slot[r];
  const bool pad = slot < 0;  // a pad row of MoePadLayout's layout: a zero gradient row
  uint8_t* codes = dyq + r * row_bytes;
  float* scales = reinterpret_cast<float*>(codes + h);  // h % 128 == 0: no padding codes
  const __nv_bfloat16* g = pad ? dout : dout + (slot / k) * h;
  const __nv_bfloat16* y = y_perm + r * h;
  const float w = pad ? 0.0f : topk_weight[slot];
  float dot = 0.0f;
  for (int64_t c0 = 0; c0 < h; c0 += 32 * P) {  // warp-uniform passes
    const int64_t c = c0 + lane * P;
    const bool active = c < h;  // h % 256 == 128: the last pass's upper half-warp has no tile
    float v[P];
    if (active && !pad) {
      float gv[P], yv[P];
      LoadVec<P>(g + c, gv);
      LoadVec<P>(y + c, yv);
#pragma unroll
      for (int i = 0; i < P; ++i) {
        v[i] = ToF32(FromF32<__nv_bfloat16>(w * gv[i]));  // dy_perm's stored value
        dot = __fmaf_rn(gv[i], yv[i], dot);  // one rounding, spelled out: both kernels the same bits
      }
    } else {
#pragma unroll
      for (int i = 0; i < P; ++i) v[i] = 0.0f;
    }
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < P; ++i) amax = fmaxf(amax, fabsf(v[i]));
#pragma unroll
    for (int off = 8; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, off));
    if (!active) continue;  // after the shuffles, which every lane joins
    const auto [inv, scale] = fp8_numeric::ScalingFromAmax(amax);
    uint32_t words[2] = {0, 0};
#pragma unroll
    for (int i = 0; i < P; ++i)
      words[i / 4] |= static_cast<uint32_t>(fp8_numeric::FloatToE4M3Saturate(__fmul_rn(v[i], inv)))
                      << (8 * (i % 4));
    *reinterpret_cast<uint2*>(codes + c) = make_uint2(words[0], words[1]);
    if (lane % 16 == 0) scales[c / 128] = scale;
  }
  const int tiles = static_cast<int>(h / 128);
  if (lane < scale_stride - tiles) scales[tiles + lane] = 0.0f;  // the scale padding
  if (pad) return;
  dot = WarpSum(dot);
  if (lane == 0) dweight[slot] = dot;
}

// Calls f(std::integral_constant<int, P>) with P = the elements of a 16-byte pack when h and every pointer
// allow packs, else P = 1.
template <class T, class F>
void WithPack(int64_t h, std::initializer_list<const void*> pointers, F&& f) {
  constexpr int kPack = 16 / static_cast<int>(sizeof(T));
  if (h % kPack == 0 && AllAligned(pointers, 16)) {
    f(std::integral_constant<int, kPack>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// One block per 1024 padded rows: every block derives the experts' packed offsets and block offsets from the
// counts (thread 0, serially: E <= 1024 and small), then maps its rows. A total that disagrees with the
// host's row count traps.
constexpr int kPadThreads = 1024;

__global__ void PadLayoutKernel(int64_t* __restrict__ padded, const int64_t* __restrict__ row_slot,
                                const int64_t* __restrict__ counts, int e, int64_t tile, int64_t rows,
                                int64_t total, bool budget) {
  __shared__ int64_t from[kPadThreads + 1], at[kPadThreads + 1];
  if (threadIdx.x == 0) {
    from[0] = at[0] = 0;
    for (int i = 0; i < e; ++i) {
      from[i + 1] = from[i] + counts[i];
      at[i + 1] = at[i] + (counts[i] + tile - 1) / tile * tile;
    }
    if ((budget ? at[e] > total : at[e] != total) || from[e] != rows) __trap();
  }
  __syncthreads();
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kPadThreads + threadIdx.x;
  if (p >= total) return;
  int lo = 0, hi = e - 1;  // the expert whose block holds row p: at[i] <= p < at[i + 1]
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (at[mid] <= p) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int64_t j = p - at[lo];
  padded[p] = j < counts[lo] ? row_slot[from[lo] + j] : -1;
}

}  // namespace

void MoePadLayout(const Tensor& padded, const Tensor& row_slot, const Tensor& counts, int64_t tile,
                  Stream stream, bool budget) {
  const char* op = "moe_pad_layout_cuda";
  FATHOM_CHECK(padded.ndim() == 1 && row_slot.ndim() == 1 && counts.ndim() == 1 && tile >= 1, "[", op,
               "] padded ", padded.shape_str(), " row_slot ", row_slot.shape_str(), " counts ",
               counts.shape_str(), " tile ", tile);
  const int64_t e = counts.dim(0), total = padded.dim(0);
  FATHOM_CHECK(e >= 1 && e <= kPadThreads, "[", op, "] ", e, " experts (at most ", kPadThreads, ")");
  CheckDevice(op, "padded", padded, DType::kI64, {total});
  CheckDevice(op, "row_slot", row_slot, DType::kI64, {row_slot.dim(0)});
  CheckDevice(op, "counts", counts, DType::kI64, {e});
  CheckRows(op, total);
  if (total == 0) return;
  PadLayoutKernel<<<static_cast<unsigned>((total + kPadThreads - 1) / kPadThreads), kPadThreads, 0,
                    Raw(stream)>>>(padded.data<int64_t>(), row_slot.data<int64_t>(), counts.data<int64_t>(),
                                   static_cast<int>(e), tile, row_slot.dim(0), total, budget);
  FATHOM_CUDA_CHECK_LAUNCH();
}

// ---- launchers
// ---------------------------------------------------------------------------------------------

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
  if (x.dtype() != DType::kF8E4M3) CheckActivationDType(op, x.dtype());  // FP8 rows move as bytes
  FATHOM_CHECK(row_slot.ndim() == 1, "[", op, "] row_slot ", row_slot.shape_str());
  const int64_t n = x.dim(0), h = x.dim(1), r = row_slot.dim(0);  // r >= N * top_k in padded layouts
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
                        Stream stream, int64_t top_k) {
  const char* op = "moe_permute_backward_cuda";
  FATHOM_CHECK(dx.ndim() == 2 && dx_perm.ndim() == 2, "[", op, "] dx ", dx.shape_str(), " dx_perm ",
               dx_perm.shape_str());
  const int64_t n = dx.dim(0), h = dx.dim(1), r = dx_perm.dim(0);
  FATHOM_CHECK(top_k > 0 || (n > 0 ? r % n == 0 : r == 0), "[", op, "] ", r, " rows for ", n, " tokens");
  CheckRows(op, r);
  const int64_t k = top_k > 0 ? top_k : n > 0 ? r / n : 0;
  FATHOM_CHECK(n * k <= r, "[", op, "] ", r, " rows for ", n, " tokens of ", k, " copies");
  CheckDevice(op, "dx", dx, dx.dtype(), {n, h});
  CheckDevice(op, "dx_perm", dx_perm, dx.dtype(), {r, h});
  CheckDevice(op, "slot_row", slot_row, DType::kI64, {slot_row.numel()});
  FATHOM_CHECK(slot_row.numel() >= n * k, "[", op, "] slot_row ", slot_row.shape_str(), " for ", n * k,
               " slots");
  DispatchActivation(dx.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (n * h == 0) return;
    WithPack<T>(h, {dx.raw(), dx_perm.raw()}, [&](auto pack) {
      PermuteBackwardKernel<T, decltype(pack)::value><<<RowBlocks(n), kRowWarps * 32, 0, Raw(stream)>>>(
          static_cast<T*>(dx.raw()), static_cast<const T*>(dx_perm.raw()), slot_row.data<int64_t>(), n, h,
          static_cast<int>(k), accumulate);
      FATHOM_CUDA_CHECK_LAUNCH();
    });
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
  FATHOM_CHECK(y_perm.ndim() == 2 && y_perm.dim(0) >= r && slot_row.ndim() == 1 && slot_row.dim(0) >= r, "[",
               op, "] y_perm ", y_perm.shape_str(), " slot_row ", slot_row.shape_str(), " for ", r, " slots");
  CheckDevice(op, "y_perm", y_perm, out.dtype(), {y_perm.dim(0), h});
  CheckDevice(op, "slot_row", slot_row, DType::kI64, {slot_row.dim(0)});
  CheckDevice(op, "topk_weight", topk_weight, DType::kF32, {n, k});
  DispatchActivation(out.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (n * h == 0) return;
    WithPack<T>(h, {out.raw(), y_perm.raw()}, [&](auto pack) {
      CombineKernel<T, decltype(pack)::value><<<RowBlocks(n), kRowWarps * 32, 0, Raw(stream)>>>(
          static_cast<T*>(out.raw()), static_cast<const T*>(y_perm.raw()), slot_row.data<int64_t>(),
          topk_weight.data<float>(), n, h, static_cast<int>(k));
      FATHOM_CUDA_CHECK_LAUNCH();
    });
  });
}

void MoeCombineBackward(const Tensor& dy_perm, const Tensor& dweight, const Tensor& dout,
                        const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight,
                        Stream stream) {
  const char* op = "moe_combine_backward_cuda";
  FATHOM_CHECK(dout.ndim() == 2 && topk_weight.ndim() == 2, "[", op, "] dout ", dout.shape_str(),
               " topk_weight ", topk_weight.shape_str());
  const int64_t n = dout.dim(0), h = dout.dim(1), k = topk_weight.dim(1);
  FATHOM_CHECK(row_slot.ndim() == 1 && row_slot.dim(0) >= n * k, "[", op, "] row_slot ", row_slot.shape_str(),
               " for ", n * k, " slots");
  const int64_t r = row_slot.dim(0);  // > N * K in padded layouts (their -1 rows get zeros)
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
    WithPack<T>(h, {dy_perm.raw(), dout.raw(), y_perm.raw()}, [&](auto pack) {
      CombineBackwardKernel<T, decltype(pack)::value><<<RowBlocks(r), kRowWarps * 32, 0, Raw(stream)>>>(
          static_cast<T*>(dy_perm.raw()), dweight.data<float>(), static_cast<const T*>(dout.raw()),
          static_cast<const T*>(y_perm.raw()), row_slot.data<int64_t>(), topk_weight.data<float>(), r, h,
          static_cast<int>(k));
      FATHOM_CUDA_CHECK_LAUNCH();
    });
  });
}

bool MoeCombineBackwardFp8Supported(const Tensor& dout, const Tensor& y_perm) {
  const int64_t h = dout.ndim() == 2 ? dout.dim(1) : 0;
  return dout.dtype() == DType::kBF16 && h > 0 && h % 128 == 0 && AllAligned({dout.raw(), y_perm.raw()}, 16);
}

void MoeCombineBackwardFp8(const Tensor& dyq, const Tensor& dweight, const Tensor& dout, const Tensor& y_perm,
                           const Tensor& row_slot, const Tensor& topk_weight, Stream stream) {
  const char* op = "moe_combine_backward_fp8_cuda";
  FATHOM_CHECK(dout.ndim() == 2 && topk_weight.ndim() == 2, "[", op, "] dout ", dout.shape_str(),
               " topk_weight ", topk_weight.shape_str());
  FATHOM_CHECK(MoeCombineBackwardFp8Supported(dout, y_perm), "[", op,
               "] needs bf16 rows of a multiple of 128 values, 16-byte aligned; got dout ", dout.shape_str(), " ",
               DTypeName(dout.dtype()));
  const int64_t n = dout.dim(0), h = dout.dim(1), k = topk_weight.dim(1);
  FATHOM_CHECK(row_slot.ndim() == 1 && row_slot.dim(0) >= n * k, "[", op, "] row_slot ", row_slot.shape_str(),
               " for ", n * k, " slots");
  const int64_t r = row_slot.dim(0);
  const int64_t tiles = Fp8Blocks(h), scale_stride = Fp8ScaleStride(tiles), row_bytes = Fp8RowBytes(h);
  CheckRows(op, r);
  CheckDevice(op, "dout", dout, DType::kBF16, {n, h});
  CheckDevice(op, "y_perm", y_perm, DType::kBF16, {r, h});
  CheckDevice(op, "dyq", dyq, DType::kF8E4M3, {r, row_bytes});
  CheckDevice(op, "row_slot", row_slot, DType::kI64, {r});
  CheckDevice(op, "topk_weight", topk_weight, DType::kF32, {n, k});
  CheckDevice(op, "dweight", dweight, DType::kF32, {n, k});
  FATHOM_CHECK(AllAligned({dyq.raw()}, 16), "[", op, "] dyq must be 16-byte aligned (the codes are stored 8 ",
               "bytes at a time), got ", dyq.raw());
  FATHOM_CHECK(scale_stride - tiles <= 32, "[", op, "] scale padding wider than a warp");
  if (r == 0) return;
  CombineBackwardFp8Kernel<<<RowBlocks(r), kRowWarps * 32, 0, Raw(stream)>>>(
      static_cast<uint8_t*>(dyq.raw()), dweight.data<float>(), static_cast<const __nv_bfloat16*>(dout.raw()),
      static_cast<const __nv_bfloat16*>(y_perm.raw()), row_slot.data<int64_t>(), topk_weight.data<float>(), r,
      h, static_cast<int>(k), row_bytes, static_cast<int>(scale_stride));
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
