// The machinery of fathom's own grouped GEMM kernels (grouped_gemm.h), shared by the bf16 forms
// (grouped_gemm.cu) and the FP8 forms (grouped_gemm_fp8.cu): one persistent TMA + WGMMA + mbarrier kernel
// (TiledKernel) over a schedule of output tiles (RowTiles, KGroups, DeviceKGroups) and a product (each .cu
// file defines its own: bf16 or e4m3), the stage ring, the stores, and the host-side TMA maps and launch.
// Written for sm_90a (the device primitives are sm90_primitives.cuh's); other targets compile a kernel body
// that traps, and the launchers refuse to run anywhere but an sm_90 device. Include from .cu files only.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_GROUPED_GEMM_TILED_CUH_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_GROUPED_GEMM_TILED_CUH_

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "framework/check.h"
#include "framework/cuda/check.h"
#include "framework/kernels/cuda/grouped_gemm.h"
#include "framework/kernels/cuda/kernel_common.cuh"
#include "framework/kernels/cuda/sm90_primitives.cuh"

namespace fathom::cuda::tiled {

constexpr int kThreads = 384;  // warp group 0: producer; 1 and 2: consumers (64 rows each)
constexpr int kBM = static_cast<int>(kGroupedTileRows);
constexpr int kRowBytes = 128;  // a stage row: one 128-byte swizzle row (64 bf16 or 128 e4m3 values)
constexpr int kBK = 64;         // bf16 values per k-block
constexpr int kABytes = kBM * kRowBytes;

// Shared memory per column-tile width: as many stages of (x tile, w tile) as fit in ~200 KB, then the
// full/empty barriers, plus 1 KB to align the stages to the 1024-byte swizzle atom.
template <int BN>
struct Tiling {
  static constexpr int kBBytes = BN * kRowBytes;
  static constexpr int kStageBytes = kABytes + kBBytes;  // a multiple of 1024 for BN a multiple of 8
  static constexpr int kStages = (200 * 1024) / kStageBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes + 2 * kStages * 8 + 1024;
  static_assert(kStageBytes % 1024 == 0 && kStages >= 3, "stages must keep the 1024-byte alignment");
};

// The TMA-store epilogue's staging (TiledLaunch::tma_store): per consumer warp (8), two 2 KB buffers of 16
// rows x 128 bytes (64 bf16 or 32 f32 columns), 128-byte swizzled as the store's map reads them. It fits
// beside every Tiling's stages (at most 192 KB) within the 227 KB a CTA may have.
constexpr int kStoreBufferBytes = 16 * kRowBytes;
constexpr int kEpilogueBytes = 8 * 2 * kStoreBufferBytes;
template <int BN, bool kTmaStore>
constexpr int SmemBytes() {
  return Tiling<BN>::kSmemBytes + (kTmaStore ? kEpilogueBytes : 0);
}

using namespace ::fathom::cuda::sm90;  // the device primitives (sm90_primitives.cuh)

// The stage ring as the consumers see it (Acquire: wait for k-block `it`'s bytes; Release: hand its stage
// back). Its geometry is compile-time (Tiling<BN>), so the stage of k-block `it` is a cheap modulo. In a
// cluster of `ctas` CTAs (2: the row tile's A is multicast, see TiledKernel) a stage is refilled only when
// the consumers of every CTA of the cluster are done with it, so Release arrives on each CTA's barrier.
template <int BN>
struct Ring {
  static constexpr int kStages = Tiling<BN>::kStages, kStageBytes = Tiling<BN>::kStageBytes;
  uint8_t* smem;
  uint64_t* full;
  uint64_t* empty;
  int ctas;
#ifdef FATHOM_SM90A
  __device__ const uint8_t* A(int it, int consumer) const {
    return smem + (it % kStages) * kStageBytes + consumer * 64 * kRowBytes;
  }
  __device__ const uint8_t* B(int it) const { return smem + (it % kStages) * kStageBytes + kABytes; }
  __device__ void Acquire(int it) const { BarrierWait(&full[it % kStages], (it / kStages) & 1); }
  __device__ void Release(int it, int lane) const {
    __syncwarp();
    if (ctas == 1) {
      if (lane == 0) BarrierArrive(&empty[it % kStages]);
    } else if (lane < ctas) {  // lane r arrives on CTA r's barrier: the arrivals of a pair go out together
      BarrierArriveCluster(&empty[it % kStages], static_cast<uint32_t>(lane));
    }
  }
#endif
};

// One output tile: A's rows [a_row, a_row + 128) and B's rows [b_row, b_row + BN) over the k-blocks
// [k0, k0 + k_blocks), stored to out's rows [out_row, out_row + rows) (rows <= 128) and columns from n0.
// `group` is the expert (or weight-gradient group) whose scales the FP8 products read.
// An MN-major operand (the bf16 NN and TN forms) is loaded from its matrix's rows [k_base + 64 kb, +64)
// (b_k0 for B; 0 for A) and columns [row, row + 128 or BN), where `row` (a_row, b_row) is then the MN offset.
// The tile's place in out as the TMA store sees it, out viewed as (Z, Y, n): rows [out_y, out_y + rows) of
// matrix out_z (the weight-gradient forms: out[g]'s rows; the row-tile forms: Z = 1, Y = all rows).
struct Job {
  int a_row, b_row, k0, k_blocks;
  int64_t out_row;
  int rows, n0, group;
  int b_k0 = 0;
  int out_y = 0, out_z = 0;
};

template <class OutT>
struct OutPair;
template <>
struct OutPair<__nv_bfloat16> {
  __device__ static void Store(__nv_bfloat16* p, float a, float b, bool accumulate) {
    if (accumulate) {
      const __nv_bfloat162 old = *reinterpret_cast<const __nv_bfloat162*>(p);
      a += __bfloat162float(old.x);
      b += __bfloat162float(old.y);
    }
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
  }
};
template <>
struct OutPair<float> {
  __device__ static void Store(float* p, float a, float b, bool accumulate) {
    if (accumulate) {
      const float2 old = *reinterpret_cast<const float2*>(p);
      a += old.x;
      b += old.y;
    }
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
  }
};

// Where the kernel reads each row tile's expert (-1: unused): a device map (MoeTileExperts; the counts never
// reach the host), or, when the caller has the counts on the host, their tile prefix passed by value as a
// kernel parameter (no map to build or copy).
struct DeviceTileMap {
  const int32_t* map;
  __device__ int Expert(int tile) const { return map[tile]; }
};

inline constexpr int kMaxPrefixGroups = 256;

struct TilePrefix {
  int32_t groups;
  int32_t begin[kMaxPrefixGroups + 1];  // group g owns tiles [begin[g], begin[g + 1])
  __device__ int Expert(int tile) const {
    return tile < begin[groups] ? common::FindGroup(begin, groups, tile) : -1;
  }
};

// Which output tiles a launch computes: jobs (outer, column tile) over `outers` outer indices and the
// ColumnTiles(n, BN) column tiles of out's n columns, and each one's rows, columns and k-blocks (Decode;
// false: a job to skip, decided by `outer` alone, so both CTAs of a cluster, which share it, agree).
//   RowTiles: the forward form over the padded layout's row tiles: outer = row tile; its expert comes from
//     `tiles` (unused: skipped) and picks the weight's rows. With an MN-major weight (kBMn, the bf16 NN form:
//     w[e] is (reduction, n)), its rows [e * reduction, +reduction) are the reduction and the column tile its
//     columns.
//   KGroups: the weight-gradient form: outer = (group, row tile of out[g]); group g reduces over its k-blocks
//     [k.begin[g], k.begin[g + 1]) of the padded token axis (none: skipped).
//   DeviceKGroups: the same with the groups' tile ranges read from the device (bf16 TN: MoeTileExperts'
//     tile_begin) and both operands MN-major; a group without tokens stores zeros when overwriting.
template <class Tiles, int BN, bool kBMn = false>
struct RowTiles {
  Tiles tiles;
  int n, k_blocks;
  __device__ bool Decode(int tile, int ct, Job& j) const {
    j.n0 = ct * BN;
    j.group = tiles.Expert(tile);
    if (j.group < 0) return false;  // a tile past the layout
    j.a_row = tile * kBM;
    if constexpr (kBMn) {
      j.b_row = j.n0;
      j.b_k0 = j.group * k_blocks * kBK;
    } else {
      // Rows past expert e's N belong to e + 1 (or lie past the tensor: zero fill); their columns are
      // computed and not stored.
      j.b_row = j.group * n + j.n0;
    }
    j.k0 = 0;
    j.k_blocks = k_blocks;
    j.out_row = static_cast<int64_t>(tile) * kBM;
    j.rows = kBM;
    j.out_y = tile * kBM;
    return true;
  }
};

// The weight-gradient forms' output tile of job (outer, ct): group g = outer / (M's row tiles), out[g]'s row
// tile outer % that and column tile ct, both operands' MN offsets from those; returns g. The k-blocks are the
// schedule's.
template <int BN>
__device__ __forceinline__ int PlaceGroupTile(int outer, int ct, int m, Job& j) {
  const int m_tiles = (m + kBM - 1) / kBM;
  const int g = outer / m_tiles;
  j.a_row = (outer % m_tiles) * kBM;
  j.n0 = ct * BN;
  j.b_row = j.n0;
  j.b_k0 = 0;
  j.out_row = static_cast<int64_t>(g) * m + j.a_row;
  j.rows = min(kBM, m - j.a_row);
  j.group = g;
  j.out_y = j.a_row;
  j.out_z = g;
  return g;
}

template <int BN>
struct KGroups {
  TilePrefix k;
  int m;
  __device__ bool Decode(int outer, int ct, Job& j) const {
    const int g = PlaceGroupTile<BN>(outer, ct, m, j);
    j.k0 = k.begin[g];
    j.k_blocks = k.begin[g + 1] - j.k0;
    return j.k_blocks > 0;  // a group without tokens: out[g] stays as it is
  }
};

template <int BN>
struct DeviceKGroups {
  const int32_t* tile_begin;  // (G + 1): group g owns the 128-row tiles [tile_begin[g], tile_begin[g + 1])
  int m;
  bool overwrite;
  __device__ bool Decode(int outer, int ct, Job& j) const {
    const int g = PlaceGroupTile<BN>(outer, ct, m, j);
    const int t0 = tile_begin[g], t1 = tile_begin[g + 1];
    j.k0 = t0 * (kBM / kBK);
    j.k_blocks = (t1 - t0) * (kBM / kBK);
    return j.k_blocks > 0 || overwrite;  // else out[g] stays as it is
  }
};

#ifdef FATHOM_SM90A
// One operand's share of a stage: a K-major operand is one box of `kExtent` rows at (column k, row `at`); an
// MN-major one is kExtent / 64 boxes of 64 rows x 64 columns at (column at + 64 c, row k_base + k), 8192
// bytes apart (MnTileDescriptor's layout). Either way kExtent * 128 bytes.
template <bool kMn, int kExtent>
__device__ __forceinline__ void LoadOperand(uint8_t* dst, const CUtensorMap* map, uint64_t* bar, int k, int at,
                                            int k_base) {
  if constexpr (kMn) {
#pragma unroll
    for (int c = 0; c < kExtent / 64; ++c) TmaLoad(dst + c * 64 * kRowBytes, map, bar, at + 64 * c, k_base + k);
  } else {
    TmaLoad(dst, map, bar, k, at);
  }
}

// In a cluster of two, A's 64-row half `half` (rows or, MN-major, columns [at + 64 half, +64)), 8192 bytes,
// loaded once and written to both CTAs' stage at the same place. A K-major A's map has 64-row boxes then.
template <bool kMn>
__device__ __forceinline__ void LoadHalfToCluster(uint8_t* stage, const CUtensorMap* map, uint64_t* bar,
                                                  int k, int at, int half) {
  uint8_t* dst = stage + half * 64 * kRowBytes;
  if constexpr (kMn) {
    TmaLoadMulticast(dst, map, bar, at + 64 * half, k, 0x3);
  } else {
    TmaLoadMulticast(dst, map, bar, k, at + 64 * half, 0x3);
  }
}
#endif

#ifdef FATHOM_SM90A
// The TMA-store epilogue of one consumer warp (rows [16 w, 16 w + 16) of its consumer group's 64): for each
// 128-byte wide chunk of the tile's columns (64 bf16 or 32 f32, while inside out), the warp writes its values
// (rounded once, as OutPair does) to one of its two staging buffers in the 128-byte swizzle, fences them for
// the async proxy, and lane 0 issues the chunk's store (a reduce-add when accumulating; only f32 outputs
// accumulate here, so the sum is rounded once as OutPair's is) and moves on: the stores drain while the
// consumers run the next tile's k-blocks. Before a buffer is refilled, lane 0 waits until the store issued
// from it two chunks ago has read it. The map clips rows past Y and columns past n. `chunk` counts this
// warp's chunks over the whole kernel (which buffer is next).
template <class OutT, int BN>
__device__ __forceinline__ void StoreTileTma(const CUtensorMap* map, uint8_t* buffers, const float* acc,
                                             int n0, int y, int z, int n, bool accumulate, int lane,
                                             int& chunk) {
  constexpr int kBytes = static_cast<int>(sizeof(OutT));
  constexpr int kCols = kRowBytes / kBytes;  // columns per chunk
  constexpr int kGroups = kCols / 8;         // 8-column accumulator groups per chunk
  static_assert(BN % kCols == 0, "the TMA-store epilogue needs whole chunks per column tile");
  // This thread's pairs sit in rows r and r + 8 (r = lane / 4), both with swizzle phase r; the pair of group
  // g starts at byte (8 g + 2 q) * kBytes of its row, q = lane % 4: 16-byte unit u(g) = that / 16, XOR r.
  const int r = lane / 4, q = lane % 4;
  const int within = (2 * q * kBytes) % 16;  // the pair's byte in its 16-byte unit
  const int unit0 = (2 * q * kBytes) / 16;   // its unit for g = 0 (bf16: 0; f32: q / 2)
#pragma unroll
  for (int h = 0; h < BN / kCols; ++h) {
    if (n0 + h * kCols < n) {  // else the rest of the tile lies past out's columns (uniform across the warp)
      uint8_t* buf = buffers + (chunk & 1) * kStoreBufferBytes + r * kRowBytes + within;
      if (lane == 0) BulkWaitRead<1>();
      __syncwarp();
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        const int c = h * kGroups + g;  // the accumulator group
        uint8_t* at = buf + (((unit0 + g * 8 * kBytes / 16) ^ r) << 4);
        if constexpr (kBytes == 2) {
          *reinterpret_cast<__nv_bfloat162*>(at) = __floats2bfloat162_rn(acc[4 * c], acc[4 * c + 1]);
          *reinterpret_cast<__nv_bfloat162*>(at + 8 * kRowBytes) =
              __floats2bfloat162_rn(acc[4 * c + 2], acc[4 * c + 3]);
        } else {
          *reinterpret_cast<float2*>(at) = make_float2(acc[4 * c], acc[4 * c + 1]);
          *reinterpret_cast<float2*>(at + 8 * kRowBytes) = make_float2(acc[4 * c + 2], acc[4 * c + 3]);
        }
      }
      FenceProxyAsyncShared();
      __syncwarp();
      if (lane == 0) {
        uint8_t* start = buffers + (chunk & 1) * kStoreBufferBytes;
        if (accumulate) {
          TmaStore3d<true>(map, start, n0 + h * kCols, y, z);
        } else {
          TmaStore3d<false>(map, start, n0 + h * kCols, y, z);
        }
        BulkCommit();
      }
      ++chunk;
    }
  }
}
#endif

// A persistent kernel: CTA b (or, in clusters of kCluster CTAs, cluster c) takes jobs b, b + grid, ... (c,
// c + clusters, ...) of the schedule, skipping those it declines. The stage ring runs on across jobs, so the
// producer fetches the next job's first k-blocks while the consumers still store the last one's results. out
// is row-major with n columns. See grouped_gemm.h.
//
// A Product (one per .cu file's forms) says what a stage holds and how the consumers multiply it: kBN (the
// column tile), kBlockElems (reduction elements per k-block), kAMn / kBMn (the operand is MN-major),
// kTmaStore (it leaves registers enough for StoreTileTma), Params, and Run (one job's k-blocks into acc).
//
// kCluster 2: the two CTAs of a cluster take the same row tile and adjacent column tiles (2 p, 2 p + 1) of
// pair job p, so they need the same A (128 x 64 per k-block): each loads one 64-row half and multicasts it
// to both, which halves A's traffic from L2 (per k-block and CTA, 8 KB instead of 16 KB next to B's BN * 128
// bytes). Each CTA's full barrier still expects the whole stage (its half, the peer's, its B), and a stage is
// refilled only once the consumers of both CTAs released it (Ring::Release arrives on both empty barriers,
// which count 2 x 8 warps). With an odd number of column tiles, the second CTA of a row's last pair has no
// column tile of its own: it runs the first CTA's (to load its half of A for it) and stores nothing. Both
// CTAs run the same jobs' k-blocks in the same order, so their rings stay in step; they meet in a cluster
// barrier after initialising their barriers (before any multicast can reach them) and before exiting (no
// CTA leaves while its peer may still arrive on its barriers).
//
// kTmaStore: the consumers store through shared memory with TMA (StoreTileTma, out_map) instead of from
// registers (never for a bf16 output accumulated into: TMA's bf16 add would round twice; see LaunchTiled).
template <class Product, class OutT, class Schedule, int kCluster, bool kTmaStore>
__global__ void __launch_bounds__(kThreads, 1)
    TiledKernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b_map,
                const __grid_constant__ CUtensorMap out_map, const typename Product::Params params, OutT* out,
                bool accumulate, const __grid_constant__ Schedule schedule, int jobs, int n) {
#ifdef FATHOM_SM90A
  static_assert(kCluster == 1 || kCluster == 2, "clusters of 1 or 2 CTAs");
  constexpr int BN = Product::kBN;
  using T = Tiling<BN>;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* store_buffers = smem + T::kStages * T::kStageBytes;  // kTmaStore only (1024-byte aligned)
  uint64_t* full = reinterpret_cast<uint64_t*>(store_buffers + (kTmaStore ? kEpilogueBytes : 0));
  uint64_t* empty = full + T::kStages;
  if (threadIdx.x == 0) {
    for (int s = 0; s < T::kStages; ++s) {
      BarrierInit(&full[s], 1);              // the producer's expect-bytes arrival (+ the TMA bytes)
      BarrierInit(&empty[s], 8 * kCluster);  // one arrival per consumer warp of each CTA
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  if constexpr (kCluster == 1) {
    __syncthreads();
  } else {
    ClusterSync();
  }
  const Ring<BN> ring{smem, full, empty, kCluster};
  // This CTA's first job, the stride between its jobs, and (kCluster 2) its place in the pair.
  const int rank = kCluster == 1 ? 0 : static_cast<int>(ClusterCtaRank());
  const int first = kCluster == 1 ? static_cast<int>(blockIdx.x) : static_cast<int>(ClusterIndex());
  const int stride = kCluster == 1 ? static_cast<int>(gridDim.x) : static_cast<int>(ClusterCount());
  const int n_tiles = (n + BN - 1) / BN, units = (n_tiles + kCluster - 1) / kCluster;
  // Job `job` = (outer, column unit): this CTA's column tile of it, and whether that is its own (stores).
  const auto decode = [&](int job, Job& j) {
    const int ct = (job % units) * kCluster + rank;
    if (!schedule.Decode(job / units, min(ct, n_tiles - 1), j)) return false;
    if (ct >= n_tiles) j.rows = 0;  // the pair's second CTA past the last column tile: loads, stores nothing
    return true;
  };

  const int group = static_cast<int>(threadIdx.x) / 128;
  if (group == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x == 0) {
      int it = 0;  // k-blocks fetched so far, over all jobs: the stage ring's position
      for (int job = first; job < jobs; job += stride) {
        Job j;
        if (!decode(job, j)) continue;
        for (int kb = 0; kb < j.k_blocks; ++kb, ++it) {
          const int s = it % T::kStages;
          const uint32_t parity = ((it / T::kStages) & 1) ^ 1;  // the first pass finds every stage free
          uint8_t* stage = smem + s * T::kStageBytes;
          const int k = (j.k0 + kb) * Product::kBlockElems;
          if constexpr (kCluster == 1) {
            BarrierWait(&empty[s], parity);
            BarrierExpectBytes(&full[s], T::kStageBytes);
            LoadOperand<Product::kAMn, kBM>(stage, &a_map, &full[s], k, j.a_row, 0);
          } else {
            BarrierWait(&empty[s], parity);  // both CTAs' consumers are done with the stage
            BarrierExpectBytes(&full[s], T::kStageBytes);
            LoadHalfToCluster<Product::kAMn>(stage, &a_map, &full[s], k, j.a_row, rank);
          }
          LoadOperand<Product::kBMn, BN>(stage + kABytes, &b_map, &full[s], k, j.b_row, j.b_k0);
        }
      }
    }
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int consumer = group - 1;  // rows [64 consumer, 64 consumer + 64) of each tile
    const int warp = (static_cast<int>(threadIdx.x) / 32) % 4, lane = static_cast<int>(threadIdx.x) % 32;
    // wgmma's accumulator layout: warp w of the group holds rows 16 w + lane / 4 (+ 8); register 4 j + i is
    // column 8 j + 2 (lane % 4) + (i & 1) of row + 8 (i >> 1).
    const int local = consumer * 64 + warp * 16 + lane / 4;
    float acc[BN / 2];
    int it = 0, chunk = 0;
    for (int job = first; job < jobs; job += stride) {
      Job j;
      if (!decode(job, j)) continue;
      Product::Run(params, acc, ring, it, j, consumer, lane, local);
      if constexpr (kTmaStore) {
        if (j.rows > 0)  // not the tile-less CTA of a pair
          StoreTileTma<OutT, BN>(&out_map, store_buffers + (consumer * 4 + warp) * 2 * kStoreBufferBytes, acc,
                                 j.n0, j.out_y + consumer * 64 + warp * 16, j.out_z, n, accumulate, lane,
                                 chunk);
        continue;
      }
      OutT* out0 = out + (j.out_row + local) * n;
      OutT* out8 = out0 + 8 * static_cast<int64_t>(n);
      const bool row0 = local < j.rows, row8 = local + 8 < j.rows;
#pragma unroll
      for (int c = 0; c < BN / 8; ++c) {
        const int col = j.n0 + 8 * c + 2 * (lane % 4);
        if (col < n) {  // n is a multiple of 8 and col even, so col + 1 < n too
          if (row0) OutPair<OutT>::Store(out0 + col, acc[4 * c], acc[4 * c + 1], accumulate);
          if (row8) OutPair<OutT>::Store(out8 + col, acc[4 * c + 2], acc[4 * c + 3], accumulate);
        }
      }
    }
    if constexpr (kTmaStore) {
      if (lane == 0) BulkWait<0>();  // this warp's stores have written out
    }
  }
  if constexpr (kCluster > 1) {
    // The producer warp's lanes 1-31 got here while lane 0 issued the loads: the warp whole again before
    // the cluster barrier (not required of barrier.cluster's non-.aligned form, but free).
    __syncwarp();
    ClusterSync();
  }
#else
  __trap();  // built without sm_90a: TiledGroupedSupported is false and the launcher never gets here
#endif
}

inline PFN_cuTensorMapEncodeTiled_v12000 EncodeTiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    FATHOM_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault,
                                                       &found));
    FATHOM_CHECK(found == cudaDriverEntryPointSuccess && p != nullptr,
                 "[tiled_grouped_gemm] the CUDA driver has no cuTensorMapEncodeTiled (needs CUDA 12 or newer)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// A TMA map of a row-major (rows, cols) matrix of 1- or 2-byte elements, rows `stride` bytes apart, read
// in boxes of one 128-byte row segment x box_rows rows, 128-byte swizzled (the layout TileDescriptor
// describes); reads past the matrix fill zeros.
inline CUtensorMap RowMajorMap(const void* base, CUtensorMapDataType type, int64_t rows, int64_t cols, int64_t stride,
                        int box_rows) {
  const int element_bytes = type == CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 ? 2 : 1;
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(stride)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kRowBytes / element_bytes), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = EncodeTiled()(&map, type, 2, const_cast<void*>(base), dims, strides, box, element_strides,
                                   CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                   CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FATHOM_CHECK(r == CUDA_SUCCESS, "[tiled_grouped_gemm] cuTensorMapEncodeTiled failed (", static_cast<int>(r),
               ") for a ", rows, " x ", cols, " matrix of ", element_bytes, "-byte elements, row stride ", stride,
               " bytes, box ", box_rows, " rows");
  return map;
}

// Where the TMA-store epilogue writes: out viewed as (groups, rows, cols) row-major, its 16-row x 128-byte
// boxes 128-byte swizzled (StoreTileTma's staging layout). The row-tile forms have one group of all rows;
// the weight-gradient forms one (M, N) matrix per group, so a partial last row tile of out[g] is clipped at
// M instead of running into out[g + 1].
struct OutGeometry {
  int64_t groups, rows;
};

template <class OutT>
CUtensorMap StoreMap(OutT* out, const OutGeometry& geometry, int64_t cols) {
  constexpr int64_t kBytes = sizeof(OutT);
  const CUtensorMapDataType type =
      kBytes == 2 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
  CUtensorMap map;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(geometry.rows),
                              static_cast<cuuint64_t>(geometry.groups)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(cols * kBytes),
                                 static_cast<cuuint64_t>(geometry.rows * cols * kBytes)};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(kRowBytes / kBytes), 16, 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult r = EncodeTiled()(&map, type, 3, out, dims, strides, box, element_strides,
                                   CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                   CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FATHOM_CHECK(r == CUDA_SUCCESS, "[tiled_grouped_gemm] cuTensorMapEncodeTiled failed (", static_cast<int>(r),
               ") for the store map of ", geometry.groups, " x ", geometry.rows, " x ", cols, " ", kBytes,
               "-byte elements");
  return map;
}

inline bool DeviceIsSm90() {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;
}

inline int MultiprocessorCount() {
  int device = 0, count = 0;
  FATHOM_CUDA_CHECK(cudaGetDevice(&device));
  FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

inline int64_t ColumnTiles(int64_t n, int bn) { return (n + bn - 1) / bn; }

// The rows of a K-major A map's boxes: the whole 128-row tile, or one CTA's 64-row half in a cluster of two.
inline int ABoxRows(int cluster) { return kBM / cluster; }

template <class Product, class OutT, class Schedule, int kCluster, bool kTmaStore>
void LaunchTiledIn(const CUtensorMap& a_map, const CUtensorMap& b_map, const typename Product::Params& params,
                   OutT* out, const OutGeometry& geometry, bool accumulate, const Schedule& schedule,
                   int64_t outers, int64_t n, int max_ctas, Stream stream) {
  constexpr int kSmem = SmemBytes<Product::kBN, kTmaStore>();
  const auto kernel = TiledKernel<Product, OutT, Schedule, kCluster, kTmaStore>;
  cudaLaunchConfig_t config{};
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = kCluster;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = kSmem;
  config.stream = stream;
  config.attrs = &cluster;
  config.numAttrs = kCluster > 1 ? 1 : 0;  // without clusters, the plain launch it always was
  // How many CTAs (clusters of kCluster) can be resident at once: the persistent grid's size.
  static const int resident = [&] {
    FATHOM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    if constexpr (kCluster == 1) {
      return MultiprocessorCount();
    } else {
      cudaLaunchConfig_t query = config;
      query.gridDim = dim3(static_cast<unsigned>(MultiprocessorCount() / kCluster * kCluster));
      int clusters = 0;
      FATHOM_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &query));
      FATHOM_CHECK(clusters > 0, "[tiled_grouped_gemm] no cluster of ", kCluster, " CTAs with ", kSmem,
                   " bytes of shared memory each fits this GPU");
      return clusters * kCluster;
    }
  }();
  const int64_t jobs = outers * ColumnTiles(ColumnTiles(n, Product::kBN), kCluster);
  if (jobs == 0) return;
  FATHOM_CHECK(jobs <= INT32_MAX, "[tiled_grouped_gemm] ", jobs,
               " output tiles: too many for 32-bit job indices");
  const int64_t ctas = max_ctas > 0 ? std::min(max_ctas, resident) : resident;
  const int64_t clusters = std::max<int64_t>(1, std::min<int64_t>(jobs, ctas / kCluster));
  config.gridDim = dim3(static_cast<unsigned>(clusters * kCluster));
  const CUtensorMap out_map = kTmaStore ? StoreMap(out, geometry, n) : CUtensorMap{};
  FATHOM_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, a_map, b_map, out_map, params, out, accumulate,
                                       schedule, static_cast<int>(jobs), static_cast<int>(n)));
}

// How a launch runs, as the public forms' TiledLaunch asks (checked): CTAs per cluster (a K-major A's map
// must then have ABoxRows(cluster)-row boxes) and whether the epilogue stores with TMA (BN 128 or 256 only:
// its chunks are 64 bf16 or 32 f32 columns wide).
struct LaunchShape {
  int cluster;
  bool tma_store;
};

// `tma_ok`: the form has a TMA-store epilogue at this column tile (Product::kTmaStore and BN 128 or 256).
inline LaunchShape CheckedShape(const char* op, const TiledLaunch& launch, int block_n, bool tma_ok) {
  const TiledDefaults defaults = GetTiledDefaults();
  const int cluster = launch.cluster_n.value_or(defaults.cluster_n);
  FATHOM_CHECK(cluster == 1 || cluster == 2, "[", op, "] cluster_n ", cluster, ": expected 1 or 2");
  tma_ok = tma_ok && block_n % 64 == 0;
  FATHOM_CHECK(!launch.tma_store.value_or(false) || tma_ok, "[", op,
               "] tma_store: this form has no TMA-store epilogue at column tile ", block_n,
               " (it needs 128 or 256, and not the FP8 weight-gradient form)");
  return {cluster, launch.tma_store.value_or(defaults.tma_store && tma_ok)};
}

// One persistent launch of the schedule's output tiles: `outers` outer indices x out's column tiles.
template <class Product, class OutT, class Schedule>
void LaunchTiled(const CUtensorMap& a_map, const CUtensorMap& b_map, const typename Product::Params& params,
                 OutT* out, const OutGeometry& geometry, bool accumulate, const Schedule& schedule,
                 int64_t outers, int64_t n, const LaunchShape& shape, int max_ctas, Stream stream) {
  const auto run = [&](auto cluster, auto tma_store) {
    LaunchTiledIn<Product, OutT, Schedule, decltype(cluster)::value, decltype(tma_store)::value>(
        a_map, b_map, params, out, geometry, accumulate, schedule, outers, n, max_ctas, stream);
  };
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  // A bf16 output accumulated into keeps the register stores (one rounding of old + product, as OutPair).
  if (!shape.tma_store || (sizeof(OutT) == 2 && accumulate)) {
    shape.cluster == 1 ? run(One{}, std::false_type{}) : run(Two{}, std::false_type{});
  } else if constexpr (Product::kBN % 64 == 0 && Product::kTmaStore) {
    shape.cluster == 1 ? run(One{}, std::true_type{}) : run(Two{}, std::true_type{});
  } else {
    FATHOM_CHECK(false, "[tiled_grouped_gemm] this form has no TMA-store epilogue (column tile ",
                 Product::kBN, ": it needs 128 or 256, and a product that leaves the registers for it)");
  }
}

inline void CheckTileMap(const char* op, const Tensor& tile_expert) {
  common::CheckCuda(op, tile_expert, "tile_expert");
  FATHOM_CHECK(tile_expert.dtype() == DType::kI32 && tile_expert.ndim() == 1, "[", op, "] tile_expert ",
               tile_expert.shape_str(), ", expected (T) i32");
}

}  // namespace fathom::cuda::tiled

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_GROUPED_GEMM_TILED_CUH_
