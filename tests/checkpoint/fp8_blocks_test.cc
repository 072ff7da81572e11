// 128x128 block FP8 (checkpoint/fp8_blocks.h): scales per block, the error bound of quantize-dequantize,
// banded quantization equal to whole-matrix quantization, dequantization of any flat range.
#include "checkpoint/fp8_blocks.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "framework/numeric.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

// A (rows x cols) matrix whose blocks have magnitudes from 1e-6 to 1e3, one block all zeros, one
// holding a single nonzero value.
std::vector<float> RandomMatrix(int64_t rows, int64_t cols, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> exponent(-6.0, 3.0);
  const Shape grid = Fp8ScaleShape(rows, cols);
  std::vector<double> block_scale(static_cast<size_t>(grid[0] * grid[1]));
  for (double& s : block_scale) s = std::pow(10.0, exponent(rng));
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t block = (r / kFp8BlockSize) * grid[1] + c / kFp8BlockSize;
      w[static_cast<size_t>(r * cols + c)] =
          static_cast<float>(normal(rng) * block_scale[static_cast<size_t>(block)]);
    }
  }
  // Block (0, 1) all zeros; block (1, 0) zero but for one value.
  for (int64_t r = 0; r < std::min<int64_t>(rows, 128); ++r) {
    for (int64_t c = 128; c < std::min<int64_t>(cols, 256); ++c) w[static_cast<size_t>(r * cols + c)] = 0;
  }
  for (int64_t r = 128; r < std::min<int64_t>(rows, 256); ++r) {
    for (int64_t c = 0; c < std::min<int64_t>(cols, 128); ++c) w[static_cast<size_t>(r * cols + c)] = 0;
  }
  if (rows > 130) w[static_cast<size_t>(130 * cols + 5)] = -3.25f;
  return w;
}

TEST(Fp8Blocks, ScalesAreBlockAmaxOver448AndErrorsWithinHalfAnUlp) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t rows = 300, cols = 259;  // 3 x 3 blocks, the last row and column of blocks partial
  const std::vector<float> w = RandomMatrix(rows, cols, rng);
  const Shape grid = Fp8ScaleShape(rows, cols);
  ASSERT_EQ(grid, (Shape{3, 3}));
  std::vector<uint8_t> q(w.size());
  std::vector<float> scale(static_cast<size_t>(grid[0] * grid[1]));
  QuantizeE4M3Blocks(w.data(), rows, cols, q.data(), scale.data());
  std::vector<float> back(w.size());
  DequantizeE4M3Blocks(q.data(), 0, rows * cols, cols, scale.data(), back.data());

  for (int64_t br = 0; br < grid[0]; ++br) {
    for (int64_t bc = 0; bc < grid[1]; ++bc) {
      float amax = 0;
      for (int64_t r = br * 128; r < std::min(rows, br * 128 + 128); ++r) {
        for (int64_t c = bc * 128; c < std::min(cols, bc * 128 + 128); ++c) {
          amax = std::max(amax, std::fabs(w[static_cast<size_t>(r * cols + c)]));
        }
      }
      const float s = scale[static_cast<size_t>(br * grid[1] + bc)];
      EXPECT_EQ(s, amax == 0 ? 1.0f : amax / 448.0f) << "block (" << br << ", " << bc << ")";
    }
  }
  EXPECT_EQ(scale[1], 1.0f) << "the all-zero block";
  int64_t checked = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = static_cast<size_t>(r * cols + c);
      const float s = scale[static_cast<size_t>((r / 128) * grid[1] + c / 128)];
      // Half an e4m3 ulp: 2^-4 relative for values that are normal at the block's scale (|w| / s >= 2^-6),
      // 2^-10 s below; the division and the product each add at most 2^-24 relative.
      const double bound =
          std::max(std::fabs(static_cast<double>(w[i])) * 0.0625, s * 0x1p-10) * (1 + 0x1p-22);
      ASSERT_LE(std::fabs(static_cast<double>(back[i]) - w[i]), bound)
          << "(" << r << ", " << c << ") w " << w[i];
      if (w[i] == 0) {
        EXPECT_EQ(back[i], 0.0f);
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, rows * cols);
  // The lone value of block (1, 0) is its block's amax: it maps to 448 and back within rounding.
  EXPECT_NEAR(back[130 * cols + 5], -3.25f, 3.25f * 0x1p-22);
  EXPECT_EQ(q[130 * cols + 5], 0xFE) << "-448 in e4m3fn";
}

TEST(Fp8Blocks, BandsOfWholeBlockRowsEqualTheWholeMatrix) {
  std::mt19937_64 rng(testing::TestSeed());
  const int64_t rows = 333, cols = 200;
  const std::vector<float> w = RandomMatrix(rows, cols, rng);
  const Shape grid = Fp8ScaleShape(rows, cols);
  std::vector<uint8_t> q_all(w.size()), q_band(w.size());
  std::vector<float> s_all(static_cast<size_t>(grid[0] * grid[1])), s_band(s_all.size());
  QuantizeE4M3Blocks(w.data(), rows, cols, q_all.data(), s_all.data());
  for (int64_t r0 = 0; r0 < rows; r0 += 256) {  // bands of 256 rows, the last one 77
    const int64_t n = std::min<int64_t>(256, rows - r0);
    QuantizeE4M3Blocks(w.data() + r0 * cols, n, cols, q_band.data() + r0 * cols,
                       s_band.data() + (r0 / 128) * grid[1]);
  }
  EXPECT_EQ(q_all, q_band);
  EXPECT_EQ(s_all, s_band);
}

TEST(Fp8Blocks, DequantizingAnyRangeEqualsTheWholeMatrix) {
  std::mt19937_64 rng(testing::TestSeed());
  const int64_t rows = 140, cols = 150;
  const std::vector<float> w = RandomMatrix(rows, cols, rng);
  const Shape grid = Fp8ScaleShape(rows, cols);
  std::vector<uint8_t> q(w.size());
  std::vector<float> s(static_cast<size_t>(grid[0] * grid[1])), all(w.size());
  QuantizeE4M3Blocks(w.data(), rows, cols, q.data(), s.data());
  DequantizeE4M3Blocks(q.data(), 0, rows * cols, cols, s.data(), all.data());
  std::uniform_int_distribution<int64_t> pick(0, rows * cols);
  for (int trial = 0; trial < 20; ++trial) {
    int64_t a = pick(rng), b = pick(rng);
    if (a > b) std::swap(a, b);
    std::vector<float> part(static_cast<size_t>(b - a));
    DequantizeE4M3Blocks(q.data() + a, a, b - a, cols, s.data(), part.data());
    for (int64_t i = a; i < b; ++i)
      ASSERT_EQ(part[static_cast<size_t>(i - a)], all[static_cast<size_t>(i)]) << i;
  }
  // Dequantization is the product of the decoded code and the block's scale.
  for (int64_t i = 0; i < rows * cols; i += 97) {
    const int64_t r = i / cols, c = i % cols;
    EXPECT_EQ(all[static_cast<size_t>(i)], E4M3ToFloat(Fp8E4M3{q[static_cast<size_t>(i)]}) *
                                               s[static_cast<size_t>((r / 128) * grid[1] + c / 128)]);
  }
}

}  // namespace
}  // namespace fathom
