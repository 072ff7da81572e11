// The training state of one rank of a StageRuntime (parallel/stage_runtime.h), as checkpoint sources and
// back. Each rank saves exactly what its ZeRO-1 shards own (parallel/zero.h), in every model chunk it holds
// (two with DualPipe and DualPipeV): the f32 master values of its replicated shard (over dp) and its expert
// shard (over edp), and the AdamW moments of the same ranges, so every element of the model is written once
// per stage (DualPipe's two copies of a stage share their ZeRO groups, so they too write each element once;
// the embedding's copy on the last stage, with MTP, is written by both stages: the reader takes either,
// they are equal) and no rank gathers a whole tensor. The checkpoint stores global coordinates
// (checkpoint/param_slices.h), so the state loads on any mesh: a rank reads its own new shards from whatever
// slices overlap them.
//
// Devices: CUDA tables and moments are copied through host buffers of one shard's size; the current
// ops::OpContext orders the copies (framework/ops.h).
#ifndef FATHOM_CHECKPOINT_STAGE_STATE_H_
#define FATHOM_CHECKPOINT_STAGE_STATE_H_

#include <vector>

#include "absl/status/status.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/rank_file_writer.h"
#include "parallel/stage_runtime.h"

namespace fathom {

// What this rank writes: values of its shards (kKindValue) and, for trainable elements, the moments
// (kKindAdamM, kKindAdamV). The tensors are views of the live state: save (or snapshot them, async)
// before the next step changes them.
std::vector<ShardSource> StageStateSources(StageRuntime& runtime);

// Loads the state from `reader` into this rank's shards: values always, the moments and the AdamW step
// count when the checkpoint has them (a weights-only checkpoint, e.g. `fathom import`, starts AdamW from
// zero: *moments_loaded false). Then every replica gathers the shards and refreshes its compute copies.
// Collective over the runtime's host mesh: every rank returns the same status (the lowest failing rank's
// error: a missing tensor, another shape, a corrupt chunk...), and the parameters are synchronised only
// when every rank loaded. `adam_step` is the AdamW step count to restore (from the checkpoint's metadata).
absl::Status RestoreStageState(CheckpointReader& reader, StageRuntime& runtime, int64_t adam_step,
                               bool* moments_loaded);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_STAGE_STATE_H_
