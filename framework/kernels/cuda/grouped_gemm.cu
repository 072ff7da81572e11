// fathom's grouped GEMMs on Hopper (see grouped_gemm.h): one persistent TMA + WGMMA + mbarrier kernel over
// schedules, with bf16 and FP8 products; the device primitives are sm90_primitives.cuh's. Written for
// sm_90a; other targets compile a kernel body that traps, and the launchers refuse to run anywhere but an
// sm_90 device.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "framework/check.h"
#include "framework/cuda/check.h"
#include "framework/kernels/cpu/moe.h"
#include "framework/kernels/cuda/grouped_gemm.h"
#include "framework/kernels/cuda/kernel_common.cuh"
#include "framework/kernels/cuda/sm90_primitives.cuh"

namespace fathom::cuda {
namespace {

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

using namespace ::fathom::cuda::sm90;  // the device primitives (sm90_primitives.cuh)

// The stage ring as the consumers see it (Acquire: wait for k-block `it`'s bytes; Release: hand its stage
// back). Its geometry is compile-time (Tiling<BN>), so the stage of k-block `it` is a cheap modulo.
template <int BN>
struct Ring {
  static constexpr int kStages = Tiling<BN>::kStages, kStageBytes = Tiling<BN>::kStageBytes;
  uint8_t* smem;
  uint64_t* full;
  uint64_t* empty;
#ifdef FATHOM_SM90A
  __device__ const uint8_t* A(int it, int consumer) const {
    return smem + (it % kStages) * kStageBytes + consumer * 64 * kRowBytes;
  }
  __device__ const uint8_t* B(int it) const { return smem + (it % kStages) * kStageBytes + kABytes; }
  __device__ void Acquire(int it) const { BarrierWait(&full[it % kStages], (it / kStages) & 1); }
  __device__ void Release(int it, int lane) const {
    __syncwarp();
    if (lane == 0) BarrierArrive(&empty[it % kStages]);
  }
#endif
};

// One output tile: A's rows [a_row, a_row + 128) and B's rows [b_row, b_row + BN) over the k-blocks
// [k0, k0 + k_blocks), stored to out's rows [out_row, out_row + rows) (rows <= 128) and columns from n0.
// `group` is the expert (or weight-gradient group) whose scales the FP8 products read.
// An MN-major operand (the bf16 NN and TN forms) is loaded from its matrix's rows [k_base + 64 kb, +64)
// (b_k0 for B; 0 for A) and columns [row, row + 128 or BN), where `row` (a_row, b_row) is then the MN offset.
struct Job {
  int a_row, b_row, k0, k_blocks;
  int64_t out_row;
  int rows, n0, group;
  int b_k0 = 0;
};

// The products (bf16, FP8 forward/dgrad, FP8 weight gradient), in the consumer warp groups: each runs the
// k-blocks of one job over the ring, leaving the tile's f32 results in acc (this thread's 64 x BN / 128
// share, wgmma's accumulator layout; local_row is its first row in the tile).
//
// bf16: wgmma.m64nBNk16 straight into acc, one wgmma group kept in flight while the previous stage is
// released. kAMn / kBMn: that operand is MN-major in shared memory (MnTileDescriptor: its 16-deep slices
// are 2048 bytes apart) instead of K-major (TileDescriptor: 32 bytes apart); A's two 64-row halves are
// 8192 bytes apart either way. A job without k-blocks (a weight gradient's group without tokens, when
// overwriting) leaves acc zero.
template <int BN, bool kAMnMajor = false, bool kBMnMajor = false>
struct Bf16Product {
  static constexpr int kBN = BN, kBlockElems = kBK;
  static constexpr bool kAMn = kAMnMajor, kBMn = kBMnMajor;
  static_assert(!kBMn || BN % 64 == 0, "an MN-major B is loaded in 64-column boxes");
  struct Params {};
#ifdef FATHOM_SM90A
  __device__ static uint64_t Descriptor(const uint8_t* tile, bool mn) {
    return mn ? MnTileDescriptor(tile) : TileDescriptor(tile);
  }
  __device__ static void Run(const Params&, float* acc, const Ring<BN>& ring, int& it, const Job& job,
                             int consumer, int lane, int /*local_row*/) {
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;
    if (job.k_blocks == 0) return;
    constexpr uint64_t kStepA = kAMn ? 128 : 2, kStepB = kBMn ? 128 : 2;  // one 16-deep slice, in 16 bytes
    for (int kb = 0; kb < job.k_blocks; ++kb, ++it) {
      ring.Acquire(it);
      const uint64_t desc_a = Descriptor(ring.A(it, consumer), kAMn), desc_b = Descriptor(ring.B(it), kBMn);
      FenceAccumulators<BN / 2>(acc);
      WgmmaFence();
#pragma unroll
      for (int k = 0; k < kBK / 16; ++k)
        Wgmma<BN, kAMn ? 1 : 0, kBMn ? 1 : 0>(acc, desc_a + kStepA * k, desc_b + kStepB * k);
      WgmmaCommit();
      FenceAccumulators<BN / 2>(acc);
      if (kb > 0) {  // the previous stage's products are done: give it back to the producer
        WgmmaWait<1>();
        FenceAccumulators<BN / 2>(acc);
        ring.Release(it - 1, lane);
      }
    }
    WgmmaWait<0>();
    FenceAccumulators<BN / 2>(acc);
    ring.Release(it - 1, lane);
  }
#endif
};

#ifdef FATHOM_SM90A
// The FP8 forms' k-block `it`: partial (64 x 128 of this consumer group, f32) = the sum of the block's four
// e4m3 wgmma.m64n128k32 products, waited for, and the stage handed back, so the caller can promote it.
__device__ __forceinline__ void Fp8BlockPartial(float* partial, const Ring<128>& ring, int it, int consumer,
                                                int lane) {
  ring.Acquire(it);
  const uint64_t desc_a = TileDescriptor(ring.A(it, consumer)), desc_b = TileDescriptor(ring.B(it));
  FenceAccumulators<64>(partial);
  WgmmaFence();
#pragma unroll
  for (int k = 0; k < kRowBytes / 32; ++k) WgmmaFp8x128(partial, desc_a + 2 * k, desc_b + 2 * k, k > 0);
  WgmmaCommit();
  WgmmaWait<0>();
  FenceAccumulators<64>(partial);
  ring.Release(it, lane);
}
#endif

// e4m3 with block scales (the twin of cpu::Fp8GroupedMatmulNT): per 128-deep k-block, four
// wgmma.m64n128k32 into a partial sum, then acc += partial * (x row scale * w block scale). BN = 128, so
// an output tile is one 128-wide block of w's rows and takes one weight scale per k-block.
struct Fp8Product {
  static constexpr int kBN = 128, kBlockElems = kRowBytes;
  static constexpr bool kAMn = false, kBMn = false;
  struct Params {
    const uint8_t* x;        // Fp8Rows data: codes, then f32 scales, per row
    int64_t x_row_bytes;     // Fp8RowBytes(K)
    int64_t x_scale_offset;  // Fp8Padded(K): where a row's scales start
    const float* w_scales;   // (E, Fp8Blocks(N), stride)
    int64_t w_blocks_n, w_scale_stride;
  };
#ifdef FATHOM_SM90A
  __device__ static void Run(const Params& p, float* acc, const Ring<kBN>& ring, int& it, const Job& job,
                             int consumer, int lane, int local_row) {
    const int64_t row = static_cast<int64_t>(job.a_row) + local_row;  // x's row
    const float* xs0 = reinterpret_cast<const float*>(p.x + row * p.x_row_bytes + p.x_scale_offset);
    const float* xs8 = reinterpret_cast<const float*>(p.x + (row + 8) * p.x_row_bytes + p.x_scale_offset);
    const float* ws = p.w_scales + (static_cast<int64_t>(job.group) * p.w_blocks_n + job.n0 / kBN) * p.w_scale_stride;
    float partial[kBN / 2];
#pragma unroll
    for (int i = 0; i < kBN / 2; ++i) acc[i] = 0.0f;
    for (int kb = 0; kb < job.k_blocks; ++kb, ++it) {
      const float sb = ws[kb];
      const float s0 = xs0[kb] * sb, s8 = xs8[kb] * sb;  // the CPU's (scale_a * scale_b)
      Fp8BlockPartial(partial, ring, it, consumer, lane);
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        acc[4 * j] += partial[4 * j] * s0;
        acc[4 * j + 1] += partial[4 * j + 1] * s0;
        acc[4 * j + 2] += partial[4 * j + 2] * s8;
        acc[4 * j + 3] += partial[4 * j + 3] * s8;
      }
    }
  }
#endif
};

// e4m3 weight gradients (the twin of cpu::Fp8GroupedMatmulTN): a and b are Fp8Cols, both K-major along
// the padded tokens, with one scale per 128-token tile and column: scales (Tp / 128, C). Per k-block t,
// acc[r][c] += partial[r][c] * (a scale of row r * b scale of column c). Rows past M and columns past N
// read scale 0 (their codes are TMA's zero fill).
struct Fp8ColsProduct {
  static constexpr int kBN = 128, kBlockElems = kRowBytes;
  static constexpr bool kAMn = false, kBMn = false;
  struct Params {
    const float* a_scales;  // (Tp / 128, m)
    const float* b_scales;  // (Tp / 128, n)
    int m, n;
  };
#ifdef FATHOM_SM90A
  __device__ static void Run(const Params& p, float* acc, const Ring<kBN>& ring, int& it, const Job& job,
                             int consumer, int lane, int local_row) {
    const int r0 = job.a_row + local_row, r8 = r0 + 8;
    const int c0 = job.n0 + 2 * (lane % 4);  // this thread's columns: c0 + 8 j and c0 + 8 j + 1
    float partial[kBN / 2];
#pragma unroll
    for (int i = 0; i < kBN / 2; ++i) acc[i] = 0.0f;
    for (int kb = 0; kb < job.k_blocks; ++kb, ++it) {
      const int64_t t = static_cast<int64_t>(job.k0) + kb;
      const float* sa = p.a_scales + t * p.m;
      const float* sbrow = p.b_scales + t * p.n;
      const float sa0 = r0 < p.m ? sa[r0] : 0.0f, sa8 = r8 < p.m ? sa[r8] : 0.0f;
      float sb[kBN / 4];
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const int c = c0 + 8 * j;  // n is a multiple of 16 and c even: c + 1 < n whenever c < n
        sb[2 * j] = c < p.n ? sbrow[c] : 0.0f;
        sb[2 * j + 1] = c < p.n ? sbrow[c + 1] : 0.0f;
      }
      Fp8BlockPartial(partial, ring, it, consumer, lane);
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        acc[4 * j] += partial[4 * j] * (sa0 * sb[2 * j]);
        acc[4 * j + 1] += partial[4 * j + 1] * (sa0 * sb[2 * j + 1]);
        acc[4 * j + 2] += partial[4 * j + 2] * (sa8 * sb[2 * j]);
        acc[4 * j + 3] += partial[4 * j + 3] * (sa8 * sb[2 * j + 1]);
      }
    }
  }
#endif
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

// Which output tiles a launch computes ("jobs"), and each one's rows, columns and k-blocks.
//   RowTiles: the forward form over the padded layout's row tiles: job = (row tile, column tile), row tile
//     major; a row tile's expert comes from `tiles` (unused: skipped) and picks the weight's rows. With an
//     MN-major weight (kBMn, the bf16 NN form: w[e] is (reduction, n)), its rows [e * reduction, +reduction)
//     are the reduction and the column tile its columns.
//   KGroups: the weight-gradient form: job = (group, row tile of out[g], column tile); group g reduces over
//     its k-blocks [k.begin[g], k.begin[g + 1]) of the padded token axis (none: skipped).
//   DeviceKGroups: the same with the groups' tile ranges read from the device (bf16 TN: MoeTileExperts'
//     tile_begin) and both operands MN-major; a group without tokens stores zeros when overwriting.
template <class Tiles, int BN, bool kBMn = false>
struct RowTiles {
  Tiles tiles;
  int n, k_blocks;
  __device__ bool Decode(int job, Job& j) const {
    const int n_tiles = (n + BN - 1) / BN;
    const int tile = job / n_tiles;
    j.n0 = (job % n_tiles) * BN;
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
    return true;
  }
};

template <int BN>
struct KGroups {
  TilePrefix k;
  int m, n;
  __device__ bool Decode(int job, Job& j) const {
    const int m_tiles = (m + kBM - 1) / kBM, n_tiles = (n + BN - 1) / BN;
    const int g = job / (m_tiles * n_tiles), r = job % (m_tiles * n_tiles);
    j.k0 = k.begin[g];
    j.k_blocks = k.begin[g + 1] - j.k0;
    if (j.k_blocks == 0) return false;  // a group without tokens: out[g] stays as it is
    j.a_row = (r / n_tiles) * kBM;
    j.n0 = (r % n_tiles) * BN;
    j.b_row = j.n0;
    j.out_row = static_cast<int64_t>(g) * m + j.a_row;
    j.rows = min(kBM, m - j.a_row);
    j.group = g;
    return true;
  }
};

template <int BN>
struct DeviceKGroups {
  const int32_t* tile_begin;  // (G + 1): group g owns the 128-row tiles [tile_begin[g], tile_begin[g + 1])
  int m, n;
  bool overwrite;
  __device__ bool Decode(int job, Job& j) const {
    const int m_tiles = (m + kBM - 1) / kBM, n_tiles = (n + BN - 1) / BN;
    const int g = job / (m_tiles * n_tiles), r = job % (m_tiles * n_tiles);
    const int t0 = tile_begin[g], t1 = tile_begin[g + 1];
    j.k0 = t0 * (kBM / kBK);
    j.k_blocks = (t1 - t0) * (kBM / kBK);
    if (j.k_blocks == 0 && !overwrite) return false;  // out[g] stays as it is
    j.a_row = (r / n_tiles) * kBM;
    j.n0 = (r % n_tiles) * BN;
    j.b_row = j.n0;
    j.b_k0 = 0;
    j.out_row = static_cast<int64_t>(g) * m + j.a_row;
    j.rows = min(kBM, m - j.a_row);
    j.group = g;
    return true;
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
#endif

// A persistent kernel (one CTA per SM): CTA b takes jobs b, b + grid, ... of the schedule, skipping those it
// declines. The stage ring runs on across jobs, so the producer fetches the next job's first k-blocks while
// the consumers still store the last one's results. out is row-major with n columns. See grouped_gemm.h.
template <class Product, class OutT, class Schedule>
__global__ void __launch_bounds__(kThreads, 1)
    TiledKernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b_map,
                const typename Product::Params params, OutT* out, bool accumulate,
                const __grid_constant__ Schedule schedule, int jobs, int n) {
#ifdef FATHOM_SM90A
  constexpr int BN = Product::kBN;
  using T = Tiling<BN>;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + T::kStages * T::kStageBytes);
  uint64_t* empty = full + T::kStages;
  if (threadIdx.x == 0) {
    for (int s = 0; s < T::kStages; ++s) {
      BarrierInit(&full[s], 1);   // the producer's expect-bytes arrival (+ the TMA bytes)
      BarrierInit(&empty[s], 8);  // one arrival per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  const Ring<BN> ring{smem, full, empty};

  const int group = static_cast<int>(threadIdx.x) / 128;
  if (group == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x == 0) {
      int it = 0;  // k-blocks fetched so far, over all jobs: the stage ring's position
      for (int job = static_cast<int>(blockIdx.x); job < jobs; job += static_cast<int>(gridDim.x)) {
        Job j;
        if (!schedule.Decode(job, j)) continue;
        for (int kb = 0; kb < j.k_blocks; ++kb, ++it) {
          const int s = it % T::kStages;
          BarrierWait(&empty[s], ((it / T::kStages) & 1) ^ 1);  // the first pass finds every stage free
          uint8_t* stage = smem + s * T::kStageBytes;
          BarrierExpectBytes(&full[s], T::kStageBytes);
          const int k = (j.k0 + kb) * Product::kBlockElems;
          LoadOperand<Product::kAMn, kBM>(stage, &a_map, &full[s], k, j.a_row, 0);
          LoadOperand<Product::kBMn, BN>(stage + kABytes, &b_map, &full[s], k, j.b_row, j.b_k0);
        }
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");

  const int consumer = group - 1;  // rows [64 consumer, 64 consumer + 64) of each tile
  const int warp = (static_cast<int>(threadIdx.x) / 32) % 4, lane = static_cast<int>(threadIdx.x) % 32;
  // wgmma's accumulator layout: warp w of the group holds rows 16 w + lane / 4 (+ 8); register 4 j + i is
  // column 8 j + 2 (lane % 4) + (i & 1) of row + 8 (i >> 1).
  const int local = consumer * 64 + warp * 16 + lane / 4;
  float acc[BN / 2];
  int it = 0;
  for (int job = static_cast<int>(blockIdx.x); job < jobs; job += static_cast<int>(gridDim.x)) {
    Job j;
    if (!schedule.Decode(job, j)) continue;
    Product::Run(params, acc, ring, it, j, consumer, lane, local);
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
#else
  __trap();  // built without sm_90a: TiledGroupedSupported is false and the launcher never gets here
#endif
}

// The expert of each tile of the padded layout (see MoeTileExperts): one block, an exclusive scan of the
// experts' tile counts (Hillis-Steele over the 1024 threads), then each tile's group.
__global__ void TileExpertsKernel(int32_t* tile_expert, int64_t tiles, const int64_t* counts, int experts,
                                  int32_t* tile_begin) {
  __shared__ int32_t begin[1025];  // expert e owns tiles [begin[e], begin[e + 1])
  const int e = static_cast<int>(threadIdx.x);
  begin[e + 1] = e < experts ? static_cast<int32_t>((counts[e] + kBM - 1) / kBM) : 0;
  if (e == 0) begin[0] = 0;
  __syncthreads();
  for (int offset = 1; offset < static_cast<int>(blockDim.x); offset <<= 1) {
    const int32_t add = e >= offset ? begin[e + 1 - offset] : 0;
    __syncthreads();
    begin[e + 1] += add;
    __syncthreads();
  }
  if (e == 0 && begin[experts] > tiles) __trap();  // the caller's tile budget is too small
  if (tile_begin != nullptr)
    for (int i = e; i <= experts; i += static_cast<int>(blockDim.x)) tile_begin[i] = begin[i];
  for (int64_t t = e; t < tiles; t += blockDim.x)
    tile_expert[t] = t < begin[experts] ? common::FindGroup(begin, experts, t) : -1;
}

PFN_cuTensorMapEncodeTiled_v12000 EncodeTiled() {
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
CUtensorMap RowMajorMap(const void* base, CUtensorMapDataType type, int64_t rows, int64_t cols, int64_t stride,
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

bool DeviceIsSm90() {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;
}

int MultiprocessorCount() {
  int device = 0, count = 0;
  FATHOM_CUDA_CHECK(cudaGetDevice(&device));
  FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// One persistent launch of `jobs` output tiles described by `schedule`.
template <class Product, class OutT, class Schedule>
void LaunchTiled(const CUtensorMap& a_map, const CUtensorMap& b_map, const typename Product::Params& params,
                 OutT* out, bool accumulate, const Schedule& schedule, int64_t jobs, int64_t n, int max_ctas,
                 Stream stream) {
  using T = Tiling<Product::kBN>;
  static const bool configured = [] {
    FATHOM_CUDA_CHECK(cudaFuncSetAttribute(TiledKernel<Product, OutT, Schedule>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes));
    return true;
  }();
  (void)configured;
  if (jobs == 0) return;
  const int ctas = max_ctas > 0 ? std::min(max_ctas, MultiprocessorCount()) : MultiprocessorCount();
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(jobs, ctas));
  TiledKernel<Product, OutT, Schedule><<<grid, kThreads, T::kSmemBytes, stream>>>(
      a_map, b_map, params, out, accumulate, schedule, static_cast<int>(jobs), static_cast<int>(n));
  FATHOM_CUDA_CHECK_LAUNCH();
}

int64_t ColumnTiles(int64_t n, int bn) { return (n + bn - 1) / bn; }

template <int BN>
void LaunchBf16(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert, int max_ctas,
                Stream stream) {
  const int64_t tiles = tile_expert.numel(), k = x.dim(1), n = out.dim(1), experts = w.dim(0);
  const CUtensorMap x_map = RowMajorMap(x.raw(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, tiles * kBM, k, 2 * k, kBM);
  const CUtensorMap w_map = RowMajorMap(w.raw(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, experts * n, k, 2 * k, BN);
  const RowTiles<DeviceTileMap, BN> schedule{{static_cast<const int32_t*>(tile_expert.raw())}, static_cast<int>(n),
                                             static_cast<int>(k / kBK)};
  LaunchTiled<Bf16Product<BN>, __nv_bfloat16>(x_map, w_map, {}, static_cast<__nv_bfloat16*>(out.raw()), false,
                                              schedule, tiles * ColumnTiles(n, BN), n, max_ctas, stream);
}

void CheckTileMap(const char* op, const Tensor& tile_expert) {
  common::CheckCuda(op, tile_expert, "tile_expert");
  FATHOM_CHECK(tile_expert.dtype() == DType::kI32 && tile_expert.ndim() == 1, "[", op, "] tile_expert ",
               tile_expert.shape_str(), ", expected (T) i32");
}

// What the bf16 row-tile forms (NT, NN) check: bf16 CUDA tensors x (T*128, K) and out (T*128, N) over the T
// tiles of tile_expert, and w (E, ...) with K at its dimension `red_dim` and N at the other (`w_shape` names
// the expected layout); the weight map's E * w.dim(1) rows and the outputs within 32-bit TMA coordinates.
void CheckBf16RowTiles(const char* op, const Tensor& out, const Tensor& x, const Tensor& w,
                       const Tensor& tile_expert, int red_dim, const char* w_shape) {
  common::CheckCuda(op, out, "out");
  common::CheckCuda(op, x, "x");
  common::CheckCuda(op, w, "w");
  CheckTileMap(op, tile_expert);
  FATHOM_CHECK(x.dtype() == DType::kBF16 && w.dtype() == DType::kBF16 && out.dtype() == DType::kBF16, "[", op,
               "] x ", DTypeName(x.dtype()), ", w ", DTypeName(w.dtype()), ", out ", DTypeName(out.dtype()),
               ": bf16 only");
  const int64_t tiles = tile_expert.numel();
  const int out_dim = red_dim == 2 ? 1 : 2;
  FATHOM_CHECK(x.ndim() == 2 && w.ndim() == 3 && out.ndim() == 2 && x.dim(0) == tiles * kBM &&
                   out.dim(0) == x.dim(0) && w.dim(red_dim) == x.dim(1) && out.dim(1) == w.dim(out_dim),
               "[", op, "] x ", x.shape_str(), ", w ", w.shape_str(), ", out ", out.shape_str(), " for ", tiles,
               " tiles: expected x (T*128, K), ", w_shape, ", out (T*128, N)");
  FATHOM_CHECK(w.dim(0) * w.dim(1) <= INT32_MAX && tiles * kBM <= INT32_MAX && tiles * out.dim(1) <= INT32_MAX,
               "[", op, "] too large for 32-bit TMA rows");
}

}  // namespace

int64_t MaxExpertTiles(int64_t rows, int64_t num_experts) {
  return cpu::MaxPaddedRows(rows, num_experts, kBM) / kBM;
}

void MoeTileExperts(const Tensor& tile_expert, const Tensor& counts, Stream stream, const Tensor& tile_begin) {
  const char* op = "moe_tile_experts";
  common::CheckCuda(op, tile_expert, "tile_expert");
  common::CheckCuda(op, counts, "counts");
  FATHOM_CHECK(tile_expert.dtype() == DType::kI32 && tile_expert.ndim() == 1, "[", op, "] tile_expert ",
               tile_expert.shape_str(), " ", DTypeName(tile_expert.dtype()), ", expected (T) i32");
  FATHOM_CHECK(counts.dtype() == DType::kI64 && counts.ndim() == 1 && counts.dim(0) >= 1 && counts.dim(0) <= 1024,
               "[", op, "] counts ", counts.shape_str(), " ", DTypeName(counts.dtype()),
               ", expected (E) i64 with 1 <= E <= 1024");
  if (tile_begin.defined()) {
    common::CheckCuda(op, tile_begin, "tile_begin");
    FATHOM_CHECK(tile_begin.dtype() == DType::kI32 && tile_begin.ndim() == 1 && tile_begin.dim(0) == counts.dim(0) + 1,
                 "[", op, "] tile_begin ", tile_begin.shape_str(), " ", DTypeName(tile_begin.dtype()),
                 ", expected (", counts.dim(0) + 1, ") i32");
  } else if (tile_expert.numel() == 0) {
    return;
  }
  TileExpertsKernel<<<1, 1024, 0, stream>>>(static_cast<int32_t*>(tile_expert.raw()), tile_expert.numel(),
                                            static_cast<const int64_t*>(counts.raw()),
                                            static_cast<int>(counts.dim(0)),
                                            tile_begin.defined() ? static_cast<int32_t*>(tile_begin.raw()) : nullptr);
  FATHOM_CUDA_CHECK_LAUNCH();
}

bool TiledGroupedSupported(int64_t n, int64_t k) {
  static const bool sm90 = DeviceIsSm90();
  return sm90 && n > 0 && n % 8 == 0 && k > 0 && k % kBK == 0;
}

int TiledGroupedDefaultBlockN(int64_t n) {
  if (n % 256 == 0) return 256;
  if (n % 176 == 0) return 176;
  return n % 128 == 0 ? 128 : 256;
}

void TiledGroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                          Stream stream, int block_n, int max_ctas) {
  const char* op = "tiled_grouped_matmul_nt";
  CheckBf16RowTiles(op, out, x, w, tile_expert, 2, "w (E, N, K)");
  const int64_t tiles = tile_expert.numel(), n = out.dim(1), k = x.dim(1);
  FATHOM_CHECK(TiledGroupedSupported(n, k), "[", op, "] needs an sm_90 GPU (H100/H200), K a multiple of ", kBK,
               " and N of 8; got K ", k, ", N ", n);
  if (tiles == 0) return;
  if (block_n == 0) block_n = TiledGroupedDefaultBlockN(n);
  switch (block_n) {
    case 128:
      LaunchBf16<128>(out, x, w, tile_expert, max_ctas, stream);
      break;
    case 176:
      LaunchBf16<176>(out, x, w, tile_expert, max_ctas, stream);
      break;
    case 256:
      LaunchBf16<256>(out, x, w, tile_expert, max_ctas, stream);
      break;
    default:
      FATHOM_CHECK(false, "[", op, "] block_n ", block_n, ": expected 0, 128, 176 or 256");
  }
}

namespace {

// 256: on an H200 at the recipe's widths (gemm_bench, 2026-12-04) BN 256 was as fast as 128 or faster for
// every MN-major form, even at N = 1408 (5.5 column tiles): NN 459 / 459 TFLOP/s (N 1408), 472 / 436 (N
// 2048); TN 425 / 417 (N 1408), 460 / 421 (N 2048), BN 256 / 128.
int MnDefaultBlockN(int64_t) { return 256; }

template <int BN>
void LaunchBf16NN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert, bool accumulate,
                  int max_ctas, Stream stream) {
  const int64_t tiles = tile_expert.numel(), red = x.dim(1), n = out.dim(1), experts = w.dim(0);
  const CUtensorMap x_map = RowMajorMap(x.raw(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, tiles * kBM, red, 2 * red, kBM);
  const CUtensorMap w_map = RowMajorMap(w.raw(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, experts * red, n, 2 * n, 64);
  const RowTiles<DeviceTileMap, BN, true> schedule{{static_cast<const int32_t*>(tile_expert.raw())},
                                                   static_cast<int>(n), static_cast<int>(red / kBK)};
  LaunchTiled<Bf16Product<BN, false, true>, __nv_bfloat16>(x_map, w_map, {}, static_cast<__nv_bfloat16*>(out.raw()),
                                                           accumulate, schedule, tiles * ColumnTiles(n, BN), n,
                                                           max_ctas, stream);
}

template <int BN>
void LaunchBf16TN(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& tile_begin, bool accumulate,
                  int max_ctas, Stream stream) {
  const int64_t rows = a.dim(0), m = a.dim(1), n = b.dim(1), groups = tile_begin.dim(0) - 1;
  const CUtensorMap a_map = RowMajorMap(a.raw(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rows, m, 2 * m, 64);
  const CUtensorMap b_map = RowMajorMap(b.raw(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rows, n, 2 * n, 64);
  const DeviceKGroups<BN> schedule{static_cast<const int32_t*>(tile_begin.raw()), static_cast<int>(m),
                                   static_cast<int>(n), !accumulate};
  LaunchTiled<Bf16Product<BN, true, true>, float>(a_map, b_map, {}, static_cast<float*>(out.raw()), accumulate,
                                                  schedule, groups * ColumnTiles(m, kBM) * ColumnTiles(n, BN), n,
                                                  max_ctas, stream);
}

}  // namespace

bool TiledGroupedMnSupported(int64_t n, int64_t reduction) {
  static const bool sm90 = DeviceIsSm90();
  return sm90 && n > 0 && n % 8 == 0 && reduction > 0 && reduction % kBK == 0;
}

void TiledGroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                          bool accumulate, Stream stream, int block_n, int max_ctas) {
  const char* op = "tiled_grouped_matmul_nn";
  CheckBf16RowTiles(op, out, x, w, tile_expert, 1, "w (E, K, N)");
  const int64_t tiles = tile_expert.numel(), n = out.dim(1), red = x.dim(1);
  FATHOM_CHECK(TiledGroupedMnSupported(n, red), "[", op, "] needs an sm_90 GPU (H100/H200), K a multiple of ",
               kBK, " and N of 8; got K ", red, ", N ", n);
  if (tiles == 0) return;
  if (block_n == 0) block_n = MnDefaultBlockN(n);
  FATHOM_CHECK(block_n == 128 || block_n == 256, "[", op, "] block_n ", block_n, ": expected 0, 128 or 256");
  if (block_n == 128) {
    LaunchBf16NN<128>(out, x, w, tile_expert, accumulate, max_ctas, stream);
  } else {
    LaunchBf16NN<256>(out, x, w, tile_expert, accumulate, max_ctas, stream);
  }
}

void TiledGroupedMatmulTN(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& tile_begin,
                          bool accumulate, Stream stream, int block_n, int max_ctas) {
  const char* op = "tiled_grouped_matmul_tn";
  common::CheckCuda(op, out, "out");
  common::CheckCuda(op, a, "a");
  common::CheckCuda(op, b, "b");
  common::CheckCuda(op, tile_begin, "tile_begin");
  FATHOM_CHECK(a.dtype() == DType::kBF16 && b.dtype() == DType::kBF16 && out.dtype() == DType::kF32, "[", op,
               "] a ", DTypeName(a.dtype()), ", b ", DTypeName(b.dtype()), ", out ", DTypeName(out.dtype()),
               ": bf16 operands, f32 out");
  FATHOM_CHECK(tile_begin.dtype() == DType::kI32 && tile_begin.ndim() == 1 && tile_begin.dim(0) >= 2, "[", op,
               "] tile_begin ", tile_begin.shape_str(), " ", DTypeName(tile_begin.dtype()), ", expected (G + 1) i32");
  const int64_t groups = tile_begin.dim(0) - 1;
  FATHOM_CHECK(a.ndim() == 2 && b.ndim() == 2 && a.dim(0) == b.dim(0) && a.dim(0) % kBM == 0 &&
                   ((out.ndim() == 3 && out.dim(0) == groups) || (out.ndim() == 2 && groups == 1)) &&
                   out.dim(out.ndim() - 2) == a.dim(1) && out.dim(out.ndim() - 1) == b.dim(1),
               "[", op, "] a ", a.shape_str(), ", b ", b.shape_str(), ", out ", out.shape_str(), " over ", groups,
               " groups: expected a (T*128, M), b (T*128, N), out (G, M, N)");
  const int64_t m = a.dim(1), n = b.dim(1);
  FATHOM_CHECK(TiledGroupedMnSupported(n, kBK) && m > 0 && m % 8 == 0, "[", op,
               "] needs an sm_90 GPU (H100/H200) and M, N multiples of 8; got M ", m, ", N ", n);
  FATHOM_CHECK(a.dim(0) <= INT32_MAX && groups * m * n <= INT32_MAX, "[", op, "] too large for 32-bit indices");
  if (a.dim(0) == 0) {  // no tokens at all: every group is empty
    if (!accumulate) FATHOM_CUDA_CHECK(cudaMemsetAsync(out.raw(), 0, out.nbytes(), stream));
    return;
  }
  if (block_n == 0) block_n = MnDefaultBlockN(n);
  FATHOM_CHECK(block_n == 128 || block_n == 256, "[", op, "] block_n ", block_n, ": expected 0, 128 or 256");
  if (block_n == 128) {
    LaunchBf16TN<128>(out, a, b, tile_begin, accumulate, max_ctas, stream);
  } else {
    LaunchBf16TN<256>(out, a, b, tile_begin, accumulate, max_ctas, stream);
  }
}

}  // namespace fathom::cuda

namespace fathom::cuda {

bool TiledFp8Supported(int64_t n) {
  static const bool sm90 = DeviceIsSm90();
  return sm90 && n > 0 && n % 16 == 0;
}

namespace {

// The FP8 launch over `tiles` row tiles named by `source` (a DeviceTileMap or a TilePrefix).
template <class Tiles>
void LaunchFp8(const char* op, const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w, const Tiles& source,
               int64_t tiles, bool accumulate, Stream stream, int max_ctas) {
  common::CheckCuda(op, out, "out");
  common::CheckCuda(op, x.data, "x");
  common::CheckCuda(op, w.codes, "w codes");
  common::CheckCuda(op, w.scales, "w scales");
  const int64_t n = w.rows, k = w.cols, experts = w.matrices();
  FATHOM_CHECK(out.dtype() == DType::kBF16 || out.dtype() == DType::kF32, "[", op, "] out ",
               DTypeName(out.dtype()), ": bf16 or f32");
  CheckFp8Rows(op, x, tiles * kBM, k);
  FATHOM_CHECK(out.ndim() == 2 && out.dim(0) == tiles * kBM && out.dim(1) == n, "[", op, "] out ",
               out.shape_str(), " for ", tiles, " tiles of ", n, " columns: expected (T*128, N)");
  FATHOM_CHECK(TiledFp8Supported(n), "[", op, "] needs an sm_90 GPU (H100/H200) and N a multiple of 16; got N ",
               n);
  FATHOM_CHECK(experts * n <= INT32_MAX && tiles * kBM <= INT32_MAX && tiles * n <= INT32_MAX, "[", op,
               "] too large for 32-bit TMA rows");
  if (tiles == 0) return;
  const CUtensorMap x_map = RowMajorMap(x.data.raw(), CU_TENSOR_MAP_DATA_TYPE_UINT8, tiles * kBM,
                                        x.padded_cols(), x.row_bytes(), kBM);
  const CUtensorMap w_map = RowMajorMap(w.codes.raw(), CU_TENSOR_MAP_DATA_TYPE_UINT8, experts * n, Fp8Padded(k),
                                        Fp8Padded(k), Fp8Product::kBN);
  const Fp8Product::Params params{static_cast<const uint8_t*>(x.data.raw()), x.row_bytes(), x.padded_cols(),
                                  static_cast<const float*>(w.scales.raw()), Fp8Blocks(n),
                                  Fp8ScaleStride(Fp8Blocks(k))};
  const RowTiles<Tiles, Fp8Product::kBN> schedule{source, static_cast<int>(n), static_cast<int>(Fp8Blocks(k))};
  const int64_t jobs = tiles * ColumnTiles(n, Fp8Product::kBN);
  if (out.dtype() == DType::kBF16) {
    LaunchTiled<Fp8Product, __nv_bfloat16>(x_map, w_map, params, static_cast<__nv_bfloat16*>(out.raw()),
                                           accumulate, schedule, jobs, n, max_ctas, stream);
  } else {
    LaunchTiled<Fp8Product, float>(x_map, w_map, params, static_cast<float*>(out.raw()), accumulate, schedule,
                                   jobs, n, max_ctas, stream);
  }
}

}  // namespace

void TiledFp8GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w,
                             const Tensor& tile_expert, bool accumulate, Stream stream, int max_ctas) {
  const char* op = "tiled_fp8_grouped_matmul_nt";
  CheckTileMap(op, tile_expert);
  LaunchFp8(op, out, x, w, DeviceTileMap{static_cast<const int32_t*>(tile_expert.raw())}, tile_expert.numel(),
            accumulate, stream, max_ctas);
}

bool TiledCountsOk(const std::vector<int64_t>& counts) {
  if (counts.empty() || counts.size() > static_cast<size_t>(kMaxPrefixGroups)) return false;
  int64_t tiles = 0;
  for (int64_t c : counts) {
    if (c < 0 || c % kBM != 0) return false;
    tiles += c / kBM;
  }
  return tiles <= INT32_MAX / kBM;
}

void TiledFp8GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w,
                             const std::vector<int64_t>& counts, bool accumulate, Stream stream, int max_ctas) {
  const char* op = "tiled_fp8_grouped_matmul_nt";
  FATHOM_CHECK(TiledCountsOk(counts), "[", op, "] ", counts.size(), " groups: expected 1 to ", kMaxPrefixGroups,
               " row counts, each a multiple of ", kBM);
  FATHOM_CHECK(static_cast<int64_t>(counts.size()) == w.matrices(), "[", op, "] ", counts.size(),
               " counts for ", w.matrices(), " weight matrices");
  TilePrefix prefix{};
  prefix.groups = static_cast<int32_t>(counts.size());
  for (size_t g = 0; g < counts.size(); ++g)
    prefix.begin[g + 1] = prefix.begin[g] + static_cast<int32_t>(counts[g] / kBM);
  LaunchFp8(op, out, x, w, prefix, prefix.begin[counts.size()], accumulate, stream, max_ctas);
}

bool TiledFp8TNSupported(int64_t n, int64_t groups) {
  return groups >= 1 && groups <= kMaxPrefixGroups && TiledFp8Supported(n);
}

void TiledFp8GroupedMatmulTN(const Tensor& out, const Fp8Cols& a, const Fp8Cols& b, bool accumulate, Stream stream,
                             int max_ctas) {
  const char* op = "tiled_fp8_grouped_matmul_tn";
  common::CheckCuda(op, out, "out");
  common::CheckCuda(op, a.codes, "a codes");
  common::CheckCuda(op, a.scales, "a scales");
  common::CheckCuda(op, b.codes, "b codes");
  common::CheckCuda(op, b.scales, "b scales");
  FATHOM_CHECK(out.dtype() == DType::kF32, "[", op, "] out ", DTypeName(out.dtype()), ": f32 only");
  const std::vector<int64_t> counts = CheckFp8MatmulTN(op, out, a, b);
  const int64_t m = a.cols(), n = b.cols(), tp = a.padded_tokens(), groups = static_cast<int64_t>(counts.size());
  FATHOM_CHECK(TiledFp8TNSupported(n, groups), "[", op, "] needs an sm_90 GPU (H100/H200), N a multiple of 16 ",
               "and 1 to ", kMaxPrefixGroups, " groups; got N ", n, ", ", groups, " groups");
  FATHOM_CHECK(groups * m * n <= INT32_MAX && tp / kBM <= INT32_MAX && m <= INT32_MAX && n <= INT32_MAX, "[", op,
               "] too large for the kernel's 32-bit indices");
  TilePrefix k{};
  k.groups = static_cast<int32_t>(groups);
  for (int64_t g = 0; g < groups; ++g) {
    k.begin[g + 1] = k.begin[g] + static_cast<int32_t>(Fp8Padded(counts[static_cast<size_t>(g)]) / kBM);
    if (!accumulate && k.begin[g + 1] == k.begin[g] && m * n > 0)  // no tokens: the overwritten out[g] is 0
      FATHOM_CUDA_CHECK(cudaMemsetAsync(static_cast<float*>(out.raw()) + g * m * n, 0,
                                        static_cast<size_t>(m * n) * sizeof(float), stream));
  }
  if (tp == 0 || m == 0) return;
  const CUtensorMap a_map = RowMajorMap(a.codes.raw(), CU_TENSOR_MAP_DATA_TYPE_UINT8, m, tp, tp, kBM);
  const CUtensorMap b_map = RowMajorMap(b.codes.raw(), CU_TENSOR_MAP_DATA_TYPE_UINT8, n, tp, tp, Fp8ColsProduct::kBN);
  const Fp8ColsProduct::Params params{static_cast<const float*>(a.scales.raw()),
                                      static_cast<const float*>(b.scales.raw()), static_cast<int>(m),
                                      static_cast<int>(n)};
  const KGroups<Fp8ColsProduct::kBN> schedule{k, static_cast<int>(m), static_cast<int>(n)};
  const int64_t jobs = groups * ColumnTiles(m, kBM) * ColumnTiles(n, Fp8ColsProduct::kBN);
  LaunchTiled<Fp8ColsProduct, float>(a_map, b_map, params, static_cast<float*>(out.raw()), accumulate, schedule,
                                     jobs, n, max_ctas, stream);
}

}  // namespace fathom::cuda
