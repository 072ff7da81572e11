// fathom's own grouped GEMMs on Hopper, the bf16 forms and the tile map (see grouped_gemm.h): the bf16 product
// (wgmma.m64nBNk16, either operand K- or MN-major) on grouped_gemm_tiled.cuh's kernel, launched as the
// forward (NT), input-gradient (NN) and weight-gradient (TN) forms. The FP8 forms are grouped_gemm_fp8.cu's.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "framework/check.h"
#include "framework/cuda/check.h"
#include "framework/kernels/cpu/moe.h"
#include "framework/kernels/cuda/grouped_gemm.h"
#include "framework/kernels/cuda/grouped_gemm_tiled.cuh"

namespace fathom::cuda {
using namespace tiled;  // this file's kernel machinery
namespace {

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
  static constexpr bool kAMn = kAMnMajor, kBMn = kBMnMajor, kTmaStore = true;
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

template <int BN>
void LaunchBf16(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                const LaunchShape& shape, int max_ctas, Stream stream) {
  const int64_t tiles = tile_expert.numel(), k = x.dim(1), n = out.dim(1), experts = w.dim(0);
  const CUtensorMap x_map =
      RowMajorMap(x.raw(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, tiles * kBM, k, 2 * k, ABoxRows(shape.cluster));
  const CUtensorMap w_map = RowMajorMap(w.raw(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, experts * n, k, 2 * k, BN);
  const RowTiles<DeviceTileMap, BN> schedule{{static_cast<const int32_t*>(tile_expert.raw())}, static_cast<int>(n),
                                             static_cast<int>(k / kBK)};
  LaunchTiled<Bf16Product<BN>, __nv_bfloat16>(x_map, w_map, {}, static_cast<__nv_bfloat16*>(out.raw()),
                                              {1, tiles * kBM}, false, schedule, tiles, n, shape, max_ctas,
                                              stream);
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

namespace {
TiledDefaults& Defaults() {
  static TiledDefaults defaults;
  return defaults;
}
}  // namespace

void SetTiledDefaults(const TiledDefaults& defaults) {
  FATHOM_CHECK(defaults.cluster_n == 1 || defaults.cluster_n == 2, "[tiled_grouped_gemm] default cluster_n ",
               defaults.cluster_n, ": expected 1 or 2");
  Defaults() = defaults;
}

TiledDefaults GetTiledDefaults() { return Defaults(); }

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

int TiledGroupedDefaultBlockN(int64_t n, bool tma_store) {
  if (n % 256 == 0) return 256;
  // BN 176 has no TMA-store epilogue: with TMA stores on, 128 wins (H200, N 1408, K 2048: 515 TFLOP/s at
  // BN 128 with TMA stores against 465 at BN 176 with register stores; gpu_bench BM_OwnTiledNT).
  if (n % 176 == 0 && !(tma_store && n % 128 == 0)) return 176;
  return n % 128 == 0 ? 128 : 256;
}

void TiledGroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                          Stream stream, const TiledLaunch& launch) {
  const char* op = "tiled_grouped_matmul_nt";
  CheckBf16RowTiles(op, out, x, w, tile_expert, 2, "w (E, N, K)");
  const int64_t tiles = tile_expert.numel(), n = out.dim(1), k = x.dim(1);
  FATHOM_CHECK(TiledGroupedSupported(n, k), "[", op, "] needs an sm_90 GPU (H100/H200), K a multiple of ", kBK,
               " and N of 8; got K ", k, ", N ", n);
  const int block_n = launch.block_n != 0 ? launch.block_n
                                          : TiledGroupedDefaultBlockN(
                                                n, launch.tma_store.value_or(GetTiledDefaults().tma_store));
  const LaunchShape shape = CheckedShape(op, launch, block_n, true);
  if (tiles == 0) return;
  switch (block_n) {
    case 128:
      LaunchBf16<128>(out, x, w, tile_expert, shape, launch.max_ctas, stream);
      break;
    case 176:
      LaunchBf16<176>(out, x, w, tile_expert, shape, launch.max_ctas, stream);
      break;
    case 256:
      LaunchBf16<256>(out, x, w, tile_expert, shape, launch.max_ctas, stream);
      break;
    default:
      FATHOM_CHECK(false, "[", op, "] block_n ", block_n, ": expected 0, 128, 176 or 256");
  }
}

namespace {

// The MN-major forms' column tile: 128 or 256 as asked, 256 by default (0): on an H200 at the recipe's widths
// (gemm_bench, 2026-12-04) BN 256 was as fast as 128 or faster for every MN-major form, even at N = 1408 (5.5
// column tiles): NN 459 / 459 TFLOP/s (N 1408), 472 / 436 (N 2048); TN 425 / 417 (N 1408), 460 / 421 (N
// 2048), BN 256 / 128.
int MnBlockN(const char* op, int block_n) {
  FATHOM_CHECK(block_n == 0 || block_n == 128 || block_n == 256, "[", op, "] block_n ", block_n,
               ": expected 0, 128 or 256");
  return block_n == 0 ? 256 : block_n;
}

template <int BN>
void LaunchBf16NN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                  bool accumulate, const LaunchShape& shape, int max_ctas, Stream stream) {
  const int64_t tiles = tile_expert.numel(), red = x.dim(1), n = out.dim(1), experts = w.dim(0);
  const CUtensorMap x_map = RowMajorMap(x.raw(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, tiles * kBM, red, 2 * red,
                                        ABoxRows(shape.cluster));
  const CUtensorMap w_map = RowMajorMap(w.raw(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, experts * red, n, 2 * n, 64);
  const RowTiles<DeviceTileMap, BN, true> schedule{{static_cast<const int32_t*>(tile_expert.raw())},
                                                   static_cast<int>(n), static_cast<int>(red / kBK)};
  LaunchTiled<Bf16Product<BN, false, true>, __nv_bfloat16>(
      x_map, w_map, {}, static_cast<__nv_bfloat16*>(out.raw()), {1, tiles * kBM}, accumulate, schedule, tiles,
      n, shape, max_ctas, stream);
}

template <int BN>
void LaunchBf16TN(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& tile_begin,
                  bool accumulate, const LaunchShape& shape, int max_ctas, Stream stream) {
  const int64_t rows = a.dim(0), m = a.dim(1), n = b.dim(1), groups = tile_begin.dim(0) - 1;
  const CUtensorMap a_map = RowMajorMap(a.raw(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rows, m, 2 * m, 64);
  const CUtensorMap b_map = RowMajorMap(b.raw(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rows, n, 2 * n, 64);
  // A is MN-major: its stage is two 64-column boxes already, one per CTA of a pair.
  const DeviceKGroups<BN> schedule{static_cast<const int32_t*>(tile_begin.raw()), static_cast<int>(m),
                                   !accumulate};
  LaunchTiled<Bf16Product<BN, true, true>, float>(a_map, b_map, {}, static_cast<float*>(out.raw()),
                                                  {groups, m}, accumulate, schedule,
                                                  groups * ColumnTiles(m, kBM), n, shape, max_ctas, stream);
}

}  // namespace

bool TiledGroupedMnSupported(int64_t n, int64_t reduction) {
  static const bool sm90 = DeviceIsSm90();
  return sm90 && n > 0 && n % 8 == 0 && reduction > 0 && reduction % kBK == 0;
}

void TiledGroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                          bool accumulate, Stream stream, const TiledLaunch& launch) {
  const char* op = "tiled_grouped_matmul_nn";
  CheckBf16RowTiles(op, out, x, w, tile_expert, 1, "w (E, K, N)");
  const int64_t tiles = tile_expert.numel(), n = out.dim(1), red = x.dim(1);
  FATHOM_CHECK(TiledGroupedMnSupported(n, red), "[", op, "] needs an sm_90 GPU (H100/H200), K a multiple of ",
               kBK, " and N of 8; got K ", red, ", N ", n);
  const int block_n = MnBlockN(op, launch.block_n);
  const LaunchShape shape = CheckedShape(op, launch, block_n, true);
  if (tiles == 0) return;
  if (block_n == 128) {
    LaunchBf16NN<128>(out, x, w, tile_expert, accumulate, shape, launch.max_ctas, stream);
  } else {
    LaunchBf16NN<256>(out, x, w, tile_expert, accumulate, shape, launch.max_ctas, stream);
  }
}

void TiledGroupedMatmulTN(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& tile_begin,
                          bool accumulate, Stream stream, const TiledLaunch& launch) {
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
  const int block_n = MnBlockN(op, launch.block_n);
  const LaunchShape shape = CheckedShape(op, launch, block_n, true);
  if (a.dim(0) == 0) {  // no tokens at all: every group is empty
    if (!accumulate) FATHOM_CUDA_CHECK(cudaMemsetAsync(out.raw(), 0, out.nbytes(), stream));
    return;
  }
  if (block_n == 128) {
    LaunchBf16TN<128>(out, a, b, tile_begin, accumulate, shape, launch.max_ctas, stream);
  } else {
    LaunchBf16TN<256>(out, a, b, tile_begin, accumulate, shape, launch.max_ctas, stream);
  }
}

}  // namespace fathom::cuda
