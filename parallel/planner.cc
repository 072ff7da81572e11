#include "parallel/planner.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

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

}  // namespace

PrecisionPolicy PrecisionFor(const Recipe& recipe) {
  PrecisionPolicy p;
  p.moment_bytes = recipe.optim.moment_dtype == "bf16" ? 2 : 4;
  return p;
}

SimulationResult RefineStageLayers(const ModelConfig& model, const ClusterConfig& cluster,
                                   const SimulationResult& start) {
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
        absl::StatusOr<SimulationResult> r = Simulate(model, cluster, plan);
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
  PlanReport report;
  report.global_batch = options.global_batch;
  if (report.global_batch == 0) {
    // The batch the recipe's own layout runs: micro-batch size x micro-batches per pipeline x pipelines.
    // On a cluster smaller than (or not divisible by) the recipe's pipeline, one pipeline's batch.
    const int64_t pipelines = world % recipe.parallel.pp == 0 ? world / recipe.parallel.pp : 1;
    report.global_batch = recipe.train.micro_batch_size * recipe.parallel.micro_batches * pipelines;
  }
  const PrecisionPolicy precision = PrecisionFor(recipe);

  std::vector<SimulationResult> fitting;
  std::optional<SimulationResult> closest;  // least memory when nothing fits
  for (int64_t pp = 1; pp <= world; ++pp) {
    if (world % pp != 0 || pp > m.num_hidden_layers) continue;
    const int64_t dp = world / pp;
    if (report.global_batch % dp != 0) continue;
    const int64_t per_replica = report.global_batch / dp;
    for (int64_t ep = 1; ep <= dp; ++ep) {
      if (dp % ep != 0 || m.n_routed_experts % ep != 0 || !ExpertGroupAligned(m, cluster.gpus_per_node, ep))
        continue;
      for (int64_t mbs : options.micro_batch_sizes) {
        if (mbs < 1 || per_replica % mbs != 0) continue;
        const int64_t micro_batches = per_replica / mbs;
        for (ScheduleKind kind : options.schedules) {
          if (!CheckScheduleShape(kind, static_cast<int>(pp), static_cast<int>(micro_batches)).ok()) continue;
          if (NumStages(kind, static_cast<int>(pp)) > m.num_hidden_layers) continue;
          for (const Recompute& rc : RecomputeChoices()) {
            ParallelPlan plan;
            plan.schedule = kind;
            plan.pp = static_cast<int>(pp);
            plan.ep = static_cast<int>(ep);
            plan.micro_batches = static_cast<int>(micro_batches);
            plan.micro_batch_size = mbs;
            plan.seq_len = recipe.train.seq_len;
            plan.recompute = rc;
            plan.precision = precision;
            absl::StatusOr<SimulationResult> mem = SimulateMemory(m, cluster, plan);
            if (!mem.ok()) return mem.status();
            ++report.considered;
            if (!mem->fits) {
              if (!closest || mem->peak_memory_bytes < closest->peak_memory_bytes) closest = *std::move(mem);
              continue;
            }
            absl::StatusOr<SimulationResult> sim = Simulate(m, cluster, mem->plan);
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
        " GPUs: it must be divisible by dp = world / pp for some pp <= model.num_hidden_layers (",
        m.num_hidden_layers, "); pass --global-batch"));
  }
  if (fitting.empty()) {
    const SimulationResult& c = *closest;
    const RankMemory& mem = c.memory[c.peak_memory_rank];
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the model does not fit on %s (%d GPUs of %.0f GiB, %.0f GiB reserved): the smallest footprint among "
        "%d "
        "candidates is %.1f GiB per GPU (%s, rank %d: params %.1f + grads %.1f + optimizer %.1f + "
        "activations "
        "%.1f GiB) against %.1f GiB usable, short by %.1f GiB per GPU",
        cluster.name.empty() ? cluster.path : cluster.name, world, cluster.hbm_gib,
        cluster.memory_reserve_gib, report.considered, GiB(c.peak_memory_bytes), c.plan.Describe(),
        c.peak_memory_rank, GiB(mem.params), GiB(mem.grads), GiB(mem.optimizer), GiB(mem.activations),
        GiB(c.usable_bytes), GiB(c.peak_memory_bytes - c.usable_bytes)));
  }
  report.fitting = static_cast<int64_t>(fitting.size());
  auto by_time = [](const SimulationResult& a, const SimulationResult& b) { return a.step_s < b.step_s; };
  std::sort(fitting.begin(), fitting.end(), by_time);
  const size_t refine = std::min(fitting.size(), static_cast<size_t>(std::max(options.refine, 0)));
  for (size_t i = 0; i < refine; ++i) fitting[i] = RefineStageLayers(m, cluster, fitting[i]);
  std::sort(fitting.begin(), fitting.end(), by_time);
  // Near-ties go to the preferred schedule (see the header).
  const double tie = fitting.front().step_s * (1 + kPlannerTieTolerance);
  auto near = std::partition_point(fitting.begin(), fitting.end(),
                                   [&](const SimulationResult& r) { return r.step_s <= tie; });
  std::stable_sort(fitting.begin(), near, [](const SimulationResult& a, const SimulationResult& b) {
    return SchedulePreference(a.plan.schedule) < SchedulePreference(b.plan.schedule);
  });
  report.ranked = std::move(fitting);
  return report;
}

}  // namespace fathom
