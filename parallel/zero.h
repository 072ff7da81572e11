// ZeRO-1 data parallelism over one rank's ParamTable (DESIGN.md idea 6): the replicated parameters are
// sharded over the stage's data-parallel group (dp), the routed experts over their expert-data-parallel
// group (edp). Per step:
//   ReduceGradients   reduce-scatter (sum) each group's gradient range; this rank keeps its shard's sums
//   LocalNormSquared  the trainable gradient norm^2 of this rank's shards, less `exclude` ranges (a tensor
//                     held twice in the pipeline, e.g. the last stage's copy of the embedding)
//   Step              clip by the global norm, AdamW on this rank's shards
//   GatherParameters  all-gather the updated shards so every replica holds the whole range again
// Shards are equal chunks of ceil(range / group size) elements (the last one shorter or empty).
#ifndef FATHOM_PARALLEL_ZERO_H_
#define FATHOM_PARALLEL_ZERO_H_

#include <memory>
#include <utility>
#include <vector>

#include "framework/config.h"
#include "framework/param_table.h"
#include "optim/adamw.h"
#include "parallel/communicator.h"

namespace fathom {

class ZeroOptimizer {
 public:
  // `dp` shards the kReplicated range, `edp` the kExpert range; both must outlive this object.
  ZeroOptimizer(ParamTable& table, const OptimConfig& cfg, Communicator& dp, Communicator& edp,
                std::vector<std::pair<int64_t, int64_t>> exclude_from_norm = {});

  void ReduceGradients();
  double LocalNormSquared() const;
  // Scales this rank's shards by min(1, max_norm / total_norm) (max_norm 0: no clipping), then AdamW.
  void Step(double lr, double total_norm, double max_norm);
  void GatherParameters();

  size_t state_bytes() const;
  // This rank's shard of each group, [begin, end) in flat elements (may be empty).
  std::pair<int64_t, int64_t> shard(ParamGroup group) const { return shards_[static_cast<int>(group)].owned; }

 private:
  struct Shard {
    Communicator* comm;
    std::pair<int64_t, int64_t> range;  // the group's whole range in the table
    int64_t chunk;                      // elements per rank
    std::pair<int64_t, int64_t> owned;  // this rank's part of `range`
    std::unique_ptr<AdamW> adamw;       // null when `owned` is empty
  };
  ParamTable& table_;
  Shard shards_[2];
  std::vector<std::pair<int64_t, int64_t>> exclude_;
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_ZERO_H_
