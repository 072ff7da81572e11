// fathom simulate RECIPE.yaml --cluster CLUSTER.yaml [--set section.key=value ...] [--trace out.json]
//                             [--recompute none|norm|norm+mla_up] [--policy report|fathom]
// Simulates one step of the recipe's parallel section on the cluster and prints a summary; --trace writes
// the timeline as a Chrome trace (open it in Perfetto). --policy fathom simulates what fathom runs today
// (compare with `fathom bench`; nothing is recomputed); the default is the report's policy. The summary
// says whether the efficiencies are calibrated (the cluster's `profile:`) and, with a profile that recorded
// its step, puts the measured step beside the simulated one when the recipe's shape is the profile's.
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "framework/file_io.h"
#include "launch/command_line.h"
#include "launch/commands.h"
#include "parallel/chrome_trace.h"
#include "parallel/planner.h"
#include "parallel/simulator.h"

namespace fathom {
namespace {

double GiB(double bytes) { return bytes / 1073741824.0; }

constexpr char kUsage[] =
    "usage: fathom simulate RECIPE.yaml --cluster CLUSTER.yaml [--set section.key=value ...]\n"
    "                       [--trace out.json] [--recompute none|norm|norm+mla_up] [--policy report|fathom]\n";
constexpr char kHelp[] =
    "  Simulates one step of the recipe's parallel: section on the cluster and prints a summary.\n"
    "  --cluster FILE            the cluster description (recipes/clusters/*.yaml)\n"
    "  --set section.key=value   override a recipe key (repeatable)\n"
    "  --trace FILE              write the timeline as a Chrome trace (Perfetto); replaces only a regular "
    "file\n"
    "  --recompute WHAT          none, norm or norm+mla_up (default)\n"
    "  --policy report|fathom    the report's FP8 system (default) or what fathom runs today\n"
    "  --help                    print this and exit\n"
    "  Exit codes: 0 simulated and fits, 2 bad input or a layout that does not fit the cluster's memory "
    "(the\n"
    "  summary is printed either way).\n";

int Usage(const std::string& why) {
  std::cerr << "fathom simulate: " << why << "\n" << kUsage;
  return 2;
}

}  // namespace

int RunSimulate(const std::vector<std::string>& args) {
  absl::StatusOr<CommandLine> cl =
      ParseCommandLine(args, {"--cluster", "--trace", "--recompute", "--policy"});
  if (cl.ok() && cl->help) {
    std::cout << kUsage << kHelp;
    return 0;
  }
  if (!cl.ok()) return Usage(std::string(cl.status().message()));
  const std::string& recipe_path = cl->recipe;
  const std::vector<std::string>& overrides = cl->overrides;
  const std::string cluster_path = cl->options["--cluster"], trace_path = cl->options["--trace"];
  const std::string recompute = cl->options.count("--recompute") ? cl->options["--recompute"] : "norm+mla_up";
  if (cluster_path.empty()) return Usage("no cluster given (--cluster recipes/clusters/NAME.yaml)");
  // Refused before the work, not after: only a regular file (or nothing) is ever replaced.
  if (!trace_path.empty()) {
    absl::Status s = CheckNotAnInput(trace_path, {recipe_path, cluster_path}, "--trace");
    if (s.ok()) s = CheckReplaceable(trace_path);
    if (!s.ok()) {
      std::cerr << "fathom simulate: " << (absl::StartsWith(s.message(), "--trace") ? "" : "--trace: ")
                << s.message() << "\n";
      return 2;
    }
  }
  ParallelPlan plan;
  if (recompute == "none") {
    plan.recompute = Recompute::None();
  } else if (recompute == "norm") {
    plan.recompute = {true, false};
  } else if (recompute == "norm+mla_up") {
    plan.recompute = Recompute::NormAndMlaUp();
  } else {
    return Usage(absl::StrCat("--recompute: expected none, norm or norm+mla_up, got '", recompute, "'"));
  }
  absl::StatusOr<Recipe> recipe = LoadRecipe(recipe_path, overrides);
  if (!recipe.ok()) {
    std::cerr << "fathom simulate: " << recipe.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<ClusterConfig> cluster = LoadCluster(cluster_path);
  if (!cluster.ok()) {
    std::cerr << "fathom simulate: " << cluster.status().message() << "\n";
    return 2;
  }
  const ClusterConfig& c = *cluster;
  absl::StatusOr<ScheduleKind> kind = ParseScheduleKind(recipe->parallel.schedule);
  if (!kind.ok()) {
    std::cerr << "fathom simulate: " << kind.status().message() << "\n";
    return 2;
  }
  plan.schedule = *kind;
  plan.pp = static_cast<int>(recipe->parallel.pp);
  plan.ep = static_cast<int>(recipe->parallel.ep);
  plan.micro_batches = static_cast<int>(recipe->parallel.micro_batches);
  plan.micro_batch_size = recipe->train.micro_batch_size;
  plan.seq_len = recipe->train.seq_len;
  plan.stage_layers = recipe->parallel.stage_layers;
  plan.precision = PrecisionFor(*recipe);
  plan.device_expert_layout = recipe->train.expert_gemm == "own";
  if (cl->options.count("--policy")) {
    absl::StatusOr<PrecisionPolicy> policy = PolicyNamed(cl->options["--policy"], *recipe);
    if (!policy.ok()) return Usage(std::string(policy.status().message()));
    plan.precision = *policy;
  }
  if (plan.precision.activations == ActivationModel::kFathom) {
    if (cl->options.count("--recompute") && recompute != "none") {
      return Usage("--recompute: fathom's layers recompute nothing (--policy fathom); use none");
    }
    plan.recompute = Recompute::None();
  }
  absl::StatusOr<SimulationResult> sim = Simulate(recipe->model, c, plan);
  if (!sim.ok()) {
    std::cerr << "fathom simulate: " << recipe_path << " on " << cluster_path << ": "
              << sim.status().message() << "\n";
    return 2;
  }
  const SimulationResult& r = *sim;
  std::ostream& o = std::cout;
  o << absl::StrFormat("fathom simulate: %s on %s: %d nodes x %d %s = %d GPUs\n", recipe_path,
                       c.name.empty() ? cluster_path : c.name, c.nodes, c.gpus_per_node, c.gpu, c.world());
  o << absl::StrFormat("plan: %s, dp %d (ZeRO-1), edp %d, no tensor parallelism\n", r.plan.Describe(), r.dp,
                       r.edp);
  o << "policy: " << r.plan.precision.Describe() << "\n";
  o << "efficiencies: " << c.Calibration() << "\n";
  const std::string fp8 =
      c.Fp8Caveat(r.plan.precision.fp8_gemm, r.plan.precision.activations == ActivationModel::kFathom);
  if (!fp8.empty()) o << "fp8: " << fp8 << "\n";
  o << "stage_layers: [" << absl::StrJoin(r.plan.stage_layers, ", ") << "]"
    << (recipe->parallel.stage_layers.empty() ? " (balanced by the simulator)" : "") << "\n";
  o << "per micro-batch, ms:  stage  layers     F      B      W  a2a F  a2a B   act GiB\n";
  for (size_t s = 0; s < r.stages.size(); ++s) {
    const StageCost& st = r.stages[s];
    o << absl::StrFormat("                      %5d  %6d %6.1f %6.1f %6.1f %6.1f %6.1f  %8.2f\n", s,
                         r.plan.stage_layers[s], 1e3 * st.f, 1e3 * st.b, 1e3 * st.w, 1e3 * st.f_comm,
                         1e3 * st.b_comm, GiB(st.activations.held_f));
  }
  o << absl::StrFormat(
      "step %.3f s: pipeline %.3f s, bubble %.3f s (%.1f%%: the most idle rank), gradient sync "
      "exposed %.3f s, optimizer %.3f s, all-gather %.3f s\n",
      r.step_s, r.makespan_s, r.bubble_s, 100 * r.bubble_fraction, r.grad_sync_exposed_s, r.optimizer_s,
      r.all_gather_s);
  o << absl::StrFormat("throughput: %.0f tokens/s/GPU (%.4gM tokens per step), MFU %.1f%% of the bf16 peak\n",
                       r.tokens_per_s_per_gpu, r.tokens_per_step / 1e6, 100 * r.mfu_bf16);
  if (c.profile && c.profile->step_ms > 0) {
    const CalibrationProfile& p = *c.profile;
    const bool same = p.seq_len == plan.seq_len && p.micro_batch_size == plan.micro_batch_size &&
                      p.micro_batches == plan.micro_batches && p.pp == plan.pp && p.ep == plan.ep;
    o << absl::StrFormat(
        "profile's measured step: %.1f ms (%s, seq %d, micro-batch %d x %d, pp %d, ep %d)%s\n", p.step_ms,
        p.source, p.seq_len, p.micro_batch_size, p.micro_batches, p.pp, p.ep,
        same ? absl::StrFormat("; simulated %.1f ms (%+.1f%%)", 1e3 * r.step_s,
                               100 * (1e3 * r.step_s / p.step_ms - 1))
             : "; another shape than this plan's");
  }
  o << "memory per GPU, GiB:  rank  params  grads  optim   act   total\n";
  for (size_t i = 0; i < r.memory.size(); ++i) {
    const RankMemory& m = r.memory[i];
    o << absl::StrFormat("                      %4d  %6.1f %6.1f %6.1f %5.1f  %6.1f%s\n", i, GiB(m.params),
                         GiB(m.grads), GiB(m.optimizer), GiB(m.activations), GiB(m.total()),
                         static_cast<int>(i) == r.peak_memory_rank ? "  <- peak" : "");
  }
  const RankMemory& peak = r.memory[r.peak_memory_rank];
  const std::string headroom = absl::StrFormat(
      "peak %.1f GiB + headroom %.1f GiB (activation estimate error %.0f%%%s: %.1f, fragmentation %.0f%%: "
      "%.1f) "
      "= %.1f GiB",
      GiB(r.peak_memory_bytes), GiB(peak.estimate_error + peak.fragmentation), 100 * c.EstimateError(),
      c.profile || c.estimate_error ? "" : " uncalibrated", GiB(peak.estimate_error), 100 * c.Fragmentation(),
      GiB(peak.fragmentation), GiB(r.required_bytes));
  if (r.fits) {
    o << absl::StrFormat("fits: %s of %.1f GiB usable (%.0f GiB HBM less %.0f GiB reserve)\n", headroom,
                         GiB(r.usable_bytes), c.hbm_gib, c.memory_reserve_gib);
  } else {
    o << absl::StrFormat("DOES NOT FIT: %s on rank %d against %.1f GiB usable: short by %.1f GiB per GPU\n",
                         headroom, r.peak_memory_rank, GiB(r.usable_bytes),
                         GiB(r.required_bytes - r.usable_bytes));
  }
  if (!trace_path.empty()) {
    if (absl::Status s = WriteChromeTrace(r, c, trace_path); !s.ok()) {
      std::cerr << "fathom simulate: " << s.message() << "\n";
      return 2;
    }
    o << "trace: " << trace_path << " (open in https://ui.perfetto.dev)\n";
  }
  // A layout that does not fit is the recipe's problem on this cluster: scripts see it in the exit code.
  return r.fits ? 0 : 2;
}

}  // namespace fathom
