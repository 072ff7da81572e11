// `model.init_from: HF_DIR`: a fresh run's parameters from an HF DeepSeek-V3 directory instead of the
// random initialisation (checkpoint/hf_import.h reads the directory).
//
// Each rank reads the tensors of its own ZeRO-1 shards (parallel/zero.h) of its stage, as a checkpoint
// resume does (checkpoint/stage_state.h), and every replica then gathers the shards and refreshes its
// compute copies: each byte of the directory is read once per data-parallel group. The optimizer, the
// LR schedule, the data and the RNG stay as a fresh run has them (AdamW from zero).
#ifndef FATHOM_CHECKPOINT_HF_INIT_H_
#define FATHOM_CHECKPOINT_HF_INIT_H_

#include <string>

#include "absl/status/status.h"
#include "parallel/stage_runtime.h"

namespace fathom {

// Loads `dir` into this rank's shards of `runtime`'s parameters, then synchronises every replica. First,
// world rank 0 checks that the MTP copies `dir` holds equal the shared embedding and head (CheckHfMtpCopies),
// as `fathom import` does. Collective over the runtime's host mesh: every rank returns the same status (the
// lowest failing rank's: config.json describing another model than the recipe's, MTP copies that differ, a
// missing or misshapen tensor, a non-finite value; checkpoint/hf_import.h), and the parameters are
// synchronised only when every rank loaded. Call it where a resume would load a checkpoint, when there is
// none to resume. CUDA parameters need a current ops::OpContext, as for a resume.
absl::Status InitFromHfDirectory(const std::string& dir, StageRuntime& runtime);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_HF_INIT_H_
