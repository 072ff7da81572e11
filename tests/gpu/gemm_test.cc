// cuBLASLt GEMMs (framework/kernels/cuda/gemm.h) against the CPU twins run in f64 on the same inputs.
//
// Tolerances (relative error norms ||gpu - ref|| / ||ref||, ref computed in f64 from the exact inputs the
// GPU saw, bf16 inputs already rounded):
//   f32 output: 1e-5. f32 accumulation of K products carries ~sqrt(K) * 2^-24 relative error (< 3e-6 for
//     K <= 2048) whatever the blocking; TF32 (10-bit mantissa, ~5e-4) would fail this, which is the point.
//     Measured on an H100 (515 x 384, K = 1000): 2.2e-7 for f32 inputs, 9.8e-7 for bf16 inputs.
//   bf16 output: 2^-8. The one final rounding to bf16 is at most 2^-9 relative per element, so also in norm;
//     the f32 accumulation adds ~1e-6. Measured on an H100: 1.66e-3 (= 2^-9.2).
#include "framework/kernels/cpu/gemm.h"

#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "framework/cuda/device_arena.h"
#include "framework/kernels/cpu/moe.h"
#include "framework/kernels/cuda/elementwise.h"
#include "framework/kernels/cuda/gemm.h"
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

constexpr double kF32Tol = 1e-5;
constexpr double kBf16Tol = 1.0 / 256;

// Random values in `dtype` (bf16: f32 normals rounded), on the host.
Tensor RandomIn(const Shape& shape, DType dtype, std::mt19937_64& rng) {
  Tensor f = RandomTensor(shape, DType::kF32, rng);
  return dtype == DType::kF32 ? f : f.To(dtype);
}

enum class Form { kNT, kNN, kTN };
const char* FormName(Form f) { return f == Form::kNT ? "NT" : f == Form::kNN ? "NN" : "TN"; }

// The two operand shapes of a form for output (m, n) and reduction k.
std::pair<Shape, Shape> OperandShapes(Form f, int64_t m, int64_t n, int64_t k) {
  switch (f) {
    case Form::kNT:
      return {{m, k}, {n, k}};
    case Form::kNN:
      return {{m, k}, {k, n}};
    case Form::kTN:
      return {{k, m}, {k, n}};
  }
  return {};
}

void CpuForm(Form f, const Tensor& out, const Tensor& a, const Tensor& b, bool acc) {
  if (f == Form::kNT) cpu::MatmulNT(out, a, b, acc);
  if (f == Form::kNN) cpu::MatmulNN(out, a, b, acc);
  if (f == Form::kTN) cpu::MatmulTN(out, a, b, acc);
}

void GpuForm(cuda::GemmContext& ctx, Form f, const Tensor& out, const Tensor& a, const Tensor& b, bool acc) {
  if (f == Form::kNT) ctx.MatmulNT(out, a, b, acc, nullptr);
  if (f == Form::kNN) ctx.MatmulNN(out, a, b, acc, nullptr);
  if (f == Form::kTN) ctx.MatmulTN(out, a, b, acc, nullptr);
}

struct Dims {
  int64_t m, n, k;
};
// Awkward sizes: single rows and columns, K = 1, nothing a multiple of 16 or 128, and one larger problem.
const std::vector<Dims> kDims = {{1, 1, 1}, {37, 53, 1}, {300, 129, 77}, {5, 1, 33}, {515, 384, 1000}};

// Runs every form, with and without accumulation, for inputs of dtype `in` and output `out_dtype`.
void CheckForms(DType in, DType out_dtype, double tol) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("gemm_test", size_t{64} << 20);
  cuda::GemmContext ctx;
  for (Form f : {Form::kNT, Form::kNN, Form::kTN}) {
    for (const Dims& d : kDims) {
      for (bool acc : {false, true}) {
        SCOPED_TRACE(std::string(FormName(f)) + " m " + std::to_string(d.m) + " n " + std::to_string(d.n) +
                     " k " + std::to_string(d.k) + (acc ? " accumulate" : ""));
        arena.Reset();
        auto [sa, sb] = OperandShapes(f, d.m, d.n, d.k);
        Tensor a = RandomIn(sa, in, rng), b = RandomIn(sb, in, rng);
        Tensor c0 = RandomIn({d.m, d.n}, out_dtype, rng);
        Tensor da = Upload(arena, a), db = Upload(arena, b), dc = Upload(arena, c0);
        // Without accumulation the output must not be read: NaN there must not leak into the result.
        if (!acc) cuda::Fill(dc, std::numeric_limits<double>::quiet_NaN(), nullptr);
        GpuForm(ctx, f, dc, da, db, acc);
        Tensor ref = acc ? c0.To(DType::kF64) : Tensor::Zeros({d.m, d.n}, DType::kF64);
        CpuForm(f, ref, a.To(DType::kF64), b.To(DType::kF64), acc);
        EXPECT_LE(RelError(Download(dc), ref), tol);
      }
    }
  }
}

TEST(GemmCudaTest, F32FormsMatchCpu) {
  FATHOM_REQUIRE_GPU();
  CheckForms(DType::kF32, DType::kF32, kF32Tol);
}
TEST(GemmCudaTest, Bf16FormsMatchCpuBf16Output) {
  FATHOM_REQUIRE_GPU();
  CheckForms(DType::kBF16, DType::kBF16, kBf16Tol);
}
TEST(GemmCudaTest, Bf16FormsMatchCpuF32Output) {
  FATHOM_REQUIRE_GPU();
  CheckForms(DType::kBF16, DType::kF32, kF32Tol);
}

TEST(GemmCudaTest, EmptyReductionZeroesOrKeepsOutput) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("gemm_test", size_t{1} << 20);
  cuda::GemmContext ctx;
  Tensor x = arena.Alloc({7, 0}, DType::kF32), w = arena.Alloc({9, 0}, DType::kF32);
  Tensor c0 = RandomTensor({7, 9}, DType::kF32, rng);
  Tensor dc = Upload(arena, c0);
  ctx.MatmulNT(dc, x, w, /*accumulate=*/true, nullptr);
  Tensor kept = Download(dc);
  for (int64_t i = 0; i < c0.numel(); ++i) ASSERT_EQ(kept.Item(i), c0.Item(i)) << i;
  ctx.MatmulNT(dc, x, w, /*accumulate=*/false, nullptr);
  Tensor zeroed = Download(dc);
  for (int64_t i = 0; i < c0.numel(); ++i) ASSERT_EQ(zeroed.Item(i), 0.0) << i;
}

TEST(GemmCudaTest, RepeatedShapesReuseTheirPlan) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("gemm_test", size_t{16} << 20);
  cuda::GemmContext ctx;
  Tensor x = Upload(arena, RandomIn({100, 64}, DType::kBF16, rng));
  Tensor w = Upload(arena, RandomIn({48, 64}, DType::kBF16, rng));
  Tensor y = arena.Alloc({100, 48}, DType::kBF16);
  ctx.MatmulNT(y, x, w, false, nullptr);
  const int64_t queries = ctx.heuristic_queries();
  EXPECT_EQ(queries, 1);
  for (int i = 0; i < 5; ++i) ctx.MatmulNT(y, x, w, i % 2 == 1, nullptr);  // beta is not part of a plan
  EXPECT_EQ(ctx.heuristic_queries(), queries);
  EXPECT_EQ(ctx.plan_count(), 1u);
  Tensor dw = arena.Alloc({48, 64}, DType::kF32);
  ctx.MatmulTN(dw, y, x, false, nullptr);
  EXPECT_EQ(ctx.heuristic_queries(), queries + 1);
  EXPECT_EQ(ctx.plan_count(), 2u);
}

using GroupedPath = cuda::GemmContext::GroupedPath;
const std::vector<GroupedPath> kGroupedPaths = {GroupedPath::kPerExpertExact, GroupedPath::kBucketed,
                                                GroupedPath::kBucketedMultiStream,
                                                GroupedPath::kExactMultiStream};
std::string PathName(GroupedPath p) {
  return p == GroupedPath::kPerExpertExact        ? "per-expert exact"
         : p == GroupedPath::kBucketed            ? "bucketed"
         : p == GroupedPath::kBucketedMultiStream ? "bucketed multi-stream"
                                                  : "exact multi-stream";
}

// Grouped forms on one path: per-expert blocks with counts on the host, including experts with zero rows,
// all rows in one expert, and more non-empty experts than the multi-stream path has streams; then two
// uniform sets, which every path runs as one strided-batched matmul, and a set of multiples of the 128-row
// tile (the padded expert layout of layers/moe.h), whose NT and NN every path runs as one pointer-array
// batch of tiles (odd sizes: only the first matrix of each operand is 16-byte aligned).
void CheckGrouped(GroupedPath path, DType in, DType out_dtype, double tol) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " path " + PathName(path));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("gemm_test", size_t{64} << 20);
  cuda::GemmContext ctx;
  ctx.set_grouped_path(path);
  const std::vector<std::vector<double>> count_sets = {
      {0, 37, 1, 0, 131, 5}, {0, 0, 200, 0, 0, 0}, {1, 0, 1000, 3, 0, 64, 129, 0, 2},
      {37, 37, 37},          {64, 64, 64, 64, 64}, {128, 0, 256, 128}};
  const int64_t hidden = 72, inter = 97;  // K and N of the forward, not multiples of 16 (odd N)
  for (const auto& cs : count_sets) {
    arena.Reset();
    const int64_t experts = static_cast<int64_t>(cs.size());
    int64_t rows = 0;
    for (double c : cs) rows += static_cast<int64_t>(c);
    Tensor counts = Tensor::FromVector(cs, {experts}, DType::kI64);
    SCOPED_TRACE("rows " + std::to_string(rows));

    // Forward: out (R, inter) = x (R, hidden) . w[e]^T, w (E, inter, hidden).
    Tensor x = RandomIn({rows, hidden}, in, rng), w_up = RandomIn({experts, inter, hidden}, in, rng);
    Tensor dx = Upload(arena, x), dw_up = Upload(arena, w_up);
    for (bool acc : {false, true}) {
      SCOPED_TRACE(acc ? "NT accumulate" : "NT");
      Tensor c0 = RandomIn({rows, inter}, out_dtype, rng);
      Tensor dc = Upload(arena, c0);
      if (!acc) cuda::Fill(dc, std::numeric_limits<double>::quiet_NaN(), nullptr);
      ctx.GroupedMatmulNT(dc, dx, dw_up, counts, acc, nullptr);
      Tensor ref = acc ? c0.To(DType::kF64) : Tensor::Zeros({rows, inter}, DType::kF64);
      cpu::GroupedMatmulNT(ref, x.To(DType::kF64), w_up.To(DType::kF64), counts, acc);
      EXPECT_LE(RelError(Download(dc), ref), tol);
    }

    // Dgrad: out (R, hidden) = dy (R, inter) . w[e], w (E, inter, hidden).
    Tensor dy = RandomIn({rows, inter}, in, rng);
    Tensor ddy = Upload(arena, dy);
    for (bool acc : {false, true}) {
      SCOPED_TRACE(acc ? "NN accumulate" : "NN");
      Tensor c0 = RandomIn({rows, hidden}, out_dtype, rng);
      Tensor dc = Upload(arena, c0);
      if (!acc) cuda::Fill(dc, std::numeric_limits<double>::quiet_NaN(), nullptr);
      ctx.GroupedMatmulNN(dc, ddy, dw_up, counts, acc, nullptr);
      Tensor ref = acc ? c0.To(DType::kF64) : Tensor::Zeros({rows, hidden}, DType::kF64);
      cpu::GroupedMatmulNN(ref, dy.To(DType::kF64), w_up.To(DType::kF64), counts, acc);
      EXPECT_LE(RelError(Download(dc), ref), tol);
    }

    // Wgrad: out[e] (inter, hidden) += dy_e^T . x_e (f32 for gradients). Accumulating, experts without
    // rows keep their previous gradient bit for bit; overwriting (beta 0 over NaNs: `out` is never read),
    // they become zero.
    for (bool acc : {true, false}) {
      SCOPED_TRACE(acc ? "TN accumulate" : "TN overwrite");
      const DType grad_dtype = out_dtype == DType::kBF16 ? DType::kF32 : out_dtype;
      Tensor g0 = RandomIn({experts, inter, hidden}, grad_dtype, rng);
      Tensor dg = Upload(arena, g0);
      if (!acc) cuda::Fill(dg, std::numeric_limits<double>::quiet_NaN(), nullptr);
      ctx.GroupedMatmulTN(dg, ddy, dx, counts, acc, nullptr);
      Tensor ref = acc ? g0.To(DType::kF64) : RandomIn({experts, inter, hidden}, DType::kF64, rng);
      cpu::GroupedMatmulTN(ref, dy.To(DType::kF64), x.To(DType::kF64), counts, acc);
      Tensor got = Download(dg);
      if (rows > 0) {
        EXPECT_LE(RelError(got, ref), kF32Tol);
      }
      const int64_t per = inter * hidden;
      for (int64_t e = 0; e < experts; ++e) {
        if (cs[static_cast<size_t>(e)] != 0) continue;
        for (int64_t i = e * per; i < (e + 1) * per; ++i)
          ASSERT_EQ(got.Item(i), acc ? g0.Item(i) : 0.0) << "expert " << e;
      }
    }
  }
}

TEST(GemmCudaTest, GroupedF32MatchesCpu) {
  FATHOM_REQUIRE_GPU();
  for (GroupedPath path : kGroupedPaths) CheckGrouped(path, DType::kF32, DType::kF32, kF32Tol);
}
TEST(GemmCudaTest, GroupedBf16MatchesCpu) {
  FATHOM_REQUIRE_GPU();
  for (GroupedPath path : kGroupedPaths) CheckGrouped(path, DType::kBF16, DType::kBF16, kBf16Tol);
}

// Counts summing to 0 (R = 0): the NT/NN outputs have no rows, and the weight gradients stay bit for bit.
TEST(GemmCudaTest, GroupedNoRowsTouchesNothing) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("gemm_test", size_t{16} << 20);
  const int64_t experts = 5, hidden = 64, inter = 48;
  Tensor counts = Tensor::FromVector(std::vector<double>(experts, 0.0), {experts}, DType::kI64);
  for (GroupedPath path : kGroupedPaths) {
    SCOPED_TRACE(PathName(path));
    arena.Reset();
    cuda::GemmContext ctx;
    ctx.set_grouped_path(path);
    Tensor x = arena.Alloc({0, hidden}, DType::kBF16), dy = arena.Alloc({0, inter}, DType::kBF16);
    Tensor h = arena.Alloc({0, inter}, DType::kBF16), dx = arena.Alloc({0, hidden}, DType::kBF16);
    Tensor w = Upload(arena, RandomIn({experts, inter, hidden}, DType::kBF16, rng));
    ctx.GroupedMatmulNT(h, x, w, counts, false, nullptr);
    ctx.GroupedMatmulNN(dx, dy, w, counts, true, nullptr);
    Tensor g0 = RandomIn({experts, inter, hidden}, DType::kF32, rng);
    Tensor dg = Upload(arena, g0);
    ctx.GroupedMatmulTN(dg, dy, x, counts, /*accumulate=*/true, nullptr);
    Tensor got = Download(dg);
    for (int64_t i = 0; i < g0.numel(); ++i) ASSERT_EQ(got.Item(i), g0.Item(i)) << i;
    EXPECT_EQ(ctx.heuristic_queries(), 0);
  }
}

// The bucketed paths ask the heuristic once per row-count bucket: a second call whose experts have new
// row counts in the same buckets (97..128 share one; K = N = 128 bf16 keep every block 256-byte aligned)
// queries nothing and is still exact; the per-size paths query for the new counts. Every path queries
// nothing for row counts it has seen (the third call repeats the first's counts).
TEST(GemmCudaTest, GroupedRowCountsReusePlans) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("gemm_test", size_t{16} << 20);
  const int64_t experts = 3, dim = 128;
  Tensor w = RandomIn({experts, dim, dim}, DType::kBF16, rng);
  Tensor dw = Upload(arena, w);
  for (GroupedPath path : kGroupedPaths) {
    SCOPED_TRACE(PathName(path));
    cuda::GemmContext ctx;
    ctx.set_grouped_path(path);
    std::vector<int64_t> queries;
    const std::vector<std::vector<double>> count_sets = {{100, 0, 120}, {127, 97, 0}, {100, 0, 120}};
    for (const auto& cs : count_sets) {
      const int64_t rows = static_cast<int64_t>(cs[0] + cs[1] + cs[2]);
      Tensor counts = Tensor::FromVector(cs, {experts}, DType::kI64);
      Tensor x = RandomIn({rows, dim}, DType::kBF16, rng);
      Tensor dx = Upload(arena, x), dout = arena.Alloc({rows, dim}, DType::kBF16);
      ctx.GroupedMatmulNT(dout, dx, dw, counts, false, nullptr);
      Tensor ref = Tensor::Zeros({rows, dim}, DType::kF64);
      cpu::GroupedMatmulNT(ref, x.To(DType::kF64), w.To(DType::kF64), counts, false);
      EXPECT_LE(RelError(Download(dout), ref), kBf16Tol);
      queries.push_back(ctx.heuristic_queries());
    }
    EXPECT_GT(queries[0], 0);
    const bool bucketed = path == GroupedPath::kBucketed || path == GroupedPath::kBucketedMultiStream;
    if (bucketed) {
      EXPECT_EQ(queries[1], queries[0]);
    } else {
      EXPECT_GT(queries[1], queries[0]);
    }
    EXPECT_EQ(queries[2], queries[1]);
  }
}

}  // namespace
}  // namespace fathom
