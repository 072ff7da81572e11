// The FP8 GEMM operands and the CPU emulation of the block-scaled GEMMs (framework/fp8_operands.h,
// framework/kernels/cpu/fp8_gemm.h, through framework/ops.h): the quantisers follow the documented tile
// formula and layouts (scales, padding, groups, the transposed weight copy), and the emulated products equal
// the f64 products of the values the codes stand for, to f32 round-off. GPU results are compared with these
// in tests/gpu/fp8_gemm_test.cc.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "framework/fp8_operands.h"
#include "framework/numeric.h"
#include "framework/ops.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::TestSeed;

// Normal values whose magnitude changes every 37 elements (2^-12 .. 2^6), so that the tiles of one row, one
// column and one block see different scales; with one exact zero run so that the amax floor is exercised.
Tensor Values(const Shape& shape, std::mt19937_64& rng, DType dtype = DType::kF32) {
  Tensor t = Tensor::Empty(shape, DType::kF64);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_int_distribution<int> octave(-12, 6);
  double scale = 1.0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (i % 37 == 0) scale = std::ldexp(1.0, octave(rng));
    t.data<double>()[i] = nd(rng) * scale;
  }
  return t.To(dtype);
}

Tensor Counts(const std::vector<int64_t>& counts) {
  Tensor t = Tensor::Empty({static_cast<int64_t>(counts.size())}, DType::kI64);
  for (size_t i = 0; i < counts.size(); ++i) t.data<int64_t>()[i] = counts[i];
  return t;
}

uint8_t Code(const Tensor& codes, int64_t i) { return static_cast<const uint8_t*>(codes.raw())[i]; }
float Decode(uint8_t code) { return E4M3ToFloat(Fp8E4M3{code}); }

// The documented tile formula on f32 values: the floored amax, the scale, and the code of each value.
float TileAmax(const std::vector<float>& v) {
  float amax = 0.0f;
  for (float f : v) amax = std::fmax(amax, std::fabs(f));
  return std::fmax(amax, kFp8ScaleFloor);
}
float TileScale(const std::vector<float>& v) { return TileAmax(v) / kFp8E4M3Max; }
uint8_t TileCode(float x, float amax) { return FloatToE4M3Saturate(x * (kFp8E4M3Max / amax)).bits; }

// e4m3 keeps 3 mantissa bits: a value in the normal range is off by at most 2^-4 of itself after rounding,
// one below it by at most half the subnormal step, scale * 2^-10 (plus f32 round-off of the products).
void ExpectQuantisationError(float x, float back, float scale, const std::string& what) {
  EXPECT_LE(std::fabs(back - x), std::fabs(x) * (1.0f / 16 + 1e-6f) + scale * (1.0f / 1024) * 1.001f) << what;
}

const uint8_t* RowBytes(const Fp8Rows& q, int64_t r) {
  return static_cast<const uint8_t*>(q.data.raw()) + r * q.row_bytes();
}
float RowScale(const Fp8Rows& q, int64_t r, int64_t kb) {
  float s;
  std::memcpy(&s, RowBytes(q, r) + q.padded_cols() + 4 * kb, 4);
  return s;
}

TEST(Fp8Quantize, RowsFollowTheTileFormulaAndLayout) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (Shape shape : {Shape{5, 300}, Shape{1, 7}, Shape{130, 128}, Shape{3, 129}, Shape{2, 640}}) {
    for (DType dtype : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(ShapeString(shape) + " " + std::string(DTypeName(dtype)));
      Tensor x = Values(shape, rng, dtype);
      const int64_t rows = shape[0], cols = shape[1];
      Fp8Rows q = ops::QuantizeRows(x);
      ASSERT_EQ(q.data.shape(), Shape({rows, Fp8RowBytes(cols)}));
      Tensor back = Tensor::Empty(shape, dtype);
      ops::DequantizeRows(back, q);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t kb = 0; kb < Fp8Blocks(cols); ++kb) {
          std::vector<float> tile;
          for (int64_t c = kb * 128; c < std::min(cols, kb * 128 + 128); ++c)
            tile.push_back(static_cast<float>(x.Item(r * cols + c)));
          const float scale = RowScale(q, r, kb), amax = TileAmax(tile);
          ASSERT_EQ(scale, TileScale(tile)) << "row " << r << " tile " << kb;
          for (size_t i = 0; i < tile.size(); ++i) {
            const int64_t c = kb * 128 + static_cast<int64_t>(i);
            ASSERT_EQ(RowBytes(q, r)[c], TileCode(tile[i], amax)) << "row " << r << " col " << c;
            ExpectQuantisationError(tile[i], static_cast<float>(back.Item(r * cols + c)), scale,
                                    "row " + std::to_string(r) + " col " + std::to_string(c));
          }
        }
        for (int64_t c = cols; c < q.padded_cols(); ++c)
          ASSERT_EQ(RowBytes(q, r)[c], 0) << "padding col " << c;
        for (int64_t kb = Fp8Blocks(cols); kb < Fp8ScaleStride(Fp8Blocks(cols)); ++kb)
          ASSERT_EQ(RowScale(q, r, kb), 0.0f) << "scale padding " << kb;
      }
    }
  }
}

// Each group's tokens are tiled from the group's first row, so no tile mixes groups; groups with zero or
// fewer than 128 rows, and a dense (single-group) call.
TEST(Fp8Quantize, ColumnsTileEachGroupsTokens) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (std::vector<int64_t> counts :
       {std::vector<int64_t>{0, 130, 1, 0, 257, 128}, std::vector<int64_t>{77}, std::vector<int64_t>{0}}) {
    int64_t rows = 0;
    for (int64_t c : counts) rows += c;
    const int64_t cols = 48;
    SCOPED_TRACE(std::to_string(counts.size()) + " groups, " + std::to_string(rows) + " rows");
    Tensor x = Values({rows, cols}, rng);
    Fp8Cols q = ops::QuantizeCols(x, Counts(counts));
    int64_t r0 = 0, t0 = 0;
    for (int64_t count : counts) {
      for (int64_t tb = 0; tb < Fp8Blocks(count); ++tb) {
        for (int64_t c = 0; c < cols; ++c) {
          std::vector<float> tile;
          for (int64_t i = tb * 128; i < std::min(count, tb * 128 + 128); ++i)
            tile.push_back(x.data<float>()[(r0 + i) * cols + c]);
          const float scale = q.scales.data<float>()[(t0 / 128 + tb) * cols + c], amax = TileAmax(tile);
          ASSERT_EQ(scale, TileScale(tile)) << "column " << c << " tile " << tb;
          for (int64_t i = 0; i < 128; ++i) {
            const uint8_t code = Code(q.codes, c * q.padded_tokens() + t0 + tb * 128 + i);
            if (i < static_cast<int64_t>(tile.size())) {
              ASSERT_EQ(code, TileCode(tile[i], amax)) << "column " << c << " token " << tb * 128 + i;
              ExpectQuantisationError(tile[i], Decode(code) * scale, scale, "column " + std::to_string(c));
            } else {
              ASSERT_EQ(code, 0) << "padding token " << tb * 128 + i;
            }
          }
        }
      }
      r0 += count;
      t0 += Fp8Padded(count);
    }
    EXPECT_EQ(q.padded_tokens(), t0);
  }
}

// Columns quantised from FP8 rows are those of the rows' values: the same bytes as quantising the
// dequantised rows (both read code * scale as one f32 product).
TEST(Fp8Quantize, ColumnsFromFp8RowsEqualColumnsOfTheirValues) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const Tensor counts = Counts({3, 200, 0, 129});
  Tensor x = Values({332, 200}, rng);
  Fp8Rows rows = ops::QuantizeRows(x);
  Tensor values = Tensor::Empty(x.shape(), DType::kF32);
  ops::DequantizeRows(values, rows);
  Fp8Cols a = ops::QuantizeCols(rows, counts), b = ops::QuantizeCols(values, counts);
  ASSERT_EQ(a.codes.nbytes(), b.codes.nbytes());
  EXPECT_EQ(std::memcmp(a.codes.raw(), b.codes.raw(), a.codes.nbytes()), 0);
  EXPECT_EQ(std::memcmp(a.scales.raw(), b.scales.raw(), a.scales.nbytes()), 0);
}

// 128x128 blocks: one scale per block, shared by the transposed copy, whose codes are the transpose.
TEST(Fp8Quantize, WeightBlocksAndTheirTranspose) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (Shape shape : {Shape{300, 200}, Shape{3, 130, 70}, Shape{1, 1}, Shape{2, 128, 256}}) {
    SCOPED_TRACE(ShapeString(shape));
    const int64_t n = shape[shape.size() - 2], k = shape.back(), m = NumElements(shape) / (n * k);
    Tensor w = Values(shape, rng);
    Fp8Weight q = Fp8Weight::Empty(shape, Device::kCPU);
    ops::QuantizeWeight128x128(q, w);
    const int64_t kp = Fp8Padded(k), np = Fp8Padded(n), stride = Fp8ScaleStride(Fp8Blocks(k)),
                  stride_t = Fp8ScaleStride(Fp8Blocks(n));
    for (int64_t e = 0; e < m; ++e) {
      for (int64_t nb = 0; nb < Fp8Blocks(n); ++nb) {
        for (int64_t kb = 0; kb < Fp8Blocks(k); ++kb) {
          std::vector<float> block;
          for (int64_t r = nb * 128; r < std::min(n, nb * 128 + 128); ++r)
            for (int64_t c = kb * 128; c < std::min(k, kb * 128 + 128); ++c)
              block.push_back(w.data<float>()[(e * n + r) * k + c]);
          const float scale = q.w.scales.data<float>()[(e * Fp8Blocks(n) + nb) * stride + kb],
                      amax = TileAmax(block);
          ASSERT_EQ(scale, TileScale(block));
          ASSERT_EQ(q.wt.scales.data<float>()[(e * Fp8Blocks(k) + kb) * stride_t + nb], scale);
          for (int64_t r = nb * 128; r < std::min(n, nb * 128 + 128); ++r) {
            for (int64_t c = kb * 128; c < std::min(k, kb * 128 + 128); ++c) {
              const float v = w.data<float>()[(e * n + r) * k + c];
              const uint8_t code = Code(q.w.codes, (e * n + r) * kp + c);
              ASSERT_EQ(code, TileCode(v, amax)) << "(" << r << ", " << c << ")";
              ASSERT_EQ(Code(q.wt.codes, (e * k + c) * np + r), code)
                  << "transposed (" << c << ", " << r << ")";
              ExpectQuantisationError(v, Decode(code) * scale, scale, "element");
            }
          }
        }
      }
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = k; c < kp; ++c) ASSERT_EQ(Code(q.w.codes, (e * n + r) * kp + c), 0);
      for (int64_t c = 0; c < k; ++c)
        for (int64_t r = n; r < np; ++r) ASSERT_EQ(Code(q.wt.codes, (e * k + c) * np + r), 0);
    }
    for (int64_t i = 0; i < q.w.scales.numel(); ++i) {
      if (i % stride >= Fp8Blocks(k)) {
        ASSERT_EQ(q.w.scales.data<float>()[i], 0.0f) << "scale padding";
      }
    }
  }
}

// What a block matrix's codes stand for: matrix e's (rows, cols) values in f64.
std::vector<double> BlockValues(const Fp8BlockMatrix& w, int64_t e) {
  const int64_t kp = Fp8Padded(w.cols), stride = Fp8ScaleStride(Fp8Blocks(w.cols));
  std::vector<double> v(static_cast<size_t>(w.rows * w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    for (int64_t c = 0; c < w.cols; ++c) {
      const float s = w.scales.data<float>()[(e * Fp8Blocks(w.rows) + r / 128) * stride + c / 128];
      v[r * w.cols + c] = static_cast<double>(Decode(Code(w.codes, (e * w.rows + r) * kp + c)) * s);
    }
  }
  return v;
}

double RelError(const std::vector<double>& got, const std::vector<double>& want) {
  double d = 0, n = 0;
  for (size_t i = 0; i < want.size(); ++i)
    d += (got[i] - want[i]) * (got[i] - want[i]), n += want[i] * want[i];
  EXPECT_GT(n, 0.0) << "reference is all zeros";
  return std::sqrt(d / n);
}

// out = x . w^T per group: the emulation against the f64 product of the dequantised operands (f32 sums of
// at most 128 exact products, then f32 accumulation over blocks: ~1e-6 relative; 2e-5 leaves margin), and
// against the unquantised product (e4m3's 3-bit mantissa: ~3% relative in norm for these magnitudes; 0.1).
TEST(Fp8Gemm, GroupedNTMatchesTheProductOfTheQuantisedValues) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  struct Case {
    std::vector<int64_t> counts;
    int64_t n, k;
    bool dense, accumulate;
    DType dtype;
  };
  for (const Case& cs :
       {Case{{70, 0, 129, 5}, 48, 200, false, false, DType::kF32},
        Case{{0, 256, 1}, 144, 128, false, true, DType::kF32}, Case{{33}, 40, 300, true, false, DType::kF64},
        Case{{131}, 16, 64, true, true, DType::kF64}}) {
    int64_t rows = 0;
    for (int64_t c : cs.counts) rows += c;
    const int64_t groups = static_cast<int64_t>(cs.counts.size());
    SCOPED_TRACE(std::to_string(groups) + " groups, rows " + std::to_string(rows) + ", n " +
                 std::to_string(cs.n) + ", k " + std::to_string(cs.k));
    Tensor x = Values({rows, cs.k}, rng, cs.dtype);
    const Shape wshape = cs.dense ? Shape{cs.n, cs.k} : Shape{groups, cs.n, cs.k};
    Tensor w = Values(wshape, rng, cs.dtype);
    Fp8Weight q = Fp8Weight::Empty(wshape, Device::kCPU);
    ops::QuantizeWeight128x128(q, w);
    Fp8Rows xq = ops::QuantizeRows(x);
    Tensor before = Values({rows, cs.n}, rng, cs.dtype);
    Tensor out = before.Clone();
    ops::Fp8GroupedMatmulNT(out, xq, q.w, cs.dense ? Tensor() : Counts(cs.counts), cs.accumulate);
    Tensor xv = Tensor::Empty(x.shape(), cs.dtype);
    ops::DequantizeRows(xv, xq);
    std::vector<double> got, want, exact;
    int64_t r0 = 0;
    for (int64_t g = 0; g < groups; ++g) {
      const std::vector<double> wv = BlockValues(q.w, g);
      for (int64_t r = r0; r < r0 + cs.counts[g]; ++r) {
        for (int64_t j = 0; j < cs.n; ++j) {
          double s = 0, e = 0;
          for (int64_t kk = 0; kk < cs.k; ++kk) {
            s += xv.Item(r * cs.k + kk) * wv[j * cs.k + kk];
            e += x.Item(r * cs.k + kk) * w.Item((g * cs.n + j) * cs.k + kk);
          }
          const double base = cs.accumulate ? before.Item(r * cs.n + j) : 0.0;
          got.push_back(out.Item(r * cs.n + j) - base);
          want.push_back(s);
          exact.push_back(e);
        }
      }
      r0 += cs.counts[g];
    }
    EXPECT_LT(RelError(got, want), 2e-5);
    EXPECT_LT(RelError(got, exact), 0.1);
  }
}

// dW[g] += dy_g^T x_g over each group's tokens, against the f64 product of the columns' values; a group
// without tokens leaves its slice exactly as it was.
TEST(Fp8Gemm, GroupedTNAccumulatesEachGroupsWeightGradient) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::vector<int64_t> counts = {150, 0, 3, 128};
  const int64_t rows = 281, m = 40, n = 72, groups = 4;
  Tensor dy = Values({rows, m}, rng), x = Values({rows, n}, rng);
  Fp8Cols a = ops::QuantizeCols(dy, Counts(counts)), b = ops::QuantizeCols(x, Counts(counts));
  Tensor before = Values({groups, m, n}, rng);
  Tensor out = before.Clone();
  ops::Fp8GroupedMatmulTN(out, a, b);
  auto value = [](const Fp8Cols& q, int64_t c, int64_t t) {
    return static_cast<double>(Decode(Code(q.codes, c * q.padded_tokens() + t)) *
                               q.scales.data<float>()[(t / 128) * q.cols() + c]);
  };
  std::vector<double> got, want, exact;
  int64_t r0 = 0, t0 = 0;
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        const int64_t at = (g * m + i) * n + j;
        if (counts[g] == 0) {
          ASSERT_EQ(out.data<float>()[at], before.data<float>()[at]) << "group without tokens";
          continue;
        }
        double s = 0, e = 0;
        for (int64_t t = 0; t < counts[g]; ++t) {
          s += value(a, i, t0 + t) * value(b, j, t0 + t);
          e += dy.Item((r0 + t) * m + i) * x.Item((r0 + t) * n + j);
        }
        got.push_back(out.Item(at) - before.Item(at));
        want.push_back(s);
        exact.push_back(e);
      }
    }
    r0 += counts[g];
    t0 += Fp8Padded(counts[g]);
  }
  EXPECT_LT(RelError(got, want), 2e-5);
  EXPECT_LT(RelError(got, exact), 0.1);

  // Overwriting (a gradient's first writer): the same products with nothing added, the group without
  // tokens zeroed.
  Tensor fresh = before.Clone();
  ops::Fp8GroupedMatmulTN(fresh, a, b, /*accumulate=*/false);
  std::vector<double> got_fresh;
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t at = g * m * n; at < (g + 1) * m * n; ++at) {
      if (counts[g] == 0) {
        ASSERT_EQ(fresh.data<float>()[at], 0.0f) << "an overwritten group without tokens is zero";
      } else {
        got_fresh.push_back(fresh.Item(at));
      }
    }
  }
  EXPECT_LT(RelError(got_fresh, want), 2e-5);
}

TEST(Fp8GemmDeathTest, MismatchedGroupsAreRefusedNamingTheOp) {
  std::mt19937_64 rng(1);
  Tensor x = Values({10, 32}, rng);
  Fp8Weight q = Fp8Weight::Empty({2, 16, 32}, Device::kCPU);
  ops::QuantizeWeight128x128(q, Values({2, 16, 32}, rng));
  Tensor out = Tensor::Empty({10, 16}, DType::kF32);
  EXPECT_DEATH(ops::Fp8GroupedMatmulNT(out, ops::QuantizeRows(x), q.w, Counts({4, 5})),
               "fp8_grouped_matmul_nt");
  EXPECT_DEATH(ops::Fp8GroupedMatmulNT(out, ops::QuantizeRows(x), q.w, Counts({10})), "one matrix per group");
  Fp8Cols a = ops::QuantizeCols(x, Counts({4, 6})), b = ops::QuantizeCols(x, Counts({6, 4}));
  Tensor grad = Tensor::Zeros({2, 32, 32}, DType::kF32);
  EXPECT_DEATH(ops::Fp8GroupedMatmulTN(grad, a, b), "grouped differently");
}

}  // namespace
}  // namespace fathom
