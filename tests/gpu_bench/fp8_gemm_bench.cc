// FP8 block-scaled GEMMs (train.precision fp8, framework/ops.h Fp8*) against the bf16 GEMMs they replace,
// at recipes/small.yaml's shapes (8192 tokens per micro-batch, hidden 2048):
//   dense Linears (one group): MLA q_a 2048->768, q_b 768->3072, kv_a 2048->576, kv_b 512->4096, o
//   2048->2048, the dense MLP's up 2048->5632 and down 5632->2048; routed experts: 32 experts, R = 32768 rows
//   (top-4) in skewed expert blocks (some empty), 2048->1408 and 1408->2048.
// For each: fwd (NT), dgrad (NT with the transposed weight copy; bf16: NN) and wgrad (TN, f32 accumulate).
// Arguments: case index, precision (0 bf16, 1 fp8 GEMM alone on pre-quantised operands, 2 fp8 including the
// activation quantisation the layer runs before it: QuantizeRows for fwd/dgrad, QuantizeCols of both
// operands for wgrad; 1 and 2 run the default context, cuBLASLt's per-expert matmuls; 3 (routed experts
// only) as 1 with the forward and dgrad on fathom's own tiled kernel, train.fp8_expert_gemm own; 4 (routed
// experts only) as 3 with the weight gradient on the own kernel too, own_all). Weights are
// quantised once per step (ParamTable), so never inside the timing.
// Time: wall time per call over 8 calls per iteration and one synchronisation; TFLOP/s = 2 R K N per call.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "framework/cuda/check.h"
#include "framework/cuda/device_pool.h"
#include "framework/fp8_operands.h"
#include "framework/kernels/cuda/fp8_gemm.h"
#include "framework/ops.h"

namespace fathom {
namespace {

constexpr int kCallsPerIteration = 8;
constexpr int64_t kTokens = 8192, kExperts = 32, kTopK = 4;

struct GemmCase {
  const char* name;
  int64_t k, n;  // y (R, n) = x (R, k) . w (n, k)^T
  bool experts;
};

const GemmCase kCases[] = {
    {"mla q_a", 2048, 768, false},   {"mla q_b", 768, 3072, false},    {"mla kv_a", 2048, 576, false},
    {"mla kv_b", 512, 4096, false},  {"mla o", 2048, 2048, false},     {"mlp up", 2048, 5632, false},
    {"mlp down", 5632, 2048, false}, {"experts up", 2048, 1408, true}, {"experts down", 1408, 2048, true},
};
constexpr int kNumCases = sizeof(kCases) / sizeof(kCases[0]);

// Skewed expert counts summing to R (about 1 in 12 experts empty), fixed seed.
Tensor ExpertCounts(int64_t rows) {
  std::mt19937_64 rng(20251203);
  std::normal_distribution<double> z;
  std::uniform_real_distribution<double> u;
  std::vector<double> w(kExperts);
  for (double& v : w) v = u(rng) < 1.0 / 12 ? 0.0 : std::exp(0.6 * z(rng));
  std::discrete_distribution<int> pick(w.begin(), w.end());
  std::vector<double> counts(kExperts, 0.0);
  for (int64_t r = 0; r < rows; ++r) counts[static_cast<size_t>(pick(rng))] += 1;
  return Tensor::FromVector(counts, {kExperts}, DType::kI64);
}

struct Env {
  cuda::DevicePool pool{"fp8_gemm_bench", size_t{24} << 30};
  ops::OpContext context;
  cuda::PoolScope pool_scope{pool};
  ops::OpContextScope context_scope{context};
};

Env& TheEnv() {
  static auto* env = new Env();
  return *env;
}

Tensor RandomDevice(const Shape& shape, DType dtype, uint64_t seed) {
  Tensor host = Tensor::Empty(shape, DType::kF32);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int64_t i = 0; i < host.numel(); ++i) host.data<float>()[i] = u(rng);
  return ops::To(host.To(dtype), Device::kCUDA);
}

// pass: 0 fwd, 1 dgrad, 2 wgrad.
void BM_Gemm(benchmark::State& state, int pass) {
  const GemmCase& c = kCases[state.range(0)];
  const int precision = static_cast<int>(state.range(1));
  TheEnv();
  const int64_t rows = c.experts ? kTokens * kTopK : kTokens, groups = c.experts ? kExperts : 1;
  const Tensor counts = c.experts ? ExpertCounts(rows) : Tensor();
  const Shape wshape = c.experts ? Shape{groups, c.n, c.k} : Shape{c.n, c.k};
  const int64_t in = pass == 1 ? c.n : c.k, out_cols = pass == 1 ? c.k : c.n;
  // Activations: x (R, in) and, for the wgrad, dy (R, n) and x (R, k).
  const Tensor x = RandomDevice({rows, pass == 2 ? c.k : in}, DType::kBF16, 1);
  const Tensor dy = RandomDevice({rows, c.n}, DType::kBF16, 2);
  const Tensor w = RandomDevice(wshape, DType::kBF16, 3);
  Tensor out = Tensor::Empty({rows, out_cols}, DType::kBF16, Device::kCUDA);
  Tensor grad = Tensor::Zeros(wshape, DType::kF32, Device::kCUDA);
  Fp8Weight wq = Fp8Weight::Empty(wshape, Device::kCUDA);
  Fp8Rows xq;
  Fp8Cols dyc, xc;
  if (precision > 0) {
    ops::QuantizeWeight128x128(wq, w);
    if (pass < 2) xq = ops::QuantizeRows(x);
    if (pass == 2) {
      dyc = ops::QuantizeCols(dy, c.experts ? counts : Tensor());
      xc = ops::QuantizeCols(x, c.experts ? counts : Tensor());
    }
  }
  const Tensor wcounts = c.experts ? counts : Tensor();
  TheEnv().context.fp8_gemm().set_tiled_kernel(precision >= 3);
  TheEnv().context.fp8_gemm().set_tiled_wgrad(precision == 4);
  auto call = [&] {
    if (precision == 0) {
      if (pass == 0) {
        c.experts ? ops::GroupedMatmulNT(out, x, w, counts) : ops::MatmulNT(out, x, w);
      } else if (pass == 1) {
        c.experts ? ops::GroupedMatmulNN(out, x, w, counts) : ops::MatmulNN(out, x, w);
      } else {
        c.experts ? ops::GroupedMatmulTN(grad, dy, x, counts) : ops::MatmulTN(grad, dy, x, true);
      }
      return;
    }
    if (pass < 2) {
      const Fp8Rows& q = precision == 2 ? ops::QuantizeRows(x) : xq;  // 1 and 3: pre-quantised
      ops::Fp8GroupedMatmulNT(out, q, pass == 0 ? wq.w : wq.wt, wcounts);
    } else if (precision == 2) {
      ops::Fp8GroupedMatmulTN(grad, ops::QuantizeCols(dy, wcounts), ops::QuantizeCols(x, wcounts));
    } else {
      ops::Fp8GroupedMatmulTN(grad, dyc, xc);
    }
  };
  call();
  FATHOM_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kCallsPerIteration; ++i) call();
    FATHOM_CUDA_CHECK(cudaDeviceSynchronize());
    const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
    state.SetIterationTime(dt.count() / kCallsPerIteration);
  }
  const double flops = 2.0 * static_cast<double>(rows) * static_cast<double>(c.k) * static_cast<double>(c.n);
  state.counters["TFLOP/s"] =
      benchmark::Counter(flops * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
  static const char* kPrecision[] = {"bf16", "fp8 gemm", "fp8 +quantise",
                                     "fp8 gemm, own kernel fwd/dgrad where counts are 128-multiples",
                                     "fp8 gemm, own kernel wgrad, and fwd/dgrad where counts are 128-multiples"};
  state.SetLabel(std::string(c.name) + ", " + kPrecision[precision]);
}

void Args(benchmark::internal::Benchmark* b) {
  for (int64_t c = 0; c < kNumCases; ++c)
    for (int64_t p = 0; p < 5; ++p)
      if (p < 3 || kCases[c].experts) b->Args({c, p});
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}

BENCHMARK_CAPTURE(BM_Gemm, fwd, 0)->Apply(Args);
BENCHMARK_CAPTURE(BM_Gemm, dgrad, 1)->Apply(Args);
BENCHMARK_CAPTURE(BM_Gemm, wgrad, 2)->Apply(Args);

}  // namespace
}  // namespace fathom
