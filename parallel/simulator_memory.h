// The simulator's memory model (internal to parallel/: the simulator and the planner use it through
// parallel/simulator.h): what each pipeline rank holds during a step of a ParallelPlan.
//
//   parameters, gradients, optimizer   per chunk the rank holds: ParameterState (layers/cost.h) of the
//                                      stage's replicated and expert parameters, the optimizer state sharded
//                                      over the parameter's replicas (ReplicaGroups);
//   activations                        the most micro-batch-chunks a rank's instruction list keeps alive at
//                                      once (LiveProfile), times each stage's bytes per micro-batch, plus one
//                                      pass's transient working set per chunk.
// Pure arithmetic over the schedule's lists; no timing (that is parallel/simulator.cc's event simulation).
#ifndef FATHOM_PARALLEL_SIMULATOR_MEMORY_H_
#define FATHOM_PARALLEL_SIMULATOR_MEMORY_H_

#include <array>
#include <cstdint>
#include <vector>

#include "layers/cost.h"
#include "parallel/schedule.h"
#include "parallel/simulator.h"

namespace fathom {

// Replica counts of a stage's parameters: ZeRO-1 shards the optimizer state over them and the gradient
// reduce-scatter runs over them. DualPipe's second copy of each stage doubles both.
struct ReplicaGroups {
  int64_t dense = 1, expert = 1;
};
ReplicaGroups Replicas(const ParallelPlan& plan, int64_t dp);

// Per rank, the maximal vectors of live micro-batch-chunks (count of chunk 0, count of chunk 1) over its
// list: a micro-batch-chunk is live from its F until its W or BW ends (an FB counts its forward half
// before its backward half). The activation peak for any stage sizes is max over them of counts . bytes.
using LiveProfile = std::vector<std::vector<std::array<int, 2>>>;
LiveProfile LiveCounts(const Schedule& s);

// The memory of pipeline rank `r` for the stage costs `stages` (indexed by model stage).
RankMemory MemoryOfRank(const Schedule& s, const LiveProfile& live, const std::vector<StageCost>& stages,
                        int r, const PrecisionPolicy& p, const ReplicaGroups& groups);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_SIMULATOR_MEMORY_H_
