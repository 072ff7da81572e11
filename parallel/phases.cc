#include "parallel/phases.h"

namespace fathom::phases {

const PhaseId kOptimizer = RegisterPhase("optimizer");

}  // namespace fathom::phases
