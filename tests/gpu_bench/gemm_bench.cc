// Routed-expert grouped GEMMs (framework/kernels/cuda/gemm.h) at the small recipe's shapes, bf16:
//   32 local experts, R = 32768 rows (8192 tokens x top-4) in contiguous expert blocks whose sizes are
//   skewed random counts (some experts empty, the largest 2-3x the mean), hidden 2048, moe_intermediate 1408.
//   NT (forward) and NN (dgrad) write bf16, TN (wgrad) accumulates into f32 (and, as TN=, overwrites it:
//   beta 0, the first micro-batch of a step, which does not read the f32 gradient), each for (K, N) =
//   (2048, 1408) and (1408, 2048); every path of GemmContext::GroupedPath is timed (argument path, the
//   enum's value). BM_Batched times the batched layouts (uniform counts; the skewed counts rounded up to the
//   128-row tile, the padded expert layout) against the per-expert path on the same counts.
// Plus the dense ceiling: one 32768 x 1408 x 2048 bf16 NT GEMM.
//
// Timing includes host overhead: each iteration issues kCallsPerIteration calls, each with the next count
// set of a pool of kCountSets (as in training, row counts change every call, so per-row-count caches see
// new sizes), then synchronises; the reported time is wall time per call. TFLOP/s = 2 R K N per call.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "framework/cuda/check.h"
#include "framework/cuda/device_arena.h"
#include "framework/kernels/cuda/gemm.h"
#include "framework/fp8_operands.h"
#include "framework/kernels/cpu/fp8_gemm.h"
#include "framework/kernels/cuda/grouped_gemm.h"

namespace fathom {
namespace {

constexpr int64_t kExperts = 32, kRows = 32768, kHidden = 2048, kInter = 1408;
// Row capacity of the buffers: the uniform (padded) benchmarks go up to 1280 rows per expert.
constexpr int64_t kBufferRows = kExperts * 1280;
constexpr int kCountSets = 512, kCallsPerIteration = 8;

// Skewed counts summing to kRows: expert weights exp(0.6 z) (z normal), ~1 in 12 experts empty, then a
// multinomial draw of the rows; the largest expert gets ~2-3x the mean.
std::vector<Tensor> MakeCountSets() {
  std::mt19937_64 rng(20251122);
  std::normal_distribution<double> z;
  std::uniform_real_distribution<double> u;
  std::vector<Tensor> sets;
  for (int s = 0; s < kCountSets; ++s) {
    std::vector<double> w(kExperts);
    for (double& v : w) v = u(rng) < 1.0 / 12 ? 0.0 : std::exp(0.6 * z(rng));
    std::discrete_distribution<int> pick(w.begin(), w.end());
    std::vector<double> counts(kExperts, 0.0);
    for (int64_t r = 0; r < kRows; ++r) counts[static_cast<size_t>(pick(rng))] += 1;
    sets.push_back(Tensor::FromVector(counts, {kExperts}, DType::kI64));
  }
  return sets;
}

// Device buffers for every benchmark: activations (R, max(K, N)) twice, weights (E, 2048 x 1408), bf16
// outputs (R, 2048) and f32 weight gradients (E, 2048 x 1408). Filled with uniform [-1, 1) bf16 values by
// repeating one random host block (GEMM speed does not depend on the exact values, only on their spread).
class GemmData {
 public:
  GemmData() : arena_("gemm_bench", Bytes()), counts_(MakeCountSets()) {
    x_ = Random({kBufferRows, kHidden});
    y_ = Random({kBufferRows, kHidden});
    w_ = Random({kExperts, kHidden * kInter});
    out_ = arena_.Alloc({kBufferRows, kHidden}, DType::kBF16);
    grad_ = arena_.Alloc({kExperts, kHidden * kInter}, DType::kF32);
    FATHOM_CUDA_CHECK(cudaMemset(grad_.raw(), 0, static_cast<size_t>(grad_.numel()) * 4));
    FATHOM_CUDA_CHECK(cudaDeviceSynchronize());
  }

  // 2-D / 3-D views of the buffers with the given shapes (prefixes of the allocations).
  Tensor Rows(const Tensor& t, int64_t cols, int64_t rows = kRows) const { return View(t, {rows, cols}); }
  Tensor Experts(const Tensor& t, int64_t a, int64_t b) const { return View(t, {kExperts, a, b}); }
  const Tensor& x() const { return x_; }
  const Tensor& y() const { return y_; }
  const Tensor& w() const { return w_; }
  const Tensor& out() const { return out_; }
  const Tensor& grad() const { return grad_; }
  const Tensor& counts(int i) const { return counts_[static_cast<size_t>(i % kCountSets)]; }

 private:
  static size_t Bytes() {
    const size_t act = static_cast<size_t>(kBufferRows * kHidden);
    const size_t w = static_cast<size_t>(kExperts * kHidden * kInter);
    return 2 * (3 * act + w) + 4 * w + 8 * 256;
  }
  static Tensor View(const Tensor& t, const Shape& shape) {
    return Tensor::Wrap(t.raw(), shape, t.dtype(), Device::kCUDA, nullptr);
  }

  Tensor Random(const Shape& shape) {
    Tensor dev = arena_.Alloc(shape, DType::kBF16);
    constexpr int64_t kBlock = int64_t{1} << 20;
    std::mt19937_64 rng(static_cast<uint64_t>(dev.numel()));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    Tensor host = Tensor::Empty({kBlock}, DType::kF32);
    for (int64_t i = 0; i < kBlock; ++i) host.data<float>()[i] = u(rng);
    Tensor block = host.To(DType::kBF16);
    for (int64_t at = 0; at < dev.numel(); at += kBlock) {
      const int64_t n = std::min(kBlock, dev.numel() - at);
      FATHOM_CUDA_CHECK(cudaMemcpy(static_cast<char*>(dev.raw()) + at * 2, block.raw(),
                                   static_cast<size_t>(n) * 2, cudaMemcpyHostToDevice));
    }
    return dev;
  }

  cuda::DeviceArena arena_;
  std::vector<Tensor> counts_;
  Tensor x_, y_, w_, out_, grad_;
};

const GemmData& Data() {
  static const auto* data = new GemmData();
  return *data;
}

const char* PathName(int64_t path) {
  return path == 0   ? "per-expert exact plans (old)"
         : path == 1 ? "bucketed, one stream"
         : path == 2 ? "bucketed, 4 streams"
                     : "exact sizes, 4 streams";
}

// Times kCallsPerIteration calls (call(i) uses count set i) per iteration on the host clock, synchronising
// at the end of each iteration; a fresh context per benchmark, 3 warm-up calls.
template <class Call>
void TimeCalls(benchmark::State& state, double flops, const Call& call) {
  int next = 0;
  for (int i = 0; i < 3; ++i) call(next++);
  FATHOM_CUDA_CHECK(cudaDeviceSynchronize());
  double total_s = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kCallsPerIteration; ++i) call(next++);
    FATHOM_CUDA_CHECK(cudaDeviceSynchronize());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.SetIterationTime(s / kCallsPerIteration);
    total_s += s / kCallsPerIteration;
  }
  state.counters["TFLOP/s"] = flops * static_cast<double>(state.iterations()) / total_s * 1e-12;
}

enum class Form { kNT, kNN, kTN, kTNOverwrite };

// Arguments: path (GemmContext::GroupedPath), K, N of the forward-style view (TN: M = K rows of out[e]).
template <Form form>
void BM_Grouped(benchmark::State& state) {
  const GemmData& d = Data();
  const auto path = static_cast<cuda::GemmContext::GroupedPath>(state.range(0));
  const int64_t k = state.range(1), n = state.range(2);
  cuda::GemmContext ctx;
  ctx.set_grouped_path(path);
  const char* name = form == Form::kNT   ? "NT bf16->bf16"
                     : form == Form::kNN ? "NN bf16->bf16"
                     : form == Form::kTN ? "TN bf16->f32+="
                                         : "TN bf16->f32=";
  state.SetLabel(std::string(name) + ", " + PathName(state.range(0)));
  const double flops = 2.0 * kRows * static_cast<double>(k) * static_cast<double>(n);
  const int64_t q0 = ctx.heuristic_queries();
  if (form == Form::kNT) {
    const Tensor x = d.Rows(d.x(), k), w = d.Experts(d.w(), n, k), out = d.Rows(d.out(), n);
    TimeCalls(state, flops, [&](int i) { ctx.GroupedMatmulNT(out, x, w, d.counts(i), false, nullptr); });
  } else if (form == Form::kNN) {
    const Tensor x = d.Rows(d.x(), k), w = d.Experts(d.w(), k, n), out = d.Rows(d.out(), n);
    TimeCalls(state, flops, [&](int i) { ctx.GroupedMatmulNN(out, x, w, d.counts(i), false, nullptr); });
  } else {
    const Tensor x = d.Rows(d.x(), k), y = d.Rows(d.y(), n), out = d.Experts(d.grad(), k, n);
    const bool accumulate = form == Form::kTN;
    TimeCalls(state, flops, [&](int i) { ctx.GroupedMatmulTN(out, x, y, d.counts(i), accumulate, nullptr); });
  }
  state.counters["queries/call"] = static_cast<double>(ctx.heuristic_queries() - q0) /
                                   static_cast<double>(state.iterations() * kCallsPerIteration + 3);
}

void BM_GemmDenseNT(benchmark::State& state) {
  const GemmData& d = Data();
  cuda::GemmContext ctx;
  state.SetLabel("dense NT bf16->bf16 32768 x 1408 x 2048 (ceiling)");
  const Tensor x = d.Rows(d.x(), kHidden), out = d.Rows(d.out(), kInter);
  const Tensor w0 = Tensor::Wrap(d.w().raw(), {kInter, kHidden}, DType::kBF16, Device::kCUDA, nullptr);
  TimeCalls(state, 2.0 * kRows * kHidden * kInter, [&](int) { ctx.MatmulNT(out, x, w0, false, nullptr); });
}

// Two batched layouts of the routed rows, each timed batched (batched 1) or, for comparison, on the
// default multi-stream per-expert path (batched 0, GemmContext::set_batch_uniform(false)):
//   kUniform: every expert has C rows (argument C; 1024 is the recipe's mean), one strided batch;
//             TFLOP/s count all E x C rows.
//   kTiled:   the skewed count sets above, each count rounded up to GemmContext::kTileRows (the padded
//             expert layout of layers/moe.h; C unused): NT and NN as one pointer-array batch of tiles, TN
//             as one batch per distinct row count. TFLOP/s count the R routed rows only, so the pad rows
//             (~6%) are charged to the batched path.
enum class Layout { kUniform, kTiled };

// The count sets rounded up to the tile.
const std::vector<Tensor>& TiledCountSets() {
  static const auto* sets = [] {
    auto* out = new std::vector<Tensor>();
    for (int i = 0; i < kCountSets; ++i) {
      Tensor t = Data().counts(i).Clone();
      for (int64_t e = 0; e < kExperts; ++e) {
        int64_t& c = t.data<int64_t>()[e];
        c = (c + cuda::GemmContext::kTileRows - 1) / cuda::GemmContext::kTileRows *
            cuda::GemmContext::kTileRows;
      }
      out->push_back(t);
    }
    return out;
  }();
  return *sets;
}

template <Form form, Layout layout>
void BM_Batched(benchmark::State& state) {
  const GemmData& d = Data();
  const bool batched = state.range(0) != 0;
  const int64_t k = state.range(2), n = state.range(3);
  cuda::GemmContext ctx;
  ctx.set_batch_uniform(batched);
  const char* name = form == Form::kNT   ? "NT bf16->bf16"
                     : form == Form::kNN ? "NN bf16->bf16"
                                         : "TN bf16->f32=";
  const char* how = !batched                     ? ", grouped 4 streams"
                    : layout == Layout::kUniform ? ", strided batch"
                                                 : ", tiles";
  state.SetLabel(std::string(name) + how);
  const Tensor uniform = Tensor::FromVector(
      std::vector<double>(kExperts, static_cast<double>(state.range(1))), {kExperts}, DType::kI64);
  auto counts = [&](int i) -> const Tensor& {
    return layout == Layout::kUniform ? uniform : TiledCountSets()[static_cast<size_t>(i % kCountSets)];
  };
  auto rows = [&](int i) {
    int64_t r = 0;
    for (int64_t e = 0; e < kExperts; ++e) r += counts(i).template data<int64_t>()[e];
    return r;
  };
  const double useful = layout == Layout::kUniform ? static_cast<double>(kExperts * state.range(1)) : kRows;
  const double flops = 2.0 * useful * static_cast<double>(k) * static_cast<double>(n);
  if (form == Form::kNT) {
    TimeCalls(state, flops, [&](int i) {
      const int64_t r = rows(i);
      ctx.GroupedMatmulNT(d.Rows(d.out(), n, r), d.Rows(d.x(), k, r), d.Experts(d.w(), n, k), counts(i),
                          false, nullptr);
    });
  } else if (form == Form::kNN) {
    TimeCalls(state, flops, [&](int i) {
      const int64_t r = rows(i);
      ctx.GroupedMatmulNN(d.Rows(d.out(), n, r), d.Rows(d.x(), k, r), d.Experts(d.w(), k, n), counts(i),
                          false, nullptr);
    });
  } else {
    TimeCalls(state, flops, [&](int i) {
      const int64_t r = rows(i);
      ctx.GroupedMatmulTN(d.Experts(d.grad(), k, n), d.Rows(d.x(), k, r), d.Rows(d.y(), n, r), counts(i),
                          false, nullptr);
    });
  }
}

// Helpers of the own-kernel benchmarks below. A host copy to the device, allocated from `arena`.
Tensor UploadTo(cuda::DeviceArena& arena, const Tensor& host) {
  Tensor dev = arena.Alloc(host.shape(), host.dtype());
  FATHOM_CUDA_CHECK(cudaMemcpy(dev.raw(), host.raw(), host.nbytes(), cudaMemcpyHostToDevice));
  return dev;
}

// Uniform [-1, 1) f32 values on the host (what the FP8 operands are quantised from).
Tensor UniformHost(const Shape& shape, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Tensor t = Tensor::Empty(shape, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = u(rng);
  return t;
}

// Every count set on the device, (kCountSets, kExperts) i64 (kCountSets * kExperts * 8 bytes of `arena`),
// and set i of them as a (kExperts) view: what MoeTileExperts reads.
Tensor DeviceCountSets(cuda::DeviceArena& arena) {
  Tensor all = arena.Alloc({kCountSets, kExperts}, DType::kI64);
  for (int i = 0; i < kCountSets; ++i)
    FATHOM_CUDA_CHECK(cudaMemcpy(static_cast<int64_t*>(all.raw()) + i * kExperts, Data().counts(i).raw(),
                                 kExperts * 8, cudaMemcpyHostToDevice));
  return all;
}
Tensor CountSet(const Tensor& all, int i) {
  return Tensor::Wrap(static_cast<int64_t*>(all.raw()) + (i % kCountSets) * kExperts, {kExperts}, DType::kI64,
                      Device::kCUDA, nullptr);
}

// fathom's own tile-grouped NT kernel (grouped_gemm.h) on the same skewed count sets: each call builds the
// tile map on the device from that set's device counts (MoeTileExperts) and runs over the worst-case tile
// budget (MaxExpertTiles: 287 tiles here; the unused ones exit at once), so nothing reaches the host.
// Arguments: block_n (0 = the default for N), K, N, cluster (CTAs per cluster sharing A by multicast), tma
// (1: the TMA-store epilogue; see cuda::TiledLaunch). TFLOP/s count the R routed rows, as BM_Batched's tiles.
void BM_OwnTiledNT(benchmark::State& state) {
  const GemmData& d = Data();
  const int block_n = static_cast<int>(state.range(0));
  const int64_t k = state.range(1), n = state.range(2);
  const cuda::TiledLaunch launch{block_n, 0, static_cast<int>(state.range(3)), state.range(4) != 0};
  if (!cuda::TiledGroupedSupported(n, k)) {
    state.SkipWithError("TiledGroupedMatmulNT needs an sm_90 GPU");
    return;
  }
  state.SetLabel("NT bf16->bf16, own tiled kernel, device tile map, BN " +
                 std::to_string(block_n ? block_n : cuda::TiledGroupedDefaultBlockN(n, *launch.tma_store)) +
                 ", cluster " + std::to_string(*launch.cluster_n) +
                 (*launch.tma_store ? ", TMA stores" : ""));
  const int64_t tiles = cuda::MaxExpertTiles(kRows, kExperts);
  cuda::DeviceArena arena("gemm_bench_own", size_t{kCountSets} * kExperts * 8 + size_t(tiles) * 4 + 4096);
  const Tensor counts = DeviceCountSets(arena);
  Tensor map = arena.Alloc({tiles}, DType::kI32);
  const Tensor x = d.Rows(d.x(), k, tiles * cuda::kGroupedTileRows);
  const Tensor out = d.Rows(d.out(), n, tiles * cuda::kGroupedTileRows);
  const Tensor w = d.Experts(d.w(), n, k);
  TimeCalls(state, 2.0 * kRows * static_cast<double>(k) * static_cast<double>(n), [&](int i) {
    cuda::MoeTileExperts(map, CountSet(counts, i), nullptr);
    cuda::TiledGroupedMatmulNT(out, x, w, map, nullptr, launch);
  });
}

// The own kernel's dgrad form (TiledGroupedMatmulNN: w (E, K, N) read MN-major, no transposed copy) on the
// same count sets; compare with BM_Batched<kNN, kTiled>/1 (cuBLASLt's pointer-array batch of tiles, host
// counts). Arguments: block_n (0 = the default for N), K, N, cluster, tma.
void BM_OwnTiledNN(benchmark::State& state) {
  const GemmData& d = Data();
  const int block_n = static_cast<int>(state.range(0));
  const int64_t k = state.range(1), n = state.range(2);
  const cuda::TiledLaunch launch{block_n, 0, static_cast<int>(state.range(3)), state.range(4) != 0};
  if (!cuda::TiledGroupedMnSupported(n, k)) {
    state.SkipWithError("TiledGroupedMatmulNN needs an sm_90 GPU");
    return;
  }
  state.SetLabel("NN bf16->bf16, own tiled kernel, device tile map, BN " + std::to_string(block_n) +
                 ", cluster " + std::to_string(*launch.cluster_n) +
                 (*launch.tma_store ? ", TMA stores" : ""));
  const int64_t tiles = cuda::MaxExpertTiles(kRows, kExperts);
  cuda::DeviceArena arena("gemm_bench_own_nn", size_t{kCountSets} * kExperts * 8 + size_t(tiles) * 4 + 4096);
  const Tensor counts = DeviceCountSets(arena);
  Tensor map = arena.Alloc({tiles}, DType::kI32);
  const Tensor x = d.Rows(d.x(), k, tiles * cuda::kGroupedTileRows);
  const Tensor out = d.Rows(d.out(), n, tiles * cuda::kGroupedTileRows);
  const Tensor w = d.Experts(d.w(), k, n);
  TimeCalls(state, 2.0 * kRows * static_cast<double>(k) * static_cast<double>(n), [&](int i) {
    cuda::MoeTileExperts(map, CountSet(counts, i), nullptr);
    cuda::TiledGroupedMatmulNN(out, x, w, map, false, nullptr, launch);
  });
}

// The own kernel's weight-gradient form (TiledGroupedMatmulTN: both operands MN-major, the experts' tile
// ranges from the device) overwriting f32 gradients, as the first micro-batch of a step does; compare with
// BM_Batched<kTNOverwrite, kTiled>/1. Arguments: block_n, M, N (out (E, M, N)), cluster, tma.
void BM_OwnTiledTN(benchmark::State& state) {
  const GemmData& d = Data();
  const int block_n = static_cast<int>(state.range(0));
  const int64_t m = state.range(1), n = state.range(2);
  const cuda::TiledLaunch launch{block_n, 0, static_cast<int>(state.range(3)), state.range(4) != 0};
  if (!cuda::TiledGroupedMnSupported(n, 64)) {
    state.SkipWithError("TiledGroupedMatmulTN needs an sm_90 GPU");
    return;
  }
  state.SetLabel("TN bf16->f32=, own tiled kernel, device tile ranges, BN " + std::to_string(block_n) +
                 ", cluster " + std::to_string(*launch.cluster_n) +
                 (*launch.tma_store ? ", TMA stores" : ""));
  const int64_t tiles = cuda::MaxExpertTiles(kRows, kExperts);
  cuda::DeviceArena arena("gemm_bench_own_tn",
                          size_t{kCountSets} * kExperts * 8 + size_t(tiles) * 4 + size_t(kExperts + 1) * 4 + 8192);
  const Tensor counts = DeviceCountSets(arena);
  Tensor map = arena.Alloc({tiles}, DType::kI32), begin = arena.Alloc({kExperts + 1}, DType::kI32);
  const Tensor a = d.Rows(d.x(), m, tiles * cuda::kGroupedTileRows);
  const Tensor b = d.Rows(d.y(), n, tiles * cuda::kGroupedTileRows);
  const Tensor out = d.Experts(d.grad(), m, n);
  TimeCalls(state, 2.0 * kRows * static_cast<double>(m) * static_cast<double>(n), [&](int i) {
    cuda::MoeTileExperts(map, CountSet(counts, i), nullptr, begin);
    cuda::TiledGroupedMatmulTN(out, a, b, begin, false, nullptr, launch);
  });
}

void OwnMnArgs(benchmark::internal::Benchmark* b) {
  for (auto [k, n] : {std::pair<int64_t, int64_t>{kHidden, kInter}, {kInter, kHidden}})
    for (int64_t bn : {128, 256})
      for (int64_t cluster : {1, 2})
        for (int64_t tma : {0, 1}) b->Args({bn, k, n, cluster, tma});
  b->ArgNames({"BN", "K", "N", "cluster", "tma"})
      ->UseManualTime()
      ->MinTime(0.1)
      ->Unit(benchmark::kMicrosecond);
}

// The FP8 form of the own tiled kernel (TiledFp8GroupedMatmulNT) on the same count sets and widths: x
// (287 tiles x 128 rows, K) as packed 1x128 rows and w (E, N, K) in 128x128 blocks, quantised once on the
// CPU from uniform values (the codes' spread, not their values, sets the speed). Compare with
// fp8_gemm_bench's BM_Gemm/fwd/7/1 (cuBLASLt, one block-scaled matmul per expert). Arguments: K, N, cluster,
// tma.
void BM_OwnTiledFp8NT(benchmark::State& state) {
  const int64_t k = state.range(0), n = state.range(1);
  const cuda::TiledLaunch launch{0, 0, static_cast<int>(state.range(2)), state.range(3) != 0};
  if (!cuda::TiledFp8Supported(n)) {
    state.SkipWithError("TiledFp8GroupedMatmulNT needs an sm_90 GPU");
    return;
  }
  state.SetLabel("NT e4m3 block-scaled -> bf16, own tiled kernel, device tile map, cluster " +
                 std::to_string(*launch.cluster_n) + (*launch.tma_store ? ", TMA stores" : ""));
  const GemmData& d = Data();
  const int64_t tiles = cuda::MaxExpertTiles(kRows, kExperts), rows = tiles * cuda::kGroupedTileRows;
  std::mt19937_64 rng(7);
  const Fp8Rows xq = Fp8Rows::Empty(rows, k, Device::kCPU);
  cpu::QuantizeRows1x128(xq, UniformHost({rows, k}, rng));
  const Fp8Weight wq = Fp8Weight::Empty({kExperts, n, k}, Device::kCPU);
  cpu::QuantizeWeight128x128(wq, UniformHost({kExperts, n, k}, rng));
  cuda::DeviceArena arena("gemm_bench_fp8", xq.data.nbytes() + wq.w.codes.nbytes() + wq.w.scales.nbytes() +
                                                 size_t{kCountSets} * kExperts * 8 + size_t(tiles) * 4 + 8192);
  const Fp8Rows x = Fp8Rows::Wrap(UploadTo(arena, xq.data), k);
  Fp8BlockMatrix w = wq.w;
  w.codes = UploadTo(arena, wq.w.codes);
  w.scales = UploadTo(arena, wq.w.scales);
  const Tensor counts = DeviceCountSets(arena);
  Tensor map = arena.Alloc({tiles}, DType::kI32);
  const Tensor out = d.Rows(d.out(), n, rows);
  TimeCalls(state, 2.0 * kRows * static_cast<double>(k) * static_cast<double>(n), [&](int i) {
    cuda::MoeTileExperts(map, CountSet(counts, i), nullptr);
    cuda::TiledFp8GroupedMatmulNT(out, x, w, map, false, nullptr, launch);
  });
}

// The FP8 weight-gradient form (TiledFp8GroupedMatmulTN): dW_e (M, N) += a_e . b_e^T over the tokens of
// count set 0 (each expert's tokens padded to 128), a and b Fp8Cols quantised once on the CPU. Compare with
// fp8_gemm_bench's BM_Gemm/wgrad/7/1 (cuBLASLt, one matmul per expert). Arguments: M, N; TFLOP/s count the
// R routed rows. Arguments: M, N, cluster, tma (always 0: this form has no TMA-store epilogue).
void BM_OwnTiledFp8TN(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1);
  const cuda::TiledLaunch launch{0, 0, static_cast<int>(state.range(2)), state.range(3) != 0};
  if (!cuda::TiledFp8TNSupported(n, kExperts)) {
    state.SkipWithError("TiledFp8GroupedMatmulTN needs an sm_90 GPU");
    return;
  }
  state.SetLabel("TN e4m3 1x128 columns -> f32 +=, own tiled kernel, one launch, cluster " +
                 std::to_string(*launch.cluster_n));
  const GemmData& d = Data();
  std::mt19937_64 rng(11);
  const Fp8Cols qa = Fp8Cols::Empty(m, d.counts(0), Device::kCPU), qb = Fp8Cols::Empty(n, d.counts(0), Device::kCPU);
  cpu::QuantizeCols1x128(qa, UniformHost({kRows, m}, rng));
  cpu::QuantizeCols1x128(qb, UniformHost({kRows, n}, rng));
  cuda::DeviceArena arena("gemm_bench_fp8_tn", qa.codes.nbytes() + qa.scales.nbytes() + qb.codes.nbytes() +
                                                    qb.scales.nbytes() + 8192);
  auto up = [&](const Fp8Cols& q) {
    Fp8Cols dq = q;
    dq.codes = UploadTo(arena, q.codes);
    dq.scales = UploadTo(arena, q.scales);
    return dq;
  };
  const Fp8Cols a = up(qa), b = up(qb);
  const Tensor out = d.Experts(d.grad(), m, n);
  TimeCalls(state, 2.0 * kRows * static_cast<double>(m) * static_cast<double>(n),
            [&](int) { cuda::TiledFp8GroupedMatmulTN(out, a, b, /*accumulate=*/true, nullptr, launch); });
}

void OwnTiledArgs(benchmark::internal::Benchmark* b) {
  for (auto [k, n] : {std::pair<int64_t, int64_t>{kHidden, kInter}, {kInter, kHidden}})
    for (int64_t bn : {128, 176, 256})
      for (int64_t cluster : {1, 2})
        for (int64_t tma : {0, 1})
          if (!(tma && bn == 176)) b->Args({bn, k, n, cluster, tma});  // TMA stores take BN 128 or 256
  b->ArgNames({"BN", "K", "N", "cluster", "tma"})
      ->UseManualTime()
      ->MinTime(0.1)
      ->Unit(benchmark::kMicrosecond);
}

// The FP8 forms: K (or M), N, cluster, and (NT only: `tma` true) 0/1 for the TMA-store epilogue.
template <bool tma>
void OwnFp8Args(benchmark::internal::Benchmark* b) {
  for (auto [k, n] : {std::pair<int64_t, int64_t>{kHidden, kInter}, {kInter, kHidden}})
    for (int64_t cluster : {1, 2})
      for (int64_t store : {0, 1})
        if (tma || store == 0) b->Args({k, n, cluster, store});
  b->UseManualTime()->MinTime(0.1)->Unit(benchmark::kMicrosecond);
}

void UniformArgs(benchmark::internal::Benchmark* b) {
  for (int64_t c : {1024, 1040, 1152})
    for (auto [k, n] : {std::pair<int64_t, int64_t>{kHidden, kInter}, {kInter, kHidden}})
      for (int64_t batched : {0, 1}) b->Args({batched, c, k, n});
  b->ArgNames({"batched", "C", "K", "N"})->UseManualTime()->MinTime(0.1)->Unit(benchmark::kMicrosecond);
}

void TiledArgs(benchmark::internal::Benchmark* b) {
  for (auto [k, n] : {std::pair<int64_t, int64_t>{kHidden, kInter}, {kInter, kHidden}})
    for (int64_t batched : {0, 1}) b->Args({batched, 0, k, n});
  b->ArgNames({"batched", "C", "K", "N"})->UseManualTime()->MinTime(0.1)->Unit(benchmark::kMicrosecond);
}

void GroupedArgs(benchmark::internal::Benchmark* b) {
  for (int64_t path : {0, 1, 2, 3})
    for (auto [k, n] : {std::pair<int64_t, int64_t>{kHidden, kInter}, {kInter, kHidden}})
      b->Args({path, k, n});
  b->ArgNames({"path", "K", "N"})->UseManualTime()->MinTime(0.1)->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_GemmDenseNT)->UseManualTime()->MinTime(0.1)->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_Grouped, Form::kNT)->Apply(GroupedArgs);
BENCHMARK_TEMPLATE(BM_Grouped, Form::kNN)->Apply(GroupedArgs);
BENCHMARK_TEMPLATE(BM_Grouped, Form::kTN)->Apply(GroupedArgs);
BENCHMARK_TEMPLATE(BM_Grouped, Form::kTNOverwrite)->Apply(GroupedArgs);
BENCHMARK_TEMPLATE(BM_Batched, Form::kNT, Layout::kUniform)->Apply(UniformArgs);
BENCHMARK_TEMPLATE(BM_Batched, Form::kNN, Layout::kUniform)->Apply(UniformArgs);
BENCHMARK_TEMPLATE(BM_Batched, Form::kTNOverwrite, Layout::kUniform)->Apply(UniformArgs);
BENCHMARK_TEMPLATE(BM_Batched, Form::kNT, Layout::kTiled)->Apply(TiledArgs);
BENCHMARK_TEMPLATE(BM_Batched, Form::kNN, Layout::kTiled)->Apply(TiledArgs);
BENCHMARK_TEMPLATE(BM_Batched, Form::kTNOverwrite, Layout::kTiled)->Apply(TiledArgs);
BENCHMARK(BM_OwnTiledNT)->Apply(OwnTiledArgs);
BENCHMARK(BM_OwnTiledNN)->Apply(OwnMnArgs);
BENCHMARK(BM_OwnTiledTN)->Apply(OwnMnArgs);
BENCHMARK(BM_OwnTiledFp8TN)->Apply(OwnFp8Args<false>)->ArgNames({"M", "N", "cluster", "tma"});
BENCHMARK(BM_OwnTiledFp8NT)->Apply(OwnFp8Args<true>)->ArgNames({"K", "N", "cluster", "tma"});

}  // namespace
}  // namespace fathom
