// How many decoder layers each model stage holds: `parallel.stage_layers` when the recipe gives it, else
// the contiguous split that minimises the most expensive stage, costed by the cost model's forward FLOPs per
// token (the first stage also pays for the embedding, the last for the head and MTP modules). The model is
// cut into NumStages(parallel.schedule, parallel.pp) stages (parallel/schedule.h): pp, or 2 * pp for
// DualPipeV, whose rank 0 then holds both the first stage (embedding) and the last (head and MTP).
#ifndef FATHOM_PARALLEL_STAGE_SPLIT_H_
#define FATHOM_PARALLEL_STAGE_SPLIT_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "framework/config.h"

namespace fathom {

// Layers per stage (NumStages entries, each >= 1, summing to num_hidden_layers), or InvalidArgument naming
// parallel.schedule / parallel.pp / parallel.stage_layers.
absl::StatusOr<std::vector<int64_t>> SplitStages(const ModelConfig& model, const ParallelConfig& parallel,
                                                 int64_t seq_len);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_STAGE_SPLIT_H_
