// fathom's own tile-grouped GEMM (framework/kernels/cuda/grouped_gemm.h) against f64 products of the same
// bf16 inputs, and its device-side tile map against the host's.
//
// Tolerance 2^-8 on the relative error norm, as GemmCudaTest's bf16 outputs: one rounding of an f32
// accumulation to bf16 is at most 2^-9 relative per element; a tile multiplied by the wrong expert's weight
// or a misplaced column block gives errors of order 1.
#include "framework/kernels/cuda/grouped_gemm.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "framework/cuda/device_arena.h"
#include "framework/fp8_operands.h"
#include "framework/kernels/cpu/fp8_gemm.h"
#include "framework/kernels/cuda/elementwise.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using testing::Download;
using testing::RandomTensor;
using testing::RelError;
using testing::TestSeed;
using testing::Upload;

constexpr int64_t kTile = cuda::kGroupedTileRows;

// The host's tile map: expert e owns ceil(c_e / 128) tiles in expert order, then -1 up to `tiles`.
std::vector<int32_t> HostTileExperts(const std::vector<int64_t>& counts, int64_t tiles) {
  std::vector<int32_t> map;
  for (size_t e = 0; e < counts.size(); ++e)
    for (int64_t t = 0; t < (counts[e] + kTile - 1) / kTile; ++t) map.push_back(static_cast<int32_t>(e));
  EXPECT_LE(static_cast<int64_t>(map.size()), tiles);
  map.resize(static_cast<size_t>(tiles), -1);
  return map;
}

Tensor CountsTensor(const std::vector<int64_t>& counts) {
  std::vector<double> v(counts.begin(), counts.end());
  return Tensor::FromVector(v, {static_cast<int64_t>(counts.size())}, DType::kI64);
}

TEST(GroupedGemmCuda, MaxExpertTilesBoundsEveryLayout) {
  // The bound is reached: every expert one row past a whole tile.
  EXPECT_EQ(cuda::MaxExpertTiles(4 * 129, 4), 8);
  EXPECT_EQ(cuda::MaxExpertTiles(0, 4), 0);
  EXPECT_EQ(cuda::MaxExpertTiles(3, 8), 3);  // fewer rows than experts: at most one tile per row
  std::mt19937_64 rng(TestSeed());
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t experts = 1 + static_cast<int64_t>(rng() % 40), rows = static_cast<int64_t>(rng() % 3000);
    std::vector<int64_t> counts(static_cast<size_t>(experts), 0);
    for (int64_t r = 0; r < rows; ++r) counts[rng() % counts.size()] += 1;
    int64_t tiles = 0;
    for (int64_t c : counts) tiles += (c + kTile - 1) / kTile;
    EXPECT_LE(tiles, cuda::MaxExpertTiles(rows, experts)) << "rows " << rows << " experts " << experts;
  }
}

TEST(GroupedGemmCuda, TileMapMatchesTheHost) {
  FATHOM_REQUIRE_GPU();
  cuda::DeviceArena arena("grouped_gemm_test", size_t{1} << 20);
  const std::vector<std::vector<int64_t>> sets = {
      {0, 1, 128, 129, 300, 0, 77}, {5000}, {0, 0, 0}, {128, 128, 128, 128}, std::vector<int64_t>(1024, 3)};
  for (const auto& counts : sets) {
    int64_t rows = 0;
    for (int64_t c : counts) rows += c;
    const int64_t tiles = cuda::MaxExpertTiles(rows, static_cast<int64_t>(counts.size())) + 3;
    SCOPED_TRACE("experts " + std::to_string(counts.size()) + " rows " + std::to_string(rows));
    arena.Reset();
    Tensor map = arena.Alloc({tiles}, DType::kI32);
    cuda::MoeTileExperts(map, Upload(arena, CountsTensor(counts)), nullptr);
    const Tensor got = Download(map);
    const std::vector<int32_t> want = HostTileExperts(counts, tiles);
    for (int64_t t = 0; t < tiles; ++t) ASSERT_EQ(got.data<int32_t>()[t], want[static_cast<size_t>(t)]) << "tile " << t;
    // With tile_begin: the same map, and each expert's first tile (the total last).
    const int64_t experts = static_cast<int64_t>(counts.size());
    Tensor begin_fill = Tensor::Empty({experts + 1}, DType::kI32);
    for (int64_t e = 0; e <= experts; ++e) begin_fill.data<int32_t>()[e] = -7;  // every entry must be written
    Tensor begin = Upload(arena, begin_fill);
    cuda::MoeTileExperts(map, Upload(arena, CountsTensor(counts)), nullptr, begin);
    const Tensor got_begin = Download(begin);
    int32_t at = 0;
    for (int64_t e = 0; e <= experts; ++e) {
      ASSERT_EQ(got_begin.data<int32_t>()[e], at) << "expert " << e;
      if (e < experts) at += static_cast<int32_t>((counts[static_cast<size_t>(e)] + kTile - 1) / kTile);
    }
  }
}

// A launch's options for SCOPED_TRACE.
std::string LaunchName(const cuda::TiledLaunch& launch) {
  return " block_n " + std::to_string(launch.block_n) + " max_ctas " + std::to_string(launch.max_ctas) +
         " cluster_n " + (launch.cluster_n ? std::to_string(*launch.cluster_n) : "default") + " tma_store " +
         (launch.tma_store ? std::to_string(*launch.tma_store) : "default");
}

// out rows of each used tile = x tile . w[e]^T; rows of unused tiles keep their NaN fill.
void CheckTiledNT(int64_t k, int64_t n, const std::vector<int64_t>& counts, const cuda::TiledLaunch& launch) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " K " + std::to_string(k) + " N " + std::to_string(n) +
               LaunchName(launch));
  std::mt19937_64 rng(seed);
  const int64_t experts = static_cast<int64_t>(counts.size());
  int64_t rows = 0;
  for (int64_t c : counts) rows += c;
  const int64_t tiles = cuda::MaxExpertTiles(rows, experts);
  const std::vector<int32_t> map = HostTileExperts(counts, tiles);
  cuda::DeviceArena arena("grouped_gemm_test", size_t{256} << 20);
  // Pad rows are random too: the kernel multiplies whole tiles, and the layout's zeros are the caller's.
  const Tensor x = RandomTensor({tiles * kTile, k}, DType::kF32, rng).To(DType::kBF16);
  const Tensor w = RandomTensor({experts, n, k}, DType::kF32, rng).To(DType::kBF16);
  Tensor dx = Upload(arena, x), dw = Upload(arena, w);
  Tensor dmap = arena.Alloc({tiles}, DType::kI32);
  cuda::MoeTileExperts(dmap, Upload(arena, CountsTensor(counts)), nullptr);
  Tensor dout = arena.Alloc({tiles * kTile, n}, DType::kBF16);
  cuda::Fill(dout, std::numeric_limits<double>::quiet_NaN(), nullptr);
  ASSERT_TRUE(cuda::TiledGroupedSupported(n, k));
  cuda::TiledGroupedMatmulNT(dout, dx, dw, dmap, nullptr, launch);
  const Tensor got = Download(dout);

  const Tensor xf = x.To(DType::kF64), wf = w.To(DType::kF64);
  const double* xp = xf.data<double>();
  const double* wp = wf.data<double>();
  int64_t used = 0;
  for (int64_t t = 0; t < tiles; ++t) used += map[static_cast<size_t>(t)] >= 0;
  Tensor want = Tensor::Empty({used * kTile, n}, DType::kF64), have = Tensor::Empty({used * kTile, n}, DType::kF64);
  int64_t at = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int32_t e = map[static_cast<size_t>(t)];
    for (int64_t r = t * kTile; r < (t + 1) * kTile; ++r) {
      for (int64_t j = 0; j < n; ++j) {
        const double g = got.Item(r * n + j);
        if (e < 0) {
          ASSERT_TRUE(std::isnan(g)) << "tile " << t << " is unused, but row " << r << " column " << j
                                     << " was written: " << g;
          continue;
        }
        double s = 0;
        for (int64_t i = 0; i < k; ++i) s += xp[r * k + i] * wp[(e * n + j) * k + i];
        want.data<double>()[at * n + j] = s;
        have.data<double>()[at * n + j] = g;
      }
      at += e >= 0;
    }
  }
  ASSERT_GT(used, 0);
  EXPECT_LE(RelError(have, want), 1.0 / 256);
}

TEST(GroupedGemmCuda, TiledNTMatchesF64) {
  FATHOM_REQUIRE_GPU();
  // A starved expert, single rows, exact tiles, a busy expert over several tiles, an empty last expert.
  const std::vector<int64_t> counts = {0, 1, 128, 300, 77, 129, 0};
  // Clusters of 2: odd column-tile counts (72 and 520 wide for BN 128 and 256: 1, 5 and 3 tiles) give the
  // pair's second CTA a row's last pair without a tile of its own (it must store nothing). TMA stores: BN
  // 128 and 256; partial column tiles (72, 520) and chunks wholly past N (72 in a 256-wide tile).
  for (int cluster : {1, 2}) {
    for (bool tma : {false, true}) {
      for (int block_n : {128, 176, 256}) {
        if (tma && block_n == 176) continue;
        const cuda::TiledLaunch launch{block_n, 0, cluster, tma};
        CheckTiledNT(192, 72, counts, launch);    // N below one column tile: a partial tile only
        CheckTiledNT(256, 520, counts, launch);   // several column tiles, the last partial
        CheckTiledNT(1024, 352, counts, launch);  // a long reduction (16 k-blocks: the ring wraps)
        CheckTiledNT(256, 520, counts, {block_n, 4, cluster, tma});  // 4 CTAs: the ring runs on across tiles
      }
      // The recipe's widths: BN 176 by default, 256 where the TMA stores need it.
      CheckTiledNT(2048, 1408, {100, 0, 300, 129}, {tma ? 256 : 0, 0, cluster, tma});
    }
  }
}

// The padded layout of `counts` over `tiles` tiles as the MoE layer builds it: random rows for each expert's
// tokens, zero pad rows at the end of each block, NaN rows past the layout (no form may read them).
Tensor PaddedRows(const std::vector<int64_t>& counts, int64_t tiles, int64_t cols, std::mt19937_64& rng) {
  Tensor x = RandomTensor({tiles * kTile, cols}, DType::kF32, rng);
  float* p = x.data<float>();
  int64_t row = 0;
  for (int64_t c : counts) {
    const int64_t block = (c + kTile - 1) / kTile * kTile;
    for (int64_t r = row + c; r < row + block; ++r)
      for (int64_t j = 0; j < cols; ++j) p[r * cols + j] = 0.0f;
    row += block;
  }
  for (int64_t i = row * cols; i < x.numel(); ++i) p[i] = std::numeric_limits<float>::quiet_NaN();
  return x.To(DType::kBF16);
}

// The dgrad form: rows of each used tile = (out0 +) x tile . w[e] with w (E, K, N) read MN-major; rows of
// unused tiles keep their fill. Same tolerance as the NT form (one bf16 rounding of an f32 sum; with +=, the
// bf16 old value is added in f32 before that rounding).
void CheckTiledNN(int64_t k, int64_t n, const std::vector<int64_t>& counts, bool accumulate,
                  const cuda::TiledLaunch& launch) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " K " + std::to_string(k) + " N " + std::to_string(n) +
               LaunchName(launch) + (accumulate ? " +=" : " ="));
  std::mt19937_64 rng(seed);
  const int64_t experts = static_cast<int64_t>(counts.size());
  int64_t rows = 0;
  for (int64_t c : counts) rows += c;
  const int64_t tiles = cuda::MaxExpertTiles(rows, experts);
  const std::vector<int32_t> map = HostTileExperts(counts, tiles);
  cuda::DeviceArena arena("grouped_gemm_test", size_t{256} << 20);
  const Tensor x = RandomTensor({tiles * kTile, k}, DType::kF32, rng).To(DType::kBF16);
  const Tensor w = RandomTensor({experts, k, n}, DType::kF32, rng).To(DType::kBF16);
  Tensor out0f = RandomTensor({tiles * kTile, n}, DType::kF32, rng);
  if (!accumulate)  // overwriting: every element it must write starts as NaN
    for (int64_t i = 0; i < out0f.numel(); ++i) out0f.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
  const Tensor out0 = out0f.To(DType::kBF16);
  Tensor dmap = arena.Alloc({tiles}, DType::kI32);
  cuda::MoeTileExperts(dmap, Upload(arena, CountsTensor(counts)), nullptr);
  Tensor dout = Upload(arena, out0);
  ASSERT_TRUE(cuda::TiledGroupedMnSupported(n, k));
  cuda::TiledGroupedMatmulNN(dout, Upload(arena, x), Upload(arena, w), dmap, accumulate, nullptr, launch);
  const Tensor got = Download(dout).To(DType::kF64);
  const Tensor xf = x.To(DType::kF64), wf = w.To(DType::kF64), of = out0.To(DType::kF64);
  Tensor want = of.Clone();
  for (int64_t t = 0; t < tiles; ++t) {
    const int32_t e = map[static_cast<size_t>(t)];
    if (e < 0) continue;
    for (int64_t r = t * kTile; r < (t + 1) * kTile; ++r)
      for (int64_t j = 0; j < n; ++j) {
        double s = accumulate ? of.data<double>()[r * n + j] : 0.0;
        for (int64_t i = 0; i < k; ++i) s += xf.data<double>()[r * k + i] * wf.data<double>()[(e * k + i) * n + j];
        want.data<double>()[r * n + j] = s;
      }
  }
  int64_t used = 0;
  for (int32_t e : map) used += e >= 0;
  ASSERT_GT(used, 0);
  const int64_t used_rows = used * kTile;  // the used tiles come first
  EXPECT_LE(RelError(got.Rows(0, used_rows), want.Rows(0, used_rows)), 1.0 / 256);
  for (int64_t i = used_rows * n; i < got.numel(); ++i) {
    const double g = got.data<double>()[i], o = of.data<double>()[i];
    ASSERT_TRUE(std::isnan(o) ? std::isnan(g) : g == o) << "element " << i << " of an unused tile was written";
  }
}

TEST(GroupedGemmCuda, TiledNNMatchesF64) {
  FATHOM_REQUIRE_GPU();
  const std::vector<int64_t> counts = {0, 1, 128, 300, 77, 129, 0};
  // 2 CTAs per cluster: odd column-tile counts as in TiledNTMatchesF64 (+= catches a double store). TMA
  // stores serve the overwriting calls (a bf16 += keeps the register stores).
  for (int cluster : {1, 2}) {
    for (bool tma : {false, true}) {
      for (int block_n : {128, 256}) {
        const cuda::TiledLaunch launch{block_n, 0, cluster, tma};
        CheckTiledNN(192, 72, counts, false, launch);    // N below one 64-column box: zero fill
        CheckTiledNN(256, 520, counts, true, launch);    // several column tiles, the last partial; +=
        CheckTiledNN(1024, 384, counts, false, launch);  // a long reduction (the ring wraps)
        CheckTiledNN(256, 520, counts, false, {block_n, 4, cluster, tma});  // 4 CTAs: the ring runs on
      }
      CheckTiledNN(1408, 2048, {100, 0, 300, 129}, true, {0, 0, cluster, tma});   // the recipe's widths (+=)
      CheckTiledNN(2048, 1408, {100, 0, 300, 129}, false, {0, 0, cluster, tma});  // down's dgrad
    }
  }
}

// The weight-gradient form: out[g] (f32) (= or +=) a_g^T . b_g over group g's tiles of the padded layout,
// both operands read MN-major; the tile ranges come from MoeTileExperts on the device. f32 output: the
// only error is the f32 accumulation order of bf16 products (exact in f32), well under 1e-5 relative over
// these reductions; 1e-4 leaves room and still fails on any misplaced 64-wide box (errors of order 1).
void CheckTiledTN(int64_t m, int64_t n, const std::vector<int64_t>& counts, bool accumulate,
                  const cuda::TiledLaunch& launch) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " M " + std::to_string(m) + " N " + std::to_string(n) +
               LaunchName(launch) + (accumulate ? " +=" : " ="));
  std::mt19937_64 rng(seed);
  const int64_t groups = static_cast<int64_t>(counts.size());
  int64_t rows = 0;
  for (int64_t c : counts) rows += c;
  const int64_t tiles = cuda::MaxExpertTiles(rows, groups) + 2;  // a budget past the layout, as the layer's
  const std::vector<int32_t> map = HostTileExperts(counts, tiles);
  const Tensor a = PaddedRows(counts, tiles, m, rng), b = PaddedRows(counts, tiles, n, rng);
  const Tensor out0 = RandomTensor({groups, m, n}, DType::kF32, rng, 50.0);
  cuda::DeviceArena arena("grouped_gemm_test", size_t{256} << 20);
  Tensor dmap = arena.Alloc({tiles}, DType::kI32), dbegin = arena.Alloc({groups + 1}, DType::kI32);
  cuda::MoeTileExperts(dmap, Upload(arena, CountsTensor(counts)), nullptr, dbegin);
  Tensor dout = Upload(arena, out0);
  if (!accumulate) cuda::Fill(dout, std::numeric_limits<double>::quiet_NaN(), nullptr);
  ASSERT_TRUE(cuda::TiledGroupedMnSupported(n, 64));
  cuda::TiledGroupedMatmulTN(dout, Upload(arena, a), Upload(arena, b), dbegin, accumulate, nullptr, launch);
  const Tensor got = Download(dout).To(DType::kF64);
  const Tensor af = a.To(DType::kF64), bf = b.To(DType::kF64);
  Tensor want = accumulate ? out0.To(DType::kF64) : Tensor::Zeros({groups, m, n}, DType::kF64);
  for (int64_t t = 0; t < tiles; ++t) {
    const int32_t g = map[static_cast<size_t>(t)];
    if (g < 0) continue;
    for (int64_t r = t * kTile; r < (t + 1) * kTile; ++r)
      for (int64_t i = 0; i < m; ++i) {
        const double ai = af.data<double>()[r * m + i];
        if (ai == 0.0) continue;  // pad rows
        for (int64_t j = 0; j < n; ++j) want.data<double>()[(g * m + i) * n + j] += ai * bf.data<double>()[r * n + j];
      }
  }
  for (int64_t i = 0; i < got.numel(); ++i)
    ASSERT_FALSE(std::isnan(got.data<double>()[i])) << "element " << i << " of out is NaN (unwritten or read past the layout)";
  EXPECT_LE(RelError(got, want), 1e-4);
}

TEST(GroupedGemmCuda, TiledTNMatchesF64) {
  FATHOM_REQUIRE_GPU();
  // Empty groups (zeroed when overwriting, kept when accumulating), ragged counts, M not a multiple of 128
  // (a partial row tile and a zero-filled 64-wide box), N partial in its column tile.
  // Clusters of 2: N 144 and 320 are 2 and 3 column tiles of 128 (3: a pair's second CTA without a tile).
  // TMA stores (f32: overwrite, or reduce-add when accumulating): M 200 ends each group's matrix in a partial
  // row tile, which the store map must clip at M rather than write into the next group's rows.
  for (int cluster : {1, 2}) {
    for (bool tma : {false, true}) {
      for (int block_n : {128, 256}) {
        const cuda::TiledLaunch launch{block_n, 0, cluster, tma};
        CheckTiledTN(200, 144, {0, 1, 128, 300, 77, 129, 0}, false, launch);
        CheckTiledTN(200, 144, {0, 1, 128, 300, 77, 129, 0}, true, launch);
        CheckTiledTN(256, 320, {500, 0, 260}, false, {block_n, 4, cluster, tma});  // 4 CTAs: the ring runs on
      }
      CheckTiledTN(1408, 2048, {100, 0, 300, 129}, false, {0, 0, cluster, tma});  // the recipe's widths
      CheckTiledTN(2048, 1408, {100, 0, 300, 129}, true, {0, 0, cluster, tma});   // gate/up's
    }
  }
}

TEST(GroupedGemmCuda, RefusesWhatItCannotRun) {
  FATHOM_REQUIRE_GPU();
  EXPECT_FALSE(cuda::TiledGroupedSupported(64, 100));  // K not a multiple of 64
  EXPECT_FALSE(cuda::TiledGroupedSupported(60, 128));  // N not a multiple of 8
  EXPECT_FALSE(cuda::TiledGroupedMnSupported(64, 100));  // a reduction not a multiple of 64
  EXPECT_FALSE(cuda::TiledGroupedMnSupported(60, 128));  // N not a multiple of 8
}

// Launch options a form cannot run fail loudly, naming the option (never a silent other path).
TEST(GroupedGemmCudaDeathTest, RefusesLaunchOptionsItCannotRun) {
  FATHOM_REQUIRE_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  cuda::DeviceArena arena("grouped_gemm_test", size_t{16} << 20);
  Tensor x = arena.Alloc({kTile, 64}, DType::kBF16), w = arena.Alloc({1, 352, 64}, DType::kBF16);
  Tensor out = arena.Alloc({kTile, 352}, DType::kBF16), map = arena.Alloc({1}, DType::kI32);
  cuda::MoeTileExperts(map, Upload(arena, CountsTensor({kTile})), nullptr);  // one tile of expert 0
  EXPECT_DEATH(cuda::TiledGroupedMatmulNT(out, x, w, map, nullptr, {0, 0, 3, std::nullopt}),
               "cluster_n 3: expected 1 or 2");
  EXPECT_DEATH(cuda::TiledGroupedMatmulNT(out, x, w, map, nullptr, {176, 0, 1, true}),
               "tma_store: this form has no TMA-store epilogue at column tile 176");
  // By default (the process's TiledDefaults asking for TMA stores) a form that has none stores from
  // registers.
  const cuda::TiledDefaults saved = cuda::GetTiledDefaults();
  cuda::SetTiledDefaults({2, true});
  cuda::TiledGroupedMatmulNT(out, x, w, map, nullptr, {176, 0, std::nullopt, std::nullopt});
  cuda::SetTiledDefaults(saved);
  EXPECT_DEATH(cuda::SetTiledDefaults({3, false}), "default cluster_n 3: expected 1 or 2");
}

// The FP8 form against the CPU emulation (cpu::Fp8GroupedMatmulNT) on the same codes and scales: both sum
// each 128-deep block's e4m3 products and add them times the two scales. e4m3 products are exact in f32,
// but Hopper's FP8 wgmma keeps about 14 significand bits in a block's partial sum (the DeepSeek-V3 report,
// sec. 3.3.2, which is why the kernel promotes every 128-deep block to f32 as cuBLASLt does), ~6e-5 per
// partial: the tolerances of tests/gpu/fp8_gemm_test.cc, 5e-4 for f32 outputs and 5e-3 for bf16 (one bf16
// rounding on top). `transposed` multiplies by the dgrad copy (Fp8Weight::wt) instead of the forward one.
void CheckTiledFp8(int64_t k, int64_t n, const std::vector<int64_t>& counts, bool transposed, DType out_dtype,
                   bool accumulate, const cuda::TiledLaunch& launch) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " K " + std::to_string(k) + " N " + std::to_string(n) +
               (transposed ? " wt" : " w") + (accumulate ? " +=" : " =") + LaunchName(launch));
  std::mt19937_64 rng(seed);
  const int64_t experts = static_cast<int64_t>(counts.size());
  std::vector<int64_t> padded;
  int64_t rows = 0, used_rows = 0;
  for (int64_t c : counts) {
    rows += c;
    padded.push_back((c + kTile - 1) / kTile * kTile);
    used_rows += padded.back();
  }
  const int64_t tiles = cuda::MaxExpertTiles(rows, experts);
  // w (E, rows_w, cols_w) quantised both ways; the product reduces over x's width = the matrix's cols.
  const int64_t wn = transposed ? k : n, wk = transposed ? n : k;
  const Fp8Weight wq = Fp8Weight::Empty({experts, wn, wk}, Device::kCPU);
  cpu::QuantizeWeight128x128(wq, RandomTensor({experts, wn, wk}, DType::kF32, rng));
  const Fp8BlockMatrix& wm = transposed ? wq.wt : wq.w;
  const int64_t out_cols = wm.rows, red = wm.cols;
  const Fp8Rows xq = Fp8Rows::Empty(tiles * kTile, red, Device::kCPU);
  cpu::QuantizeRows1x128(xq, RandomTensor({tiles * kTile, red}, DType::kF32, rng, 3.0));

  cuda::DeviceArena arena("grouped_gemm_test", size_t{256} << 20);
  const Fp8Rows dx = Fp8Rows::Wrap(Upload(arena, xq.data), red);
  Fp8BlockMatrix dw = wm;
  dw.codes = Upload(arena, wm.codes);
  dw.scales = Upload(arena, wm.scales);
  Tensor dmap = arena.Alloc({tiles}, DType::kI32);
  cuda::MoeTileExperts(dmap, Upload(arena, CountsTensor(counts)), nullptr);
  const Tensor out0 = RandomTensor({tiles * kTile, out_cols}, DType::kF32, rng).To(out_dtype);
  Tensor dout = Upload(arena, out0);
  if (!accumulate) cuda::Fill(dout, std::numeric_limits<double>::quiet_NaN(), nullptr);
  ASSERT_TRUE(cuda::TiledFp8Supported(out_cols));
  cuda::TiledFp8GroupedMatmulNT(dout, dx, dw, dmap, accumulate, nullptr, launch);
  const Tensor got = Download(dout);

  // The CPU twin (f64 output) over the used rows, grouped by the padded counts.
  Tensor want = out0.Rows(0, used_rows).To(DType::kF64);
  const Fp8Rows used = Fp8Rows::Wrap(xq.data.Rows(0, used_rows), red);
  cpu::Fp8GroupedMatmulNT(want, used, wm, CountsTensor(padded), accumulate);
  const double tol = out_dtype == DType::kBF16 ? 5e-3 : 5e-4;
  EXPECT_LE(RelError(got.Rows(0, used_rows), want), tol);
  // The host-counts form (the tile prefix as a kernel parameter) over the used rows only.
  ASSERT_TRUE(cuda::TiledCountsOk(padded));
  Tensor dout2 = Upload(arena, out0.Rows(0, used_rows).Clone());
  cuda::TiledFp8GroupedMatmulNT(dout2, Fp8Rows::Wrap(dx.data.Rows(0, used_rows), red), dw, padded, accumulate,
                                nullptr, launch);
  EXPECT_LE(RelError(Download(dout2), want), tol) << "host counts";
  if (!accumulate) {
    for (int64_t i = used_rows * out_cols; i < got.numel(); ++i)
      ASSERT_TRUE(std::isnan(got.Item(i))) << "element " << i << " of an unused tile was written";
  }
}

TEST(GroupedGemmCuda, TiledFp8NTMatchesTheCpuEmulation) {
  FATHOM_REQUIRE_GPU();
  const std::vector<int64_t> counts = {0, 1, 128, 300, 77, 129, 0};
  for (int cluster : {1, 2}) {        // 2: N 144, 384, 272 are 2, 3 and 3 column tiles (odd: a tile-less CTA)
    for (bool tma : {false, true}) {  // TMA stores: bf16 =, f32 = and += (a bf16 += keeps register stores)
      const cuda::TiledLaunch launch{0, 0, cluster, tma};
      CheckTiledFp8(200, 144, counts, false, DType::kBF16, false, launch);  // partial k-block and column tile
      CheckTiledFp8(512, 384, counts, false, DType::kF32, true, launch);  // f32 accumulation into the output
      CheckTiledFp8(200, 144, counts, true, DType::kBF16, true, launch);  // the dgrad copy, bf16 +=
      CheckTiledFp8(1024, 272, counts, false, DType::kBF16, false, {0, 4, cluster, tma});  // 4 CTAs
      CheckTiledFp8(2048, 1408, {100, 0, 300, 129}, false, DType::kBF16, false, launch);   // recipe's widths
    }
  }
}

// The FP8 weight-gradient form against cpu::Fp8GroupedMatmulTN: out[g] (f32, random) += a_g . b_g^T over
// each group's padded tokens, same tolerance as the f32 NT outputs (5e-4).
void CheckTiledFp8TN(int64_t m, int64_t n, const std::vector<int64_t>& counts,
                     const cuda::TiledLaunch& launch) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " M " + std::to_string(m) + " N " + std::to_string(n) +
               LaunchName(launch));
  std::mt19937_64 rng(seed);
  int64_t rows = 0;
  for (int64_t c : counts) rows += c;
  const int64_t groups = static_cast<int64_t>(counts.size());
  const Tensor ct = CountsTensor(counts);
  const Fp8Cols qa = Fp8Cols::Empty(m, ct, Device::kCPU), qb = Fp8Cols::Empty(n, ct, Device::kCPU);
  cpu::QuantizeCols1x128(qa, RandomTensor({rows, m}, DType::kF32, rng, 3.0));
  cpu::QuantizeCols1x128(qb, RandomTensor({rows, n}, DType::kF32, rng));
  const Tensor out0 = RandomTensor({groups, m, n}, DType::kF32, rng, 50.0);
  cuda::DeviceArena arena("grouped_gemm_test", size_t{256} << 20);
  auto up = [&](const Fp8Cols& q) {
    Fp8Cols d = q;
    d.codes = Upload(arena, q.codes);
    d.scales = Upload(arena, q.scales);
    return d;
  };
  Tensor dout = Upload(arena, out0);
  ASSERT_TRUE(cuda::TiledFp8TNSupported(n, groups));
  cuda::TiledFp8GroupedMatmulTN(dout, up(qa), up(qb), /*accumulate=*/true, nullptr, launch);
  Tensor want = out0.To(DType::kF64);
  cpu::Fp8GroupedMatmulTN(want, qa, qb);
  EXPECT_LE(RelError(Download(dout), want), 5e-4);
}

TEST(GroupedGemmCuda, TiledFp8TNMatchesTheCpuEmulation) {
  FATHOM_REQUIRE_GPU();
  // Empty groups, ragged token counts, M not a multiple of 128 (a partial row tile), a partial column tile.
  for (int cluster : {1, 2}) {  // 2: N 144 and 272 are 2 and 3 column tiles (3: a tile-less CTA, += twice)
    CheckTiledFp8TN(200, 144, {0, 1, 128, 300, 77, 129, 0}, {0, 0, cluster, std::nullopt});
    CheckTiledFp8TN(256, 272, {500, 0, 260},
                    {0, 4, cluster, std::nullopt});  // 4 CTAs: the ring runs on across groups
  }
}

// The benchmark's problem (32 experts, 32768 rows over 287 tiles, K 2048, N 1408: ~24 output tiles per CTA),
// checked on three tiles against the CPU emulation (the whole product is too slow for it).
TEST(GroupedGemmCuda, TiledFp8NTAtTheBenchShape) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  constexpr int64_t kExperts = 32, kRows = 32768, k = 2048, n = 1408;
  std::vector<int64_t> counts(kExperts, 0);
  for (int64_t r = 0; r < kRows; ++r) counts[static_cast<size_t>(rng() % (kExperts - 1))] += 1;  // last empty
  const int64_t tiles = cuda::MaxExpertTiles(kRows, kExperts);
  const std::vector<int32_t> map = HostTileExperts(counts, tiles);
  const Fp8Weight wq = Fp8Weight::Empty({kExperts, n, k}, Device::kCPU);
  cpu::QuantizeWeight128x128(wq, RandomTensor({kExperts, n, k}, DType::kF32, rng));
  const Fp8Rows xq = Fp8Rows::Empty(tiles * kTile, k, Device::kCPU);
  cpu::QuantizeRows1x128(xq, RandomTensor({tiles * kTile, k}, DType::kF32, rng));
  cuda::DeviceArena arena("grouped_gemm_test", size_t{1} << 30);
  Fp8BlockMatrix dw = wq.w;
  dw.codes = Upload(arena, wq.w.codes);
  dw.scales = Upload(arena, wq.w.scales);
  Tensor dmap = arena.Alloc({tiles}, DType::kI32);
  cuda::MoeTileExperts(dmap, Upload(arena, CountsTensor(counts)), nullptr);
  Tensor dout = arena.Alloc({tiles * kTile, n}, DType::kBF16);
  cuda::TiledFp8GroupedMatmulNT(dout, Fp8Rows::Wrap(Upload(arena, xq.data), k), dw, dmap, false, nullptr);
  const Tensor got = Download(dout);
  for (int64_t t : {int64_t{0}, tiles / 2, int64_t{259}}) {
    const int32_t e = map[static_cast<size_t>(t)];
    ASSERT_GE(e, 0) << "tile " << t;
    SCOPED_TRACE("tile " + std::to_string(t) + " expert " + std::to_string(e));
    Fp8BlockMatrix one = wq.w;
    one.codes = wq.w.codes.Rows(e, e + 1);
    one.scales = wq.w.scales.Rows(e, e + 1);
    Tensor want = Tensor::Zeros({kTile, n}, DType::kF64);
    cpu::Fp8GroupedMatmulNT(want, Fp8Rows::Wrap(xq.data.Rows(t * kTile, (t + 1) * kTile), k), one,
                            CountsTensor({kTile}), false);
    EXPECT_LE(RelError(got.Rows(t * kTile, (t + 1) * kTile), want), 5e-3);
  }
}

}  // namespace
}  // namespace fathom
