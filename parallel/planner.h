// The hardware-aware planner: for a recipe's model and training shape and a cluster, enumerates
//   pp       divisors of the world with enough decoder layers for every stage,
//   ep       divisors of dp = world / pp and of n_routed_experts; inside one node a divisor of
//            gpus_per_node, beyond it whole nodes with the expert groups aligned to nodes
//            (n_group % nodes == 0), so that group-limited routing (topk_group) is node-limited;
//   edp      dp / ep (ZeRO-1 shards optimizer state over all replicas; no tensor parallelism, ever);
//   schedule 1f1b, zb1p, dualpipe, dualpipev (with their shape rules);
//   micro-batch size (PlannerOptions::micro_batch_sizes) and count, from the global batch;
//   recompute none | norm | norm+mla_up;
// keeps the candidates whose peak memory plus headroom (the activation estimate's error and the allocator's
// fragmentation, cluster.h memory_headroom) fits HBM less the reserve, ranks them by simulated step time
// (parallel/simulator.h) and refines the stage split of the best few by simulation. The global batch is
// held fixed (train.global_batch_size); the recipe's parallel section is ignored except for --fix.
//
// Ranking: by step time, except among the candidates within kPlannerTieTolerance (1%) of the best, which
// the simulator cannot tell apart (its efficiencies are that uncertain even calibrated), so the simpler
// layout wins: fewer pipeline stages (less bubble risk, fewer point-to-point hops, fewer ranks that must
// stay in step), then the smaller ep (all-to-alls over fewer GPUs, fewer nodes per expert group), then the
// schedule listed first in {dualpipe, dualpipev, zb1p, 1f1b}, then the faster. DualPipe on pp ranks and
// DualPipeV on pp/2 ranks have the same stages, bubble, parameters and activations per GPU (the DualPipe
// README's table) and simulate within a fraction of a percent of each other; DualPipe is the report's
// choice and the one the recipe schema expresses today (stage_layers has pp entries).
#ifndef FATHOM_PARALLEL_PLANNER_H_
#define FATHOM_PARALLEL_PLANNER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "framework/config.h"
#include "parallel/cluster.h"
#include "parallel/simulator.h"
#include "parallel/whole_run.h"

namespace fathom {

inline constexpr double kPlannerTieTolerance = 0.01;

// What the user fixes (`fathom plan --fix parallel.pp=16`, repeatable); everything else is the planner's
// choice. The recipe's own parallel section is ignored except through these.
struct PlanConstraints {
  std::optional<int> pp, ep, micro_batches;
  std::optional<ScheduleKind> schedule;
  std::optional<int64_t> micro_batch_size;
  std::optional<std::vector<int64_t>> stage_layers;  // used as given: no balancing, no refinement

  bool empty() const;
  std::string Describe() const;  // "parallel.pp=16, parallel.ep=64" ("" when empty)
};

// Adds one `--fix` constraint: "section.key=value" or "section.key" (the recipe's value). Keys:
// parallel.pp, parallel.ep, parallel.micro_batches, parallel.schedule, parallel.stage_layers ([2, 4, ...]),
// train.micro_batch_size. InvalidArgument naming --fix, the key and what was expected.
absl::Status AddPlanConstraint(const std::string& fix, const Recipe& recipe, PlanConstraints* constraints);

struct PlannerOptions {
  // Sequences per optimizer step. 0: the recipe's train.global_batch_size (planning a recipe without one is
  // an error naming that key).
  int64_t global_batch = 0;
  PlanConstraints fixed;
  // The precision and activation policy the layouts are simulated with (layers/cost.h): the DeepSeek-V3
  // report's (FP8 GEMMs, recomputation choices: what the planner assumes for the 671B model) or what
  // fathom runs today (PrecisionPolicy::Fathom; nothing recomputed, and only the single-chunk schedules its
  // executor runs, 1f1b and zb1p, unless --fix names another). Unset: PrecisionFor(recipe).
  std::optional<PrecisionPolicy> precision;
  std::vector<int64_t> micro_batch_sizes = {1, 2, 4};
  std::vector<ScheduleKind> schedules = {ScheduleKind::kDualPipe, ScheduleKind::kDualPipeV,
                                         ScheduleKind::kZB1P, ScheduleKind::k1F1B};
  int refine = 5;  // how many of the best candidates get their stage split refined by simulation
};

struct PlanReport {
  int64_t global_batch = 0;
  int64_t considered = 0;                // candidates simulated for memory
  int64_t fitting = 0;                   // of which fit
  std::vector<SimulationResult> ranked;  // fitting candidates, best first
};

// The report's precision policy (PrecisionPolicy::Report) with the recipe's optim.moment_dtype (bf16 | f32).
PrecisionPolicy PrecisionFor(const Recipe& recipe);
// What fathom runs for the recipe (PrecisionPolicy::Fathom): train.dtype's compute width (bf16 with f32
// master weights; f32 without copies) and optim.moment_dtype.
PrecisionPolicy FathomPrecisionFor(const Recipe& recipe);
// The --policy flag of plan and simulate: "report" (PrecisionFor) or "fathom" (FathomPrecisionFor);
// InvalidArgument naming --policy otherwise.
absl::StatusOr<PrecisionPolicy> PolicyNamed(const std::string& name, const Recipe& recipe);

// Plans `recipe` on `cluster` for a fixed global batch (options.global_batch, else
// recipe.train.global_batch_size), ignoring recipe.parallel except through options.fixed; the recipe may
// have been loaded with RecipeUse::kPlan. InvalidArgument naming train.global_batch_size when there is
// none, and when no candidate shape exists (e.g. the global batch is not divisible by any data-parallel
// size, or the constraints exclude every layout); ResourceExhausted when candidates exist but none fits in
// memory: the message gives the candidate with the least memory, its peak, the usable HBM and the
// shortfall.
absl::StatusOr<PlanReport> PlanParallelism(const Recipe& recipe, const ClusterConfig& cluster,
                                           const PlannerOptions& options = {});

// Orders `plans` the planner's way (see the header): by step time, the near-ties within
// kPlannerTieTolerance of the fastest by fewer stages, then smaller ep, then the preferred schedule.
void RankPlans(std::vector<SimulationResult>* plans);

// Whole-run accounting (parallel/whole_run.h) of `steady` (a plan of `global_batch` sequences) for the
// recipe's train.steps steps, with the cluster's `run:` assumptions (FailedPrecondition when it has none):
// the ramp's batches are simulated with the same layout (micro-batches per pipeline cut to the batch; below
// the schedule's smallest count, that count's step carries the smaller batch).
absl::StatusOr<WholeRunEstimate> WholeRunForPlan(const Recipe& recipe, const ClusterConfig& cluster,
                                                 const SimulationResult& steady, int64_t global_batch);

// Moves one decoder layer between two stages at a time while the simulated step time improves and the
// memory still fits; returns the best simulation found (`start` when nothing improves).
SimulationResult RefineStageLayers(const ModelConfig& model, const ClusterConfig& cluster,
                                   const SimulationResult& start, ScheduleCache* cache = nullptr);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_PLANNER_H_
