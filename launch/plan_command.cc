// fathom plan RECIPE.yaml --cluster CLUSTER.yaml [--set section.key=value ...] [--out FILE]
//                         [--global-batch SEQUENCES] [--top N]
// Chooses pp / ep / schedule / micro-batching / recompute for the recipe's model on the cluster, prints the
// best candidates and writes the chosen `parallel:` section as YAML (stdout, and FILE with --out).
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
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

constexpr char kUsage[] =
    "usage: fathom plan RECIPE.yaml --cluster CLUSTER.yaml [--set section.key=value ...] [--out FILE]\n"
    "                   [--global-batch SEQUENCES] [--top N]\n";
constexpr char kHelp[] =
    "  Chooses pp, ep, the schedule, micro-batching and recomputation for the recipe's model on the "
    "cluster,\n"
    "  prints the best candidates and the chosen parallel: section.\n"
    "  --cluster FILE            the cluster description (recipes/clusters/*.yaml)\n"
    "  --set section.key=value   override a recipe key (repeatable)\n"
    "  --out FILE                also write the parallel: section to FILE\n"
    "  --global-batch SEQUENCES  the global batch to keep fixed\n"
    "  --top N                   candidates to print (default 8)\n"
    "  --help                    print this and exit\n";

int Usage(const std::string& why) {
  std::cerr << "fathom plan: " << why << "\n" << kUsage;
  return 2;
}

}  // namespace

int RunPlan(const std::vector<std::string>& args) {
  absl::StatusOr<CommandLine> cl = ParseCommandLine(args, {"--cluster", "--out", "--global-batch", "--top"});
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
  absl::StatusOr<Recipe> recipe = LoadRecipe(recipe_path, overrides);
  if (!recipe.ok()) {
    std::cerr << "fathom plan: " << recipe.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<ClusterConfig> cluster = LoadCluster(cluster_path);
  if (!cluster.ok()) {
    std::cerr << "fathom plan: " << cluster.status().message() << "\n";
    return 2;
  }
  const ClusterConfig& c = *cluster;
  absl::StatusOr<PlanReport> report = PlanParallelism(*recipe, c, options);
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
  o << absl::StrFormat(
      "%d layouts considered, %d fit in %.1f GiB per GPU (%.0f GiB HBM less %.0f GiB reserve)\n\n",
      report->considered, report->fitting, GiB(best.usable_bytes), c.hbm_gib, c.memory_reserve_gib);
  o << " #  schedule   pp  ep             dp  edp  mbs  micro  recompute     step s  bubble  tok/s/GPU    "
       "MFU  "
       "peak GiB (params+grads+optim+act)\n";
  for (size_t i = 0; i < report->ranked.size() && static_cast<int>(i) < top; ++i) {
    const SimulationResult& r = report->ranked[i];
    const RankMemory& m = r.memory[r.peak_memory_rank];
    o << absl::StrFormat(
        "%2d  %-9s %3d  %-13s %4d %4d %4d %6d  %-12s %7.2f  %5.1f%%  %9.0f  %5.1f%%  %5.1f "
        "(%.1f+%.1f+%.1f+%.1f)\n",
        i + 1, ScheduleKindName(r.plan.schedule), r.plan.pp, ExpertSpan(r, c), r.dp, r.edp,
        r.plan.micro_batch_size, r.plan.micro_batches, RecomputeName(r.plan.recompute), r.step_s,
        100 * r.bubble_fraction, r.tokens_per_s_per_gpu, 100 * r.mfu_bf16, GiB(r.peak_memory_bytes),
        GiB(m.params), GiB(m.grads), GiB(m.optimizer), GiB(m.activations));
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
      "= %.1f GiB, fits in %.1f GiB usable of %.0f GiB HBM\n",
      best.peak_memory_rank, GiB(m.params), GiB(m.grads), GiB(m.optimizer), GiB(m.activations),
      GiB(best.peak_memory_bytes), GiB(best.usable_bytes), c.hbm_gib);
  o << absl::StrFormat(
      "step %.4g s: pipeline %.4g s (bubble %.1f%%), gradient sync exposed %.3g s, optimizer %.3g s, "
      "all-gather %.3g s\n",
      best.step_s, best.makespan_s, 100 * best.bubble_fraction, best.grad_sync_exposed_s, best.optimizer_s,
      best.all_gather_s);
  o << absl::StrFormat("predicted throughput: %.0f tokens/s/GPU, MFU %.1f%% of the bf16 peak\n",
                       best.tokens_per_s_per_gpu, 100 * best.mfu_bf16);
  if (IsDeepSeekV3Shape(recipe->model)) {
    o << absl::StrFormat(
        "DeepSeek-V3 report: %.0fK H800 GPU-hours per trillion tokens = %.0f tokens/s/GPU; predicted %.0f "
        "tokens/s/GPU (%.2fx)\n"
        "note: the report's figure is whole-run accounting (14.8T tokens in 2.664M GPU-hours, including the "
        "batch-size ramp, failures and restarts, evaluation and imperfect expert balance); the prediction is "
        "one "
        "steady-state step with the cluster file's efficiency factors and perfectly balanced experts\n",
        kReportGpuHoursPerTrillion / 1e3, kReportTokensPerSecondPerGpu, best.tokens_per_s_per_gpu,
        best.tokens_per_s_per_gpu / kReportTokensPerSecondPerGpu);
  }
  const std::string yaml = ParallelYaml(best);
  o << "\n# the chosen parallel section (paste it into the recipe, or pass the --set flags below)\n" << yaml;
  o << SetFlags(best) << "\n";
  if (!out_path.empty()) {
    std::ofstream out(out_path, std::ios::trunc);
    out << "# fathom plan " << recipe_path << " --cluster " << cluster_path << "\n" << yaml;
    out.close();
    if (!out) {
      std::cerr << "fathom plan: --out: cannot write " << out_path << "\n";
      return 2;
    }
  }
  return 0;
}

}  // namespace fathom
