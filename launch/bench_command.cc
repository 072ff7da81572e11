// fathom bench RECIPE.yaml [--set section.key=value ...] [--warmup N] [--steps N] [--profile OUT.yaml]
// Times the GPU trainer: N warm-up steps (default 2), then N timed steps (default 5), and rank 0 prints one
// table. Launch like `fathom train` (MPI under mpirun/srun, else one local process). Requires
// train.device cuda and a build with the CUDA backend (exit 2 otherwise).
//
// What the numbers are:
//   step time     host wall time around Trainer::Step, which returns only after the device is done (it
//                 copies the losses to the host); per step the maximum over ranks (the job's step ends
//                 with its slowest rank); median and mean over the timed steps.
//   tokens/s      tokens per step (micro_batches x micro_batch_size x seq_len x dp) / median step time;
//                 per GPU: divided by the world size.
//   TFLOP/s/GPU   layers/cost.h's model FLOPs per token (Megatron convention: 6 x matmul parameters touched
//                 + causal attention; the MTP modules left out, as recipes/small.yaml's comment counts)
//                 x tokens/s per GPU. MFU: against 989 TFLOP/s, the dense bf16 peak of an H100/H200 SXM.
//   peak memory   static bytes (parameters, gradients, copies, moments) + the activation pool's peak over
//                 the timed steps, and the device's used bytes (cudaMemGetInfo: total - free) at the end;
//                 the maximum over ranks.
//   phases        framework/phase_timer.h's exclusive per-phase device time, mean per timed step, of ONE
//                 rank: the busiest one (the largest sum of phase times, the lowest rank among equals), so
//                 a row's "other" (step - sum of its phases: untimed work, host gaps, waiting on peers) is
//                 that rank's and never mixes ranks. The header names the rank.
//   achieved      beside each phase, that rank's work per step over the phase's time, from layers/cost.h's
//                 per-token forward FLOPs of the nodes the rank holds x its tokens per step:
//                   attention   3 x the MLA projections (forward, dgrad, wgrad)
//                   attention core  (1 + 2.5) x the causal core's FLOPs (forward, backward)
//                   experts     3 x the routed (top-k) and shared experts' GEMMs
//                   head/loss   3 x the output head GEMM (cross-entropy not counted)
//                   dispatch/combine  bytes: token rows permuted and combined, 4 (1 + k) x hidden x 2 B per
//                               token and MoE layer (forward and backward; the exchange itself not counted)
//                   optimizer   bytes: ZeroOptimizer::StepTraffic (norm pass + fused update pass), with its
//                               floor at this GPU's device-to-device copy rate, measured after the timed
//                               steps on the rank the phases are shown for (framework/cuda/device_timing.h;
//                               about 4.3 TB/s on an H200, 3.0 on an H100)
//   attention     one line per attention shape (cuda::DescribeAttentionPath): which kernels run it.
// The timer is enabled during the warm-up too (collected after every step, then reset), so its CUDA event
// pool is created before the timed steps. Every run also prints the activation estimate against the pool's
// peak; --profile writes a calibration profile for cluster files (launch/bench_profile.h).
#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "launch/bench_profile.h"
#include "launch/command_line.h"
#include "launch/commands.h"
#include "launch/job_start.h"
#include "launch/memory_check.h"
#include "layers/cost.h"
#include "parallel/fault.h"

#ifdef FATHOM_WITH_CUDA
#include <cuda_runtime.h>

#include "framework/cuda/check.h"
#include "framework/cuda/device_timing.h"
#include "framework/ops.h"
#include "framework/phase_timer.h"
#include "launch/trainer.h"
#include "layers/moe.h"
#include "layers/phases.h"
#include "parallel/phases.h"
#include "parallel/zero.h"
#endif

namespace fathom {
namespace {

constexpr char kUsage[] =
    "usage: fathom bench RECIPE.yaml [--set section.key=value ...] [--warmup N (default 2)] "
    "[--steps N (default 5)] [--profile OUT.yaml]";
constexpr char kHelp[] =
    "  Times GPU training steps of the recipe (train.device cuda; one rank per GPU under mpirun/srun) and\n"
    "  prints tokens/s, TFLOP/s per GPU, MFU, peak memory and the time per phase.\n"
    "  --set section.key=value   override a recipe key (repeatable)\n"
    "  --warmup N                untimed steps first (default 2)\n"
    "  --steps N                 timed steps (default 5)\n"
    "  --profile OUT.yaml        also measure the planner's calibration profile and write it there\n"
    "  --help                    print this and exit\n";

// Every rank reaches the same verdict on its input; ExitAllRanks prints it once and exits every rank.
[[noreturn]] void Reject(const std::string& message) {
  ExitAllRanks(kExitInvalidInput, "fathom bench: " + message);
}

// The value of `flag` (absent: `fallback`) as a whole number >= `min`.
int64_t CountOption(const CommandLine& cl, const std::string& flag, int64_t fallback, int64_t min) {
  auto it = cl.options.find(flag);
  if (it == cl.options.end()) return fallback;
  int64_t v = 0;
  if (!absl::SimpleAtoi(it->second, &v) || v < min) {
    Reject(absl::StrFormat("%s needs a whole number >= %d, got '%s'; %s", flag, min, it->second, kUsage));
  }
  return v;
}

#ifdef FATHOM_WITH_CUDA

constexpr double kPeakBf16TflopsPerGpu = 989.0;  // dense bf16, H100/H200 SXM
constexpr double kGiB = 1073741824.0;

// The table's phase rows, in this order: the layers' phases (layers/phases.h), then the optimizer's
// (parallel/phases.h). A phase registered elsewhere has no row; its time shows in "other".
struct BenchPhase {
  PhaseId id;
  bool in_bytes;  // its work is counted in bytes (else FLOPs)
};
std::vector<BenchPhase> BenchPhases() {
  return {{phases::kAttention, false},      {phases::kAttentionCore, false}, {phases::kExperts, false},
          {phases::kDispatchCombine, true}, {phases::kHeadLoss, false},      {phases::kOptimizer, true}};
}

// This rank's work per step in each phase (FLOPs, or bytes where BenchPhase::in_bytes): see the header
// comment.
PhaseMillis PhaseWork(const Recipe& recipe, Trainer& trainer, const DeviceMesh& mesh) {
  const ModelConfig& m = recipe.model;
  const double tokens = static_cast<double>(recipe.parallel.micro_batches * recipe.train.micro_batch_size *
                                            recipe.train.seq_len);
  // The decoder layers of this rank's model chunks (two for DualPipe and DualPipeV), and whether one of
  // them is the last model stage (head and MTP).
  StageRuntime& runtime = trainer.runtime();
  const std::vector<int64_t>& stages = runtime.stage_layers();
  std::vector<std::pair<int64_t, int64_t>> ranges;
  bool last_stage = false;
  for (int chunk = 0; chunk < runtime.num_chunks(); ++chunk) {
    const int stage = runtime.chunk_model_stage(chunk);
    int64_t first = 0;
    for (int s = 0; s < stage; ++s) first += stages[static_cast<size_t>(s)];
    ranges.push_back({first, first + stages[static_cast<size_t>(stage)]});
    last_stage = last_stage || stage + 1 == static_cast<int>(stages.size());
  }
  PhaseMillis work{};
  auto add = [&](PhaseId p, double amount) { work[static_cast<size_t>(p)] += amount; };
  for (const NodeCost& n : BuildCostGraph(m, recipe.train.seq_len)) {
    bool in_chunk = false;
    for (const auto& [first, end] : ranges) in_chunk = in_chunk || (n.layer >= first && n.layer < end);
    const bool here =
        n.is_block() ? in_chunk : (n.kind == NodeKind::kHead || n.kind == NodeKind::kMtp) && last_stage;
    if (!here) continue;
    add(phases::kAttention, tokens * 3.0 * n.attn_gemm_flops);
    add(phases::kAttentionCore, tokens * (1.0 + kAttentionBackwardFactor) * n.attn_flops);
    add(phases::kExperts, tokens * 3.0 * n.expert_gemm_flops);
    add(phases::kHeadLoss, tokens * 3.0 * n.head_gemm_flops);
    add(phases::kDispatchCombine, tokens * 4.0 * static_cast<double>(1 + n.routed_copies) *
                                      static_cast<double>(m.hidden_size) * 2.0 *
                                      (n.routed_copies > 0 ? 1.0 : 0.0));
  }
  for (int chunk = 0; chunk < runtime.num_chunks(); ++chunk) {
    add(phases::kOptimizer, ZeroOptimizer::StepTraffic(runtime.model(chunk).params(), recipe.optim,
                                                       mesh.layout().dp(), mesh.layout().edp())
                                .bytes);
  }
  return work;
}

// "512.3 TFLOP/s" or "3.71 TB/s" for `amount` of work in `ms`; empty without work or time.
std::string Rate(const BenchPhase& p, double amount, double ms) {
  if (amount <= 0 || ms <= 0) return "";
  const double per_s = amount / (ms * 1e-3);
  return p.in_bytes ? absl::StrFormat("%.2f TB/s", per_s * 1e-12)
                    : absl::StrFormat("%.1f TFLOP/s", per_s * 1e-12);
}

// Model FLOPs per token without the MTP modules (layers/cost.h, Megatron convention).
double ModelFlopsPerToken(const Recipe& recipe) {
  double flops = 0;
  for (const NodeCost& n : BuildCostGraph(recipe.model, recipe.train.seq_len)) {
    if (n.kind != NodeKind::kMtp) flops += n.model_flops;
  }
  return flops;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

// Element-wise maximum of `values` over `comm`.
std::vector<double> MaxOver(Communicator& comm, const std::vector<double>& values) {
  Tensor t = Tensor::FromVector(values, {static_cast<int64_t>(values.size())}, DType::kF64);
  comm.AllReduce(t, ReduceOp::kMax);
  return std::vector<double>(t.data<double>(), t.data<double>() + t.numel());
}

// Every rank's `row` (same length everywhere), indexed [rank][i]: each rank fills its own row of a zero
// matrix and the sum over ranks assembles them (the communicator has no all-gather of host values).
std::vector<std::vector<double>> GatherRows(Communicator& comm, const std::vector<double>& row) {
  const int64_t n = static_cast<int64_t>(row.size()), world = comm.size();
  Tensor t = Tensor::Zeros({world, n}, DType::kF64);
  std::copy(row.begin(), row.end(), t.data<double>() + comm.rank() * n);
  comm.AllReduce(t, ReduceOp::kSum);
  std::vector<std::vector<double>> out(static_cast<size_t>(world));
  for (int64_t r = 0; r < world; ++r) out[r].assign(t.data<double>() + r * n, t.data<double>() + (r + 1) * n);
  return out;
}

std::string GpuName() {
  int device = 0;
  FATHOM_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  FATHOM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

// Everything the table shows, gathered over the ranks.
struct BenchResult {
  std::string recipe, gpu, mesh;
  std::string precision;  // train.dtype and train.precision
  bool bf16_gemms = false;  // train.dtype bf16 with train.precision bf16: what FP8 would replace
  int world = 1, dp = 1;
  int64_t warmup = 0, steps = 0;
  int64_t micro_batches = 0, micro_batch_size = 0, seq_len = 0;
  std::vector<double> step_ms;  // per timed step, max over ranks
  double flops_per_token = 0;
  double static_gib = 0, pool_peak_gib = 0, pool_capacity_gib = 0;  // of the rank with the highest peak
  double device_used_gib = 0, device_total_gib = 0;                 // max over ranks
  int phase_rank = 0;
  PhaseMillis phase_ms{};               // per step, of phase_rank
  PhaseMillis phase_work{};             // per step, of phase_rank: FLOPs, or bytes (BenchPhase::in_bytes)
  std::vector<double> pool_peak_bytes;  // per rank
  double host_waits_per_step = 0;       // ops::HostWaits per timed step, max over ranks
  cuda::CopyBandwidth copy;             // of phase_rank: the optimizer's floor
};

std::string FormatBench(const BenchResult& b) {
  const double tokens = static_cast<double>(b.micro_batches * b.micro_batch_size * b.seq_len * b.dp);
  const double median = Median(b.step_ms), mean = Mean(b.step_ms);
  const double tokens_per_s = tokens / (median / 1e3), per_gpu = tokens_per_s / b.world;
  const double tflops = b.flops_per_token * per_gpu / 1e12;
  std::string o;
  auto row = [&o](const std::string& key, const std::string& value) {
    o += absl::StrFormat("  %-18s %s\n", key, value);
  };
  o += absl::StrFormat("fathom bench %s\n", b.recipe);
  row("gpu", b.gpu);
  row("world", absl::StrFormat("%d GPU(s); %s", b.world, b.mesh));
  row("precision", b.precision);
  row("tokens/step", absl::StrFormat("%.0f (%d micro-batch(es) x %d x %d tokens per dp rank, dp %d)", tokens,
                                     b.micro_batches, b.micro_batch_size, b.seq_len, b.dp));
  row("steps", absl::StrFormat("%d timed after %d warm-up", b.steps, b.warmup));
  row("step ms", absl::StrFormat("median %.1f, mean %.1f, min %.1f, max %.1f", median, mean,
                                 *std::min_element(b.step_ms.begin(), b.step_ms.end()),
                                 *std::max_element(b.step_ms.begin(), b.step_ms.end())));
  row("tokens/s", absl::StrFormat("%.0f (job), %.0f per GPU (median step)", tokens_per_s, per_gpu));
  row("TFLOP/s/GPU",
      absl::StrFormat("%.1f (model FLOPs %.3e per token, cost model, no MTP)", tflops, b.flops_per_token));
  row("MFU", absl::StrFormat("%.1f%% of %.0f TFLOP/s (dense bf16 H100/H200)",
                             100 * tflops / kPeakBf16TflopsPerGpu, kPeakBf16TflopsPerGpu));
  row("peak memory GiB",
      absl::StrFormat("%.2f (static %.2f + pool peak %.2f of %.2f)", b.static_gib + b.pool_peak_gib,
                      b.static_gib, b.pool_peak_gib, b.pool_capacity_gib));
  row("device used GiB", absl::StrFormat("%.2f of %.2f (cudaMemGetInfo, max over ranks)", b.device_used_gib,
                                         b.device_total_gib));
  o += absl::StrFormat("phases (ms per step, mean of %d timed steps; rank %d of %d, the busiest)\n", b.steps,
                       b.phase_rank, b.world);
  o += absl::StrFormat("  %-18s %10s %8s  %s\n", "phase", "ms/step", "% step", "achieved");
  double timed = 0;
  for (const BenchPhase& p : BenchPhases()) {
    const double ms = b.phase_ms[static_cast<size_t>(p.id)];
    timed += ms;
    o += absl::StrFormat("  %-18s %10.2f %7.1f%%  %s\n", PhaseName(p.id), ms, 100 * ms / mean,
                         Rate(p, b.phase_work[static_cast<size_t>(p.id)], ms));
  }
  o += absl::StrFormat("  %-18s %10.2f %7.1f%%\n", "other", mean - timed, 100 * (mean - timed) / mean);
  o += absl::StrFormat("  %-18s %10.2f %7.1f%%\n", "step (mean)", mean, 100.0);
  const double opt_bytes = b.phase_work[static_cast<size_t>(phases::kOptimizer)];
  const double opt_ms = b.phase_ms[static_cast<size_t>(phases::kOptimizer)];
  if (opt_bytes > 0) {
    o += absl::StrFormat("  optimizer traffic  %.1f GB per step in %.2f ms", opt_bytes * 1e-9, opt_ms);
    if (b.copy.bytes_per_s > 0) {
      const double floor_ms = opt_bytes / b.copy.bytes_per_s * 1e3;
      o += absl::StrFormat("; floor %.2f ms at %.2f TB/s, this GPU's device copy (%.2fx)\n", floor_ms,
                           b.copy.bytes_per_s * 1e-12, floor_ms > 0 ? opt_ms / floor_ms : 0.0);
    } else {
      o += "; floor not measured (under 64 MiB of device memory free for the copy)\n";
    }
  }
  if (b.bf16_gemms) {
    // Amdahl's bound on train.precision fp8 for this shape: FP8 runs the Linears of attention and the
    // experts (their phases, elementwise work included, bound it from above); the attention core, the head,
    // dispatch/combine, the optimizer and the rest stay as they are, and FP8 weights add their quantisation.
    const double eligible = b.phase_ms[static_cast<size_t>(phases::kAttention)] +
                            b.phase_ms[static_cast<size_t>(phases::kExperts)];
    if (eligible > 0 && eligible < mean) {
      o += absl::StrFormat(
          "  fp8 ceiling        %.2fx if the FP8-eligible phases (attention, experts: %.1f ms) ran 2x faster "
          "with free quantisation, %.2fx at 1.5x; the other %.1f ms stay\n",
          mean / (mean - eligible / 2), eligible, mean / (mean - eligible / 3), mean - eligible);
    }
  }
  const ExpertLayoutTally& t = MoE::layout_tally();
  if (t.passes > 0) {
    const double rows = static_cast<double>(std::max<int64_t>(1, t.rows));
    o += absl::StrFormat(
        "  expert layout      padded in %d MoE forward passes (this rank, timed steps): %+.1f%% rows of "
        "padding to %d-row tiles (layers/moe.h)\n",
        t.passes, 100.0 * (static_cast<double>(t.layout_rows) / rows - 1.0), MoE::kTileRows);
    if (t.tiled_wgrad_passes > 0)
      o += absl::StrFormat("  expert wgrad       on fathom's TN kernel in %d of those passes (train.expert_gemm)\n",
                           t.tiled_wgrad_passes);
  }
  o += absl::StrFormat(
      "  host waits         %.1f per step (the host waiting for the GPU at the ops' sync points, the busiest "
      "rank; framework/ops.h HostWaits)\n",
      b.host_waits_per_step);
  return o;
}

// Warm-up and timed steps of `trainer`; collective over the mesh's world. Returns what the table shows
// (complete on every rank).
BenchResult RunSteps(const Recipe& recipe, Trainer& trainer, DeviceMesh& mesh, int64_t warmup,
                     int64_t steps) {
  auto step_or_exit = [&](int64_t step) {
    absl::StatusOr<StepStats> st = trainer.Step(step);
    if (!st.ok()) ExitAllRanks(kExitFailure, "fathom bench: " + std::string(st.status().message()));
  };
  // Warm-up with the timer on, so the event pool reaches its size before the timed steps.
  PhaseTimer::Enable(true);
  for (int64_t s = 0; s < warmup; ++s) {
    step_or_exit(s);
    PhaseTimer::Collect();
  }
  PhaseTimer::Reset();
  MoE::layout_tally() = {};
  trainer.ResetDeviceMemoryPeak();

  std::vector<double> local_ms;
  const int64_t waits_before = ops::HostWaits();
  for (int64_t s = 0; s < steps; ++s) {
    const auto start = std::chrono::steady_clock::now();
    step_or_exit(warmup + s);
    local_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    PhaseTimer::Collect();  // folds this step's events into the totals; keeps the pool at one step's size
  }
  const PhaseMillis phases = PhaseTimer::Collect();
  PhaseTimer::Enable(false);
  PhaseTimer::Reset();

  Communicator& world = mesh.world();
  BenchResult b;
  b.recipe = recipe.path;
  b.gpu = GpuName();
  b.mesh = mesh.layout().Describe();
  b.bf16_gemms = recipe.train.dtype == "bf16" && recipe.train.precision == "bf16";
  b.precision = absl::StrCat(recipe.train.dtype, " compute, ",
                             recipe.train.precision == "fp8"
                                 ? "FP8 (e4m3, block-scaled) Linear GEMMs and expert dispatch"
                                 : "GEMMs in the compute dtype");
  b.world = mesh.layout().world();
  b.dp = mesh.layout().dp();
  b.warmup = warmup;
  b.steps = steps;
  b.micro_batches = recipe.parallel.micro_batches;
  b.micro_batch_size = recipe.train.micro_batch_size;
  b.seq_len = recipe.train.seq_len;
  b.flops_per_token = ModelFlopsPerToken(recipe);
  b.step_ms = MaxOver(world, local_ms);
  b.host_waits_per_step =
      MaxOver(world, {static_cast<double>(ops::HostWaits() - waits_before) / static_cast<double>(steps)})[0];

  // Memory: this rank's numbers, then the rank with the highest peak (static + pool peak).
  const DeviceMemoryStats mem = trainer.device_memory();
  size_t free_bytes = 0, total_bytes = 0;
  FATHOM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const std::vector<std::vector<double>> memory =
      GatherRows(world, {static_cast<double>(mem.static_bytes), static_cast<double>(mem.pool_peak),
                         static_cast<double>(mem.pool_capacity),
                         static_cast<double>(total_bytes - free_bytes), static_cast<double>(total_bytes)});
  size_t peak_rank = 0;
  for (size_t r = 0; r < memory.size(); ++r) {
    b.device_used_gib = std::max(b.device_used_gib, memory[r][3] / kGiB);
    b.device_total_gib = std::max(b.device_total_gib, memory[r][4] / kGiB);
    if (memory[r][0] + memory[r][1] > memory[peak_rank][0] + memory[peak_rank][1]) peak_rank = r;
  }
  for (const std::vector<double>& rank : memory) b.pool_peak_bytes.push_back(rank[1]);
  b.static_gib = memory[peak_rank][0] / kGiB;
  b.pool_peak_gib = memory[peak_rank][1] / kGiB;
  b.pool_capacity_gib = memory[peak_rank][2] / kGiB;

  // Phases: every rank's per-step means; the busiest rank's row is shown.
  std::vector<double> mine(phases.begin(), phases.end());
  for (double& ms : mine) ms /= static_cast<double>(steps);
  const std::vector<std::vector<double>> all = GatherRows(world, mine);
  double busiest = -1;
  for (size_t r = 0; r < all.size(); ++r) {
    double sum = 0;
    for (double ms : all[r]) sum += ms;
    if (sum > busiest) {
      busiest = sum;
      b.phase_rank = static_cast<int>(r);
    }
  }
  std::copy(all[b.phase_rank].begin(), all[b.phase_rank].end(), b.phase_ms.begin());
  const PhaseMillis work = PhaseWork(recipe, trainer, mesh);
  const std::vector<std::vector<double>> works =
      GatherRows(world, std::vector<double>(work.begin(), work.end()));
  std::copy(works[b.phase_rank].begin(), works[b.phase_rank].end(), b.phase_work.begin());
  const cuda::CopyBandwidth copy = cuda::MeasureCopyBandwidth();
  const std::vector<std::vector<double>> copies =
      GatherRows(world, {copy.bytes_per_s, static_cast<double>(copy.buffer_bytes)});
  b.copy.bytes_per_s = copies[b.phase_rank][0];
  b.copy.buffer_bytes = static_cast<size_t>(copies[b.phase_rank][1]);
  return b;
}

#endif  // FATHOM_WITH_CUDA

}  // namespace

int RunBench(const std::vector<std::string>& args) {
  absl::StatusOr<CommandLine> parsed = ParseCommandLine(args, {"--warmup", "--steps", "--profile"});
  if (parsed.ok() && parsed->help) {
    if (ProcessRank() == 0) std::cout << kUsage << "\n" << kHelp;
    return 0;
  }
  Job job = StartJob("fathom bench");
  if (!parsed.ok()) Reject(std::string(parsed.status().message()) + "; " + kUsage);
  // Checked in every build, so a bad flag reads the same with or without the CUDA backend.
  [[maybe_unused]] const int64_t warmup = CountOption(*parsed, "--warmup", 2, 0);
  [[maybe_unused]] const int64_t steps = CountOption(*parsed, "--steps", 5, 1);
  const Recipe recipe = LoadRecipeOnAllRanks("fathom bench", *parsed, *job.world);
  if (recipe.train.device != "cuda") {
    Reject(
        absl::StrFormat("%s: train.device is %s, but the bench times the GPU trainer; set train.device: "
                        "cuda (or --set train.device=cuda)",
                        recipe.path, recipe.train.device));
  }
#ifndef FATHOM_WITH_CUDA
  Reject(
      absl::StrFormat("%s: train.device is cuda, but this build has no CUDA backend (configure with nvcc "
                      "present or -DFATHOM_CUDA=ON)",
                      recipe.path));
#else
  if (job.world->rank() == 0) std::cout << FormatResolvedRecipe(recipe) << std::flush;
  absl::StatusOr<MeshLayout> layout =
      MeshLayout::Create(job.world->size(), recipe.parallel.pp, recipe.parallel.ep);
  if (!layout.ok()) Reject(std::string(layout.status().message()));
  if (absl::Status s = CheckMemory(recipe, *layout, *job.world, job.node.local_rank, job.node.local_size);
      !s.ok()) {
    Reject(std::string(s.message()));
  }
  absl::StatusOr<std::unique_ptr<DeviceMesh>> mesh =
      DeviceMesh::Create(std::move(job.world), recipe.parallel.pp, recipe.parallel.ep);
  if (!mesh.ok()) Reject(std::string(mesh.status().message()));
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(recipe, **mesh);
  if (!trainer.ok()) Reject(std::string(trainer.status().message()));
  if ((*mesh)->coord().rank == 0) std::cout << (*trainer)->memory_plan_table() << std::flush;
  if ((*mesh)->coord().rank == 0) std::cout << (*trainer)->runtime().attention_path() << std::flush;
  const BenchResult result = RunSteps(recipe, **trainer, **mesh, warmup, steps);
  const BenchStepMeasurements measured{
      result.gpu,      result.world,           (*trainer)->runtime().stage_layers(), Median(result.step_ms),
      result.phase_ms, result.pool_peak_bytes, (*trainer)->model().params().numel()};
  if ((*mesh)->coord().rank == 0) {
    std::cout << FormatBench(result) << ActivationEstimateLines(recipe, measured);
    std::cout.flush();
  }
  trainer->reset();
  int code = 0;
  if (const std::string out = parsed->options["--profile"]; !out.empty() && (*mesh)->coord().rank == 0) {
    absl::StatusOr<CalibrationProfile> profile = MeasureProfile(recipe, measured);
    const absl::Status written = profile.ok() ? WriteProfile(*profile, out) : profile.status();
    if (written.ok())
      std::cout << "profile written: " << out << " (a cluster file includes it: profile: PATH)\n";
    if (!written.ok()) std::cerr << "fathom bench --profile: " << written.message() << "\n";
    code = written.ok() ? 0 : kExitInvalidInput;
  }
  mesh->reset();
  FinishJob(job);
  return code;
#endif
}

}  // namespace fathom
