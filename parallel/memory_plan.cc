#include "parallel/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "framework/check.h"
#include "layers/cost.h"
#include "layers/moe.h"
#include "parallel/simulator_memory.h"

namespace fathom {
namespace {

constexpr int64_t kGiB = int64_t{1} << 30;
constexpr int64_t kF32Bytes = 4;

double GiB(int64_t bytes) { return static_cast<double>(bytes) / static_cast<double>(kGiB); }

int64_t CeilBytes(double bytes) { return static_cast<int64_t>(std::ceil(bytes)); }

// What fathom runs: its layers' activations in the compute dtype (layers/cost.h PrecisionPolicy::Fathom).
PrecisionPolicy FathomPolicy(const Recipe& recipe) {
  return PrecisionPolicy::Fathom(recipe.train.dtype == "bf16"  ? 2
                                 : recipe.train.dtype == "f64" ? 8
                                                               : 4,
                                 recipe.optim.moment_dtype == "bf16" ? 2 : 4,
                                 recipe.train.precision == "fp8");
}

double TokensPerMicroBatch(const Recipe& recipe) {
  return static_cast<double>(recipe.train.micro_batch_size) * static_cast<double>(recipe.train.seq_len);
}

// The routed experts take the tiled layout (layers/moe.h) on CUDA without an expert exchange.
bool TiledExpertsApply(const Recipe& recipe) {
  return recipe.train.device == "cuda" && recipe.parallel.ep == 1;
}

// The cost graph's pad rows (NodeCost::act_tiled_padding) are the padded layout's expected ones per MoE layer
// and micro-batch; the device layout (train.expert_gemm own) lays out its worst-case budget.
ActivationBytes ExpertPadding(const Recipe& recipe, const ActivationBytes& expected) {
  if (recipe.train.expert_gemm != "own") return expected;
  const double s = DeviceLayoutPaddingFactor(recipe.model, static_cast<int64_t>(TokensPerMicroBatch(recipe)),
                                             MoE::kTileRows);
  return {expected.held_f * s, expected.held_b * s, expected.peak_f * s, expected.peak_b * s};
}

}  // namespace

int64_t DeviceMemoryReserve(int64_t free_bytes) { return std::max<int64_t>(2 * kGiB, free_bytes / 20); }

MemoryPlan EstimateDeviceMemory(const MemoryPlanInput& in) {
  FATHOM_CHECK(in.param_elements >= 0 && in.optimizer_elements >= 0 && in.compute_copy_bytes >= 0 &&
                   in.fp8_weight_bytes >= 0 && in.moment_bytes > 0 &&
                   in.activation_bytes_per_micro_batch >= 0 && in.micro_batches_in_flight >= 0 &&
                   in.transient_bytes >= 0 && in.gemm_workspace_bytes >= 0 && in.free_bytes >= 0,
               "[memory_plan] negative input: params ", in.param_elements, ", optimizer ",
               in.optimizer_elements, ", copy bytes ", in.compute_copy_bytes, ", moment bytes ",
               in.moment_bytes, ", activations ", in.activation_bytes_per_micro_batch, " x ",
               in.micro_batches_in_flight, " + ", in.transient_bytes, ", workspace ", in.gemm_workspace_bytes,
               ", free ", in.free_bytes);
  MemoryPlan plan;
  const std::string elements = absl::StrCat(in.param_elements, " elements");
  auto add = [&](std::string name, int64_t bytes, std::string what) {
    plan.rows.push_back({std::move(name), bytes, std::move(what)});
  };
  add("parameters", in.param_elements * kF32Bytes, "f32 values (master weights), " + elements);
  add("gradients", in.param_elements * kF32Bytes, "f32 gradient accumulators, " + elements);
  add("compute copy", in.param_elements * in.compute_copy_bytes + in.fp8_weight_bytes,
      absl::StrCat(
          in.compute_copy_bytes == 0
              ? std::string("none: the GEMMs read the f32 values")
              : absl::StrCat(
                    in.compute_copy_bytes == 2 ? "bf16" : absl::StrCat(in.compute_copy_bytes, "-byte"),
                    " copies of the weights for the GEMMs"),
          in.fp8_weight_bytes > 0
              ? absl::StrFormat(", + %.3f GiB of FP8 weights (e4m3 + scales, two layouts)",
                                GiB(in.fp8_weight_bytes))
              : ""));
  add("optimizer moments", in.optimizer_elements * 2 * in.moment_bytes,
      absl::StrCat("AdamW exp_avg + exp_avg_sq in ",
                   in.moment_bytes == 2   ? "bf16"
                   : in.moment_bytes == 4 ? "f32"
                                          : absl::StrCat(in.moment_bytes, "-byte values"),
                   ", ", in.optimizer_elements, " elements (this rank's shards)"));
  add("gemm workspace", in.gemm_workspace_bytes, "cuBLASLt workspace");
  for (const MemoryRow& r : plan.rows) plan.static_bytes += r.bytes;

  plan.activation_bytes =
      CeilBytes(static_cast<double>(in.micro_batches_in_flight) * in.activation_bytes_per_micro_batch +
                in.transient_bytes);
  add("activations (est.)", plan.activation_bytes,
      absl::StrFormat("%d micro-batch(es) in flight x %.3f GiB + %.3f GiB for one pass%s",
                      in.micro_batches_in_flight,
                      in.activation_bytes_per_micro_batch / static_cast<double>(kGiB),
                      in.transient_bytes / static_cast<double>(kGiB),
                      in.activation_note.empty() ? "" : " (" + in.activation_note + ")"));
  plan.reserve_bytes = DeviceMemoryReserve(in.free_bytes);
  add("reserve", plan.reserve_bytes, "max(2 GiB, 5% of free): cuBLAS/NCCL/cuDNN internals");
  plan.free_bytes = in.free_bytes;
  plan.pool_bytes = in.free_bytes - plan.static_bytes - plan.reserve_bytes;
  return plan;
}

absl::StatusOr<MemoryPlan> PlanDeviceMemory(const MemoryPlanInput& input) {
  MemoryPlan plan = EstimateDeviceMemory(input);
  if (plan.fits()) return plan;
  const int64_t need = plan.static_bytes + plan.activation_bytes + plan.reserve_bytes;
  // The rows in decreasing size, so the message leads with what matters.
  std::vector<MemoryRow> rows = plan.rows;
  std::stable_sort(rows.begin(), rows.end(),
                   [](const MemoryRow& a, const MemoryRow& b) { return a.bytes > b.bytes; });
  std::string biggest;
  for (size_t i = 0; i < std::min<size_t>(3, rows.size()); ++i) {
    absl::StrAppend(&biggest, i ? ", " : "", rows[i].name, " ", absl::StrFormat("%.2f", GiB(rows[i].bytes)));
  }
  return absl::ResourceExhaustedError(absl::StrFormat(
      "device memory: this rank needs %.2f GiB (static %.2f + activations %.2f + reserve %.2f) but the "
      "device has %.2f GiB free, %.2f GiB short (largest: %s GiB). To use less: lower "
      "train.micro_batch_size or train.seq_len (activations), set optim.moment_dtype: bf16 (halves the "
      "moments), or spread the model over more GPUs with parallel.pp (layers) or parallel.ep (experts).\n%s",
      GiB(need), GiB(plan.static_bytes), GiB(plan.activation_bytes), GiB(plan.reserve_bytes),
      GiB(plan.free_bytes), GiB(plan.shortfall()), biggest, FormatMemoryPlan(plan)));
}

std::string FormatMemoryPlan(const MemoryPlan& plan) {
  size_t width = std::string("activation pool").size();
  for (const MemoryRow& r : plan.rows) width = std::max(width, r.name.size());
  const int w = static_cast<int>(width);
  std::string out = "device memory plan (GiB):\n";
  auto line = [&](const std::string& name, int64_t bytes, const std::string& what) {
    absl::StrAppend(&out, absl::StrFormat("  %-*s %9.3f  %s\n", w, name, GiB(bytes), what));
  };
  const size_t num_static = 5;  // the first five rows (see EstimateDeviceMemory)
  for (size_t i = 0; i < plan.rows.size(); ++i) {
    line(plan.rows[i].name, plan.rows[i].bytes, plan.rows[i].what);
    if (i + 1 == num_static) line("static total", plan.static_bytes, "the rows above, allocated at start-up");
  }
  line("free at start-up", plan.free_bytes, "cudaMemGetInfo before any allocation");
  line("activation pool", plan.pool_bytes,
       plan.fits() ? "free - static - reserve; holds the activation estimate"
                   : absl::StrFormat("free - static - reserve; %.3f GiB short of the activation estimate",
                                     GiB(plan.shortfall())));
  return out;
}

ActivationBytes SliceActivations(const Recipe& recipe, const ModelSlice& slice) {
  const ModelConfig& m = recipe.model;
  const int64_t end = slice.end_layer < 0 ? m.num_hidden_layers : slice.end_layer;
  FATHOM_CHECK(slice.first_layer >= 0 && slice.first_layer <= end && end <= m.num_hidden_layers,
               "[memory_plan] slice layers [", slice.first_layer, ", ", end, ") of ", m.num_hidden_layers);
  // Per micro-batch, node by node: a node's bytes per token times the tokens, plus its pad rows where the
  // tiled expert layout applies (layers/moe.h; per micro-batch already).
  // The head and the MTP modules (the graph's last nodes) run their W together (Sequence's w_group).
  std::vector<ActivationBytes> nodes;
  size_t head_group = std::string::npos;
  const bool tiled = TiledExpertsApply(recipe);
  const double tokens = TokensPerMicroBatch(recipe);
  for (const NodeCost& n : BuildCostGraph(m, recipe.train.seq_len, FathomPolicy(recipe))) {
    if (!slice.Holds(n)) continue;
    if (head_group == std::string::npos && (n.kind == NodeKind::kHead || n.kind == NodeKind::kMtp))
      head_group = nodes.size();
    const ActivationBytes a = n.activations(Recompute::None(), recipe.parallel.ep > 1);
    const ActivationBytes pad = tiled ? ExpertPadding(recipe, n.act_tiled_padding) : ActivationBytes{};
    nodes.push_back({a.held_f * tokens + pad.held_f, a.held_b * tokens + pad.held_b,
                     a.peak_f * tokens + pad.peak_f, a.peak_b * tokens + pad.peak_b});
  }
  return Sequence(nodes, std::min(head_group, nodes.size()));
}

ActivationBytes ExpertPaddingBytes(const Recipe& recipe) {
  if (!TiledExpertsApply(recipe)) return {};
  // The cost graph's rule (layers/cost.cc: MoE nodes, not FP8): every MoE node carries the same bytes.
  for (const NodeCost& n : BuildCostGraph(recipe.model, recipe.train.seq_len, FathomPolicy(recipe)))
    if (n.moe) return ExpertPadding(recipe, n.act_tiled_padding);
  return {};
}

double MicroBatchActivationBytes(const Recipe& recipe, const ModelSlice& slice) {
  return SliceActivations(recipe, slice).held_f;
}

double ActivationPeakBytes(const Recipe& recipe, const ModelSlice& slice,
                           const std::vector<Instruction>& program) {
  return ActivationPeak(LiveStates(program), {SliceActivations(recipe, slice), ActivationBytes{}});
}

int64_t MicroBatchesInFlight(const std::vector<Instruction>& program) {
  int64_t live = 0, peak = 0;
  for (const Instruction& ins : program) {
    switch (ins.kind) {
      case OpKind::kF:
        ++live;
        break;
      case OpKind::kB:
        break;
      case OpKind::kW:
      case OpKind::kBW:
        --live;
        break;
      case OpKind::kFB:
        ++live;
        peak = std::max(peak, live);
        --live;
        break;
    }
    peak = std::max(peak, live);
  }
  return peak;
}

MemoryPlanInput MemoryPlanInputFor(const Recipe& recipe, const ModelSlice& slice,
                                   const std::vector<Instruction>& program, int64_t param_elements,
                                   int64_t optimizer_elements, int64_t gemm_workspace_bytes,
                                   int64_t free_bytes) {
  MemoryPlanInput in;
  in.param_elements = param_elements;
  in.compute_copy_bytes = recipe.train.dtype == "bf16" ? 2 : 0;
  in.optimizer_elements = optimizer_elements;
  in.moment_bytes = recipe.optim.moment_dtype == "bf16" ? 2 : 4;
  // The schedule-aware peak (ActivationPeakBytes) as the table shows it: the micro-batches in flight at
  // their forward's bytes, and the rest (the B pass's output gradients kept for W, the pass temporaries) as
  // the pass's working set.
  in.activation_bytes_per_micro_batch = MicroBatchActivationBytes(recipe, slice);
  in.micro_batches_in_flight = MicroBatchesInFlight(program);
  in.transient_bytes = std::max(
      0.0, ActivationPeakBytes(recipe, slice, program) -
               static_cast<double>(in.micro_batches_in_flight) * in.activation_bytes_per_micro_batch);
  in.gemm_workspace_bytes = gemm_workspace_bytes;
  in.free_bytes = free_bytes;
  in.activation_note = absl::StrCat(recipe.train.dtype, ", ", recipe.train.micro_batch_size, " x ",
                                    recipe.train.seq_len, " tokens, fathom's layers (layers/activations.h)");
  return in;
}

}  // namespace fathom
