#include "launch/bench_profile.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "layers/cost.h"
#include "layers/phases.h"
#include "parallel/memory_plan.h"
#include "parallel/phases.h"
#include "parallel/planner.h"
#include "parallel/schedule.h"

#ifdef FATHOM_WITH_CUDA
#include <cuda_runtime.h>

#include "framework/cuda/check.h"
#include "framework/cuda/device_timing.h"
#include "framework/cuda/device_pool.h"
#include "framework/fp8_operands.h"
#include "framework/ops.h"
#endif

namespace fathom {
namespace {

constexpr double kGiB = 1073741824.0;

int64_t Pp(const BenchStepMeasurements& step) {
  return std::max<int64_t>(1, static_cast<int64_t>(step.stage_layers.size()));
}

double Tokens(const Recipe& recipe) {
  return static_cast<double>(recipe.train.micro_batch_size) * static_cast<double>(recipe.train.seq_len);
}

std::vector<Instruction> ProgramOf(const Recipe& recipe, int pp, int pp_rank) {
  absl::StatusOr<ScheduleKind> kind = ParseScheduleKind(recipe.parallel.schedule);
  absl::StatusOr<Schedule> s = MakeSchedule(kind.ok() ? *kind : ScheduleKind::k1F1B, pp,
                                            static_cast<int>(recipe.parallel.micro_batches));
  return s.ok() ? s->ranks[static_cast<size_t>(pp_rank)] : std::vector<Instruction>{};
}

ModelSlice SliceOf(const Recipe& recipe, const std::vector<int64_t>& stage_layers, int pp_rank) {
  ModelSlice slice;
  int64_t first = 0;
  for (int r = 0; r < pp_rank; ++r) first += stage_layers[static_cast<size_t>(r)];
  slice.first_layer = first;
  slice.end_layer = stage_layers.empty() ? recipe.model.num_hidden_layers
                                         : first + stage_layers[static_cast<size_t>(pp_rank)];
  slice.embedding = pp_rank == 0;
  slice.head = pp_rank + 1 == static_cast<int>(std::max<size_t>(1, stage_layers.size()));
  return slice;
}

// The world rank with the largest pool peak.
size_t PeakRank(const BenchStepMeasurements& step) {
  size_t best = 0;
  for (size_t r = 0; r < step.pool_peak_bytes.size(); ++r) {
    if (step.pool_peak_bytes[r] > step.pool_peak_bytes[best]) best = r;
  }
  return best;
}

#ifdef FATHOM_WITH_CUDA

// Milliseconds per call of `work`, queued on the legacy default stream (the op context's): two calls to warm
// up (plans, workspaces), then `reps` timed.
double TimeMs(int reps, const std::function<void()>& work) { return cuda::TimeMs(nullptr, 2, reps, work); }

Tensor Filled(cuda::DevicePool& pool, const Shape& shape, DType dtype) {
  Tensor t = pool.Empty(shape, dtype);
  ops::Fill(t, 0.01);  // small finite values: GEMM speed does not depend on them
  return t;
}

// Seconds of the three GEMMs a Linear (out N, in K) runs per pass over M rows: forward (NT), input gradient
// (NN) and weight gradient (TN, f32 accumulated), as the layers run them.
double LinearSeconds(cuda::DevicePool& pool, int64_t m, int64_t n, int64_t k) {
  Tensor x = Filled(pool, {m, k}, DType::kBF16), w = Filled(pool, {n, k}, DType::kBF16);
  Tensor y = Filled(pool, {m, n}, DType::kBF16), dx = pool.Empty({m, k}, DType::kBF16);
  Tensor dw = pool.Zeros({n, k}, DType::kF32);
  double ms = TimeMs(5, [&] { ops::MatmulNT(y, x, w); });
  ms += TimeMs(5, [&] { ops::MatmulNN(dx, y, w); });
  ms += TimeMs(5, [&] { ops::MatmulTN(dw, y, x, /*accumulate=*/true); });
  return ms / 1e3;
}

// The same for one grouped expert projection (out N, in K) of `experts` experts with `rows` rows each.
double GroupedSeconds(cuda::DevicePool& pool, int64_t experts, int64_t rows, int64_t n, int64_t k) {
  const int64_t r = experts * rows;
  Tensor counts = Tensor::Empty({experts}, DType::kI64);  // host, as the MoE layer hands them over
  std::fill(counts.data<int64_t>(), counts.data<int64_t>() + experts, rows);
  Tensor x = Filled(pool, {r, k}, DType::kBF16), w = Filled(pool, {experts, n, k}, DType::kBF16);
  Tensor y = Filled(pool, {r, n}, DType::kBF16), dx = pool.Empty({r, k}, DType::kBF16);
  Tensor dw = pool.Zeros({experts, n, k}, DType::kF32);
  double ms = TimeMs(5, [&] { ops::GroupedMatmulNT(y, x, w, counts); });
  ms += TimeMs(5, [&] { ops::GroupedMatmulNN(dx, y, w, counts); });
  ms += TimeMs(5, [&] { ops::GroupedMatmulTN(dw, y, x, counts); });
  return ms / 1e3;
}

// The FP8 twins (train.precision fp8) of LinearSeconds (counts undefined, w (N, K)) and GroupedSeconds
// (counts: the experts' host row counts, w (E, N, K)) over m rows: each GEMM with the activation
// quantisation it runs with in a step (QuantizeRows before the forward and the input gradient, QuantizeCols
// of both weight-gradient operands); the weight's two FP8 copies are made once outside the timing, as the
// optimizer makes them once per step.
double Fp8Seconds(cuda::DevicePool& pool, const Tensor& counts, int64_t m, const Shape& wshape) {
  const int64_t n = wshape[wshape.size() - 2], k = wshape.back();
  Tensor x = Filled(pool, {m, k}, DType::kBF16), dy = Filled(pool, {m, n}, DType::kBF16);
  Tensor y = pool.Empty({m, n}, DType::kBF16), dx = pool.Empty({m, k}, DType::kBF16);
  Tensor dw = pool.Zeros(wshape, DType::kF32);
  const Fp8Weight wq = Fp8Weight::Empty(wshape, Device::kCUDA);
  ops::QuantizeWeight128x128(wq, Filled(pool, wshape, DType::kBF16));
  double ms = TimeMs(5, [&] { ops::Fp8GroupedMatmulNT(y, ops::QuantizeRows(x), wq.w, counts); });
  ms += TimeMs(5, [&] { ops::Fp8GroupedMatmulNT(dx, ops::QuantizeRows(dy), wq.wt, counts); });
  ms += TimeMs(5, [&] {
    ops::Fp8GroupedMatmulTN(dw, ops::QuantizeCols(dy, counts), ops::QuantizeCols(x, counts));
  });
  return ms / 1e3;
}

#endif  // FATHOM_WITH_CUDA

}  // namespace

double EstimatedActivationBytes(const Recipe& recipe, const std::vector<int64_t>& stage_layers, int pp_rank) {
  const int pp = static_cast<int>(std::max<size_t>(1, stage_layers.size()));
  return ActivationPeakBytes(recipe, SliceOf(recipe, stage_layers, pp_rank), ProgramOf(recipe, pp, pp_rank));
}

void FillProfileFromStep(const Recipe& recipe, const BenchStepMeasurements& step, CalibrationProfile* p) {
  const ModelConfig& m = recipe.model;
  const int64_t pp = Pp(step), dp = std::max<int64_t>(1, step.world / pp), ep = recipe.parallel.ep;
  const PrecisionPolicy policy = FathomPrecisionFor(recipe);
  const std::vector<NodeCost> graph = BuildCostGraph(m, recipe.train.seq_len, policy);
  const double tokens = Tokens(recipe);
  const double rows =
      tokens * static_cast<double>(m.num_experts_per_tok * ep) / static_cast<double>(m.n_routed_experts);
  // The simulator's compute of one micro-batch through every node at these rates (parallel/simulator.cc):
  // under fp8 the FP8 GEMMs at the measured FP8 rates.
  const bool fp8 = policy.fp8_gemm && p->has_fp8();
  const double dense = fp8 ? p->fp8_dense_gemm_tflops : p->dense_gemm_tflops;
  const double experts = fp8 ? p->Fp8ExpertGemmTflops(rows) : p->ExpertGemmTflops(rows);
  double compute_s = 0, a2a_bytes = 0;
  for (const NodeCost& n : graph) {
    const double gemms = (n.gemm_flops - n.routed_gemm_flops) / (dense * 1e12) +
                         n.routed_gemm_flops / (experts * 1e12) +
                         (n.gemm_bf16_flops - n.head_gemm_flops) / (p->dense_gemm_tflops * 1e12) +
                         n.head_gemm_flops / (p->head_gemm_tflops * 1e12);
    compute_s += tokens * (3 * gemms + n.attn_flops / (p->attention_forward_tflops * 1e12) +
                           kAttentionBackwardFactor * n.attn_flops / (p->attention_backward_tflops * 1e12));
    a2a_bytes += tokens * static_cast<double>(n.routed_copies) * (n.dispatch_bytes + n.combine_bytes) * 2;
  }
  // One rank's share: its micro-batches through its stage (balanced stages assumed; calibrate with pp 1).
  compute_s *= static_cast<double>(recipe.parallel.micro_batches) / static_cast<double>(pp);
  const double optimizer_ms = step.phase_ms[static_cast<size_t>(phases::kOptimizer)];
  const double rest_s = (step.step_ms - optimizer_ms) / 1e3;
  p->elementwise_fraction = compute_s > 0 ? std::max(0.0, rest_s / compute_s - 1) : 0;
  const double params = static_cast<double>(step.param_elements);
  p->optimizer_gbps =
      optimizer_ms > 0
          ? OptimizerStepBytes(policy, params / static_cast<double>(dp), params) / (optimizer_ms / 1e3) / 1e9
          : 0;
  const double dispatch_ms = step.phase_ms[static_cast<size_t>(phases::kDispatchCombine)];
  if (ep > 1 && dispatch_ms > 0) {
    // Bytes that leave the rank: all but the own share of every routed copy, each micro-batch, both passes.
    const double leaving = a2a_bytes * static_cast<double>(recipe.parallel.micro_batches) /
                           static_cast<double>(pp) * static_cast<double>(ep - 1) / static_cast<double>(ep);
    p->all_to_all_gbps = leaving / (dispatch_ms / 1e3) / 1e9;
  }
  const size_t peak = PeakRank(step);
  const int pp_rank = static_cast<int>(static_cast<int64_t>(peak) / dp);
  p->activation_measured_bytes = step.pool_peak_bytes.empty() ? 0 : step.pool_peak_bytes[peak];
  p->activation_estimated_bytes = EstimatedActivationBytes(recipe, step.stage_layers, pp_rank);
  const ModelSlice slice = SliceOf(recipe, step.stage_layers, pp_rank);
  p->activation_layers =
      (slice.end_layer - slice.first_layer) + (slice.head ? m.num_nextn_predict_layers : 0);
  p->micro_batches_in_flight = MicroBatchesInFlight(ProgramOf(recipe, static_cast<int>(pp), pp_rank));
  p->tokens_per_micro_batch = static_cast<int64_t>(tokens);
  p->fragmentation = 0;  // not measured: the planner keeps its default
  p->step_ms = step.step_ms;
}

std::string ActivationEstimateLines(const Recipe& recipe, const BenchStepMeasurements& step) {
  if (step.pool_peak_bytes.empty()) return "";
  const int64_t dp = std::max<int64_t>(1, step.world / Pp(step));
  const size_t peak = PeakRank(step);
  double worst = 0;
  int worst_rank = 0;
  for (size_t r = 0; r < step.pool_peak_bytes.size(); ++r) {
    const double est =
        EstimatedActivationBytes(recipe, step.stage_layers, static_cast<int>(static_cast<int64_t>(r) / dp));
    const double error = step.pool_peak_bytes[r] > 0 ? est / step.pool_peak_bytes[r] - 1 : 0;
    if (std::abs(error) > std::abs(worst)) worst = error, worst_rank = static_cast<int>(r);
  }
  const double est =
      EstimatedActivationBytes(recipe, step.stage_layers, static_cast<int>(static_cast<int64_t>(peak) / dp));
  return absl::StrFormat(
      "  %-18s estimate %.2f GiB vs pool peak %.2f GiB (%+.1f%%, rank %d; worst rank %d: %+.1f%%; "
      "parallel/memory_plan, layers/activations.h)\n",
      "activations", est / kGiB, step.pool_peak_bytes[peak] / kGiB,
      100 * (step.pool_peak_bytes[peak] > 0 ? est / step.pool_peak_bytes[peak] - 1 : 0),
      static_cast<int>(peak), worst_rank, 100 * worst);
}

absl::StatusOr<CalibrationProfile> MeasureProfile(const Recipe& recipe, const BenchStepMeasurements& step) {
#ifndef FATHOM_WITH_CUDA
  (void)recipe;
  (void)step;
  return absl::UnimplementedError(
      "fathom bench --profile measures GPU kernels: this build has no CUDA backend");
#else
  const ModelConfig& m = recipe.model;
  CalibrationProfile p;
  p.source = "measured";
  p.gpu = step.gpu;
  p.recipe = recipe.path;
  p.seq_len = recipe.train.seq_len;
  p.micro_batch_size = recipe.train.micro_batch_size;
  p.micro_batches = recipe.parallel.micro_batches;
  p.pp = Pp(step);
  p.ep = recipe.parallel.ep;
  p.note = absl::StrFormat("fathom bench %s on %d GPU(s)", recipe.path, step.world);

  size_t free_bytes = 0, total_bytes = 0;
  FATHOM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const size_t capacity = free_bytes / 10 * 8;
  if (capacity < (size_t{1} << 30)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "fathom bench --profile: %.2f GiB of device memory free, at least 1.25 GiB needed for the kernel "
        "microbenchmarks",
        static_cast<double>(free_bytes) / kGiB));
  }
  cuda::DevicePool pool("bench profile", capacity);
  cuda::PoolScope pool_scope(pool);
  ops::OpContext context;
  ops::OpContextScope context_scope(context);

  const int64_t tokens = static_cast<int64_t>(Tokens(recipe)), H = m.hidden_size;
  const int64_t nh = m.num_attention_heads, qk = m.qk_head_dim(), vd = m.v_head_dim;
  const int64_t layers = m.num_hidden_layers + m.num_nextn_predict_layers;
  const int64_t moe_layers = layers - std::min(m.first_k_dense_replace, m.num_hidden_layers);
  const int64_t dense_layers = layers - moe_layers;
  // Dense Linears, weighted by how often a step runs them: (out, in, uses).
  std::vector<std::array<int64_t, 3> > linears = {{m.kv_lora_rank + m.qk_rope_head_dim, H, layers},
                                                  {nh * (m.qk_nope_head_dim + vd), m.kv_lora_rank, layers},
                                                  {H, nh * vd, layers}};
  if (m.q_lora_rank > 0) {
    linears.push_back({m.q_lora_rank, H, layers});
    linears.push_back({nh * qk, m.q_lora_rank, layers});
  } else {
    linears.push_back({nh * qk, H, layers});
  }
  const int64_t shared_i = m.moe_intermediate_size * m.n_shared_experts;
  if (shared_i > 0) {
    linears.push_back({shared_i, H, 2 * moe_layers});
    linears.push_back({H, shared_i, moe_layers});
  }
  if (dense_layers > 0) {
    linears.push_back({m.intermediate_size, H, 2 * dense_layers});
    linears.push_back({H, m.intermediate_size, dense_layers});
  }
  double flops = 0, seconds = 0;
  for (const auto& [n, k, uses] : linears) {
    flops += static_cast<double>(uses) * 3 * 2.0 * static_cast<double>(tokens * n * k);
    seconds += static_cast<double>(uses) * LinearSeconds(pool, tokens, n, k);
  }
  p.dense_gemm_tflops = flops / seconds / 1e12;
  // The same Linears in FP8 (the head and the router stay bf16 under train.precision fp8), on Hopper and
  // newer (cuBLASLt's 1x128 / 128x128 block scaling and the own kernels need sm_90); elsewhere the profile
  // has no FP8 rates.
  int device = 0, major = 0;
  FATHOM_CUDA_CHECK(cudaGetDevice(&device));
  FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  const bool fp8 = major >= 9;
  if (fp8) {
    double fp8_seconds = 0;
    for (const auto& [n, k, uses] : linears)
      fp8_seconds += static_cast<double>(uses) * Fp8Seconds(pool, Tensor(), tokens, {n, k});
    p.fp8_dense_gemm_tflops = flops / fp8_seconds / 1e12;
  }
  p.head_gemm_tflops = 3 * 2.0 * static_cast<double>(tokens * H * m.vocab_size) /
                       LinearSeconds(pool, tokens, m.vocab_size, H) / 1e12;

  // Routed experts at several rows per expert and at this recipe's; enough experts to fill the GPU.
  const int64_t local = std::max<int64_t>(1, m.n_routed_experts / std::max<int64_t>(1, recipe.parallel.ep));
  const int64_t own_rows =
      std::max<int64_t>(1, tokens * m.num_experts_per_tok * recipe.parallel.ep / m.n_routed_experts);
  std::vector<int64_t> rows = {256, 512, 1024, 2048, 4096, own_rows};
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  const int64_t I = m.moe_intermediate_size;
  for (int64_t r : rows) {
    const int64_t experts = std::min(local, std::max<int64_t>(4, 32768 / r));
    const double s = 2 * GroupedSeconds(pool, experts, r, I, H) + GroupedSeconds(pool, experts, r, H, I);
    p.expert_rows.push_back(static_cast<double>(r));
    p.expert_tflops.push_back(3 * 3 * 2.0 * static_cast<double>(experts * r * I * H) / s / 1e12);
    if (!fp8) continue;
    // FP8 in the padded layout the MoE gives it (each expert's rows rounded up to 128), the same products.
    const int64_t padded = (r + 127) / 128 * 128;
    Tensor counts = Tensor::Empty({experts}, DType::kI64);  // host
    std::fill(counts.data<int64_t>(), counts.data<int64_t>() + experts, padded);
    const double s8 = 2 * Fp8Seconds(pool, counts, experts * padded, {experts, I, H}) +
                      Fp8Seconds(pool, counts, experts * padded, {experts, H, I});
    p.fp8_expert_tflops.push_back(3 * 3 * 2.0 * static_cast<double>(experts * r * I * H) / s8 / 1e12);
  }

  // The attention core at the recipe's shape.
  const int64_t b = recipe.train.micro_batch_size, t = recipe.train.seq_len;
  Tensor q = Filled(pool, {b, t, nh, qk}, DType::kBF16), k = Filled(pool, {b, t, nh, qk}, DType::kBF16);
  Tensor v = Filled(pool, {b, t, nh, vd}, DType::kBF16), out = pool.Empty({b, t, nh, vd}, DType::kBF16);
  Tensor lse = pool.Empty({b, nh, t}, DType::kF32);
  Tensor dq = pool.Empty(q.shape(), DType::kBF16), dk = pool.Empty(k.shape(), DType::kBF16);
  Tensor dv = pool.Empty(v.shape(), DType::kBF16), dout = Filled(pool, out.shape(), DType::kBF16);
  const double scale = m.softmax_scale();
  const double attn_flops = static_cast<double>(b * t) * static_cast<double>(t * nh * (qk + vd));
  const double fwd_ms = TimeMs(5, [&] { ops::CausalAttentionForward(out, lse, q, k, v, scale); });
  const double bwd_ms =
      TimeMs(5, [&] { ops::CausalAttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, scale); });
  p.attention_forward_tflops = attn_flops / (fwd_ms / 1e3) / 1e12;
  p.attention_backward_tflops = kAttentionBackwardFactor * attn_flops / (bwd_ms / 1e3) / 1e12;

  FillProfileFromStep(recipe, step, &p);
  if (absl::Status s = p.Validate(); !s.ok()) return s;
  return p;
#endif
}

}  // namespace fathom
