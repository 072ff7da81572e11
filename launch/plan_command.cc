// fathom plan RECIPE.yaml --cluster CLUSTER.yaml [--set section.key=value ...] [--out FILE]
//                         [--global-batch SEQUENCES] [--fix section.key[=value] ...] [--top N]
//                         [--policy report|fathom]
// Chooses pp / ep / schedule / micro-batching / recompute for the recipe's model on the cluster at the
// recipe's train.global_batch_size (--global-batch overrides it), prints the best candidates and writes the
// chosen `parallel:` section as YAML (stdout, and FILE with --out). The recipe's parallel section is not
// checked against the model and is ignored except for what --fix names. --policy: the precision and
// activation policy simulated (the report's, the default, or what fathom runs today). Prints the memory
// headroom, whether the efficiencies are calibrated (the cluster's `profile:`), and beside the steady
// step the whole-run tokens/s/GPU when the cluster file has a `run:` section.
#include <chrono>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "framework/file_io.h"
#include "launch/command_line.h"
#include "launch/commands.h"
#include "parallel/planner.h"

namespace fathom {
namespace {

// The DeepSeek-V3 report trains on 14.8T tokens in 2.664M H800 GPU-hours (pre-training): 180K GPU-hours
// per trillion tokens, i.e. 1e12 / (180e3 * 3600) tokens per second per GPU.
constexpr double kReportGpuHoursPerTrillion = 180e3;
constexpr double kReportTokensPerSecondPerGpu = 1e12 / (kReportGpuHoursPerTrillion * 3600.0);

double GiB(double bytes) { return bytes / 1073741824.0; }

std::string RecomputeName(const Recompute& r) {
  if (r.norm && r.mla_up) return "norm+mla_up";
  if (r.norm) return "norm";
  if (r.mla_up) return "mla_up";
  return "none";
}

std::string RecomputeWords(const Recompute& r) {
  if (r.norm && r.mla_up) return "RMSNorm outputs and MLA up-projections recomputed in the backward";
  if (r.norm) return "RMSNorm outputs recomputed in the backward";
  return "nothing recomputed";
}

bool IsDeepSeekV3Shape(const ModelConfig& m) {
  return m.hidden_size == 7168 && m.num_hidden_layers == 61 && m.n_routed_experts == 256 &&
         m.num_experts_per_tok == 8 && m.vocab_size == 129280;
}

std::string ExpertSpan(const SimulationResult& r, const ClusterConfig& c) {
  if (r.plan.ep <= c.gpus_per_node) return r.plan.ep == 1 ? "1" : absl::StrCat(r.plan.ep, " (1 node)");
  return absl::StrCat(r.plan.ep, " (", r.plan.ep / c.gpus_per_node, " nodes)");
}

// The parallel section in ParallelConfig's keys, and the planner's other decisions as comments.
std::string ParallelYaml(const SimulationResult& r) {
  std::string y = "parallel:\n";
  absl::StrAppend(&y, "  pp: ", r.plan.pp, "\n");
  absl::StrAppend(&y, "  ep: ", r.plan.ep, "\n");
  absl::StrAppend(&y, "  micro_batches: ", r.plan.micro_batches, "\n");
  absl::StrAppend(&y, "  stage_layers: [", absl::StrJoin(r.plan.stage_layers, ", "), "]\n");
  absl::StrAppend(&y, "  schedule: ", ScheduleKindName(r.plan.schedule), "\n");
  absl::StrAppend(&y, "# also decided by the planner (not parallel keys):\n");
  absl::StrAppend(&y, "#   train.micro_batch_size: ", r.plan.micro_batch_size, "\n");
  absl::StrAppend(&y, "#   recompute: ", RecomputeName(r.plan.recompute), "   (",
                  RecomputeWords(r.plan.recompute), ")\n");
  absl::StrAppend(&y, "#   dp: ", r.dp, " (ZeRO-1), edp: ", r.edp, ", tp: 1 (no tensor parallelism)\n");
  return y;
}

std::string SetFlags(const SimulationResult& r) {
  return absl::StrCat("--set parallel.pp=", r.plan.pp, " --set parallel.ep=", r.plan.ep,
                      " --set parallel.micro_batches=", r.plan.micro_batches,
                      " --set parallel.stage_layers=[", absl::StrJoin(r.plan.stage_layers, ","),
                      "] --set parallel.schedule=", ScheduleKindName(r.plan.schedule),
                      " --set train.micro_batch_size=", r.plan.micro_batch_size);
}

double Hours(double seconds) { return seconds / 3600.0; }

// The whole run beside the steady step, factor by factor (parallel/whole_run.h).
std::string WholeRunLines(const WholeRunEstimate& w, const RunAssumptions& run, const Recipe& recipe,
                          int64_t global_batch) {
  const double tokens = static_cast<double>(recipe.train.steps) * static_cast<double>(global_batch) *
                        static_cast<double>(recipe.train.seq_len);
  std::string o = absl::StrFormat(
      "whole run (%.4gT tokens = train.steps %d x %d sequences x %d): %.0f tokens/s/GPU against %.0f steady "
      "(%.1f%% of it), %.0f h of wall time:\n",
      tokens / 1e12, recipe.train.steps, global_batch, recipe.train.seq_len, w.tokens_per_s_per_gpu,
      w.steady_tokens_per_s_per_gpu, 100 * w.tokens_per_s_per_gpu / w.steady_tokens_per_s_per_gpu,
      Hours(w.wall_s));
  auto share = [&](double s) { return 100 * s / w.wall_s; };
  absl::StrAppend(&o, absl::StrFormat("  steps at the simulated speed %8.0f h  %5.1f%%\n",
                                      Hours(w.compute_s - w.ramp_s), share(w.compute_s - w.ramp_s)));
  if (run.batch_ramp_tokens > 0 && run.batch_ramp_start > 0 && run.batch_ramp_start < global_batch) {
    absl::StrAppend(
        &o, absl::StrFormat("  batch-size ramp             %8.1f h  %5.1f%%   (%d to %d sequences over "
                            "%.3gT tokens)\n",
                            Hours(w.ramp_s), share(w.ramp_s), run.batch_ramp_start, global_batch,
                            run.batch_ramp_tokens / 1e12));
  } else if (run.batch_ramp_tokens > 0 && run.batch_ramp_start >= global_batch) {
    // parallel/whole_run.h counts no ramp then: there is nothing to grow to.
    absl::StrAppend(&o, absl::StrFormat("  batch-size ramp                  none   (the cluster's batch_ramp_start "
                                        "%d is not below the global batch %d)\n",
                                        run.batch_ramp_start, global_batch));
  }
  absl::StrAppend(
      &o, absl::StrFormat("  checkpoints                 %8.1f h  %5.1f%%   (%.0f x %.0f s: every %.0f min "
                          "at %.3g GB/s per GPU)\n",
                          Hours(w.checkpoint_s), share(w.checkpoint_s), w.checkpoints, w.checkpoint_each_s,
                          run.checkpoint_interval_min, run.checkpoint_gbps_per_gpu));
  absl::StrAppend(&o, absl::StrFormat("  evaluation                  %8.1f h  %5.1f%%\n",
                                      Hours(w.evaluation_s), share(w.evaluation_s)));
  absl::StrAppend(
      &o,
      absl::StrFormat("  failures and restarts       %8.1f h  %5.1f%%   (%.0f failures, one every %.1f h; "
                      "each %.0f min of restart and lost work)\n",
                      Hours(w.failure_s), share(w.failure_s), w.failures, Hours(w.job_mtbf_s),
                      w.failure_cost_s / 60));
  return o;
}

constexpr char kUsage[] =
    "usage: fathom plan RECIPE.yaml --cluster CLUSTER.yaml [--set section.key=value ...] [--out FILE]\n"
    "                   [--global-batch SEQUENCES] [--fix section.key[=value] ...] [--top N]\n"
    "                   [--policy report|fathom]\n";
constexpr char kHelp[] =
    "  Chooses pp, ep, the schedule, micro-batching and recomputation for the recipe's model on the "
    "cluster,\n"
    "  prints the best candidates and the chosen parallel: section.\n"
    "  --cluster FILE            the cluster description (recipes/clusters/*.yaml)\n"
    "  --set section.key=value   override a recipe key (repeatable)\n"
    "  --out FILE                also write the parallel: section to FILE\n"
    "  --global-batch SEQUENCES  the global batch to keep fixed (default train.global_batch_size)\n"
    "  --fix section.key[=value] hold a parallel key (the recipe's value, or the one given); repeatable\n"
    "  --policy report|fathom    precision/recompute policy: the report's FP8 system (default) or fathom's\n"
    "  --top N                   candidates to print (default 8)\n"
    "  --help                    print this and exit\n";

int Usage(const std::string& why) {
  std::cerr << "fathom plan: " << why << "\n" << kUsage;
  return 2;
}

}  // namespace

int RunPlan(const std::vector<std::string>& args) {
  absl::StatusOr<CommandLine> cl = ParseCommandLine(
      args, {"--cluster", "--out", "--global-batch", "--top", "--policy"}, /*recipe_required=*/true, {"--fix"});
  if (cl.ok() && cl->help) {
    std::cout << kUsage << kHelp;
    return 0;
  }
  if (!cl.ok()) return Usage(std::string(cl.status().message()));
  const std::string& recipe_path = cl->recipe;
  const std::vector<std::string>& overrides = cl->overrides;
  const std::string cluster_path = cl->options["--cluster"], out_path = cl->options["--out"];
  PlannerOptions options;
  int top = 8;
  if (cl->options.count("--global-batch") &&
      (!absl::SimpleAtoi(cl->options["--global-batch"], &options.global_batch) || options.global_batch < 1)) {
    return Usage("--global-batch needs a positive number of sequences");
  }
  if (cl->options.count("--top") && (!absl::SimpleAtoi(cl->options["--top"], &top) || top < 1)) {
    return Usage("--top needs a positive count");
  }
  if (cluster_path.empty()) return Usage("no cluster given (--cluster recipes/clusters/NAME.yaml)");
  if (!out_path.empty()) {  // refused before the work, not after
    absl::Status s = CheckNotAnInput(out_path, {recipe_path, cluster_path}, "--out");
    if (s.ok()) s = CheckReplaceable(out_path);
    if (!s.ok()) return Usage(std::string(s.message()));
  }
  absl::StatusOr<Recipe> recipe = LoadRecipe(recipe_path, overrides, RecipeUse::kPlan);
  if (!recipe.ok()) {
    std::cerr << "fathom plan: " << recipe.status().message() << "\n";
    return 2;
  }
  if (cl->options.count("--policy")) {
    absl::StatusOr<PrecisionPolicy> policy = PolicyNamed(cl->options["--policy"], *recipe);
    if (!policy.ok()) return Usage(std::string(policy.status().message()));
    options.precision = *policy;
  }
  for (const std::string& fix : cl->repeated["--fix"]) {
    if (absl::Status s = AddPlanConstraint(fix, *recipe, &options.fixed); !s.ok())
      return Usage(std::string(s.message()));
  }
  absl::StatusOr<ClusterConfig> cluster = LoadCluster(cluster_path);
  if (!cluster.ok()) {
    std::cerr << "fathom plan: " << cluster.status().message() << "\n";
    return 2;
  }
  const ClusterConfig& c = *cluster;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<PlanReport> report = PlanParallelism(*recipe, c, options);
  const double plan_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!report.ok()) {
    std::cerr << "fathom plan: " << report.status().message() << "\n";
    return 2;
  }
  const SimulationResult& best = report->ranked.front();
  std::ostream& o = std::cout;
  o << absl::StrFormat("fathom plan: %s on %s: %d nodes x %d %s = %d GPUs\n", recipe_path,
                       c.name.empty() ? cluster_path : c.name, c.nodes, c.gpus_per_node, c.gpu, c.world());
  o << absl::StrFormat(
      "global batch %d sequences x %d tokens = %.1fM tokens per step; model FLOPs %.3g per token\n",
      report->global_batch, recipe->train.seq_len,
      static_cast<double>(report->global_batch * recipe->train.seq_len) / 1e6, best.model_flops_per_token);
  o << (options.fixed.empty() ? std::string("nothing fixed: the recipe's parallel section is not used\n")
                              : "fixed by --fix: " + options.fixed.Describe() + "\n");
  o << "policy: " << best.plan.precision.Describe() << "\n";
  o << "efficiencies: " << c.Calibration() << "\n";
  const std::string fp8 =
      c.Fp8Caveat(best.plan.precision.fp8_gemm, best.plan.precision.activations == ActivationModel::kFathom);
  if (!fp8.empty()) o << "fp8: " << fp8 << "\n";
  o << absl::StrFormat(
      "%d layouts considered, %d fit in %.1f GiB per GPU (%.0f GiB HBM less %.0f GiB reserve) with headroom "
      "for the activation estimate's error (%.0f%%) and fragmentation (%.0f%%); planned in %.1f s\n\n",
      report->considered, report->fitting, GiB(best.usable_bytes), c.hbm_gib, c.memory_reserve_gib,
      100 * c.EstimateError(), 100 * c.Fragmentation(), plan_seconds);
  o << " #  schedule   pp  ep             dp  edp  mbs  micro  recompute     step s  bubble  tok/s/GPU    "
       "MFU  peak GiB (params+grads+optim+act) +headroom\n";
  for (size_t i = 0; i < report->ranked.size() && static_cast<int>(i) < top; ++i) {
    const SimulationResult& r = report->ranked[i];
    const RankMemory& m = r.memory[r.peak_memory_rank];
    o << absl::StrFormat(
        "%2d  %-9s %3d  %-13s %4d %4d %4d %6d  %-12s %7.2f  %5.1f%%  %9.0f  %5.1f%%  %5.1f "
        "(%.1f+%.1f+%.1f+%.1f) +%.1f\n",
        i + 1, ScheduleKindName(r.plan.schedule), r.plan.pp, ExpertSpan(r, c), r.dp, r.edp,
        r.plan.micro_batch_size, r.plan.micro_batches, RecomputeName(r.plan.recompute), r.step_s,
        100 * r.bubble_fraction, r.tokens_per_s_per_gpu, 100 * r.mfu_bf16, GiB(r.peak_memory_bytes),
        GiB(m.params), GiB(m.grads), GiB(m.optimizer), GiB(m.activations),
        GiB(m.estimate_error + m.fragmentation));
  }
  const RankMemory& m = best.memory[best.peak_memory_rank];
  o << "\nchosen: " << ScheduleKindName(best.plan.schedule) << ", " << best.plan.pp << " pipeline ranks ("
    << best.schedule.num_stages() << " stages, stage_layers [" << absl::StrJoin(best.plan.stage_layers, ", ")
    << "]), expert parallelism " << ExpertSpan(best, c) << ", data parallelism " << best.dp
    << " with ZeRO-1 (edp " << best.edp << "), no tensor parallelism, micro-batch size "
    << best.plan.micro_batch_size << " x " << best.plan.micro_batches << " micro-batches, "
    << RecomputeWords(best.plan.recompute) << "\n";
  if (best.plan.ep > c.gpus_per_node && recipe->model.n_group > 1) {
    o << absl::StrFormat(
        "  expert groups aligned with nodes: %d routing groups on %d nodes, a token reaches at most "
        "%d of them (expected %.2f remote nodes per token)\n",
        recipe->model.n_group, best.plan.ep / c.gpus_per_node, recipe->model.topk_group,
        RemoteNodesPerToken(recipe->model, c.gpus_per_node, best.plan.ep));
  }
  o << absl::StrFormat(
      "memory per GPU (peak: rank %d): params %.1f + grads %.1f + optimizer %.1f + activations %.1f "
      "= %.1f GiB estimated, + headroom %.1f GiB for the activation estimate's error (%.0f%%%s) + %.1f GiB "
      "for fragmentation (%.0f%%) = %.1f GiB, fits in %.1f GiB usable of %.0f GiB HBM\n",
      best.peak_memory_rank, GiB(m.params), GiB(m.grads), GiB(m.optimizer), GiB(m.activations),
      GiB(best.peak_memory_bytes), GiB(m.estimate_error), 100 * c.EstimateError(),
      c.profile || c.estimate_error ? "" : ", uncalibrated", GiB(m.fragmentation), 100 * c.Fragmentation(),
      GiB(best.required_bytes), GiB(best.usable_bytes), c.hbm_gib);
  o << absl::StrFormat(
      "step %.4g s: pipeline %.4g s (bubble %.1f%%), gradient sync exposed %.3g s, optimizer %.3g s, "
      "all-gather %.3g s\n",
      best.step_s, best.makespan_s, 100 * best.bubble_fraction, best.grad_sync_exposed_s, best.optimizer_s,
      best.all_gather_s);
  o << absl::StrFormat(
      "predicted throughput: %.0f tokens/s/GPU steady state, MFU %.1f%% of the bf16 peak%s\n",
      best.tokens_per_s_per_gpu, 100 * best.mfu_bf16, c.profile ? "" : " (uncalibrated)");
  absl::StatusOr<WholeRunEstimate> whole;
  if (c.run) {
    whole = WholeRunForPlan(*recipe, c, best, report->global_batch);
    if (!whole.ok()) {
      std::cerr << "fathom plan: whole-run accounting: " << whole.status().message() << "\n";
      return 2;
    }
    o << WholeRunLines(*whole, *c.run, *recipe, report->global_batch);
  } else {
    o << "whole run: not estimated (the cluster file has no `run:` section)\n";
  }
  if (IsDeepSeekV3Shape(recipe->model)) {
    o << absl::StrFormat(
        "DeepSeek-V3 report: %.0fK H800 GPU-hours per trillion tokens = %.0f tokens/s/GPU over the whole "
        "run; "
        "predicted %.0f steady state (%.2fx)",
        kReportGpuHoursPerTrillion / 1e3, kReportTokensPerSecondPerGpu, best.tokens_per_s_per_gpu,
        best.tokens_per_s_per_gpu / kReportTokensPerSecondPerGpu);
    if (c.run) {
      o << absl::StrFormat(", %.0f whole run (%.2fx)", whole->tokens_per_s_per_gpu,
                           whole->tokens_per_s_per_gpu / kReportTokensPerSecondPerGpu);
    }
    o << "\n  what the prediction leaves out: imperfect expert balance (the simulator routes every token "
         "evenly), and every efficiency a calibration profile would measure (README, Planning)\n";
  }
  const std::string yaml = ParallelYaml(best);
  o << "\n# the chosen parallel section (paste it into the recipe, or pass the --set flags below)\n" << yaml;
  o << SetFlags(best) << "\n";
  if (!out_path.empty()) {
    const absl::Status written = WriteFileAtomically(
        out_path, absl::StrCat("# fathom plan ", recipe_path, " --cluster ", cluster_path, "\n", yaml));
    if (!written.ok()) {
      std::cerr << "fathom plan: --out: cannot write " << out_path << ": " << written.message() << "\n";
      return 2;
    }
  }
  return 0;
}

}  // namespace fathom
