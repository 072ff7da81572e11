// CUDA MoE kernels against their CPU twin (framework/kernels/cpu/moe.h) run in f64 on the same values:
// the fused sigmoid + group-limited top-k router and its backward, the sequence-wise balance loss and its
// backward, the device counting sort (row_slot, slot_row, counts, offsets, pinned host counts), permute,
// combine and their backwards in f32 and bf16, the expert-load statistic, and bitwise determinism.
// Token counts are awkward (1, 77, 1000, 4099), experts 8 / 32 / 256, K 2..8, groups 1/1, 4/2, 8/4, and
// an expert starved by a large negative bias (or left out of the drawn routing) receives zero tokens.
//
// Tolerances ("relative" = ||gpu - ref||_2 / ||ref||_2 against the f64 CPU result on the same inputs):
//   kF32Tol 1e-5: f32 arithmetic over a handful of terms per output (sigmoid, K-term sums, one division)
//     or an f32-accumulated H-term dot product; its rounding is a few 2^-24 ~ 6e-8 relative per term, so
//     1e-5 leaves two orders of magnitude and still catches any wrong index, weight or term.
//   kBf16Tol 2^-8: a bf16 output is the f32 result rounded once (at most 2^-9 relative), so 2^-8 bounds it
//     with the f32 error on top; a wrong row or weight shows up at O(1).
// Selections (indices, counts, row orders) must match exactly: router inputs are drawn with every decision
// margin > 1e-4 (as tests/layers/moe_test.cc does), far above the f32 error of s + bias (~1e-7).
#include "framework/kernels/cuda/moe.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "framework/cuda/check.h"
#include "framework/cuda/device_arena.h"
#include "framework/kernels/cpu/activation.h"
#include "framework/kernels/cpu/fp8_gemm.h"
#include "framework/kernels/cpu/moe.h"
#include "framework/kernels/cuda/elementwise.h"
#include "framework/kernels/cuda/fp8_operands.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using cpu::RouterDims;
using cuda::DeviceArena;
using testing::Download;
using testing::DownloadF64;
using testing::RandomTensor;
using testing::RelError;
using testing::SameBytes;
using testing::TestSeed;
using testing::Upload;

constexpr double kF32Tol = 1e-5;
constexpr double kBf16Tol = 1.0 / 256.0;
constexpr double kMarginFloor = 1e-4;

void ExpectExactlyEqual(const Tensor& got, const Tensor& ref, const std::string& what) {
  ASSERT_EQ(got.numel(), ref.numel()) << what;
  int64_t mismatches = 0, first = -1;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    if (got.Item(i) != ref.Item(i)) {
      if (first < 0) first = i;
      ++mismatches;
    }
  }
  EXPECT_EQ(mismatches, 0) << what << ": first mismatch at " << first << " (gpu " << got.Item(first)
                           << ", cpu " << ref.Item(first) << ")";
}

// Host values rounded to `dtype` (f32 or bf16) and returned both as that dtype and widened to f64.
struct Rounded {
  Tensor stored;  // f32 or bf16, what the GPU gets
  Tensor f64;     // the same values in f64, what the CPU reference gets
};
Rounded RandomRounded(const Shape& shape, DType dtype, std::mt19937_64& rng, double scale = 1.0) {
  Tensor stored = RandomTensor(shape, DType::kF32, rng, scale).To(dtype);
  return {stored, stored.To(DType::kF64)};
}

double Sigmoid64(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// ---- router
// ------------------------------------------------------------------------------------------------

struct RouterCase {
  int64_t n, e, k, n_group, topk_group;
  bool norm;
  double scaling;
  bool starve;  // bias -50 on one expert: it must receive no token
};

std::string Describe(const RouterCase& c) {
  return "N " + std::to_string(c.n) + " E " + std::to_string(c.e) + " K " + std::to_string(c.k) + " groups " +
         std::to_string(c.n_group) + "/" + std::to_string(c.topk_group) + (c.norm ? " norm" : " no-norm") +
         (c.starve ? " starved" : "");
}

const std::vector<RouterCase>& RouterCases() {
  static const std::vector<RouterCase> cases = {
      {1, 8, 2, 1, 1, true, 1.0, false},       {77, 8, 8, 1, 1, true, 2.5, false},
      {1000, 8, 3, 4, 2, false, 1.0, true},    {77, 32, 4, 4, 2, true, 2.5, false},
      {77, 32, 6, 8, 4, true, 2.5, true},      {4099, 32, 3, 1, 1, true, 1.0, true},
      {1000, 256, 8, 8, 4, true, 2.5, true},   {1000, 256, 2, 1, 1, false, 1.5, false},
      {4099, 256, 8, 8, 4, false, 2.5, false}, {4099, 256, 5, 4, 2, true, 1.0, true},
  };
  return cases;
}

RouterDims DimsOf(const RouterCase& c) {
  return {.num_experts = c.e,
          .top_k = c.k,
          .n_group = c.n_group,
          .topk_group = c.topk_group,
          .norm_topk_prob = c.norm,
          .routed_scaling_factor = c.scaling};
}

struct RouterInputs {
  Tensor logits;    // (N, E) f32
  Tensor bias;      // (E) f32
  Tensor scores64;  // (N, E) f64 sigmoid of the f32 logits
  Tensor bias64;    // (E) f64, same values as bias
  int64_t starved = -1;
};

// Logits ~ N(0, 1.5), bias ~ N(0, 0.1) (optionally -50 on one expert); every token's logits are redrawn
// until all of its decision margins exceed kMarginFloor, so f32 and f64 routings must agree.
RouterInputs DrawRouterInputs(const RouterCase& c, std::mt19937_64& rng) {
  RouterInputs in;
  const RouterDims d = DimsOf(c);
  in.bias = RandomTensor({c.e}, DType::kF32, rng, 0.1);
  if (c.starve) {
    in.starved = static_cast<int64_t>(rng() % static_cast<uint64_t>(c.e));
    in.bias.data<float>()[in.starved] = -50.0f;
  }
  in.bias64 = in.bias.To(DType::kF64);
  in.logits = Tensor::Empty({c.n, c.e}, DType::kF32);
  in.scores64 = Tensor::Empty({c.n, c.e}, DType::kF64);
  std::normal_distribution<double> nd(0.0, 1.5);
  for (int64_t t = 0; t < c.n; ++t) {
    float* lg = in.logits.data<float>() + t * c.e;
    double* s = in.scores64.data<double>() + t * c.e;
    int attempt = 0;
    do {
      FATHOM_CHECK(++attempt < 1000, "no well-separated routing for token ", t);
      for (int64_t i = 0; i < c.e; ++i) {
        lg[i] = static_cast<float>(nd(rng));
        s[i] = Sigmoid64(lg[i]);
      }
    } while (cpu::RouterSelectionMargin(in.scores64.Rows(t, t + 1), in.bias64, d) <= kMarginFloor);
  }
  return in;
}

TEST(MoeCudaRouter, SelectMatchesCpuExactly) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  DeviceArena arena("router_test", size_t{64} << 20);
  int case_id = 0;
  for (const RouterCase& c : RouterCases()) {
    SCOPED_TRACE(Describe(c));
    arena.Reset();
    const RouterDims d = DimsOf(c);
    RouterInputs in = DrawRouterInputs(c, rng);
    Tensor logits = Upload(arena, in.logits), bias = Upload(arena, in.bias);
    // Every other case writes the scores over the logits (the documented alias).
    Tensor scores = (case_id++ % 2 == 1) ? logits : arena.Alloc({c.n, c.e}, DType::kF32);
    Tensor index = arena.Alloc({c.n, c.k}, DType::kI64), weight = arena.Alloc({c.n, c.k}, DType::kF32);
    cuda::RouterSelect(index, weight, scores, logits, bias, d, nullptr);
    FATHOM_CUDA_CHECK(cudaDeviceSynchronize());

    Tensor ref_index = Tensor::Empty({c.n, c.k}, DType::kI64);
    Tensor ref_weight = Tensor::Empty({c.n, c.k}, DType::kF64);
    cpu::RouterSelect(ref_index, ref_weight, in.scores64, in.bias64, d);
    ExpectExactlyEqual(Download(index), ref_index, "topk_index");
    // Scores: one f32 sigmoid each (expf within 2 ulp): elementwise relative 1e-6 holds with margin.
    Tensor got_scores = DownloadF64(scores);
    double worst = 0;
    for (int64_t i = 0; i < got_scores.numel(); ++i)
      worst = std::max(worst, std::abs(got_scores.Item(i) - in.scores64.Item(i)) / in.scores64.Item(i));
    EXPECT_LE(worst, 1e-6) << "scores";
    EXPECT_LE(RelError(DownloadF64(weight), ref_weight), kF32Tol) << "topk_weight";
    if (c.starve) {
      const Tensor got = Download(index);
      for (int64_t i = 0; i < got.numel(); ++i) ASSERT_NE(got.Item(i), in.starved) << "starved expert chosen";
    }
  }
}

TEST(MoeCudaRouter, BackwardMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  DeviceArena arena("router_backward_test", size_t{64} << 20);
  int variant = 0;
  for (const RouterCase& c : RouterCases()) {
    SCOPED_TRACE(Describe(c));
    arena.Reset();
    const RouterDims d = DimsOf(c);
    RouterInputs in = DrawRouterInputs(c, rng);
    Tensor scores = Upload(arena, in.logits);
    Tensor index = arena.Alloc({c.n, c.k}, DType::kI64), weight = arena.Alloc({c.n, c.k}, DType::kF32);
    cuda::RouterSelect(index, weight, scores, scores, Upload(arena, in.bias), d, nullptr);
    Rounded dweight = RandomRounded({c.n, c.k}, DType::kF32, rng);
    // Three variants: no extra score gradient, one in a separate tensor, one aliased with dlogits.
    const int mode = variant++ % 3;
    Rounded extra = RandomRounded({c.n, c.e}, DType::kF32, rng, 0.3);
    Tensor dscores = mode == 0 ? Tensor() : Upload(arena, extra.stored);
    Tensor dlogits = mode == 2 ? dscores : arena.Alloc({c.n, c.e}, DType::kF32);
    cuda::RouterSelectBackward(dlogits, Upload(arena, dweight.stored), dscores, scores, index, d, nullptr);
    FATHOM_CUDA_CHECK(cudaDeviceSynchronize());

    // The CPU twin's composition in f64 on the GPU's own scores and routing.
    Tensor s64 = DownloadF64(scores);
    Tensor ref = mode == 0 ? Tensor::Zeros({c.n, c.e}, DType::kF64) : extra.f64.Clone();
    cpu::RouterSelectBackward(ref, dweight.f64, s64, Download(index), d);
    cpu::SigmoidBackward(ref, ref, s64);
    EXPECT_LE(RelError(DownloadF64(dlogits), ref), kF32Tol) << "dlogits, mode " << mode;
  }
}

// ---- balance loss
// ------------------------------------------------------------------------------------------

// Scores in (0, 1) and K distinct experts per token drawn without replacement, never `starved`.
struct Routing {
  Tensor scores;  // (N, E) f32
  Tensor index;   // (N, K) i64
};
Routing RandomRouting(int64_t n, int64_t e, int64_t k, int64_t starved, std::mt19937_64& rng) {
  Routing r{Tensor::Empty({n, e}, DType::kF32), Tensor::Empty({n, k}, DType::kI64)};
  std::normal_distribution<double> nd(0.0, 1.5);
  for (int64_t i = 0; i < n * e; ++i) r.scores.data<float>()[i] = static_cast<float>(Sigmoid64(nd(rng)));
  // Expert 1 (or the last) is favoured 8:1 so that some experts get long runs of rows in one sort chunk.
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<std::pair<double, int64_t>> keys(static_cast<size_t>(e));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < e; ++i) {
      const double w = i == starved ? 0.0 : (i == 1 ? 8.0 : 1.0);
      keys[i] = {w > 0 ? -std::pow(u(rng), 1.0 / w) : 1.0, i};
    }
    std::partial_sort(keys.begin(), keys.begin() + k, keys.end());
    for (int64_t j = 0; j < k; ++j) r.index.data<int64_t>()[t * k + j] = keys[j].second;
  }
  return r;
}

TEST(MoeCudaBalance, LossAndBackwardMatchCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  DeviceArena arena("balance_test", size_t{64} << 20);
  struct Case {
    int64_t batch, seq, e, k;
  };
  for (const Case& c : {Case{1, 1, 8, 2}, Case{2, 77, 32, 4}, Case{3, 1000, 256, 8}, Case{1, 4099, 256, 8},
                        Case{4, 513, 8, 3}}) {
    SCOPED_TRACE("B " + std::to_string(c.batch) + " T " + std::to_string(c.seq) + " E " +
                 std::to_string(c.e) + " K " + std::to_string(c.k));
    arena.Reset();
    const int64_t n = c.batch * c.seq;
    Routing r = RandomRouting(n, c.e, c.k, /*starved=*/0, rng);
    Tensor scores = Upload(arena, r.scores), index = Upload(arena, r.index);
    Tensor loss = arena.Alloc({1}, DType::kF32), balance = arena.Alloc({c.batch}, DType::kF32);
    Tensor counts = arena.Alloc({c.batch, c.e}, DType::kI32);
    Tensor partials = arena.Alloc({cuda::SequenceBalanceScratchElements(c.batch, c.seq)}, DType::kF64);
    const Tensor s64 = r.scores.To(DType::kF64);
    const double ref = cpu::SequenceBalanceLoss(s64, r.index, c.batch, c.seq);
    // Overwrite, then accumulate a second time: loss = 2 * ref.
    cuda::SequenceBalanceLoss(loss, balance, counts, partials, scores, index, c.batch, c.seq, false, nullptr);
    EXPECT_NEAR(Download(loss).Item(0), ref, kF32Tol * ref);
    cuda::SequenceBalanceLoss(loss, balance, counts, partials, scores, index, c.batch, c.seq, true, nullptr);
    EXPECT_NEAR(Download(loss).Item(0), 2 * ref, kF32Tol * ref);
    const Tensor got_counts = Download(counts), got_balance = Download(balance);
    for (int64_t b = 0; b < c.batch; ++b) {
      std::vector<double> hist(static_cast<size_t>(c.e), 0.0);
      for (int64_t j = b * c.seq * c.k; j < (b + 1) * c.seq * c.k; ++j) ++hist[r.index.data<int64_t>()[j]];
      for (int64_t i = 0; i < c.e; ++i) ASSERT_EQ(got_counts.Item(b * c.e + i), hist[i]) << "seq " << b;
      EXPECT_EQ(got_counts.Item(b * c.e), 0) << "starved expert 0 counted";
      const double bal = cpu::SequenceBalanceLoss(s64.Rows(b * c.seq, (b + 1) * c.seq),
                                                  r.index.Rows(b * c.seq, (b + 1) * c.seq), 1, c.seq);
      EXPECT_NEAR(got_balance.Item(b), bal, kF32Tol * bal) << "seq " << b;
    }

    // Backward adds into dscores: start from values of the increment's own size so both parts count.
    const double weight = 0.7;
    Tensor increment = Tensor::Zeros({n, c.e}, DType::kF64);
    cpu::SequenceBalanceLossBackward(increment, s64, r.index, c.batch, c.seq, weight);
    double rms = 0;
    for (int64_t i = 0; i < increment.numel(); ++i) rms += increment.Item(i) * increment.Item(i);
    rms = std::sqrt(rms / static_cast<double>(increment.numel()));
    ASSERT_GT(rms, 0.0);
    Rounded start = RandomRounded({n, c.e}, DType::kF32, rng, rms);
    Tensor dscores = Upload(arena, start.stored);
    cuda::SequenceBalanceLossBackward(dscores, scores, index, counts, c.batch, c.seq, weight, nullptr);
    Tensor ref_ds = start.f64.Clone();
    cpu::SequenceBalanceLossBackward(ref_ds, s64, r.index, c.batch, c.seq, weight);
    EXPECT_LE(RelError(DownloadF64(dscores), ref_ds), kF32Tol) << "dscores";
  }
}

// ---- permutation
// -------------------------------------------------------------------------------------------

struct PermuteCase {
  int64_t n, e, k, h;
  DType dtype;
};

std::string Describe(const PermuteCase& c) {
  return "N " + std::to_string(c.n) + " E " + std::to_string(c.e) + " K " + std::to_string(c.k) + " H " +
         std::to_string(c.h) + " " + std::string(DTypeName(c.dtype));
}

// Row widths cover every copy width of MoePermuteRows: 16-byte (H 96 bf16, 64 f32, 7168, 2048), 8-byte (H 10
// f32), 4-byte (H 130 bf16) and 2-byte (H 33 bf16) words.
const std::vector<PermuteCase>& PermuteCases() {
  static const std::vector<PermuteCase> cases = {
      {1, 8, 2, 10, DType::kF32},        {77, 32, 4, 96, DType::kBF16},   {77, 8, 7, 7168, DType::kBF16},
      {1000, 256, 8, 130, DType::kBF16}, {1000, 32, 6, 10, DType::kF32},  {4099, 256, 8, 64, DType::kF32},
      {4099, 32, 7, 33, DType::kBF16},   {4099, 8, 2, 2048, DType::kF32},
  };
  return cases;
}

// Everything the sort produces, on the device.
struct Sorted {
  Tensor x_perm, row_slot, slot_row, counts, offsets;
};

Sorted RunPermute(DeviceArena& arena, const Tensor& x, const Tensor& index, int64_t e,
                  const Tensor& counts_host, cuda::Stream stream) {
  const int64_t r = index.numel();
  Sorted s{arena.Alloc({r, x.dim(1)}, x.dtype()), arena.Alloc({r}, DType::kI64),
           arena.Alloc({r}, DType::kI64), arena.Alloc({e}, DType::kI64), arena.Alloc({e + 1}, DType::kI64)};
  Tensor workspace = arena.Alloc({cuda::MoeSortWorkspaceElements(r, e)}, DType::kI32);
  cuda::MoePermute(s.x_perm, s.row_slot, s.slot_row, s.counts, s.offsets, counts_host, x, index, workspace,
                   stream);
  return s;
}

TEST(MoeCudaPermute, SortAndPermuteMatchCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  DeviceArena arena("permute_test", size_t{1} << 30);
  cudaStream_t stream = nullptr;
  // A blocking stream: it orders after the synchronous copies the helpers issue on the default stream.
  FATHOM_CUDA_CHECK(cudaStreamCreate(&stream));
  for (const PermuteCase& c : PermuteCases()) {
    SCOPED_TRACE(Describe(c));
    arena.Reset();
    const int64_t starved = c.e - 2;
    Routing routing = RandomRouting(c.n, c.e, c.k, starved, rng);
    Rounded x = RandomRounded({c.n, c.h}, c.dtype, rng);
    Tensor counts_host = cuda::PinnedExpertCounts(c.e);
    counts_host.Fill(-1);
    Tensor x_dev = Upload(arena, x.stored), index_dev = Upload(arena, routing.index);
    Sorted s = RunPermute(arena, x_dev, index_dev, c.e, counts_host, stream);
    // The documented sync point before the host reads counts_host.
    FATHOM_CUDA_CHECK(cudaStreamSynchronize(stream));

    const int64_t r = c.n * c.k;
    Tensor ref_perm = Tensor::Empty({r, c.h}, DType::kF64);
    Tensor ref_row_slot = Tensor::Empty({r}, DType::kI64), ref_counts = Tensor::Empty({c.e}, DType::kI64);
    cpu::MoePermute(ref_perm, ref_row_slot, ref_counts, x.f64, routing.index);
    ExpectExactlyEqual(Download(s.row_slot), ref_row_slot, "row_slot");
    ExpectExactlyEqual(Download(s.counts), ref_counts, "counts");
    ExpectExactlyEqual(counts_host, ref_counts, "counts_host");
    EXPECT_EQ(ref_counts.Item(starved), 0);
    const Tensor offsets = Download(s.offsets), slot_row = Download(s.slot_row);
    int64_t acc = 0;
    for (int64_t i = 0; i <= c.e; ++i) {
      ASSERT_EQ(offsets.Item(i), acc) << "offsets[" << i << "]";
      if (i < c.e) acc += ref_counts.data<int64_t>()[i];
    }
    for (int64_t row = 0; row < r; ++row)
      ASSERT_EQ(slot_row.Item(ref_row_slot.data<int64_t>()[row]), row)
          << "slot_row is not row_slot's inverse";
    // A permutation copies: bit-exact against the CPU on the same (rounded) values.
    ExpectExactlyEqual(DownloadF64(s.x_perm), ref_perm, "x_perm values");
  }
  FATHOM_CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST(MoeCudaPermute, BackwardMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  DeviceArena arena("permute_backward_test", size_t{1} << 30);
  for (const PermuteCase& c : PermuteCases()) {
    SCOPED_TRACE(Describe(c));
    arena.Reset();
    Routing routing = RandomRouting(c.n, c.e, c.k, c.e - 1, rng);
    Rounded x = RandomRounded({c.n, c.h}, c.dtype, rng);
    Sorted s =
        RunPermute(arena, Upload(arena, x.stored), Upload(arena, routing.index), c.e, Tensor(), nullptr);
    const Tensor row_slot = Download(s.row_slot);
    const double tol = c.dtype == DType::kF32 ? kF32Tol : kBf16Tol;
    Rounded dx_perm = RandomRounded({c.n * c.k, c.h}, c.dtype, rng);
    for (bool accumulate : {false, true}) {
      SCOPED_TRACE(accumulate ? "accumulate" : "overwrite");
      Rounded start = RandomRounded({c.n, c.h}, c.dtype, rng);
      Tensor dx = Upload(arena, start.stored);
      cuda::MoePermuteBackward(dx, Upload(arena, dx_perm.stored), s.slot_row, accumulate, nullptr);
      Tensor ref = start.f64.Clone();
      cpu::MoePermuteBackward(ref, dx_perm.f64, row_slot, accumulate);
      EXPECT_LE(RelError(DownloadF64(dx), ref), tol);
    }
  }
}

TEST(MoeCudaCombine, ForwardAndBackwardMatchCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  DeviceArena arena("combine_test", size_t{1} << 30);
  for (const PermuteCase& c : PermuteCases()) {
    SCOPED_TRACE(Describe(c));
    arena.Reset();
    const int64_t r = c.n * c.k;
    Routing routing = RandomRouting(c.n, c.e, c.k, 0, rng);
    Rounded x = RandomRounded({c.n, c.h}, c.dtype, rng);
    Sorted s =
        RunPermute(arena, Upload(arena, x.stored), Upload(arena, routing.index), c.e, Tensor(), nullptr);
    const Tensor row_slot = Download(s.row_slot);
    const double tol = c.dtype == DType::kF32 ? kF32Tol : kBf16Tol;
    Rounded y_perm = RandomRounded({r, c.h}, c.dtype, rng);
    Rounded weight = RandomRounded({c.n, c.k}, DType::kF32, rng, 0.5);
    Rounded dout = RandomRounded({c.n, c.h}, c.dtype, rng);
    Tensor y_dev = Upload(arena, y_perm.stored), w_dev = Upload(arena, weight.stored);

    Tensor out = arena.Alloc({c.n, c.h}, c.dtype);
    cuda::MoeCombine(out, y_dev, s.slot_row, w_dev, nullptr);
    Tensor ref_out = Tensor::Empty({c.n, c.h}, DType::kF64);
    cpu::MoeCombine(ref_out, y_perm.f64, row_slot, weight.f64);
    EXPECT_LE(RelError(DownloadF64(out), ref_out), tol) << "out";

    Tensor dy_perm = arena.Alloc({r, c.h}, c.dtype), dweight = arena.Alloc({c.n, c.k}, DType::kF32);
    cuda::MoeCombineBackward(dy_perm, dweight, Upload(arena, dout.stored), y_dev, s.row_slot, w_dev, nullptr);
    Tensor ref_dy = Tensor::Empty({r, c.h}, DType::kF64), ref_dw = Tensor::Empty({c.n, c.k}, DType::kF64);
    cpu::MoeCombineBackward(ref_dy, ref_dw, dout.f64, y_perm.f64, row_slot, weight.f64);
    EXPECT_LE(RelError(DownloadF64(dy_perm), ref_dy), tol) << "dy_perm";
    // dweight is f32 for both dtypes: the products of (bf16) inputs are exact in f32 accumulation terms.
    EXPECT_LE(RelError(DownloadF64(dweight), ref_dw), kF32Tol) << "dweight";
  }
}

// The padded (tiled) expert layout (layers/moe.h): the device layout map, the gather with zero pad rows,
// combine, its backward (zero rows at pads) and permute's backward over P > R rows, against the CPU twin,
// with 32-row tiles (a starved expert has no block).
TEST(MoeCudaPadded, LayoutGatherCombineMatchCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  DeviceArena arena("padded_test", size_t{1} << 30);
  for (const PermuteCase& c : PermuteCases()) {
    SCOPED_TRACE(Describe(c));
    arena.Reset();
    const int64_t r = c.n * c.k, tile = 32;
    Routing routing = RandomRouting(c.n, c.e, c.k, c.e - 1, rng);
    Rounded x = RandomRounded({c.n, c.h}, c.dtype, rng);
    Tensor x_dev = Upload(arena, x.stored);
    Sorted s = RunPermute(arena, x_dev, Upload(arena, routing.index), c.e, Tensor(), nullptr);
    Tensor ref_perm = Tensor::Empty({r, c.h}, DType::kF64);
    Tensor ref_row_slot = Tensor::Empty({r}, DType::kI64), ref_counts = Tensor::Empty({c.e}, DType::kI64);
    cpu::MoePermute(ref_perm, ref_row_slot, ref_counts, x.f64, routing.index);
    const int64_t p = cpu::PaddedRows(ref_counts, tile);
    ASSERT_GT(p, r);  // pad rows exist
    Tensor ref_padded = Tensor::Empty({p}, DType::kI64);
    cpu::MoePadLayout(ref_padded, ref_row_slot, ref_counts, tile);
    Tensor padded = arena.Alloc({p}, DType::kI64);
    cuda::MoePadLayout(padded, s.row_slot, s.counts, tile, nullptr);
    ExpectExactlyEqual(Download(padded), ref_padded, "padded row_slot");

    Tensor x_pad = arena.Alloc({p, c.h}, c.dtype);
    cuda::MoePermuteRows(x_pad, x_dev, padded, c.k, nullptr);
    Tensor ref_x_pad = Tensor::Empty({p, c.h}, DType::kF64);
    cpu::MoeGatherRows(ref_x_pad, x.f64, ref_padded, c.k);
    ExpectExactlyEqual(DownloadF64(x_pad), ref_x_pad, "gathered rows");

    // The inverse the combine and permute-backward kernels read (ops::MoeCombine builds it on the device).
    Tensor slot_row_host = Tensor::Empty({p}, DType::kI64);
    slot_row_host.Fill(-1);
    for (int64_t i = 0; i < p; ++i) {
      const int64_t slot = ref_padded.data<int64_t>()[i];
      if (slot >= 0) slot_row_host.data<int64_t>()[slot] = i;
    }
    Tensor slot_row = Upload(arena, slot_row_host);
    const double tol = c.dtype == DType::kF32 ? kF32Tol : kBf16Tol;
    Rounded y_pad = RandomRounded({p, c.h}, c.dtype, rng);
    Rounded weight = RandomRounded({c.n, c.k}, DType::kF32, rng, 0.5);
    Rounded dout = RandomRounded({c.n, c.h}, c.dtype, rng);
    Tensor y_dev = Upload(arena, y_pad.stored), w_dev = Upload(arena, weight.stored);
    Tensor out = arena.Alloc({c.n, c.h}, c.dtype);
    cuda::MoeCombine(out, y_dev, slot_row, w_dev, nullptr);
    Tensor ref_out = Tensor::Empty({c.n, c.h}, DType::kF64);
    cpu::MoeCombine(ref_out, y_pad.f64, ref_padded, weight.f64);
    EXPECT_LE(RelError(DownloadF64(out), ref_out), tol) << "out";

    Tensor dy_pad = arena.Alloc({p, c.h}, c.dtype), dweight = arena.Alloc({c.n, c.k}, DType::kF32);
    cuda::Fill(dy_pad, std::numeric_limits<double>::quiet_NaN(), nullptr);  // pad rows must be written
    cuda::MoeCombineBackward(dy_pad, dweight, Upload(arena, dout.stored), y_dev, padded, w_dev, nullptr);
    Tensor ref_dy = Tensor::Empty({p, c.h}, DType::kF64), ref_dw = Tensor::Empty({c.n, c.k}, DType::kF64);
    cpu::MoeCombineBackward(ref_dy, ref_dw, dout.f64, y_pad.f64, ref_padded, weight.f64);
    EXPECT_LE(RelError(DownloadF64(dy_pad), ref_dy), tol) << "dy_perm";
    EXPECT_LE(RelError(DownloadF64(dweight), ref_dw), kF32Tol) << "dweight";

    Tensor dx = arena.Alloc({c.n, c.h}, c.dtype);
    cuda::MoePermuteBackward(dx, y_dev, slot_row, /*accumulate=*/false, nullptr, c.k);
    Tensor ref_dx = Tensor::Empty({c.n, c.h}, DType::kF64);
    cpu::MoePermuteBackward(ref_dx, y_pad.f64, ref_padded, false, c.k);
    EXPECT_LE(RelError(DownloadF64(dx), ref_dx), tol) << "dx";
  }
}

// The FP8 padded layout gathers quantised token rows (Fp8Rows::data) as bytes: the GPU's gather equals the
// CPU's byte for byte, pad rows (-1) all zero; rows of 2112 bytes (2048 columns) and 144 (72 columns: codes
// padded to 128, then the scales).
TEST(MoeCudaPadded, GathersFp8RowsAsBytes) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  DeviceArena arena("padded_fp8_test", size_t{64} << 20);
  for (int64_t cols : {2048, 72}) {
    SCOPED_TRACE("cols " + std::to_string(cols));
    arena.Reset();
    constexpr int64_t kTokens = 300, kTopK = 4, kRows = 1500;
    const Fp8Rows xq = Fp8Rows::Empty(kTokens, cols, Device::kCPU);
    cpu::QuantizeRows1x128(xq, RandomTensor({kTokens, cols}, DType::kF32, rng));
    Tensor row_slot = Tensor::Empty({kRows}, DType::kI64);
    for (int64_t i = 0; i < kRows; ++i)
      row_slot.data<int64_t>()[i] = rng() % 5 == 0 ? -1 : static_cast<int64_t>(rng() % (kTokens * kTopK));
    Fp8Rows want = Fp8Rows::Empty(kRows, cols, Device::kCPU);
    cpu::MoeGatherRows(want.data, xq.data, row_slot, kTopK);
    Tensor got = arena.Alloc(want.data.shape(), DType::kF8E4M3);
    cuda::MoePermuteRows(got, Upload(arena, xq.data), Upload(arena, row_slot), kTopK, nullptr);
    const Tensor host = Download(got);
    ASSERT_EQ(host.nbytes(), want.data.nbytes());
    const auto* g = static_cast<const uint8_t*>(host.raw());
    const auto* w = static_cast<const uint8_t*>(want.data.raw());
    for (size_t b = 0; b < host.nbytes(); ++b) ASSERT_EQ(g[b], w[b]) << "byte " << b;
  }
}

// The FP8 combine backward (one pass, dy_perm never stored in bf16) gives the bits of MoeCombineBackward
// followed by QuantizeRows, codes, scales and dweight alike: a padded layout (random -1 pad rows, which get a
// zero row's codes and scale), H 2048 (8 full passes) and 640 (the last pass's upper half-warp idle).
TEST(MoeCudaCombine, Fp8BackwardEqualsCombineThenQuantize) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  DeviceArena arena("combine_fp8_test", size_t{256} << 20);
  for (int64_t h : {2048, 640}) {
    SCOPED_TRACE("H " + std::to_string(h));
    arena.Reset();
    constexpr int64_t kTokens = 257, kTopK = 4;
    const int64_t p = kTokens * kTopK + 300;  // a padded layout: every slot once, 300 pad rows among them
    std::vector<int64_t> slots(static_cast<size_t>(p), -1);
    for (int64_t i = 0; i < kTokens * kTopK; ++i) slots[static_cast<size_t>(i)] = i;
    std::shuffle(slots.begin(), slots.end(), rng);
    Tensor row_slot = Tensor::Empty({p}, DType::kI64);
    std::copy(slots.begin(), slots.end(), row_slot.data<int64_t>());
    const Tensor dout = RandomTensor({kTokens, h}, DType::kF32, rng).To(DType::kBF16);
    const Tensor y = RandomTensor({p, h}, DType::kF32, rng).To(DType::kBF16);
    const Tensor weight = RandomTensor({kTokens, kTopK}, DType::kF32, rng, 0.5);
    Tensor d_dout = Upload(arena, dout), d_y = Upload(arena, y), d_w = Upload(arena, weight);
    Tensor d_slot = Upload(arena, row_slot);
    ASSERT_TRUE(cuda::MoeCombineBackwardFp8Supported(d_dout, d_y));
    // The two ops.
    Tensor dy_perm = arena.Alloc({p, h}, DType::kBF16), dw_ref = arena.Alloc({kTokens, kTopK}, DType::kF32);
    cuda::MoeCombineBackward(dy_perm, dw_ref, d_dout, d_y, d_slot, d_w, nullptr);
    const Fp8Rows want = Fp8Rows::Wrap(arena.Alloc({p, Fp8RowBytes(h)}, DType::kF8E4M3), h);
    cuda::QuantizeRows1x128(want, dy_perm, nullptr);
    // The fused pass, into NaN-filled outputs (every byte and weight must be written).
    const Fp8Rows got = Fp8Rows::Wrap(arena.Alloc({p, Fp8RowBytes(h)}, DType::kF8E4M3), h);
    FATHOM_CUDA_CHECK(cudaMemset(got.data.raw(), 0x7F, got.data.nbytes()));
    Tensor dw = arena.Alloc({kTokens, kTopK}, DType::kF32);
    cuda::Fill(dw, std::numeric_limits<double>::quiet_NaN(), nullptr);
    cuda::MoeCombineBackwardFp8(got.data, dw, d_dout, d_y, d_slot, d_w, nullptr);
    const Tensor g = Download(got.data), w = Download(want.data);
    ASSERT_EQ(g.nbytes(), w.nbytes());
    const auto* gb = static_cast<const uint8_t*>(g.raw());
    const auto* wb = static_cast<const uint8_t*>(w.raw());
    for (size_t b = 0; b < g.nbytes(); ++b) ASSERT_EQ(gb[b], wb[b]) << "byte " << b << " of the FP8 rows";
    const Tensor dw_got = Download(dw), dw_want = Download(dw_ref);
    for (int64_t i = 0; i < dw_got.numel(); ++i)
      ASSERT_EQ(dw_got.data<float>()[i], dw_want.data<float>()[i]) << "dweight " << i;
  }
}

TEST(MoeCudaLoad, AccumulatesCounts) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  DeviceArena arena("load_test", size_t{1} << 20);
  const int64_t e = 256;
  Tensor start = Tensor::Empty({e}, DType::kI64), counts = Tensor::Empty({e}, DType::kI64);
  for (int64_t i = 0; i < e; ++i) {
    start.data<int64_t>()[i] = static_cast<int64_t>(rng() % 100000);
    counts.data<int64_t>()[i] = static_cast<int64_t>(rng() % 5000);
  }
  Tensor load = Upload(arena, start), counts_dev = Upload(arena, counts);
  cuda::AccumulateExpertLoad(load, counts_dev, nullptr);
  cuda::AccumulateExpertLoad(load, counts_dev, nullptr);
  const Tensor got = Download(load);
  for (int64_t i = 0; i < e; ++i)
    ASSERT_EQ(got.Item(i), start.Item(i) + 2 * counts.Item(i)) << "expert " << i;
}

// ---- determinism
// -------------------------------------------------------------------------------------------

// The whole routed path twice on the same inputs: every output bitwise equal (no timing-dependent order).
TEST(MoeCudaPipeline, TwoRunsAreBitwiseEqual) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const RouterCase rc{4099, 256, 8, 8, 4, true, 2.5, true};
  const RouterDims d = DimsOf(rc);
  const int64_t batch = 3, seq = 4099 / batch + 1, n = batch * seq, h = 200;  // 4101 tokens
  const RouterCase sized{n, rc.e, rc.k, rc.n_group, rc.topk_group, rc.norm, rc.scaling, rc.starve};
  RouterInputs in = DrawRouterInputs(sized, rng);
  const Tensor x = RandomTensor({n, h}, DType::kF32, rng).To(DType::kBF16);
  const Tensor dout = RandomTensor({n, h}, DType::kF32, rng).To(DType::kBF16);
  const Tensor y_perm = RandomTensor({n * rc.k, h}, DType::kF32, rng).To(DType::kBF16);
  DeviceArena arena("determinism_test", size_t{512} << 20);

  auto run = [&]() {
    arena.Reset();
    Tensor scores = Upload(arena, in.logits);
    Tensor index = arena.Alloc({n, rc.k}, DType::kI64), weight = arena.Alloc({n, rc.k}, DType::kF32);
    cuda::RouterSelect(index, weight, scores, scores, Upload(arena, in.bias), d, nullptr);
    Tensor loss = arena.Alloc({1}, DType::kF32), balance = arena.Alloc({batch}, DType::kF32);
    Tensor seq_counts = arena.Alloc({batch, rc.e}, DType::kI32);
    Tensor partials = arena.Alloc({cuda::SequenceBalanceScratchElements(batch, seq)}, DType::kF64);
    cuda::SequenceBalanceLoss(loss, balance, seq_counts, partials, scores, index, batch, seq, false, nullptr);
    Sorted s = RunPermute(arena, Upload(arena, x), index, rc.e, Tensor(), nullptr);
    Tensor y_dev = Upload(arena, y_perm), out = arena.Alloc({n, h}, DType::kBF16);
    cuda::MoeCombine(out, y_dev, s.slot_row, weight, nullptr);
    Tensor dy_perm = arena.Alloc({n * rc.k, h}, DType::kBF16), dweight = arena.Alloc({n, rc.k}, DType::kF32);
    cuda::MoeCombineBackward(dy_perm, dweight, Upload(arena, dout), y_dev, s.row_slot, weight, nullptr);
    Tensor dx = arena.Alloc({n, h}, DType::kBF16);
    cuda::MoePermuteBackward(dx, dy_perm, s.slot_row, false, nullptr);
    Tensor dscores = arena.Zeros({n, rc.e}, DType::kF32);
    cuda::SequenceBalanceLossBackward(dscores, scores, index, seq_counts, batch, seq, 0.3, nullptr);
    cuda::RouterSelectBackward(dscores, dweight, dscores, scores, index, d, nullptr);
    FATHOM_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<Tensor> outputs;
    for (const Tensor& t : {scores, index, weight, loss, balance, seq_counts, s.x_perm, s.row_slot,
                            s.slot_row, s.counts, s.offsets, out, dy_perm, dweight, dx, dscores})
      outputs.push_back(Download(t));
    return outputs;
  };
  const std::vector<Tensor> first = run(), second = run();
  ASSERT_EQ(first.size(), second.size());
  for (size_t i = 0; i < first.size(); ++i) EXPECT_TRUE(SameBytes(first[i], second[i])) << "output " << i;
  EXPECT_EQ(first[9].Item(in.starved), 0) << "the starved expert received tokens";
  EXPECT_GT(first[3].Item(0), 0.0);
}

}  // namespace
}  // namespace fathom
