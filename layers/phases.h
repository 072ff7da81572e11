// The phases of a training step that the layers time for `fathom bench` (framework/phase_timer.h): each
// layer wraps its work in a ScopedPhase with one of these ids. The names are the bench table's rows.
//   kAttention        "attention"          the MLA block but its core: projections, norms, RoPE
//   kAttentionCore    "attention core"     the causal softmax attention (cuDNN's fused SDPA or the own
//                                          kernels), forward and backward; nested in kAttention, whose
//                                          time it is then not (phases count exclusively)
//   kExperts          "experts"            the routed experts' grouped GEMMs and SwiGLU, the shared expert,
//                                          the router's weight gradient
//   kDispatchCombine  "dispatch/combine"   routing, the balance statistic, permutation, the expert exchange,
//                                          the weighted combine and their backwards
//   kHeadLoss         "head/loss"          final norm, vocabulary GEMM and cross-entropy (MTP heads too)
// Registered during static initialisation; use them at run time only (not from other static initialisers).
#ifndef FATHOM_LAYERS_PHASES_H_
#define FATHOM_LAYERS_PHASES_H_

#include "framework/phase_timer.h"

namespace fathom::phases {

extern const PhaseId kAttention;
extern const PhaseId kAttentionCore;
extern const PhaseId kExperts;
extern const PhaseId kDispatchCombine;
extern const PhaseId kHeadLoss;

}  // namespace fathom::phases

#endif  // FATHOM_LAYERS_PHASES_H_
