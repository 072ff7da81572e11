#include "layers/phases.h"

namespace fathom::phases {

const PhaseId kAttention = RegisterPhase("attention");
const PhaseId kAttentionCore = RegisterPhase("attention core");
const PhaseId kExperts = RegisterPhase("experts");
const PhaseId kDispatchCombine = RegisterPhase("dispatch/combine");
const PhaseId kHeadLoss = RegisterPhase("head/loss");

}  // namespace fathom::phases
