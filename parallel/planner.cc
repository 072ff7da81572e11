#include "parallel/planner.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace fathom {
namespace {

int SchedulePreference(ScheduleKind k) {
  switch (k) {
    case ScheduleKind::kDualPipe:
      return 0;
    case ScheduleKind::kDualPipeV:
      return 1;
    case ScheduleKind::kZB1P:
      return 2;
    case ScheduleKind::k1F1B:
      return 3;
  }
  return 4;
}

// Expert-parallel sizes that keep an expert group inside one node, or on whole nodes whose count divides
// n_group (each node then holds whole routing groups, so topk_group bounds the nodes a token reaches).
bool ExpertGroupAligned(const ModelConfig& m, int64_t gpus_per_node, int64_t ep) {
  if (ep <= gpus_per_node) return gpus_per_node % ep == 0;
  if (ep % gpus_per_node != 0) return false;
  const int64_t nodes = ep / gpus_per_node;
  return m.n_group == 1 || m.n_group % nodes == 0;
}

std::vector<Recompute> RecomputeChoices() {
  return {Recompute::None(), {true, false}, Recompute::NormAndMlaUp()};
}

double GiB(double bytes) { return bytes / 1073741824.0; }

absl::Status FixError(const std::string& fix, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("--fix ", fix, ": ", why));
}

// A whole number >= 1 from the --fix value.
absl::StatusOr<int64_t> FixCount(const std::string& fix, const std::string& value) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(value, &v) || v < 1)
    return FixError(fix, "expected a whole number >= 1, got '" + value + "'");
  return v;
}

}  // namespace

bool PlanConstraints::empty() const {
  return !pp && !ep && !micro_batches && !schedule && !micro_batch_size && !stage_layers;
}

std::string PlanConstraints::Describe() const {
  std::vector<std::string> parts;
  if (pp) parts.push_back(absl::StrCat("parallel.pp=", *pp));
  if (ep) parts.push_back(absl::StrCat("parallel.ep=", *ep));
  if (micro_batches) parts.push_back(absl::StrCat("parallel.micro_batches=", *micro_batches));
  if (schedule) parts.push_back(absl::StrCat("parallel.schedule=", ScheduleKindName(*schedule)));
  if (stage_layers)
    parts.push_back(absl::StrCat("parallel.stage_layers=[", absl::StrJoin(*stage_layers, ","), "]"));
  if (micro_batch_size) parts.push_back(absl::StrCat("train.micro_batch_size=", *micro_batch_size));
  return absl::StrJoin(parts, ", ");
}

absl::Status AddPlanConstraint(const std::string& fix, const Recipe& recipe, PlanConstraints* c) {
  const size_t eq = fix.find('=');
  const std::string key(absl::StripAsciiWhitespace(fix.substr(0, eq)));
  const bool given = eq != std::string::npos;
  const std::string value = given ? std::string(absl::StripAsciiWhitespace(fix.substr(eq + 1))) : "";
  auto count = [&](int64_t recipe_value) -> absl::StatusOr<int64_t> {
    return given ? FixCount(fix, value) : absl::StatusOr<int64_t>(recipe_value);
  };
  if (key == "parallel.pp" || key == "parallel.ep" || key == "parallel.micro_batches") {
    const int64_t from_recipe = key == "parallel.pp"   ? recipe.parallel.pp
                                : key == "parallel.ep" ? recipe.parallel.ep
                                                       : recipe.parallel.micro_batches;
    absl::StatusOr<int64_t> v = count(from_recipe);
    if (!v.ok()) return v.status();
    if (*v > (int64_t{1} << 30)) return FixError(fix, "value too large");
    (key == "parallel.pp" ? c->pp : key == "parallel.ep" ? c->ep : c->micro_batches) = static_cast<int>(*v);
  } else if (key == "train.micro_batch_size") {
    absl::StatusOr<int64_t> v = count(recipe.train.micro_batch_size);
    if (!v.ok()) return v.status();
    c->micro_batch_size = *v;
  } else if (key == "parallel.schedule") {
    absl::StatusOr<ScheduleKind> kind = ParseScheduleKind(given ? value : recipe.parallel.schedule);
    if (!kind.ok()) return FixError(fix, std::string(kind.status().message()));
    c->schedule = *kind;
  } else if (key == "parallel.stage_layers") {
    std::vector<int64_t> layers;
    if (!given) {
      layers = recipe.parallel.stage_layers;
    } else {
      absl::string_view list = absl::StripAsciiWhitespace(value);
      if (!absl::ConsumePrefix(&list, "[") || !absl::ConsumeSuffix(&list, "]")) {
        return FixError(fix, "expected a list like [2, 4, 4]");
      }
      for (absl::string_view piece : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
        absl::StatusOr<int64_t> v = FixCount(fix, std::string(absl::StripAsciiWhitespace(piece)));
        if (!v.ok()) return v.status();
        layers.push_back(*v);
      }
    }
    if (layers.empty()) return FixError(fix, "parallel.stage_layers needs at least one entry");
    c->stage_layers = std::move(layers);
  } else {
    return FixError(fix,
                    "can fix parallel.pp, parallel.ep, parallel.micro_batches, parallel.schedule, "
                    "parallel.stage_layers or train.micro_batch_size, as key=value (or key alone for the "
                    "recipe's value)");
  }
  return absl::OkStatus();
}

PrecisionPolicy PrecisionFor(const Recipe& recipe) {
  return PrecisionPolicy::Report(recipe.optim.moment_dtype == "bf16" ? 2 : 4);
}

PrecisionPolicy FathomPrecisionFor(const Recipe& recipe) {
  const int64_t compute = recipe.train.dtype == "bf16" ? 2 : recipe.train.dtype == "f64" ? 8 : 4;
  return PrecisionPolicy::Fathom(compute, recipe.optim.moment_dtype == "bf16" ? 2 : 4,
                                 recipe.train.precision == "fp8");
}

void RankPlans(std::vector<SimulationResult>* plans) {
  auto by_time = [](const SimulationResult& a, const SimulationResult& b) { return a.step_s < b.step_s; };
  std::stable_sort(plans->begin(), plans->end(), by_time);
  if (plans->empty()) return;
  // Near-ties go to the simpler layout (see the header): fewer stages, smaller ep, preferred schedule.
  const double tie = plans->front().step_s * (1 + kPlannerTieTolerance);
  auto near = std::partition_point(plans->begin(), plans->end(),
                                   [&](const SimulationResult& r) { return r.step_s <= tie; });
  auto simpler = [](const SimulationResult& r) {
    return std::make_tuple(NumStages(r.plan.schedule, r.plan.pp), r.plan.ep,
                           SchedulePreference(r.plan.schedule));
  };
  std::stable_sort(plans->begin(), near, [&](const SimulationResult& a, const SimulationResult& b) {
    return simpler(a) < simpler(b);
  });
}

absl::StatusOr<PrecisionPolicy> PolicyNamed(const std::string& name, const Recipe& recipe) {
  if (name == "report") return PrecisionFor(recipe);
  if (name == "fathom") return FathomPrecisionFor(recipe);
  return absl::InvalidArgumentError(
      absl::StrCat("--policy: expected report (the DeepSeek-V3 report's FP8 policy, the planner's default) "
                   "or fathom (what "
                   "fathom runs today), got '",
                   name, "'"));
}

absl::StatusOr<WholeRunEstimate> WholeRunForPlan(const Recipe& recipe, const ClusterConfig& cluster,
                                                 const SimulationResult& steady, int64_t global_batch) {
  if (!cluster.run) {
    return absl::FailedPreconditionError(
        absl::StrCat(cluster.path, ": no `run:` section, so no whole-run accounting"));
  }
  const ParallelPlan& plan = steady.plan;
  const int64_t per_step = static_cast<int64_t>(steady.dp) * plan.micro_batch_size;
  ScheduleCache cache;
  WholeRunInput in;
  in.global_batch = global_batch;
  in.seq_len = plan.seq_len;
  in.world = cluster.world();
  in.total_tokens = static_cast<double>(recipe.train.steps) * static_cast<double>(global_batch) *
                    static_cast<double>(plan.seq_len);
  in.steady_tokens_per_s = steady.tokens_per_s_per_gpu * static_cast<double>(cluster.world());
  // Every parameter's f32 master weight and both moments, written once over the whole job.
  const GraphTotals totals = SumGraph(BuildCostGraph(recipe.model, plan.seq_len, plan.precision));
  in.checkpoint_bytes_per_gpu =
      static_cast<double>(totals.params + totals.mtp_params) *
      static_cast<double>(plan.precision.master_bytes + 2 * plan.precision.moment_bytes) /
      static_cast<double>(cluster.world());
  in.tokens_per_s_at = [&](int64_t batch) -> absl::StatusOr<double> {
    ParallelPlan p = plan;
    p.micro_batches = static_cast<int>(std::max<int64_t>(1, batch / per_step));
    // The smallest micro-batch count the schedule runs carries a batch below it (the pipeline idles).
    while (!CheckScheduleShape(p.schedule, p.pp, p.micro_batches).ok()) ++p.micro_batches;
    absl::StatusOr<SimulationResult> r = SimulateForPlanning(recipe.model, cluster, p, &cache);
    if (!r.ok()) return r.status();
    return static_cast<double>(batch * plan.seq_len) / r->step_s;
  };
  return EstimateWholeRun(in, *cluster.run);
}

SimulationResult RefineStageLayers(const ModelConfig& model, const ClusterConfig& cluster,
                                   const SimulationResult& start, ScheduleCache* cache) {
  SimulationResult best = start;
  const int stages = static_cast<int>(best.plan.stage_layers.size());
  for (bool improved = true; improved;) {
    improved = false;
    for (int from = 0; from < stages; ++from) {
      for (int to = 0; to < stages; ++to) {
        if (from == to || best.plan.stage_layers[from] <= 1) continue;
        ParallelPlan plan = best.plan;
        --plan.stage_layers[from];
        ++plan.stage_layers[to];
        absl::StatusOr<SimulationResult> r = SimulateForPlanning(model, cluster, plan, cache);
        if (r.ok() && r->fits && r->step_s < best.step_s * (1 - 1e-9)) {
          best = *std::move(r);
          improved = true;
        }
      }
    }
  }
  return best;
}

absl::StatusOr<PlanReport> PlanParallelism(const Recipe& recipe, const ClusterConfig& cluster,
                                           const PlannerOptions& options) {
  const ModelConfig& m = recipe.model;
  const int64_t world = cluster.world();
  const PlanConstraints& fixed = options.fixed;
  PlanReport report;
  report.global_batch = options.global_batch > 0 ? options.global_batch : recipe.train.global_batch_size;
  if (report.global_batch <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        recipe.path.empty() ? "" : recipe.path + ": ",
        "no global batch to plan for: set train.global_batch_size (sequences per optimizer step, which "
        "the planner keeps fixed while it chooses pp, ep, micro-batching and the schedule)"));
  }
  // A --fix that no layout can satisfy names its own constraint (the enumeration would only find nothing).
  auto impossible = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("--fix ", what));
  };
  if (fixed.pp && (world % *fixed.pp != 0 || *fixed.pp > m.num_hidden_layers)) {
    return impossible(absl::StrCat("parallel.pp=", *fixed.pp, ": pp must divide the cluster's ", world,
                                   " GPUs and be at most model.num_hidden_layers (", m.num_hidden_layers,
                                   ")"));
  }
  if (fixed.ep && m.n_routed_experts % *fixed.ep != 0) {
    return impossible(absl::StrCat("parallel.ep=", *fixed.ep, ": ep must divide model.n_routed_experts (",
                                   m.n_routed_experts, ")"));
  }
  if (fixed.ep && fixed.pp && world % *fixed.pp == 0 && (world / *fixed.pp) % *fixed.ep != 0) {
    return impossible(absl::StrCat("parallel.ep=", *fixed.ep, ": ep must divide dp = ", world, " / pp ",
                                   *fixed.pp, " = ", world / *fixed.pp));
  }
  if (fixed.stage_layers) {
    const int64_t n = static_cast<int64_t>(fixed.stage_layers->size());
    if (fixed.pp ? n != *fixed.pp && n != 2 * *fixed.pp
                 : world % n != 0 && (n % 2 != 0 || world % (n / 2) != 0)) {
      return impossible(absl::StrCat("parallel.stage_layers: ", n,
                                     " entries; a layout has pp stages (2 pp for ",
                                     "dualpipev) with pp dividing the cluster's ", world, " GPUs",
                                     fixed.pp ? absl::StrCat(", here pp ", *fixed.pp) : ""));
    }
  }
  const PrecisionPolicy precision = options.precision ? *options.precision : PrecisionFor(recipe);
  // fathom's layers recompute nothing; the report's framework may recompute norms and MLA up-projections.
  const std::vector<Recompute> recompute_choices = precision.activations == ActivationModel::kFathom
                                                       ? std::vector<Recompute>{Recompute::None()}
                                                       : RecomputeChoices();

  ScheduleCache cache;
  std::vector<SimulationResult> fitting;
  std::optional<SimulationResult> closest;  // least memory when nothing fits
  // The user's constraints narrow the enumeration; a fixed value is taken even where the planner would not
  // propose it (an ep that splits expert groups across nodes, a micro-batch size outside the list).
  std::vector<int64_t> micro_batch_sizes = options.micro_batch_sizes;
  if (fixed.micro_batch_size) micro_batch_sizes = {*fixed.micro_batch_size};
  std::vector<ScheduleKind> schedules = options.schedules;
  if (fixed.schedule) schedules = {*fixed.schedule};
  for (int64_t pp = 1; pp <= world; ++pp) {
    if (world % pp != 0 || pp > m.num_hidden_layers || (fixed.pp && pp != *fixed.pp)) continue;
    const int64_t dp = world / pp;
    if (report.global_batch % dp != 0) continue;
    const int64_t per_replica = report.global_batch / dp;
    for (int64_t ep = 1; ep <= dp; ++ep) {
      if (dp % ep != 0 || m.n_routed_experts % ep != 0) continue;
      if (fixed.ep ? ep != *fixed.ep : !ExpertGroupAligned(m, cluster.gpus_per_node, ep)) continue;
      for (int64_t mbs : micro_batch_sizes) {
        if (mbs < 1 || per_replica % mbs != 0) continue;
        const int64_t micro_batches = per_replica / mbs;
        if (fixed.micro_batches && micro_batches != *fixed.micro_batches) continue;
        for (ScheduleKind kind : schedules) {
          if (!CheckScheduleShape(kind, static_cast<int>(pp), static_cast<int>(micro_batches)).ok()) continue;
          if (fixed.stage_layers &&
              static_cast<int>(fixed.stage_layers->size()) != NumStages(kind, static_cast<int>(pp)))
            continue;
          if (NumStages(kind, static_cast<int>(pp)) > m.num_hidden_layers) continue;
          for (const Recompute& rc : recompute_choices) {
            ParallelPlan plan;
            plan.schedule = kind;
            plan.pp = static_cast<int>(pp);
            plan.ep = static_cast<int>(ep);
            plan.micro_batches = static_cast<int>(micro_batches);
            plan.micro_batch_size = mbs;
            plan.seq_len = recipe.train.seq_len;
            plan.recompute = rc;
            plan.precision = precision;
            plan.device_expert_layout = recipe.train.expert_gemm == "own";
            if (fixed.stage_layers) plan.stage_layers = *fixed.stage_layers;
            absl::StatusOr<SimulationResult> mem = SimulateMemory(m, cluster, plan, &cache);
            if (!mem.ok()) return mem.status();
            ++report.considered;
            if (!mem->fits) {
              if (!closest || mem->required_bytes < closest->required_bytes) closest = *std::move(mem);
              continue;
            }
            absl::StatusOr<SimulationResult> sim = SimulateForPlanning(m, cluster, mem->plan, &cache);
            if (!sim.ok()) return sim.status();
            fitting.push_back(*std::move(sim));
          }
        }
      }
    }
  }
  if (report.considered == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no parallel layout exists for a global batch of ", report.global_batch, " sequences on ", world,
        " GPUs", fixed.empty() ? "" : " with " + fixed.Describe(),
        ": it must be divisible by dp = world / pp x micro-batch size for some pp <= "
        "model.num_hidden_layers (",
        m.num_hidden_layers, ") and schedule shape; change train.global_batch_size (or --global-batch)",
        fixed.empty() ? "" : " or the --fix constraints"));
  }
  if (fitting.empty()) {
    const SimulationResult& c = *closest;
    const RankMemory& mem = c.memory[c.peak_memory_rank];
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the model does not fit on %s (%d GPUs of %.0f GiB, %.0f GiB reserved): the smallest footprint among "
        "%d candidates is %.1f GiB per GPU (%s, rank %d: params %.1f + grads %.1f + optimizer %.1f + "
        "activations %.1f GiB, and headroom %.1f GiB for the estimate's error + %.1f GiB for fragmentation) "
        "against %.1f GiB usable, short by %.1f GiB per GPU",
        cluster.name.empty() ? cluster.path : cluster.name, world, cluster.hbm_gib,
        cluster.memory_reserve_gib, report.considered, GiB(c.required_bytes), c.plan.Describe(),
        c.peak_memory_rank, GiB(mem.params), GiB(mem.grads), GiB(mem.optimizer), GiB(mem.activations),
        GiB(mem.estimate_error), GiB(mem.fragmentation), GiB(c.usable_bytes),
        GiB(c.required_bytes - c.usable_bytes)));
  }
  report.fitting = static_cast<int64_t>(fitting.size());
  auto by_time = [](const SimulationResult& a, const SimulationResult& b) { return a.step_s < b.step_s; };
  std::sort(fitting.begin(), fitting.end(), by_time);
  const size_t refine = std::min(fitting.size(), static_cast<size_t>(std::max(options.refine, 0)));
  for (size_t i = 0; i < refine; ++i) {
    if (!fixed.stage_layers) fitting[i] = RefineStageLayers(m, cluster, fitting[i], &cache);
    // The leaders' numbers come from a full simulation (the extended ones agree to a small fraction; one
    // full simulation of thousands of micro-batches takes a fraction of a second).
    if (fitting[i].extrapolated_from[0] != 0) {
      absl::StatusOr<SimulationResult> full = Simulate(m, cluster, fitting[i].plan, &cache);
      if (!full.ok()) return full.status();
      fitting[i] = *std::move(full);
    }
  }
  RankPlans(&fitting);
  report.ranked = std::move(fitting);
  return report;
}

}  // namespace fathom
