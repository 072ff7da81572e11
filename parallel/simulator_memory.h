// The simulator's memory model (internal to parallel/: the simulator and the planner use it through
// parallel/simulator.h): what each pipeline rank holds during a step of a ParallelPlan.
//
//   parameters, gradients, optimizer   per chunk the rank holds: ParameterState (layers/cost.h) of the
//                                      stage's replicated and expert parameters, the optimizer state sharded
//                                      over the parameter's replicas (ReplicaGroups);
//   activations                        the most a rank's instruction list holds at once: at every
//                                      instruction, the micro-batch-chunks waiting between their F and B
//                                      (each a stage's held_f) or between their B and W (held_b), plus the
//                                      running pass's micro-batch at its peak (peak_f; peak_b for a B,
//                                      peak_bw for a BW; an FB peak_f and peak_bw), with the stage bytes of
//                                      layers/activations.h per micro-batch (LiveState).
// Pure arithmetic over the schedule's lists; no timing (that is parallel/simulator.cc's event simulation).
// parallel/memory_plan uses the same activation peak for a rank's start-up memory plan.
#ifndef FATHOM_PARALLEL_SIMULATOR_MEMORY_H_
#define FATHOM_PARALLEL_SIMULATOR_MEMORY_H_

#include <array>
#include <cstdint>
#include <vector>

#include "layers/cost.h"
#include "parallel/cluster.h"
#include "parallel/schedule.h"
#include "parallel/simulator.h"

namespace fathom {

// Replica counts of a stage's parameters: ZeRO-1 shards the optimizer state over them and the gradient
// reduce-scatter runs over them. DualPipe's second copy of each stage doubles both.
struct ReplicaGroups {
  int64_t dense = 1, expert = 1;
};
ReplicaGroups Replicas(const ParallelPlan& plan, int64_t dp);

// One moment of a rank's list: per chunk, how many micro-batches wait between their F and their B
// (`forwarded`) and between their B and their W (`backwarded`), not counting the running instruction's, and
// what runs: the forward of chunk `f`, the B (or BW) of chunk `b`, the W of chunk `w` (-1: none of that
// kind; an FB runs an f and a b).
struct LiveState {
  std::array<int, 2> forwarded = {0, 0}, backwarded = {0, 0};
  int f = -1, b = -1, w = -1;
  bool b_with_w = false;  // the running B does its W node by node (a BW, or an FB's backward)
  auto operator<=>(const LiveState&) const = default;
};

// The states of `program` (one rank's list) that can hold the most for some stage bytes: every state,
// without those another state of the same running passes holds at least as much as.
std::vector<LiveState> LiveStates(const std::vector<Instruction>& program);
// Per rank of `s`.
using LiveProfile = std::vector<std::vector<LiveState>>;
LiveProfile LiveCounts(const Schedule& s);

// The activation bytes `state` holds for one micro-batch's bytes of each chunk (per micro-batch).
double LiveBytes(const LiveState& state, const std::array<ActivationBytes, 2>& chunk_bytes);
// The most over `states`.
double ActivationPeak(const std::vector<LiveState>& states,
                      const std::array<ActivationBytes, 2>& chunk_bytes);

// The memory of pipeline rank `r` for the stage costs `stages` (indexed by model stage), with the headroom
// shares of `cluster` (EstimateError, Fragmentation) on its activations.
RankMemory MemoryOfRank(const Schedule& s, const LiveProfile& live, const std::vector<StageCost>& stages,
                        int r, const PrecisionPolicy& p, const ReplicaGroups& groups,
                        const ClusterConfig& cluster);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_SIMULATOR_MEMORY_H_
