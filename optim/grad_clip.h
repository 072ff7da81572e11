// Global-norm gradient clipping over a ParamTable's gradients.
//
// Only trainable parameters count and are scaled; alignment padding between parameters and the grads of
// non-trainable buffers (the expert bias) are ignored. The squared norm of a range is a partial sum, so
// data- and pipeline-parallel ranks can all-reduce their parts into the global norm before clipping:
//   total_norm = sqrt(sum over ranks of GradNormSquared(table, shard_begin, shard_end))
//   ClipGradients(table, cfg.grad_clip, total_norm)
#ifndef FATHOM_OPTIM_GRAD_CLIP_H_
#define FATHOM_OPTIM_GRAD_CLIP_H_

#include <cstdint>

#include "framework/param_table.h"

namespace fathom {

// Sum of g^2 over the trainable elements of the flat grad buffer inside [begin, end) (end = -1: to the end),
// accumulated in double in increasing index order (deterministic for a given range).
// REQUIRES: table finalized; 0 <= begin <= end <= t.numel().
double GradNormSquared(const ParamTable& t, int64_t begin = 0, int64_t end = -1);

// The clipping factor: min(1, max_norm / (total_norm + 1e-6)), or 1 when max_norm = 0 (no clipping).
// REQUIRES: max_norm >= 0; total_norm finite and >= 0 (checked, as for ClipGradients).
double ClipScale(double max_norm, double total_norm);

// Multiplies every trainable gradient by ClipScale(max_norm, total_norm) and returns the factor.
// max_norm = 0 disables clipping (returns 1). When scale is 1 the grads are not written at all.
// REQUIRES: max_norm >= 0; total_norm finite and >= 0 (the caller checks for a non-finite norm, which
// means the step diverged, before clipping).
double ClipGradients(ParamTable& t, double max_norm, double total_norm);

}  // namespace fathom

#endif  // FATHOM_OPTIM_GRAD_CLIP_H_
