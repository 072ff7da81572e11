// The FP8 block-scaled GEMMs of train.precision fp8 on the GPU (framework/ops.h Fp8*, cuBLASLt's
// VEC128 / BLK128x128 scaling modes, framework/kernels/cuda/fp8_gemm.h) against the CPU emulation
// (framework/kernels/cpu/fp8_gemm.h) from the same f32 inputs, at awkward shapes: rows not a multiple of
// 128, experts with zero rows, reduction lengths not a multiple of 128 (the layout pads them to 128 with
// zero codes), N and K multiples of 16 only (cuBLASLt's FP8 alignment; config.cc refuses other model
// shapes under fp8 on cuda).
//
// Quantisation is integer-exact on both sides: every operand's codes and scales must be byte-equal (rows,
// columns, both weight copies). The products then differ only by the order of the f32 additions inside a
// 128-deep block and the tensor cores' accumulator: e4m3 x e4m3 products are exact in f32 (4-bit
// significands), and Hopper's FP8 MMA accumulates a block's partial sum with about 14 significand bits
// before cuBLASLt promotes it to f32 (the DeepSeek-V3 report, sec. 3.3.2), i.e. a relative error of order
// 2^-14 ~ 6e-5 per block partial, averaging down in L2. Tolerances (relative L2 against the CPU):
//   kF32OutTol 5e-4 -- f32 outputs: 8x the per-partial bound, for K up to a few blocks here.
//   kBf16OutTol 5e-3 -- bf16 outputs: one bf16 rounding (2^-9 ~ 2e-3 in L2) on top of the f32 part.
#include "framework/kernels/cuda/fp8_gemm.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "framework/cuda/device_pool.h"
#include "framework/fp8_operands.h"
#include "framework/ops.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using testing::Down;
using testing::ExpectBitEqual;
using testing::RandomTensor;
using testing::RelError;
using testing::TestSeed;
using testing::Up;

constexpr double kF32OutTol = 5e-4;
constexpr double kBf16OutTol = 5e-3;

struct GpuEnv : testing::GpuOpsEnv {
  GpuEnv() : GpuOpsEnv("fp8_gemm_test", size_t{1} << 30) {}
};

Tensor Counts(const std::vector<int64_t>& counts) {
  Tensor t = Tensor::Empty({static_cast<int64_t>(counts.size())}, DType::kI64);
  for (size_t i = 0; i < counts.size(); ++i) t.data<int64_t>()[i] = counts[i];
  return t;
}

int64_t Sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t c : v) s += c;
  return s;
}

// Activation-like rows: a per-row magnitude spread over two decades, so the 1x128 scales differ.
Tensor Activations(int64_t rows, int64_t cols, std::mt19937_64& rng) {
  Tensor x = RandomTensor({rows, cols}, DType::kF32, rng);
  std::uniform_real_distribution<float> mag(0.1f, 10.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float m = mag(rng);
    for (int64_t c = 0; c < cols; ++c) x.data<float>()[r * cols + c] *= m;
  }
  return x;
}

void ExpectSameWeight(const Fp8Weight& gpu, const Fp8Weight& cpu) {
  ExpectBitEqual(Down(gpu.w.codes), cpu.w.codes, "w codes");
  ExpectBitEqual(Down(gpu.w.scales), cpu.w.scales, "w scales");
  ExpectBitEqual(Down(gpu.wt.codes), cpu.wt.codes, "wt codes");
  ExpectBitEqual(Down(gpu.wt.scales), cpu.wt.scales, "wt scales");
}

struct NtCase {
  std::vector<int64_t> counts;  // empty: a dense Linear (one group, no counts tensor)
  int64_t rows_if_dense, n, k;
  DType out;
  bool accumulate;
};

std::string Describe(const NtCase& c) {
  // absl::StrCat rather than std::string's operator+ chains, on which gcc 12 warns falsely (-Wrestrict).
  std::string s = c.counts.empty() ? absl::StrCat("dense rows ", c.rows_if_dense) : std::string("counts");
  for (int64_t v : c.counts) absl::StrAppend(&s, " ", v);
  absl::StrAppend(&s, ", n ", c.n, ", k ", c.k, ", out ", std::string(DTypeName(c.out)),
                  c.accumulate ? ", accumulate" : "");
  return s;
}

// Forward (w) and dgrad (wt) products, grouped and dense, against the CPU emulation.
TEST(Fp8GemmGpu, GroupedNTMatchesTheCpuEmulation) {
  FATHOM_REQUIRE_GPU();
  GpuEnv env;
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::vector<NtCase> cases = {
      {{70, 0, 129, 5}, 0, 48, 208, DType::kF32, false},   // an empty expert, ragged rows, K = 1.6 blocks
      {{0, 256, 1, 0}, 0, 144, 128, DType::kBF16, false},  // empty first and last experts
      {{3, 300}, 0, 32, 400, DType::kF32, true},           // accumulate into f32
      // Counts that are multiples of 128 (the padded layout): fathom's own tiled kernel on sm_90.
      {{128, 0, 384, 256}, 0, 144, 208, DType::kBF16, false},
      {{256, 128}, 0, 48, 400, DType::kF32, true},
      {{}, 77, 80, 64, DType::kBF16, false},  // a dense Linear, K below one block
      {{}, 77, 80, 64, DType::kBF16, true},   // an FP8 Linear's dgrad added into its bf16 dx, tail rows
      {{}, 513, 272, 160, DType::kF32, false},
  };
  for (const NtCase& c : cases) {
    SCOPED_TRACE(Describe(c));
    const bool dense = c.counts.empty();
    const int64_t rows = dense ? c.rows_if_dense : Sum(c.counts);
    const int64_t groups = dense ? 1 : static_cast<int64_t>(c.counts.size());
    const Shape wshape = dense ? Shape{c.n, c.k} : Shape{groups, c.n, c.k};
    const Tensor counts = dense ? Tensor() : Counts(c.counts);
    Tensor w = RandomTensor(wshape, DType::kF32, rng, 0.05);
    Fp8Weight qc = Fp8Weight::Empty(wshape, Device::kCPU), qg = Fp8Weight::Empty(wshape, Device::kCUDA);
    ops::QuantizeWeight128x128(qc, w);
    ops::QuantizeWeight128x128(qg, Up(w));
    ExpectSameWeight(qg, qc);
    for (const bool dgrad : {false, true}) {
      SCOPED_TRACE(dgrad ? "dgrad (wt)" : "forward (w)");
      const int64_t in = dgrad ? c.n : c.k, out_cols = dgrad ? c.k : c.n;
      Tensor x = Activations(rows, in, rng);
      Fp8Rows xc = ops::QuantizeRows(x), xg = ops::QuantizeRows(Up(x));
      ExpectBitEqual(Down(xg.data), xc.data, "packed rows");
      Tensor before = RandomTensor({rows, out_cols}, DType::kF32, rng).To(c.out);
      Tensor out_cpu = before.To(DType::kF32);
      ops::Fp8GroupedMatmulNT(out_cpu, xc, dgrad ? qc.wt : qc.w, counts, c.accumulate);
      // Both GPU paths: cuBLASLt per group, and the own tiled kernel where the counts allow it.
      for (const bool own : {false, true}) {
        SCOPED_TRACE(own ? "own tiled kernel where it applies" : "cuBLASLt");
        env.context.fp8_gemm().set_tiled_kernel(own);
        Tensor out_gpu = Up(before);
        ops::Fp8GroupedMatmulNT(out_gpu, xg, dgrad ? qg.wt : qg.w, counts, c.accumulate);
        const Tensor got = Down(out_gpu).To(DType::kF32);
        EXPECT_LT(RelError(got, out_cpu), c.out == DType::kBF16 ? kBf16OutTol : kF32OutTol);
      }
    }
  }
}

// The weight gradient dW[g] += dy_g^T x_g over each expert's tokens (ragged, zero, and more than one tile),
// from bf16-like activations and from FP8 rows (the dispatched expert inputs), accumulated into f32.
TEST(Fp8GemmGpu, GroupedTNMatchesTheCpuEmulation) {
  FATHOM_REQUIRE_GPU();
  GpuEnv env;
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  struct TnCase {
    std::vector<int64_t> counts;
    int64_t m, n;
  };
  for (const TnCase& c :
       {TnCase{{150, 0, 3, 128}, 48, 208}, TnCase{{0, 0, 1}, 16, 32}, TnCase{{517}, 160, 96}}) {
    SCOPED_TRACE("m " + std::to_string(c.m) + ", n " + std::to_string(c.n) + ", groups " +
                 std::to_string(c.counts.size()));
    const int64_t rows = Sum(c.counts), groups = static_cast<int64_t>(c.counts.size());
    const Tensor counts = Counts(c.counts);
    Tensor dy = Activations(rows, c.m, rng), x = Activations(rows, c.n, rng);
    Fp8Cols ac = ops::QuantizeCols(dy, counts), ag = ops::QuantizeCols(Up(dy), counts);
    ExpectBitEqual(Down(ag.codes), ac.codes, "dy column codes");
    ExpectBitEqual(Down(ag.scales), ac.scales, "dy column scales");
    // x as FP8 rows first (the expert path): columns requantised from the rows' values.
    Fp8Rows xr_c = ops::QuantizeRows(x), xr_g = ops::QuantizeRows(Up(x));
    Fp8Cols bc = ops::QuantizeCols(xr_c, counts), bg = ops::QuantizeCols(xr_g, counts);
    ExpectBitEqual(Down(bg.codes), bc.codes, "x column codes (from rows)");
    ExpectBitEqual(Down(bg.scales), bc.scales, "x column scales (from rows)");
    const Shape oshape = groups == 1 ? Shape{c.m, c.n} : Shape{groups, c.m, c.n};
    Tensor before = RandomTensor(oshape, DType::kF32, rng);
    Tensor out_cpu = before.Clone();
    ops::Fp8GroupedMatmulTN(out_cpu, ac, bc);
    Tensor inc_cpu = out_cpu.Clone();
    for (int64_t i = 0; i < before.numel(); ++i) inc_cpu.data<float>()[i] -= before.data<float>()[i];
    // Both GPU paths: cuBLASLt per group, and the own tiled kernel where it applies (several groups).
    for (const bool own : {false, true}) {
      SCOPED_TRACE(own ? "own tiled kernel where it applies" : "cuBLASLt");
      env.context.fp8_gemm().set_tiled_wgrad(own);
      Tensor out_gpu = Up(before);
      ops::Fp8GroupedMatmulTN(out_gpu, ag, bg);
      const Tensor got = Down(out_gpu);
      // Compare the increments (the accumulated part), and require groups without tokens untouched.
      Tensor inc_gpu = got.Clone();
      for (int64_t i = 0; i < before.numel(); ++i) inc_gpu.data<float>()[i] -= before.data<float>()[i];
      EXPECT_LT(RelError(inc_gpu, inc_cpu), kF32OutTol);
      const int64_t slice = c.m * c.n;
      for (int64_t g = 0; g < groups; ++g) {
        if (c.counts[g] != 0) continue;
        for (int64_t i = g * slice; i < (g + 1) * slice; ++i)
          ASSERT_EQ(got.data<float>()[i], before.data<float>()[i]) << "expert " << g << " has no tokens";
      }
      // Overwriting (a gradient's first writer): the CPU's overwritten result, experts without tokens zero.
      Tensor fresh_cpu = before.Clone(), fresh_gpu = Up(before);
      ops::Fp8GroupedMatmulTN(fresh_cpu, ac, bc, /*accumulate=*/false);
      ops::Fp8GroupedMatmulTN(fresh_gpu, ag, bg, /*accumulate=*/false);
      const Tensor fresh = Down(fresh_gpu);
      EXPECT_LT(RelError(fresh, fresh_cpu), kF32OutTol);
      for (int64_t g = 0; g < groups; ++g) {
        if (c.counts[g] != 0) continue;
        for (int64_t i = g * slice; i < (g + 1) * slice; ++i)
          ASSERT_EQ(fresh.data<float>()[i], 0.0f) << "expert " << g << " has no tokens (overwritten)";
      }
    }
  }
}

// The quantizers take 4-column words where the width allows (a multiple of 4) and go element by element
// otherwise; both give the CPU's codes and scales bit for bit, f32 and bf16, full and partial blocks. (No
// GEMM here: cuBLASLt's FP8 kernels need widths that are multiples of 16.)
TEST(Fp8GemmGpu, QuantizersMatchTheCpuAtEveryWidth) {
  FATHOM_REQUIRE_GPU();
  GpuEnv env;
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const int64_t cols : {130, 132, 256, 61}) {
    for (const DType dt : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE("cols " + std::to_string(cols) + " " + std::string(DTypeName(dt)));
      const Shape wshape{3, 150, cols};
      // The GPU reads dt; the CPU emulation (f32 or f64 only) reads the same values widened to f32.
      Tensor w = RandomTensor(wshape, DType::kF32, rng, 0.05).To(dt);
      Fp8Weight qc = Fp8Weight::Empty(wshape, Device::kCPU), qg = Fp8Weight::Empty(wshape, Device::kCUDA);
      ops::QuantizeWeight128x128(qc, w.To(DType::kF32));
      ops::QuantizeWeight128x128(qg, Up(w));
      ExpectSameWeight(qg, qc);
      Tensor x = Activations(77, cols, rng).To(dt);
      Fp8Rows xc = ops::QuantizeRows(x.To(DType::kF32)), xg = ops::QuantizeRows(Up(x));
      ExpectBitEqual(Down(xg.data), xc.data, "packed rows");
    }
  }
}

// The column quantizer (the weight gradient's operands) at widths that take its 16-byte path (f32: a multiple
// of 4, bf16: of 8, FP8 rows: always) and its element-wise one, with partial 64-column chunks, ragged groups,
// an empty group and a group of one token: the CPU's codes and scales bit for bit from f32, bf16 and packed
// FP8 rows.
TEST(Fp8GemmGpu, ColumnQuantizerMatchesTheCpuAtEveryWidth) {
  FATHOM_REQUIRE_GPU();
  GpuEnv env;
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::vector<int64_t> groups = {150, 0, 1, 128, 77};
  const Tensor counts = Counts(groups);
  const int64_t rows = Sum(groups);
  for (const int64_t cols : {64, 136, 130, 200, 61, 2048}) {
    for (const DType dt : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE("cols " + std::to_string(cols) + " " + std::string(DTypeName(dt)));
      // Columns of mixed magnitude, so that the amax differs from column to column.
      Tensor x = Activations(rows, cols, rng);
      for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] *= 1.0f + static_cast<float>(i % cols % 7);
      x = x.To(dt);
      const Tensor xf = x.To(DType::kF32);
      Fp8Cols qc = ops::QuantizeCols(xf, counts), qg = ops::QuantizeCols(Up(x), counts);
      ExpectBitEqual(Down(qg.codes), qc.codes, "column codes");
      ExpectBitEqual(Down(qg.scales), qc.scales, "column scales");
      Fp8Rows rc = ops::QuantizeRows(xf), rg = ops::QuantizeRows(Up(x));
      ExpectBitEqual(Down(rg.data), rc.data, "packed rows");
      Fp8Cols fc = ops::QuantizeCols(rc, counts), fg = ops::QuantizeCols(rg, counts);
      ExpectBitEqual(Down(fg.codes), fc.codes, "column codes from rows");
      ExpectBitEqual(Down(fg.scales), fc.scales, "column scales from rows");
    }
  }
}

// Dequantising packed rows gives the CPU's values bit for bit (the values the emulation multiplies).
TEST(Fp8GemmGpu, DequantizedRowsEqualTheCpus) {
  FATHOM_REQUIRE_GPU();
  GpuEnv env;
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  Tensor x = Activations(131, 336, rng);
  Fp8Rows qc = ops::QuantizeRows(x), qg = ops::QuantizeRows(Up(x));
  Tensor vc = Tensor::Empty(x.shape(), DType::kF32), vg = Up(vc);
  ops::DequantizeRows(vc, qc);
  ops::DequantizeRows(vg, qg);
  ExpectBitEqual(Down(vg), vc, "dequantised rows");
}

}  // namespace
}  // namespace fathom
