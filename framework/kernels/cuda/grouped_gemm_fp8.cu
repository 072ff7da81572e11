// fathom's own grouped GEMMs on Hopper, the FP8 forms (see grouped_gemm.h): e4m3 products with block scales
// promoted to f32 every 128-deep block (the forward/dgrad over row tiles, the weight gradient over each
// group's tokens) on grouped_gemm_tiled.cuh's kernel. The bf16 forms are grouped_gemm.cu's.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <vector>

#include "framework/check.h"
#include "framework/cuda/check.h"
#include "framework/fp8_operands.h"
#include "framework/kernels/cuda/grouped_gemm.h"
#include "framework/kernels/cuda/grouped_gemm_tiled.cuh"

namespace fathom::cuda {
using namespace tiled;  // this file's kernel machinery
namespace {

#ifdef FATHOM_SM90A
// Issues column half `h` (64 of the tile's 128 columns) of k-block `it`'s products (its stage acquired):
// partial (64 x 64 of this consumer group, f32, 32 registers) = the sum of the block's four e4m3
// wgmma.m64n64k32 products, committed as one wgmma group. B's half h is its rows [64 h, 64 h + 64), 8 KB in.
template <int h>
__device__ __forceinline__ void Fp8IssueHalf(float* partial, const Ring<128>& ring, int it, int consumer) {
  const uint64_t desc_a = TileDescriptor(ring.A(it, consumer)),
                 desc_b = TileDescriptor(ring.B(it) + h * 64 * kRowBytes);
  FenceAccumulators<32>(partial);
  WgmmaFence();
#pragma unroll
  for (int k = 0; k < kRowBytes / 32; ++k) WgmmaFp8x64(partial, desc_a + 2 * k, desc_b + 2 * k, k > 0);
  WgmmaCommit();
}

// The FP8 forms' main loop over one job's k-blocks, software-pipelined by column halves so the tensor cores
// never wait for a promotion: while half 0 of a block is promoted, its half 1 runs; while half 1 is promoted,
// the next block's half 0 runs. Per half and k-block: prepare(h, kb) (start the scale loads; called before
// the wait, so their latency overlaps the products), then promote(h, partial, kb) once the half's partial is
// in registers. A stage is released when both its halves are done. 64 accumulator + 2 x 32 partial registers
// (a whole-width partial per block plus a second to overlap with would need 192, past the 168 a thread has).
template <class Prepare, class Promote>
__device__ __forceinline__ void Fp8MainLoop(const Ring<128>& ring, int& it, int k_blocks, int consumer,
                                            int lane, const Prepare& prepare, const Promote& promote) {
  float p0[32], p1[32];
  if (k_blocks == 0) return;
  ring.Acquire(it);
  Fp8IssueHalf<0>(p0, ring, it, consumer);
  Fp8IssueHalf<1>(p1, ring, it, consumer);
  // Every block but the last, with no branch between its wgmma issues and waits: ptxas serialises the
  // wgmmas (C7518, a warpgroup wait it inserts "in divergent path") when an issue or a wait sits in a
  // branch, as it did when the last block was a condition inside this loop.
  int kb = 0;
  for (; kb + 1 < k_blocks; ++kb, ++it) {
    prepare(0, kb);
    WgmmaWait<1>();  // in flight: half 1 of kb
    FenceAccumulators<32>(p0);
    promote(0, p0, kb);
    prepare(1, kb);
    ring.Acquire(it + 1);
    Fp8IssueHalf<0>(p0, ring, it + 1, consumer);
    WgmmaWait<1>();  // in flight: half 0 of kb + 1
    FenceAccumulators<32>(p1);
    ring.Release(it, lane);
    promote(1, p1, kb);
    Fp8IssueHalf<1>(p1, ring, it + 1, consumer);
  }
  // The last block: nothing to issue behind it.
  prepare(0, kb);
  WgmmaWait<1>();  // in flight: half 1 of kb
  FenceAccumulators<32>(p0);
  promote(0, p0, kb);
  prepare(1, kb);
  WgmmaWait<0>();
  FenceAccumulators<32>(p1);
  ring.Release(it, lane);
  promote(1, p1, kb);
  ++it;
}
#endif

// e4m3 with block scales (the twin of cpu::Fp8GroupedMatmulNT): per 128-deep k-block and column half, four
// wgmma.m64n64k32 into a partial sum, then acc += partial * (x row scale * w block scale) (Fp8MainLoop). BN =
// 128, so an output tile is one 128-wide block of w's rows and takes one weight scale per k-block.
struct Fp8Product {
  static constexpr int kBN = 128, kBlockElems = kRowBytes;
  static constexpr bool kAMn = false, kBMn = false, kTmaStore = true;
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
    const float* ws =
        p.w_scales + (static_cast<int64_t>(job.group) * p.w_blocks_n + job.n0 / kBN) * p.w_scale_stride;
#pragma unroll
    for (int i = 0; i < kBN / 2; ++i) acc[i] = 0.0f;
    float sw = 0, sx0 = 0, sx8 = 0;  // k-block kb's scales, loaded by prepare(0, kb)
    const auto prepare = [&](int h, int kb) {
      if (h == 0) {
        sw = ws[kb];
        sx0 = xs0[kb];
        sx8 = xs8[kb];
      }
    };
    // acc's half h (registers 32 h + 4 j + i) += partial * (x row scale * w block scale), the CPU's order.
    const auto promote = [&](int h, const float* partial, int) {
      const float s0 = sx0 * sw, s8 = sx8 * sw;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        acc[32 * h + 4 * j] += partial[4 * j] * s0;
        acc[32 * h + 4 * j + 1] += partial[4 * j + 1] * s0;
        acc[32 * h + 4 * j + 2] += partial[4 * j + 2] * s8;
        acc[32 * h + 4 * j + 3] += partial[4 * j + 3] * s8;
      }
    };
    Fp8MainLoop(ring, it, job.k_blocks, consumer, lane, prepare, promote);
  }
#endif
};

// e4m3 weight gradients (the twin of cpu::Fp8GroupedMatmulTN): a and b are Fp8Cols, both K-major along
// the padded tokens, with one scale per 128-token tile and column: scales (Tp / 128, C). Per k-block t,
// acc[r][c] += partial[r][c] * (a scale of row r * b scale of column c). Rows past M and columns past N
// read scale 0 (their codes are TMA's zero fill).
struct Fp8ColsProduct {
  static constexpr int kBN = 128, kBlockElems = kRowBytes;
  // No TMA-store epilogue: with it, ptxas spills 64-112 bytes of this product's registers (acc, the two half
  // partials and a half's column scales are 144 of the 168).
  static constexpr bool kAMn = false, kBMn = false, kTmaStore = false;
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
#pragma unroll
    for (int i = 0; i < kBN / 2; ++i) acc[i] = 0.0f;
    float sa0 = 0, sa8 = 0, sb[16];  // k-block kb's row scales and this half's column scales
    const auto prepare = [&](int h, int kb) {
      const int64_t t = static_cast<int64_t>(job.k0) + kb;
      if (h == 0) {
        const float* sa = p.a_scales + t * p.m;
        sa0 = r0 < p.m ? sa[r0] : 0.0f;
        sa8 = r8 < p.m ? sa[r8] : 0.0f;
      }
      const float* sbrow = p.b_scales + t * p.n;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int c = c0 + 64 * h + 8 * j;  // n is a multiple of 16 and c even: c + 1 < n whenever c < n
        sb[2 * j] = c < p.n ? sbrow[c] : 0.0f;
        sb[2 * j + 1] = c < p.n ? sbrow[c + 1] : 0.0f;
      }
    };
    const auto promote = [&](int h, const float* partial, int) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        acc[32 * h + 4 * j] += partial[4 * j] * (sa0 * sb[2 * j]);
        acc[32 * h + 4 * j + 1] += partial[4 * j + 1] * (sa0 * sb[2 * j + 1]);
        acc[32 * h + 4 * j + 2] += partial[4 * j + 2] * (sa8 * sb[2 * j]);
        acc[32 * h + 4 * j + 3] += partial[4 * j + 3] * (sa8 * sb[2 * j + 1]);
      }
    };
    Fp8MainLoop(ring, it, job.k_blocks, consumer, lane, prepare, promote);
  }
#endif
};

// The FP8 forms' launch (CheckedShape); their column tile is always 128.
template <class Product>
LaunchShape Fp8Shape(const char* op, const TiledLaunch& launch) {
  FATHOM_CHECK(launch.block_n == 0 || launch.block_n == 128, "[", op, "] block_n ", launch.block_n,
               ": the FP8 forms take 0 or 128");
  return CheckedShape(op, launch, Product::kBN, Product::kTmaStore);
}

}  // namespace

bool TiledFp8Supported(int64_t n) {
  static const bool sm90 = DeviceIsSm90();
  return sm90 && n > 0 && n % 16 == 0;
}

namespace {

// The FP8 launch over `tiles` row tiles named by `source` (a DeviceTileMap or a TilePrefix).
template <class Tiles>
void LaunchFp8(const char* op, const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w,
               const Tiles& source, int64_t tiles, bool accumulate, Stream stream,
               const TiledLaunch& launch) {
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
  const LaunchShape shape = Fp8Shape<Fp8Product>(op, launch);
  if (tiles == 0) return;
  const CUtensorMap x_map = RowMajorMap(x.data.raw(), CU_TENSOR_MAP_DATA_TYPE_UINT8, tiles * kBM,
                                        x.padded_cols(), x.row_bytes(), ABoxRows(shape.cluster));
  const CUtensorMap w_map = RowMajorMap(w.codes.raw(), CU_TENSOR_MAP_DATA_TYPE_UINT8, experts * n, Fp8Padded(k),
                                        Fp8Padded(k), Fp8Product::kBN);
  const Fp8Product::Params params{static_cast<const uint8_t*>(x.data.raw()), x.row_bytes(), x.padded_cols(),
                                  static_cast<const float*>(w.scales.raw()), Fp8Blocks(n),
                                  Fp8ScaleStride(Fp8Blocks(k))};
  const RowTiles<Tiles, Fp8Product::kBN> schedule{source, static_cast<int>(n),
                                                  static_cast<int>(Fp8Blocks(k))};
  if (out.dtype() == DType::kBF16) {
    LaunchTiled<Fp8Product, __nv_bfloat16>(x_map, w_map, params, static_cast<__nv_bfloat16*>(out.raw()),
                                           {1, tiles * kBM}, accumulate, schedule, tiles, n, shape,
                                           launch.max_ctas, stream);
  } else {
    LaunchTiled<Fp8Product, float>(x_map, w_map, params, static_cast<float*>(out.raw()), {1, tiles * kBM},
                                   accumulate, schedule, tiles, n, shape, launch.max_ctas, stream);
  }
}

}  // namespace

void TiledFp8GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w,
                             const Tensor& tile_expert, bool accumulate, Stream stream,
                             const TiledLaunch& launch) {
  const char* op = "tiled_fp8_grouped_matmul_nt";
  CheckTileMap(op, tile_expert);
  LaunchFp8(op, out, x, w, DeviceTileMap{static_cast<const int32_t*>(tile_expert.raw())}, tile_expert.numel(),
            accumulate, stream, launch);
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
                             const std::vector<int64_t>& counts, bool accumulate, Stream stream,
                             const TiledLaunch& launch) {
  const char* op = "tiled_fp8_grouped_matmul_nt";
  FATHOM_CHECK(TiledCountsOk(counts), "[", op, "] ", counts.size(), " groups: expected 1 to ", kMaxPrefixGroups,
               " row counts, each a multiple of ", kBM);
  FATHOM_CHECK(static_cast<int64_t>(counts.size()) == w.matrices(), "[", op, "] ", counts.size(),
               " counts for ", w.matrices(), " weight matrices");
  TilePrefix prefix{};
  prefix.groups = static_cast<int32_t>(counts.size());
  for (size_t g = 0; g < counts.size(); ++g)
    prefix.begin[g + 1] = prefix.begin[g] + static_cast<int32_t>(counts[g] / kBM);
  LaunchFp8(op, out, x, w, prefix, prefix.begin[counts.size()], accumulate, stream, launch);
}

bool TiledFp8TNSupported(int64_t n, int64_t groups) {
  return groups >= 1 && groups <= kMaxPrefixGroups && TiledFp8Supported(n);
}

void TiledFp8GroupedMatmulTN(const Tensor& out, const Fp8Cols& a, const Fp8Cols& b, bool accumulate,
                             Stream stream, const TiledLaunch& launch) {
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
  FATHOM_CHECK(groups * m * n <= INT32_MAX && tp <= INT32_MAX && m <= INT32_MAX && n <= INT32_MAX, "[", op,
               "] too large for the kernel's 32-bit indices");
  const LaunchShape shape = Fp8Shape<Fp8ColsProduct>(op, launch);
  TilePrefix k{};
  k.groups = static_cast<int32_t>(groups);
  for (int64_t g = 0; g < groups; ++g) {
    k.begin[g + 1] = k.begin[g] + static_cast<int32_t>(Fp8Padded(counts[static_cast<size_t>(g)]) / kBM);
    if (!accumulate && k.begin[g + 1] == k.begin[g] && m * n > 0)  // no tokens: the overwritten out[g] is 0
      FATHOM_CUDA_CHECK(cudaMemsetAsync(static_cast<float*>(out.raw()) + g * m * n, 0,
                                        static_cast<size_t>(m * n) * sizeof(float), stream));
  }
  if (tp == 0 || m == 0) return;
  const CUtensorMap a_map =
      RowMajorMap(a.codes.raw(), CU_TENSOR_MAP_DATA_TYPE_UINT8, m, tp, tp, ABoxRows(shape.cluster));
  const CUtensorMap b_map = RowMajorMap(b.codes.raw(), CU_TENSOR_MAP_DATA_TYPE_UINT8, n, tp, tp, Fp8ColsProduct::kBN);
  const Fp8ColsProduct::Params params{static_cast<const float*>(a.scales.raw()),
                                      static_cast<const float*>(b.scales.raw()), static_cast<int>(m),
                                      static_cast<int>(n)};
  const KGroups<Fp8ColsProduct::kBN> schedule{k, static_cast<int>(m)};
  LaunchTiled<Fp8ColsProduct, float>(a_map, b_map, params, static_cast<float*>(out.raw()), {groups, m},
                                     accumulate, schedule, groups * ColumnTiles(m, kBM), n, shape,
                                     launch.max_ctas, stream);
}

}  // namespace fathom::cuda
