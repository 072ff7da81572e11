// CUDA causal attention (framework/kernels/cuda/attention.h) against its CPU twin run in f64 on the same
// inputs (rounded to the GPU dtype first, so both sides see identical numbers), plus causality and
// run-to-run determinism of the backward, on each path: fathom's own kernels (SIMT and tensor cores, always
// here) and cuDNN's fused SDPA (attention_cudnn.h; skipped, saying why, where the build has no cuDNN or
// cuDNN refuses the shape).
//
// Tolerances (relative L2 error, ||got - want|| / max(||want||, 1)):
//   f32 path (SIMT): 1e-5. The GPU sums in f32 (unit roundoff 6e-8) over at most a few hundred terms per
//     product and a few hundred keys per row; the observed error is ~1e-6, the f32 path's documented
//     contract is 1e-5.
//   bf16 SIMT path (head dims without tensor-core kernels): 4e-3 for bf16 outputs (out, dq, dk, dv). Each is
//     computed in f32 (error ~1e-6) and rounded to bf16 once; round-to-nearest moves every element by at most
//     2^-8 of itself, so the L2 error is at most 2^-8 = 3.9e-3 of the norm, plus the f32 part.
//   bf16 tensor-core path (the (Dk, Dv) listed in attention.h): 5e-3 for out, dq, dk, dv. On top of the
//     final rounding (<= 2^-8 = 3.9e-3, as above), the probabilities P (for P V and P^T dout) and the score
//     gradients dS (for dS K and dS^T q) enter the tensor cores rounded to bf16: a relative error <= 2^-9 per
//     term, independent between terms, which partly averages out over the keys of a sum; we allow 1e-3 for
//     it. Measured on an H100 over the 13 tensor-core shapes below: 1.8e-3 to 2.4e-3 (the SIMT bf16 path,
//     which rounds only the outputs: 1.6e-3), so 5e-3 leaves 2x headroom and still catches any indexing
//     error (those give O(1) errors).
//   cuDNN path (bf16): 5e-3 for out, dq, dk, dv, the tensor-core path's bound: cuDNN's engines also keep
//     scores, softmax and accumulators in f32 and feed P and dS to the tensor cores as bf16 (the same
//     2^-9-per-term rounding), then round the outputs once; dq's f32 atomic accumulation adds only f32
//     round-off.
//   lse stays f32 on every path: 1e-5.
// The denominator floor of 1 only matters for T = 1, where dq = dk = 0 exactly in f64 (a single key: P = 1
// and dS = dout.v - dout.out = 0) and the GPU returns f32 round-off of zero.
#include "framework/kernels/cuda/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "framework/cuda/device_arena.h"
#include "framework/kernels/cpu/attention.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using testing::Download;
using testing::DownloadF64;
using testing::RandomTensor;
using testing::RoundTo;
using testing::SameBytes;
using testing::TestSeed;
using testing::Upload;

constexpr double kF32Tol = 1e-5;
constexpr double kBf16Tol = 4e-3;
constexpr double kTensorCoreTol = 5e-3;

double Norm(const Tensor& x) {
  double s = 0;
  for (int64_t i = 0; i < x.numel(); ++i) s += x.Item(i) * x.Item(i);
  return std::sqrt(s);
}

double RelError(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.shape(), want.shape());
  double d = 0;
  for (int64_t i = 0; i < want.numel(); ++i) d += (got.Item(i) - want.Item(i)) * (got.Item(i) - want.Item(i));
  return std::sqrt(d) / std::max(Norm(want), 1.0);
}

bool BitwiseEqual(const Tensor& a_dev, const Tensor& b_dev) {
  return SameBytes(Download(a_dev), Download(b_dev));
}

struct Case {
  int64_t b, t, h, dk, dv;
};

// Whether fathom's own kernels run `c` on the tensor cores: the (dtype, Dk, Dv) list of attention.h.
bool TensorCorePath(const Case& c, DType dtype) {
  return dtype == DType::kBF16 &&
         ((c.dk == 64 && c.dv == 64) || (c.dk == 128 && c.dv == 128) || (c.dk == 192 && c.dv == 128));
}

// fathom's own kernel for (c, dtype): tensor cores where listed, else SIMT.
cuda::AttentionPath OwnPath(const Case& c, DType dtype) {
  return TensorCorePath(c, dtype) ? cuda::AttentionPath::kTensorCores : cuda::AttentionPath::kSimt;
}

cuda::AttentionShape ShapeOf(const Case& c) { return {c.b, c.t, c.h, c.dk, c.dv}; }

// The relative L2 tolerance of the bf16 (or f32) outputs out, dq, dk, dv on `path`; see the top of the file.
double OutputTolerance(DType dtype, cuda::AttentionPath path) {
  if (dtype == DType::kF32) return kF32Tol;
  return path == cuda::AttentionPath::kSimt ? kBf16Tol : kTensorCoreTol;
}

std::string CaseName(const Case& c, DType dtype, cuda::AttentionPath path) {
  return "(B, T, H, Dk, Dv) = (" + std::to_string(c.b) + ", " + std::to_string(c.t) + ", " +
         std::to_string(c.h) + ", " + std::to_string(c.dk) + ", " + std::to_string(c.dv) + ") " +
         std::string(DTypeName(dtype)) + " " + cuda::AttentionPathName(path);
}

// Skips the calling test, with cuDNN's reason, unless the cuDNN path accepts every case.
#define FATHOM_REQUIRE_CUDNN_ATTENTION(cases)                                                           \
  do {                                                                                                  \
    for (const Case& c_ : (cases)) {                                                                    \
      const absl::Status st_ = cuda::PrepareCudnnAttention(ShapeOf(c_));                                \
      if (!st_.ok()) GTEST_SKIP() << "cuDNN attention not available for this shape: " << st_.message(); \
    }                                                                                                   \
  } while (0)

size_t ArenaBytes(const Case& c) {
  const size_t qk = static_cast<size_t>(c.b * c.t * c.h * c.dk),
               v = static_cast<size_t>(c.b * c.t * c.h * c.dv);
  return 4 * (4 * qk + 4 * v + static_cast<size_t>(c.b * c.h * c.t)) + 16 * 256;
}

// Forward and backward of one case on the GPU (on `path`) against the f64 CPU twin.
void CheckAgainstCpu(const Case& c, DType dtype, uint64_t seed, cuda::AttentionPath path) {
  SCOPED_TRACE("seed " + std::to_string(seed) + " " + CaseName(c, dtype, path));
  std::mt19937_64 rng(seed);
  const Shape qk_shape{c.b, c.t, c.h, c.dk}, v_shape{c.b, c.t, c.h, c.dv}, lse_shape{c.b, c.h, c.t};
  const Tensor q = RoundTo(RandomTensor(qk_shape, DType::kF64, rng), dtype);
  const Tensor k = RoundTo(RandomTensor(qk_shape, DType::kF64, rng), dtype);
  const Tensor v = RoundTo(RandomTensor(v_shape, DType::kF64, rng), dtype);
  const Tensor dout = RoundTo(RandomTensor(v_shape, DType::kF64, rng), dtype);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
  const double tol = OutputTolerance(dtype, path);

  cuda::DeviceArena arena("attention_test", ArenaBytes(c));
  const Tensor q_d = Upload(arena, q, dtype), k_d = Upload(arena, k, dtype), v_d = Upload(arena, v, dtype);
  const Tensor out_d = arena.Alloc(v_shape, dtype), lse_d = arena.Alloc(lse_shape, DType::kF32);
  cuda::CausalAttentionForward(out_d, lse_d, q_d, k_d, v_d, scale, nullptr, path);
  const Tensor out = DownloadF64(out_d), lse = DownloadF64(lse_d);

  Tensor out_ref = Tensor::Empty(v_shape, DType::kF64), lse_ref = Tensor::Empty(lse_shape, DType::kF64);
  cpu::CausalAttentionForward(out_ref, lse_ref, q, k, v, scale);
  ASSERT_GT(Norm(out_ref), 0.0);
  const double e_out = RelError(out, out_ref), e_lse = RelError(lse, lse_ref);
  EXPECT_LT(e_out, tol) << "out";
  EXPECT_LT(e_lse, kF32Tol) << "lse";

  const Tensor dout_d = Upload(arena, dout, dtype);
  const Tensor dq_d = arena.Alloc(qk_shape, dtype), dk_d = arena.Alloc(qk_shape, dtype);
  const Tensor dv_d = arena.Alloc(v_shape, dtype);
  cuda::CausalAttentionBackward(dq_d, dk_d, dv_d, dout_d, q_d, k_d, v_d, out_d, lse_d, scale, nullptr, path);
  // The reference backward gets the GPU's saved out and lse, as the GPU backward does.
  Tensor dq_ref = Tensor::Empty(qk_shape, DType::kF64), dk_ref = Tensor::Empty(qk_shape, DType::kF64);
  Tensor dv_ref = Tensor::Empty(v_shape, DType::kF64);
  cpu::CausalAttentionBackward(dq_ref, dk_ref, dv_ref, dout, q, k, v, out, lse, scale);
  ASSERT_GT(Norm(dv_ref), 0.0);
  if (c.t > 1) {
    ASSERT_GT(Norm(dq_ref), 0.0);
    ASSERT_GT(Norm(dk_ref), 0.0);
  }
  const double e_dq = RelError(DownloadF64(dq_d), dq_ref), e_dk = RelError(DownloadF64(dk_d), dk_ref);
  const double e_dv = RelError(DownloadF64(dv_d), dv_ref);
  EXPECT_LT(e_dq, tol) << "dq";
  EXPECT_LT(e_dk, tol) << "dk";
  EXPECT_LT(e_dv, tol) << "dv";
  std::printf("  attention %s: rel err out %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n",
              CaseName(c, dtype, path).c_str(), e_out, e_lse, e_dq, e_dk, e_dv);
}

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {1, 1, 1, 192, 128},   // one token
      {2, 77, 3, 192, 128},  // DeepSeek-V3 head dims, T not a multiple of any tile
      {1, 300, 2, 192, 128},
      {2, 64, 4, 24, 16},  // the tiny recipe's heads, T a multiple of the tiles
  };
  return cases;
}

TEST(CudaAttention, ForwardBackwardMatchCpuF32) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  for (const Case& c : Cases()) CheckAgainstCpu(c, DType::kF32, seed, cuda::AttentionPath::kSimt);
}

TEST(CudaAttention, ForwardBackwardMatchCpuBf16) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  for (const Case& c : Cases()) CheckAgainstCpu(c, DType::kBF16, seed, OwnPath(c, DType::kBF16));
}

// The tensor-core kernels (tiles: forward 128 queries x 64 keys, dK/dV 64 x 64, dQ 64 x 32) at every head-dim
// pair they support: T = 1, T inside one tile, T a multiple of the tiles, and T = 200, 333 and 777 (partial
// last tiles, several diagonal tiles), with B and H > 1 so the (b, h) offsets are exercised.
TEST(CudaAttention, TensorCoreMatchesCpuBf16) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  const std::vector<Case> cases = {
      {1, 1, 1, 192, 128},   {2, 1, 3, 192, 128},   {2, 200, 3, 192, 128},
      {2, 777, 3, 192, 128}, {1, 128, 2, 192, 128}, {2, 45, 2, 64, 64},
      {1, 333, 3, 64, 64},   {2, 130, 2, 128, 128}, {1, 777, 1, 128, 128},
  };
  for (const Case& c : cases) {
    ASSERT_TRUE(TensorCorePath(c, DType::kBF16));
    CheckAgainstCpu(c, DType::kBF16, seed, cuda::AttentionPath::kTensorCores);
  }
}

// T = 4096 (the benchmark sequence), forward only: one f64 CPU reference (~3 G multiply-adds) on bf16-rounded
// inputs serves both GPU paths (bf16 inputs are exact in f32; bf16 takes the tensor cores).
TEST(CudaAttention, LongSequenceForwardMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const Case c{1, 4096, 1, 192, 128};
  const Shape qk_shape{c.b, c.t, c.h, c.dk}, v_shape{c.b, c.t, c.h, c.dv}, lse_shape{c.b, c.h, c.t};
  const Tensor q = RoundTo(RandomTensor(qk_shape, DType::kF64, rng), DType::kBF16);
  const Tensor k = RoundTo(RandomTensor(qk_shape, DType::kF64, rng), DType::kBF16);
  const Tensor v = RoundTo(RandomTensor(v_shape, DType::kF64, rng), DType::kBF16);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
  Tensor out_ref = Tensor::Empty(v_shape, DType::kF64), lse_ref = Tensor::Empty(lse_shape, DType::kF64);
  cpu::CausalAttentionForward(out_ref, lse_ref, q, k, v, scale);
  ASSERT_GT(Norm(out_ref), 0.0);
  std::vector<std::pair<DType, cuda::AttentionPath>> runs = {
      {DType::kF32, cuda::AttentionPath::kSimt}, {DType::kBF16, cuda::AttentionPath::kTensorCores}};
  if (cuda::PrepareCudnnAttention(ShapeOf(c)).ok())
    runs.push_back({DType::kBF16, cuda::AttentionPath::kCudnn});
  for (auto [dtype, path] : runs) {
    SCOPED_TRACE(CaseName(c, dtype, path));
    cuda::DeviceArena arena("attention_test", ArenaBytes(c));
    const Tensor q_d = Upload(arena, q, dtype), k_d = Upload(arena, k, dtype), v_d = Upload(arena, v, dtype);
    const Tensor out_d = arena.Alloc(v_shape, dtype), lse_d = arena.Alloc(lse_shape, DType::kF32);
    cuda::CausalAttentionForward(out_d, lse_d, q_d, k_d, v_d, scale, nullptr, path);
    const double e_out = RelError(DownloadF64(out_d), out_ref), e_lse = RelError(DownloadF64(lse_d), lse_ref);
    EXPECT_LT(e_out, OutputTolerance(dtype, path)) << "out";
    EXPECT_LT(e_lse, kF32Tol) << "lse";
    std::printf("  attention %s: rel err out %.2e lse %.2e\n", CaseName(c, dtype, path).c_str(), e_out,
                e_lse);
  }
}

// Changing keys and values at positions >= t0 leaves out, lse and dq of rows < t0 bitwise unchanged; changing
// queries and dout at rows < t0 leaves dk and dv of keys >= t0 bitwise unchanged (masked entries contribute
// exact zeros). t0 = 77 is inside a tile, so masking within a tile is exercised. Also: the backward run twice
// gives bitwise-identical gradients (no atomics). Dk 192 / Dv 128 bf16. cuDNN accumulates dq with f32
// atomics unless its deterministic mode is on, so there dq is compared within one bf16 rounding (2^-8
// relative, see the top) instead of bitwise, in both checks that involve it.
void CheckCausalAndDeterministic(cuda::AttentionPath path) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " " + cuda::AttentionPathName(path));
  std::mt19937_64 rng(seed);
  const Case c{2, 150, 3, 192, 128};
  const int64_t t0 = 77;
  const DType dtype = DType::kBF16;
  const bool dq_bitwise = path != cuda::AttentionPath::kCudnn || cuda::CudnnAttentionDeterministic();
  const Shape qk_shape{c.b, c.t, c.h, c.dk}, v_shape{c.b, c.t, c.h, c.dv}, lse_shape{c.b, c.h, c.t};
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
  Tensor q = RandomTensor(qk_shape, DType::kF64, rng), k = RandomTensor(qk_shape, DType::kF64, rng);
  Tensor v = RandomTensor(v_shape, DType::kF64, rng), dout = RandomTensor(v_shape, DType::kF64, rng);

  struct Run {
    Tensor out, lse, dq, dk, dv;
  };
  cuda::DeviceArena arena("attention_test", 4 * ArenaBytes(c));
  auto run = [&](const Tensor& q_h, const Tensor& k_h, const Tensor& v_h, const Tensor& dout_h) {
    Run r;
    const Tensor q_d = Upload(arena, q_h, dtype), k_d = Upload(arena, k_h, dtype);
    const Tensor v_d = Upload(arena, v_h, dtype), dout_d = Upload(arena, dout_h, dtype);
    r.out = arena.Alloc(v_shape, dtype);
    r.lse = arena.Alloc(lse_shape, DType::kF32);
    r.dq = arena.Alloc(qk_shape, dtype);
    r.dk = arena.Alloc(qk_shape, dtype);
    r.dv = arena.Alloc(v_shape, dtype);
    cuda::CausalAttentionForward(r.out, r.lse, q_d, k_d, v_d, scale, nullptr, path);
    cuda::CausalAttentionBackward(r.dq, r.dk, r.dv, dout_d, q_d, k_d, v_d, r.out, r.lse, scale, nullptr,
                                  path);
    return r;
  };
  // Rows [begin, end) along T of a (B, T, H, D) or (B, H, T) device tensor, as raw host bytes.
  auto rows = [](const Tensor& dev, bool heads_first, int64_t begin, int64_t end) {
    Tensor h = Tensor::Empty(dev.shape(), dev.dtype());
    cuda::CopyToHost(h, dev);
    const size_t elem = DTypeSize(h.dtype());
    const int64_t outer = heads_first ? h.dim(0) * h.dim(1) : h.dim(0), t = heads_first ? h.dim(2) : h.dim(1);
    const int64_t inner = heads_first ? 1 : h.dim(2) * h.dim(3);
    std::vector<char> bytes;
    for (int64_t o = 0; o < outer; ++o) {
      const char* p = static_cast<const char*>(h.raw()) + static_cast<size_t>((o * t + begin) * inner) * elem;
      bytes.insert(bytes.end(), p, p + static_cast<size_t>((end - begin) * inner) * elem);
    }
    return bytes;
  };
  // Overwrites positions [begin, end) along T of a (B, T, H, D) host tensor with fresh values.
  auto perturb = [&](Tensor x, int64_t begin, int64_t end) {
    std::normal_distribution<double> nd(0.0, 3.0);
    const int64_t inner = x.dim(2) * x.dim(3);
    for (int64_t b = 0; b < x.dim(0); ++b)
      for (int64_t i = (b * x.dim(1) + begin) * inner; i < (b * x.dim(1) + end) * inner; ++i)
        x.data<double>()[i] = nd(rng);
    return x;
  };

  const Run base = run(q, k, v, dout);
  const Run again = run(q, k, v, dout);
  EXPECT_TRUE(BitwiseEqual(base.out, again.out));
  if (dq_bitwise) {
    EXPECT_TRUE(BitwiseEqual(base.dq, again.dq));
  } else {
    EXPECT_LT(testing::RelError(DownloadF64(again.dq), DownloadF64(base.dq)), kBf16Tol);
  }
  EXPECT_TRUE(BitwiseEqual(base.dk, again.dk));
  EXPECT_TRUE(BitwiseEqual(base.dv, again.dv));

  const Run future = run(q, perturb(k.Clone(), t0, c.t), perturb(v.Clone(), t0, c.t), dout);
  EXPECT_TRUE(rows(base.out, false, 0, t0) == rows(future.out, false, 0, t0));
  EXPECT_TRUE(rows(base.lse, true, 0, t0) == rows(future.lse, true, 0, t0));
  if (dq_bitwise) {
    EXPECT_TRUE(rows(base.dq, false, 0, t0) == rows(future.dq, false, 0, t0));
  } else {
    const Tensor a = DownloadF64(base.dq), b = DownloadF64(future.dq);
    double d2 = 0, n2 = 0;
    for (int64_t bi = 0; bi < c.b; ++bi)
      for (int64_t i = bi * c.t * c.h * c.dk; i < (bi * c.t + t0) * c.h * c.dk; ++i) {
        d2 += (a.Item(i) - b.Item(i)) * (a.Item(i) - b.Item(i));
        n2 += b.Item(i) * b.Item(i);
      }
    EXPECT_LT(std::sqrt(d2 / n2), kBf16Tol) << "dq of rows < t0 moved with future keys";
  }
  EXPECT_FALSE(rows(base.out, false, t0, c.t) == rows(future.out, false, t0, c.t))
      << "perturbation had no effect";

  const Run past = run(perturb(q.Clone(), 0, t0), k, v, perturb(dout.Clone(), 0, t0));
  EXPECT_TRUE(rows(base.dk, false, t0, c.t) == rows(past.dk, false, t0, c.t));
  EXPECT_TRUE(rows(base.dv, false, t0, c.t) == rows(past.dv, false, t0, c.t));
  EXPECT_FALSE(rows(base.dk, false, 0, t0) == rows(past.dk, false, 0, t0)) << "perturbation had no effect";
}

TEST(CudaAttention, CausalAndDeterministic) {
  FATHOM_REQUIRE_GPU();
  CheckCausalAndDeterministic(cuda::AttentionPath::kTensorCores);
}

// ---- cuDNN's fused SDPA (attention_cudnn.h)

// The benchmark's head dims at sequence lengths that are and are not multiples of cuDNN's tiles, one token,
// and B, H > 1; plus 128/128 heads.
TEST(CudaAttention, CudnnMatchesCpuBf16) {
  FATHOM_REQUIRE_GPU();
  const std::vector<Case> cases = {{2, 77, 3, 192, 128},
                                   {1, 300, 2, 192, 128},
                                   {2, 256, 2, 192, 128},
                                   {1, 1, 1, 192, 128},
                                   {2, 130, 2, 128, 128}};
  FATHOM_REQUIRE_CUDNN_ATTENTION(cases);
  const uint64_t seed = TestSeed();
  for (const Case& c : cases) {
    std::printf("  %s\n", cuda::DescribeAttentionPath(DType::kBF16, ShapeOf(c)).c_str());
    CheckAgainstCpu(c, DType::kBF16, seed, cuda::AttentionPath::kCudnn);
  }
}

TEST(CudaAttention, CudnnCausalAndDeterministic) {
  FATHOM_REQUIRE_GPU();
  const std::vector<Case> cases = {{2, 150, 3, 192, 128}};
  FATHOM_REQUIRE_CUDNN_ATTENTION(cases);
  CheckCausalAndDeterministic(cuda::AttentionPath::kCudnn);
}

// Deterministic mode (train.deterministic): cuDNN's plans without the atomically accumulated dq. The same
// accuracy against the CPU as the default plans, and dq bitwise reproducible too (CheckCausalAndDeterministic
// then compares every gradient bitwise). A cuDNN that builds no deterministic plan for these shapes skips,
// saying why; the trainer then runs the own kernels (CausalAndDeterministic above).
TEST(CudaAttention, CudnnDeterministicModeIsBitwiseAndMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  struct Mode {  // the process-wide mode, restored for the tests that follow
    Mode() { cuda::SetCudnnAttentionDeterministic(true); }
    ~Mode() { cuda::SetCudnnAttentionDeterministic(false); }
  } mode;
  const std::vector<Case> cases = {{2, 150, 3, 192, 128}, {1, 300, 2, 192, 128}, {2, 256, 2, 192, 128}};
  const Case long_case{1, 2048, 2, 192, 128};  // 32 key tiles into each late dq row: where atomics reorder
  std::vector<Case> all = cases;
  all.push_back(long_case);
  FATHOM_REQUIRE_CUDNN_ATTENTION(all);
  const uint64_t seed = TestSeed();
  for (const Case& c : cases) {
    const std::string line = cuda::DescribeAttentionPath(DType::kBF16, ShapeOf(c));
    std::printf("  %s\n", line.c_str());
    EXPECT_NE(line.find(", deterministic"), std::string::npos) << line;
    CheckAgainstCpu(c, DType::kBF16, seed, cuda::AttentionPath::kCudnn);
  }
  CheckCausalAndDeterministic(cuda::AttentionPath::kCudnn);
  // The long sequence: the backward twice on the same inputs gives the same dq, dk and dv bytes.
  const Case& c = long_case;
  std::printf("  %s\n", cuda::DescribeAttentionPath(DType::kBF16, ShapeOf(c)).c_str());
  std::mt19937_64 rng(seed);
  const Shape qk{c.b, c.t, c.h, c.dk}, vo{c.b, c.t, c.h, c.dv};
  cuda::DeviceArena arena("attention_test", 8 * ArenaBytes(c));
  const Tensor q = Upload(arena, RandomTensor(qk, DType::kF64, rng), DType::kBF16);
  const Tensor k = Upload(arena, RandomTensor(qk, DType::kF64, rng), DType::kBF16);
  const Tensor v = Upload(arena, RandomTensor(vo, DType::kF64, rng), DType::kBF16);
  const Tensor dout = Upload(arena, RandomTensor(vo, DType::kF64, rng), DType::kBF16);
  const Tensor out = arena.Alloc(vo, DType::kBF16), lse = arena.Alloc({c.b, c.h, c.t}, DType::kF32);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
  cuda::CausalAttentionForward(out, lse, q, k, v, scale, nullptr, cuda::AttentionPath::kCudnn);
  Tensor grads[2][3];
  for (Tensor(&g)[3] : grads) {
    g[0] = arena.Alloc(qk, DType::kBF16);
    g[1] = arena.Alloc(qk, DType::kBF16);
    g[2] = arena.Alloc(vo, DType::kBF16);
    cuda::CausalAttentionBackward(g[0], g[1], g[2], dout, q, k, v, out, lse, scale, nullptr,
                                  cuda::AttentionPath::kCudnn);
  }
  EXPECT_TRUE(BitwiseEqual(grads[0][0], grads[1][0])) << "dq at T " << c.t;
  EXPECT_TRUE(BitwiseEqual(grads[0][1], grads[1][1])) << "dk at T " << c.t;
  EXPECT_TRUE(BitwiseEqual(grads[0][2], grads[1][2])) << "dv at T " << c.t;
}

// The two paths share the lse convention: a cuDNN forward feeds the own backward and the own forward feeds
// cuDNN's backward, each within the tensor-core tolerance of the CPU backward on the same saved out and lse.
TEST(CudaAttention, CudnnAndOwnKernelsShareSavedStatistics) {
  FATHOM_REQUIRE_GPU();
  const Case c{2, 200, 2, 192, 128};
  const std::vector<Case> cases = {c};
  FATHOM_REQUIRE_CUDNN_ATTENTION(cases);
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const DType dt = DType::kBF16;
  const Shape qk_shape{c.b, c.t, c.h, c.dk}, v_shape{c.b, c.t, c.h, c.dv}, lse_shape{c.b, c.h, c.t};
  const Tensor q = RoundTo(RandomTensor(qk_shape, DType::kF64, rng), dt);
  const Tensor k = RoundTo(RandomTensor(qk_shape, DType::kF64, rng), dt);
  const Tensor v = RoundTo(RandomTensor(v_shape, DType::kF64, rng), dt);
  const Tensor dout = RoundTo(RandomTensor(v_shape, DType::kF64, rng), dt);
  const double scale = 0.07;
  cuda::DeviceArena arena("attention_test", 2 * ArenaBytes(c));
  const Tensor q_d = Upload(arena, q, dt), k_d = Upload(arena, k, dt), v_d = Upload(arena, v, dt);
  const Tensor dout_d = Upload(arena, dout, dt);
  using P = cuda::AttentionPath;
  for (auto [fwd, bwd] : {std::pair{P::kCudnn, P::kTensorCores}, std::pair{P::kTensorCores, P::kCudnn}}) {
    SCOPED_TRACE(std::string("forward ") + cuda::AttentionPathName(fwd) + ", backward " +
                 cuda::AttentionPathName(bwd));
    const Tensor out_d = arena.Alloc(v_shape, dt), lse_d = arena.Alloc(lse_shape, DType::kF32);
    cuda::CausalAttentionForward(out_d, lse_d, q_d, k_d, v_d, scale, nullptr, fwd);
    const Tensor dq_d = arena.Alloc(qk_shape, dt), dk_d = arena.Alloc(qk_shape, dt),
                 dv_d = arena.Alloc(v_shape, dt);
    cuda::CausalAttentionBackward(dq_d, dk_d, dv_d, dout_d, q_d, k_d, v_d, out_d, lse_d, scale, nullptr, bwd);
    const Tensor out = DownloadF64(out_d), lse = DownloadF64(lse_d);
    Tensor dq_ref = Tensor::Empty(qk_shape, DType::kF64), dk_ref = Tensor::Empty(qk_shape, DType::kF64);
    Tensor dv_ref = Tensor::Empty(v_shape, DType::kF64);
    cpu::CausalAttentionBackward(dq_ref, dk_ref, dv_ref, dout, q, k, v, out, lse, scale);
    EXPECT_LT(RelError(DownloadF64(dq_d), dq_ref), kTensorCoreTol) << "dq";
    EXPECT_LT(RelError(DownloadF64(dk_d), dk_ref), kTensorCoreTol) << "dk";
    EXPECT_LT(RelError(DownloadF64(dv_d), dv_ref), kTensorCoreTol) << "dv";
  }
}

}  // namespace
}  // namespace fathom
