// The phase of a training step that the stage runtime times for `fathom bench` (framework/phase_timer.h),
// beside the layers' (layers/phases.h):
//   kOptimizer  "optimizer"  ZeRO-1's gradient reduce-scatter, the global norm, clipping, AdamW, the
//                            parameter all-gather and the compute-copy refresh
// Registered during static initialisation; use it at run time only.
#ifndef FATHOM_PARALLEL_PHASES_H_
#define FATHOM_PARALLEL_PHASES_H_

#include "framework/phase_timer.h"

namespace fathom::phases {

extern const PhaseId kOptimizer;

}  // namespace fathom::phases

#endif  // FATHOM_PARALLEL_PHASES_H_
