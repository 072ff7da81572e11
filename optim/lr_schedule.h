// Learning-rate schedule: linear warmup, an optional constant stretch at the peak, then a decay to
// min_lr (cosine, linear or constant), then min_lr. Steps count from 0.
//
// With W = warmup_steps, C = constant_steps, S = W + C (first decay step) and
// D = decay_steps (or total_steps - S when decay_steps = -1, floored at 0):
//   step <  W:             lr * (step + 1) / W          (lr / W at step 0, exactly lr at step W - 1)
//   W <= step < S:         lr
//   S <= step < S + D:     with progress q = (step - S + 1) / D in (0, 1] (the last decay step has q = 1):
//                            cosine:   min_lr + (lr - min_lr) * (1 + cos(pi * q)) / 2
//                            linear:   lr + (min_lr - lr) * q
//                            constant: lr
//   step >= S + D:         min_lr (cosine, linear); lr (constant)
// So with decay_steps = -1 the last training step (total_steps - 1) runs at exactly min_lr, and the cosine
// passes through (lr + min_lr) / 2 at q = 1/2. "constant" keeps the peak after the warmup for good, as
// Megatron-LM's constant style does (it returns max_lr before looking at the decay steps).
// Conventions a Megatron-LM user should know (TorchTitan's are these): the step being taken counts, so step
// 0 runs at lr / W where Megatron's first iteration runs at 0 (fathom is one step ahead of it); D is the
// length of the decay window after W + C, where Megatron's lr_decay_iters counts from step 0. `step` is the
// schedule's position: the trainer passes the updates made so far, so a skipped step (non-finite gradients)
// does not advance it, as in Megatron.
#ifndef FATHOM_OPTIM_LR_SCHEDULE_H_
#define FATHOM_OPTIM_LR_SCHEDULE_H_

#include <cstdint>

#include "framework/config.h"

namespace fathom {

// REQUIRES: step >= 0; cfg validated (decay_style cosine | linear | constant, warmup_steps >= 0,
// constant_steps >= 0, decay_steps >= -1).
double LearningRate(const OptimConfig& cfg, int64_t step, int64_t total_steps);

}  // namespace fathom

#endif  // FATHOM_OPTIM_LR_SCHEDULE_H_
