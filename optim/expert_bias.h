// Auxiliary-loss-free load balancing (DeepSeek-V3 report, section 2.1.2): after each training step, every
// MoE layer's routing bias (HF `mlp.gate.e_score_correction_bias`, a non-trainable ParamTable buffer used
// for expert selection only) moves by a fixed speed gamma toward balance:
//   b_i <- b_i + gamma * sign(mean_load - load_i)        sign(0) = 0
// where load_i is the number of token-to-expert assignments expert i received over the whole step's batch
// (summed over micro-batches and, in a parallel run, all-reduced over data-parallel ranks first).
// Overloaded experts (load above the mean) get a lower bias, underloaded ones a higher bias.
#ifndef FATHOM_OPTIM_EXPERT_BIAS_H_
#define FATHOM_OPTIM_EXPERT_BIAS_H_

#include <cstdint>
#include <vector>

#include "framework/tensor.h"

namespace fathom {

// Applies the update in place. bias: (E) f32 or f64; load: E counts, each >= 0. gamma = 0 is a no-op.
// The comparison with the mean is exact (done in integers).
void UpdateExpertBias(const Tensor& bias, const std::vector<int64_t>& load, double gamma);

// Adds the per-expert counts of `topk_idx` (N, K) i32 or i64 (global expert ids in [0, n_experts)) into
// `load` (n_experts entries; resized and zeroed when empty). Used to accumulate a step's load.
void AccumulateExpertLoad(const Tensor& topk_idx, int64_t n_experts, std::vector<int64_t>& load);

// Balance of one layer's load for logs: max(load) / mean(load) and min(load) / mean(load); perfectly
// balanced gives 1 and 1. Both are 0 when nothing was routed (mean 0). REQUIRES: load non-empty.
struct ExpertLoadStats {
  double max_over_mean;
  double min_over_mean;
};
ExpertLoadStats ComputeExpertLoadStats(const std::vector<int64_t>& load);

}  // namespace fathom

#endif  // FATHOM_OPTIM_EXPERT_BIAS_H_
