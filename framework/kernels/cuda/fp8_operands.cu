#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "framework/cuda/check.h"
#include "framework/cuda/fp8_numeric.cuh"
#include "framework/cuda/numeric.cuh"
#include "framework/kernels/cuda/fp8_operands.h"
#include "framework/kernels/cuda/kernel_common.cuh"

namespace fathom::cuda {
namespace {

using fp8_numeric::E4M3ToFloat;
using fp8_numeric::FloatToE4M3Saturate;
using fp8_numeric::ScalingFromAmax;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = static_cast<int>(kFp8Block);
constexpr int kColsPerBlock = 32;  // QuantizeCols: columns staged per block
constexpr int kRowsUnroll = 2;     // QuantizeRowsSegmentKernel: unit groups per warp, loaded together

// Storage access: f32 as float, bf16 as its bit pattern (widening is exact).
__device__ __forceinline__ float Load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float Load(const uint16_t* p, int64_t i) { return Bf16BitsToFloat(p[i]); }
__device__ __forceinline__ void Store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void Store(uint16_t* p, int64_t i, float v) { p[i] = FloatToBf16Bits(v); }

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, off));
  return v;  // fmaxf drops NaN operands, as std::fmax does on the host
}

// The row offsets of the groups and of their padded token tiles, by value (a kernel parameter).
struct GroupTable {
  int32_t groups = 0;
  int32_t row_begin[kMaxFp8Groups + 1];   // prefix sums of the groups' rows
  int32_t tile_begin[kMaxFp8Groups + 1];  // prefix sums of the groups' 128-token tiles
};

GroupTable MakeGroupTable(const std::vector<int64_t>& counts, const char* op) {
  FATHOM_CHECK(counts.size() <= static_cast<size_t>(kMaxFp8Groups), "[", op, "] ", counts.size(),
               " groups; the GPU kernels take at most ", kMaxFp8Groups);
  GroupTable t;
  t.groups = static_cast<int32_t>(counts.size());
  int64_t rows = 0, tiles = 0;
  t.row_begin[0] = t.tile_begin[0] = 0;
  for (size_t g = 0; g < counts.size(); ++g) {
    rows += counts[g];
    tiles += Fp8Blocks(counts[g]);
    FATHOM_CHECK(rows < (int64_t{1} << 31), "[", op, "] ", rows, " rows exceed the kernels' 32-bit offsets");
    t.row_begin[g + 1] = static_cast<int32_t>(rows);
    t.tile_begin[g + 1] = static_cast<int32_t>(tiles);
  }
  return t;
}

using common::FindGroup;

// The rows of padded token tile t (the column quantizers' unit): its group's rows from first_row, `valid` of
// them real (the rest of the tile reads as zero).
struct TokenTile {
  int64_t first_row, valid;
  __device__ __forceinline__ static TokenTile Of(const GroupTable& table, int64_t t) {
    const int g = FindGroup(table.tile_begin, table.groups, t);
    const int64_t first = table.row_begin[g] + (t - table.tile_begin[g]) * kTile;
    return {first, min(static_cast<int64_t>(kTile), table.row_begin[g + 1] - first)};
  }
};

__device__ __forceinline__ const float* RowScales(const uint8_t* data, int64_t row, int64_t row_bytes,
                                                  int64_t padded_cols) {
  return reinterpret_cast<const float*>(data + row * row_bytes + padded_cols);
}

// The 128x128 block's amax from every thread's partial (warps, then the warp maxima in order). `warp_max`
// holds kWarps floats in shared memory.
__device__ __forceinline__ float BlockAmax(float amax, float* warp_max) {
  amax = WarpMax(amax);
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = warp_max[0];
  for (int i = 1; i < kWarps; ++i) amax = fmaxf(amax, warp_max[i]);
  return amax;
}

// The block's scale into both layouts: (row block, col block) of w and (col block, row block) of wt, for the
// block (blockIdx.y, blockIdx.x) of matrix m.
__device__ __forceinline__ void WriteBlockScale(float* scales, float* scales_t, float s, int64_t m,
                                                int scale_stride, int scale_stride_t) {
  scales[(m * gridDim.y + blockIdx.y) * scale_stride + blockIdx.x] = s;
  scales_t[(m * gridDim.x + blockIdx.x) * scale_stride_t + blockIdx.y] = s;
}

// ---- kernels ----

// One warp per (row, 128-column tile), grid (ceil(rows / 8), tiles). Lane l holds columns l, l + 32, l + 64,
// l + 96 of the tile (each load one coalesced 128-element segment), or with kWide (REQUIRES cols % 4 == 0 and
// 8-byte aligned rows) columns 4l .. 4l + 3, loaded in one access and stored as one 4-byte word. The amax
// (a maximum: order-free) and the arithmetic per element are the same either way: the same bits.
template <class In, bool kWide>
__global__ void QuantizeRowsKernel(uint8_t* data, const In* x, int64_t rows, int64_t cols, int64_t row_bytes,
                                   int64_t padded_cols, int scale_stride) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int tile = blockIdx.y;
  if (row >= rows) return;
  const int64_t c0 = static_cast<int64_t>(tile) * kTile;
  const int64_t width = min(static_cast<int64_t>(kTile), cols - c0);
  const In* src = x + row * cols + c0;
  auto column = [&](int j) { return kWide ? 4 * lane + j : lane + 32 * j; };
  float v[4];
  float amax = 0.0f;
  if (kWide && 4 * lane < width) {
    LoadVec<4>(src + 4 * lane, v);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = column(j) < width ? Load(src, column(j)) : 0.0f;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) amax = fmaxf(amax, fabsf(v[j]));
  const auto [inv, scale] = ScalingFromAmax(WarpMax(amax));
  uint8_t* codes = data + row * row_bytes + c0;
  uint8_t code[4];
#pragma unroll
  for (int j = 0; j < 4; ++j)  // the tile's padding columns get zero codes
    code[j] = column(j) < width ? FloatToE4M3Saturate(__fmul_rn(v[j], inv)) : uint8_t{0};
  if (kWide) {
    *reinterpret_cast<uint32_t*>(codes + 4 * lane) =
        static_cast<uint32_t>(code[0]) | (static_cast<uint32_t>(code[1]) << 8) |
        (static_cast<uint32_t>(code[2]) << 16) | (static_cast<uint32_t>(code[3]) << 24);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) codes[column(j)] = code[j];
  }
  float* scales = reinterpret_cast<float*>(data + row * row_bytes + padded_cols);
  if (lane == 0) scales[tile] = scale;
  // The last tile's warp also zeroes the scale padding.
  if (tile == static_cast<int>(gridDim.y) - 1 && lane < scale_stride - static_cast<int>(gridDim.y)) {
    scales[gridDim.y + lane] = 0.0f;
  }
}

// QuantizeRowsKernel with 16-byte loads (REQUIRES cols a multiple of kVec = 16 / sizeof(In), x 16-byte
// aligned, codes rows kVec-byte aligned): kLanes = 128 / kVec lanes per (row, 128-column tile) unit, so a
// warp holds 32 / kLanes units; units run row-major (a warp's loads are contiguous) and each warp takes
// kUnroll unit groups per pass, their loads issued before any arithmetic. The values, the amax (a maximum:
// order-free) and the arithmetic per element are QuantizeRowsKernel's: the same bits.
template <class In>
__global__ void __launch_bounds__(kThreads)
    QuantizeRowsSegmentKernel(uint8_t* data, const In* x, int64_t rows, int64_t cols, int64_t row_bytes,
                              int64_t padded_cols, int tiles, int scale_stride) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(In)), kLanes = kTile / kVec, kUnits = 32 / kLanes;
  constexpr int kUnroll = kRowsUnroll;
  const int lane = threadIdx.x % 32, sub = lane / kLanes, l = lane % kLanes;
  const int64_t units = rows * tiles;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32;
  const int64_t first = warp * kUnroll * kUnits;
  float v[kUnroll][kVec];
  int64_t row[kUnroll];
  int tile[kUnroll];
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    const int64_t u = first + k * kUnits + sub;
    row[k] = u / tiles;
    tile[k] = static_cast<int>(u % tiles);
    const int64_t c = static_cast<int64_t>(tile[k]) * kTile + l * kVec;
    if (u < units && c < cols) {
      LoadVec<kVec>(x + row[k] * cols + c, v[k]);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) v[k][e] = 0.0f;
    }
  }
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    float amax = 0.0f;
#pragma unroll
    for (int e = 0; e < kVec; ++e) amax = fmaxf(amax, fabsf(v[k][e]));
#pragma unroll
    for (int off = kLanes / 2; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, off));
    if (first + k * kUnits + sub >= units) continue;  // after the shuffles, which every lane joins
    const auto [inv, scale] = ScalingFromAmax(amax);
    const int64_t c = static_cast<int64_t>(tile[k]) * kTile + l * kVec;
    uint32_t words[kVec / 4];
#pragma unroll
    for (int w = 0; w < kVec / 4; ++w) {
      words[w] = 0;
#pragma unroll
      for (int e = 0; e < 4; ++e)  // the tile's padding columns get zero codes
        if (c + 4 * w + e < cols)
          words[w] |= static_cast<uint32_t>(FloatToE4M3Saturate(__fmul_rn(v[k][4 * w + e], inv))) << (8 * e);
    }
    uint8_t* codes = data + row[k] * row_bytes + c;
    if constexpr (kVec == 8) {
      *reinterpret_cast<uint2*>(codes) = make_uint2(words[0], words[1]);
    } else {
      *reinterpret_cast<uint32_t*>(codes) = words[0];
    }
    float* scales = reinterpret_cast<float*>(data + row[k] * row_bytes + padded_cols);
    if (l == 0) scales[tile[k]] = scale;
    // The last tile's unit also zeroes the scale padding.
    if (tile[k] == tiles - 1 && l < scale_stride - tiles) scales[tiles + l] = 0.0f;
  }
}

template <class Out>
__global__ void DequantizeRowsKernel(Out* out, const uint8_t* data, int64_t rows, int64_t cols,
                                     int64_t row_bytes, int64_t padded_cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const float s = RowScales(data, r, row_bytes, padded_cols)[c / kTile];
    Store(out, i, __fmul_rn(E4M3ToFloat(data[r * row_bytes + c]), s));
  }
}

// Element (r, c) of a row-major float matrix.
template <class In>
struct FloatSource {
  const In* x;
  int64_t cols;
  __device__ __forceinline__ float operator()(int64_t r, int64_t c) const { return Load(x, r * cols + c); }
};

// Element (r, c) of packed FP8 rows: code * its tile's scale (one f32 product).
struct Fp8RowSource {
  const uint8_t* data;
  int64_t row_bytes, padded_cols;
  __device__ __forceinline__ float operator()(int64_t r, int64_t c) const {
    return __fmul_rn(E4M3ToFloat(data[r * row_bytes + c]),
                     RowScales(data, r, row_bytes, padded_cols)[c / kTile]);
  }
};

// grid (padded tiles, ceil(cols / 32)). The block stages a 128-token x 32-column tile in shared memory
// (rows past the group's end read as zero), then each warp quantises 4 of the columns: a 128-token amax,
// one scale, and the codes written as 4-byte words along the transposed row.
template <class Source>
__global__ void QuantizeColsKernel(uint8_t* codes, float* scales, Source source, GroupTable table,
                                   int64_t cols, int64_t padded_tokens) {
  __shared__ float tile[kTile][kColsPerBlock + 1];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t t = blockIdx.x;  // the tile on the padded token axis
  const TokenTile rows = TokenTile::Of(table, t);
  const int64_t first_row = rows.first_row, valid = rows.valid;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kColsPerBlock;
  for (int i = warp; i < kTile; i += kWarps) {
    const int64_t c = c0 + lane;
    tile[i][lane] = i < valid && c < cols ? source(first_row + i, c) : 0.0f;
  }
  __syncthreads();
  for (int k = 0; k < kColsPerBlock / kWarps; ++k) {
    const int col = warp * (kColsPerBlock / kWarps) + k;
    const int64_t c = c0 + col;
    if (c >= cols) break;  // warp-uniform
    float amax = 0.0f;
#pragma unroll
    for (int q = 0; q < 4; ++q) amax = fmaxf(amax, fabsf(tile[lane + 32 * q][col]));
    const auto [inv, scale] = ScalingFromAmax(WarpMax(amax));
    uint32_t word = 0;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t code = FloatToE4M3Saturate(__fmul_rn(tile[4 * lane + q][col], inv));
      word |= code << (8 * q);
    }
    reinterpret_cast<uint32_t*>(codes + c * padded_tokens + t * kTile)[lane] = word;
    if (lane == 0) scales[t * cols + c] = scale;
  }
}

// 16-byte segments of a source row as f32 for QuantizeColsWideKernel: kVec consecutive values from (r, c).
// Floats: REQUIRES rows starting 16-byte aligned and cols a multiple of kVec (a segment is wholly inside or
// outside the row).
template <class In>
struct FloatSegments {
  static constexpr int kVec = 16 / static_cast<int>(sizeof(In));
  const In* x;
  int64_t cols;
  __device__ __forceinline__ void Load(int64_t r, int64_t c, float (&v)[kVec]) const {
    LoadVec<kVec>(x + r * cols + c, v);
  }
};

// Packed FP8 rows: 16 codes times their tile's scale (Fp8RowSource's product). REQUIRES row_bytes and the
// data 16-byte aligned; a segment past `cols` reads the row's zero padding codes (never used).
struct Fp8RowSegments {
  static constexpr int kVec = 16;
  const uint8_t* data;
  int64_t row_bytes, padded_cols;
  __device__ __forceinline__ void Load(int64_t r, int64_t c, float (&v)[kVec]) const {
    const uint4 word = *reinterpret_cast<const uint4*>(data + r * row_bytes + c);
    const float s = RowScales(data, r, row_bytes, padded_cols)[c / kTile];
    const uint8_t* b = reinterpret_cast<const uint8_t*>(&word);
#pragma unroll
    for (int e = 0; e < kVec; ++e) v[e] = __fmul_rn(E4M3ToFloat(b[e]), s);
  }
};

// QuantizeColsKernel with 16-byte loads and 64 columns per block (grid (padded tiles, ceil(cols / 64))): the
// block stages 128 tokens x 64 columns as f32 (kSegs threads per row, each loading kVec values at once),
// then each warp quantises 8 columns, lane l holding tokens l, l + 32, l + 64, l + 96 (conflict-free column
// reads), each code stored as one byte (a warp's store is 32 consecutive bytes). The values, the amax (a
// maximum: order-free) and the arithmetic per element are QuantizeColsKernel's: the same bits.
constexpr int kColsWide = 64;
template <class Source>
__global__ void __launch_bounds__(kThreads)
    QuantizeColsWideKernel(uint8_t* codes, float* scales, Source source, GroupTable table, int64_t cols,
                           int64_t padded_tokens) {
  constexpr int kVec = Source::kVec, kSegs = kColsWide / kVec, kRowsPerPass = kThreads / kSegs;
  __shared__ float tile[kTile][kColsWide + 1];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t t = blockIdx.x;  // the tile on the padded token axis
  const TokenTile rows = TokenTile::Of(table, t);
  const int64_t first_row = rows.first_row, valid = rows.valid;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kColsWide;
  const int seg = threadIdx.x % kSegs;
  const int64_t c = c0 + seg * kVec;
#pragma unroll
  for (int r = threadIdx.x / kSegs; r < kTile; r += kRowsPerPass) {
    float v[kVec];
    if (r < valid && c < cols) {
      source.Load(first_row + r, c, v);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) v[e] = 0.0f;
    }
#pragma unroll
    for (int e = 0; e < kVec; ++e) tile[r][seg * kVec + e] = v[e];
  }
  __syncthreads();
  constexpr int kColsPerWarp = kColsWide / kWarps;
#pragma unroll
  for (int k = 0; k < kColsPerWarp; ++k) {
    const int col = warp * kColsPerWarp + k;
    const int64_t cc = c0 + col;
    if (cc >= cols) break;  // warp-uniform
    float v[4];
    float amax = 0.0f;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      v[q] = tile[lane + 32 * q][col];
      amax = fmaxf(amax, fabsf(v[q]));
    }
    const auto [inv, scale] = ScalingFromAmax(WarpMax(amax));
    uint8_t* out = codes + cc * padded_tokens + t * kTile;
#pragma unroll
    for (int q = 0; q < 4; ++q) out[lane + 32 * q] = FloatToE4M3Saturate(__fmul_rn(v[q], inv));
    if (lane == 0) scales[t * cols + cc] = scale;
  }
}

// One block per 128x128 block of one matrix (grid (col blocks, row blocks, matrices)): the block's amax,
// its codes into `codes` (rows of padded_cols) and, through shared memory, transposed into `codes_t` (rows
// of padded_rows). Writes every code of the padded block, zeros included.
template <class In>
__global__ void QuantizeWeightKernel(uint8_t* codes, uint8_t* codes_t, float* scales, float* scales_t,
                                     const In* w, int64_t rows, int64_t cols, int scale_stride,
                                     int scale_stride_t) {
  __shared__ uint8_t block_codes[kTile][kTile + 4];  // + 4: the transposed read spreads over the banks
  __shared__ float warp_max[kWarps];
  const int64_t row_blocks = gridDim.y, col_blocks = gridDim.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile, c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int h = static_cast<int>(min(static_cast<int64_t>(kTile), rows - r0));
  const int wd = static_cast<int>(min(static_cast<int64_t>(kTile), cols - c0));
  const int64_t m = blockIdx.z;
  const In* src = w + m * rows * cols;
  float amax = 0.0f;
  for (int i = threadIdx.x; i < kTile * kTile; i += kThreads) {
    const int r = i / kTile, c = i % kTile;
    if (r < h && c < wd) amax = fmaxf(amax, fabsf(Load(src, (r0 + r) * cols + c0 + c)));
  }
  const auto [inv, scale] = ScalingFromAmax(BlockAmax(amax, warp_max));
  const int64_t padded_cols = col_blocks * kTile, padded_rows = row_blocks * kTile;
  for (int i = threadIdx.x; i < kTile * kTile; i += kThreads) {
    const int r = i / kTile, c = i % kTile;
    const uint8_t code = r < h && c < wd
                             ? FloatToE4M3Saturate(__fmul_rn(Load(src, (r0 + r) * cols + c0 + c), inv))
                             : uint8_t{0};
    block_codes[r][c] = code;
    if (r < h) codes[(m * rows + r0 + r) * padded_cols + c0 + c] = code;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kTile * kTile; i += kThreads) {
    const int c = i / kTile, r = i % kTile;
    if (c < wd) codes_t[(m * cols + c0 + c) * padded_rows + r0 + r] = block_codes[r][c];
  }
  if (threadIdx.x == 0) WriteBlockScale(scales, scales_t, scale, m, scale_stride, scale_stride_t);
}

// QuantizeWeightKernel with 4-column accesses (REQUIRES cols % 4 == 0, so a 4-column group is wholly inside
// or outside the block): one read of the block into registers (16 groups per thread), the block amax, then
// the codes as 4-byte words, row-major and, through shared memory, transposed. The arithmetic per element and
// the amax (a maximum: order-free) are QuantizeWeightKernel's, so the codes and scales are the same bits.
template <class In>
__global__ void __launch_bounds__(kThreads)
    QuantizeWeightVecKernel(uint8_t* codes, uint8_t* codes_t, float* scales, float* scales_t, const In* w,
                            int64_t rows, int64_t cols, int scale_stride, int scale_stride_t) {
  constexpr int kGroups = kTile * kTile / 4 / kThreads;   // 16 groups of 4 columns per thread
  __shared__ uint32_t block_codes[kTile][kTile / 4 + 1];  // + 1: the transposed read spreads over the banks
  __shared__ float warp_max[kWarps];
  const int64_t row_blocks = gridDim.y, col_blocks = gridDim.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile, c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int h = static_cast<int>(min(static_cast<int64_t>(kTile), rows - r0));
  const int wd = static_cast<int>(min(static_cast<int64_t>(kTile), cols - c0));
  const int64_t m = blockIdx.z;
  const In* src = w + m * rows * cols;
  float v[kGroups][4];
  float amax = 0.0f;
#pragma unroll
  for (int k = 0; k < kGroups; ++k) {
    const int i = threadIdx.x + k * kThreads, r = i / (kTile / 4), c = 4 * (i % (kTile / 4));
    if (r < h && c < wd) {
      LoadVec<4>(src + (r0 + r) * cols + c0 + c, v[k]);
    } else {
      v[k][0] = v[k][1] = v[k][2] = v[k][3] = 0.0f;
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) amax = fmaxf(amax, fabsf(v[k][e]));
  }
  const auto [inv, scale] = ScalingFromAmax(BlockAmax(amax, warp_max));
  const int64_t padded_cols = col_blocks * kTile, padded_rows = row_blocks * kTile;
#pragma unroll
  for (int k = 0; k < kGroups; ++k) {
    const int i = threadIdx.x + k * kThreads, r = i / (kTile / 4), c = 4 * (i % (kTile / 4));
    uint32_t word = 0;
    if (r < h && c < wd) {
#pragma unroll
      for (int e = 0; e < 4; ++e)
        word |= static_cast<uint32_t>(FloatToE4M3Saturate(__fmul_rn(v[k][e], inv))) << (8 * e);
    }
    block_codes[r][c / 4] = word;
    if (r < h) *reinterpret_cast<uint32_t*>(codes + (m * rows + r0 + r) * padded_cols + c0 + c) = word;
  }
  __syncthreads();
  // Transposed: thread i writes rows 4q .. 4q + 3 of column c as one word.
  for (int i = threadIdx.x; i < kTile * kTile / 4; i += kThreads) {
    const int c = i / (kTile / 4), q = i % (kTile / 4);
    if (c >= wd) continue;
    const int shift = 8 * (c % 4);
    uint32_t word = 0;
#pragma unroll
    for (int e = 0; e < 4; ++e) word |= ((block_codes[4 * q + e][c / 4] >> shift) & 0xFFu) << (8 * e);
    *reinterpret_cast<uint32_t*>(codes_t + (m * cols + c0 + c) * padded_rows + r0 + 4 * q) = word;
  }
  if (threadIdx.x == 0) WriteBlockScale(scales, scales_t, scale, m, scale_stride, scale_stride_t);
}

// ---- host side ----

unsigned GridFor(int64_t n) { return common::GridFor(n, kThreads); }

using common::CheckCuda;

void CheckFloat(const char* op, const Tensor& t, const char* name) {
  CheckCuda(op, t, name);
  FATHOM_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kBF16, "[", op, "] ", name,
               " must be f32 or bf16, got ", DTypeName(t.dtype()));
}

using common::WithFloatIn;

// `source` element-wise (QuantizeColsKernel), or `segments` (QuantizeColsWideKernel, the same bits) when
// `wide`, which the caller sets where the segments' alignment holds.
template <class Source, class Segments>
void LaunchQuantizeCols(const char* op, const Fp8Cols& q, const Source& source, const Segments& segments,
                        bool wide, int64_t cols, Stream stream) {
  const GroupTable table = MakeGroupTable(Fp8GroupCounts(q.counts, op), op);
  const int64_t tiles = q.padded_tokens() / kFp8Block;
  if (tiles == 0 || cols == 0) return;
  const int64_t per_block = wide ? kColsWide : kColsPerBlock;
  FATHOM_CHECK((cols + per_block - 1) / per_block <= 65535, "[", op, "] ", cols, " columns exceed the grid");
  dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>((cols + per_block - 1) / per_block));
  uint8_t* codes = static_cast<uint8_t*>(q.codes.raw());
  if (wide) {
    QuantizeColsWideKernel<<<grid, kThreads, 0, stream>>>(codes, q.scales.data<float>(), segments, table, cols,
                                                          q.padded_tokens());
  } else {
    QuantizeColsKernel<<<grid, kThreads, 0, stream>>>(codes, q.scales.data<float>(), source, table, cols,
                                                      q.padded_tokens());
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace

void QuantizeRows1x128(const Fp8Rows& q, const Tensor& x, Stream stream) {
  const char* op = "quantize_rows_1x128_cuda";
  CheckFloat(op, x, "x");
  CheckCuda(op, q.data, "q");
  FATHOM_CHECK(x.ndim() == 2, "[", op, "] x ", x.shape_str(), ", expected (R, K)");
  CheckFp8Rows(op, q, x.dim(0), x.dim(1));
  const int64_t rows = x.dim(0);
  if (rows == 0) return;
  FATHOM_CHECK(q.blocks() <= 65535, "[", op, "] ", q.cols, " columns exceed the grid");
  dim3 grid(static_cast<unsigned>((rows + kWarps - 1) / kWarps), static_cast<unsigned>(q.blocks()));
  // Word-wide accesses where every row starts 8-byte aligned in x and 4-byte aligned in the codes.
  const bool wide =
      q.cols % 4 == 0 && AllAligned({x.raw()}, 8) && AllAligned({q.data.raw()}, 4) && q.row_bytes() % 4 == 0;
  WithFloatIn(x, [&](auto* src) {
    using In = std::remove_cv_t<std::remove_pointer_t<decltype(src)>>;
    // 16-byte segments where every row starts 16-byte aligned in x and kVec-byte aligned in the codes.
    constexpr int kVec = 16 / static_cast<int>(sizeof(In));
    if (q.cols % kVec == 0 && AllAligned({x.raw()}, 16) && AllAligned({q.data.raw()}, kVec) &&
        q.row_bytes() % kVec == 0) {
      constexpr int kUnitsPerBlock = kWarps * kRowsUnroll * (32 / (kTile / kVec));  // units per warp: 32 / lanes
      const int64_t units = rows * q.blocks();
      QuantizeRowsSegmentKernel<In><<<static_cast<unsigned>((units + kUnitsPerBlock - 1) / kUnitsPerBlock),
                                      kThreads, 0, stream>>>(
          static_cast<uint8_t*>(q.data.raw()), src, rows, q.cols, q.row_bytes(), q.padded_cols(),
          static_cast<int>(q.blocks()), static_cast<int>(Fp8ScaleStride(q.blocks())));
      FATHOM_CUDA_CHECK_LAUNCH();
      return;
    }
    auto kernel = wide ? QuantizeRowsKernel<In, true> : QuantizeRowsKernel<In, false>;
    kernel<<<grid, kThreads, 0, stream>>>(static_cast<uint8_t*>(q.data.raw()), src, rows, q.cols,
                                          q.row_bytes(), q.padded_cols(),
                                          static_cast<int>(Fp8ScaleStride(q.blocks())));
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

void DequantizeRows1x128(const Tensor& out, const Fp8Rows& q, Stream stream) {
  const char* op = "dequantize_rows_1x128_cuda";
  CheckFloat(op, out, "out");
  CheckCuda(op, q.data, "q");
  FATHOM_CHECK(out.ndim() == 2, "[", op, "] out ", out.shape_str(), ", expected (R, K)");
  CheckFp8Rows(op, q, out.dim(0), out.dim(1));
  const int64_t n = out.numel();
  if (n == 0) return;
  const uint8_t* data = static_cast<const uint8_t*>(q.data.raw());
  if (out.dtype() == DType::kF32) {
    DequantizeRowsKernel<<<GridFor(n), kThreads, 0, stream>>>(out.data<float>(), data, q.rows(), q.cols,
                                                              q.row_bytes(), q.padded_cols());
  } else {
    DequantizeRowsKernel<<<GridFor(n), kThreads, 0, stream>>>(
        static_cast<uint16_t*>(out.raw()), data, q.rows(), q.cols, q.row_bytes(), q.padded_cols());
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

void QuantizeCols1x128(const Fp8Cols& q, const Tensor& x, Stream stream) {
  const char* op = "quantize_cols_1x128_cuda";
  CheckFloat(op, x, "x");
  CheckCuda(op, q.codes, "q.codes");
  CheckCuda(op, q.scales, "q.scales");
  FATHOM_CHECK(x.ndim() == 2, "[", op, "] x ", x.shape_str(), ", expected (R, C)");
  CheckFp8Cols(op, q, x.dim(0), x.dim(1));
  WithFloatIn(x, [&](auto* src) {
    using In = std::remove_const_t<std::remove_pointer_t<decltype(src)>>;
    const int64_t cols = x.dim(1);
    const bool wide = cols % FloatSegments<In>::kVec == 0 && AllAligned({x.raw()}, 16);
    LaunchQuantizeCols(op, q, FloatSource<In>{src, cols}, FloatSegments<In>{src, cols}, wide, cols, stream);
  });
}

void QuantizeCols1x128(const Fp8Cols& q, const Fp8Rows& x, Stream stream) {
  const char* op = "quantize_cols_1x128_cuda";
  CheckCuda(op, x.data, "x");
  CheckCuda(op, q.codes, "q.codes");
  CheckCuda(op, q.scales, "q.scales");
  CheckFp8Rows(op, x, x.rows(), x.cols);
  CheckFp8Cols(op, q, x.rows(), x.cols);
  const uint8_t* data = static_cast<const uint8_t*>(x.data.raw());
  const bool wide = x.row_bytes() % 16 == 0 && AllAligned({data}, 16);
  LaunchQuantizeCols(op, q, Fp8RowSource{data, x.row_bytes(), x.padded_cols()},
                     Fp8RowSegments{data, x.row_bytes(), x.padded_cols()}, wide, x.cols, stream);
}

void QuantizeWeight128x128(const Fp8Weight& q, const Tensor& w, Stream stream) {
  const char* op = "quantize_weight_128x128_cuda";
  CheckFloat(op, w, "w");
  for (const Tensor* t : {&q.w.codes, &q.w.scales, &q.wt.codes, &q.wt.scales}) CheckCuda(op, *t, "q");
  CheckFp8Weight(op, q, w.shape());
  // The scale padding is part of the contract (zero); the kernel writes only the real blocks' scales.
  FATHOM_CUDA_CHECK(cudaMemsetAsync(q.w.scales.raw(), 0, q.w.scales.nbytes(), stream));
  FATHOM_CUDA_CHECK(cudaMemsetAsync(q.wt.scales.raw(), 0, q.wt.scales.nbytes(), stream));
  const int64_t rows = w.dim(-2), cols = w.dim(-1);
  if (w.numel() == 0) return;
  const int64_t matrices = w.numel() / (rows * cols);
  FATHOM_CHECK(Fp8Blocks(rows) <= 65535 && matrices <= 65535, "[", op, "] ", w.shape_str(),
               " exceeds the grid");
  dim3 grid(static_cast<unsigned>(Fp8Blocks(cols)), static_cast<unsigned>(Fp8Blocks(rows)),
            static_cast<unsigned>(matrices));
  // The word-wide kernel where 4-column groups stay inside blocks and every row starts 16-byte aligned (f32)
  // or 8-byte aligned (bf16); the element-wise one otherwise.
  const bool wide = cols % 4 == 0 && AllAligned({w.raw(), q.w.codes.raw(), q.wt.codes.raw()}, 16);
  WithFloatIn(w, [&](auto* src) {
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, stream>>>(static_cast<uint8_t*>(q.w.codes.raw()),
                                            static_cast<uint8_t*>(q.wt.codes.raw()), q.w.scales.data<float>(),
                                            q.wt.scales.data<float>(), src, rows, cols,
                                            static_cast<int>(Fp8ScaleStride(Fp8Blocks(cols))),
                                            static_cast<int>(Fp8ScaleStride(Fp8Blocks(rows))));
    };
    using In = std::remove_cv_t<std::remove_pointer_t<decltype(src)>>;
    if (wide) {
      launch(QuantizeWeightVecKernel<In>);
    } else {
      launch(QuantizeWeightKernel<In>);
    }
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace fathom::cuda
