// Pipeline schedules as data: per pipeline rank, an ordered list of compute instructions. The same lists
// drive the pipeline executor, the simulator (parallel/simulator.h) and the Chrome-trace export, and
// parallel/schedule_validate.h proves them complete and deadlock-free before anything runs.
//
// Vocabulary.
//   rank    a pipeline rank (one GPU of a pipeline), 0 .. pp-1.
//   chunk   a slice of the model held by a rank. 1F1B and ZB1P hold one chunk per rank; DualPipe and
//           DualPipeV hold two (chunk 0 and chunk 1).
//   stage   the position of a chunk on a micro-batch's path, 0 .. num_stages-1; the micro-batch's forward
//           runs stage 0, 1, ... and its backward runs the stages in reverse.
//   model stage  which contiguous slice of layers a chunk computes; stage s of every micro-batch runs model
//           stage s (the layers of `stage_layers[s]`).
//
// Placement (Schedule::Place):
//   1F1B, ZB1P   stage s on (rank s, chunk 0); num_stages = pp.
//   DualPipe     two directions of micro-batches and two copies of the stages (DeepSeek-V3 report, 3.2.1):
//                micro-batches 0 .. M/2-1 enter at rank 0 and run stage s on (rank s, chunk 0); micro-batches
//                M/2 .. M-1 enter at rank pp-1 and run stage s on (rank pp-1-s, chunk 1). num_stages = pp;
//                each rank holds model stages r and pp-1-r (2x parameters; the two copies' gradients are
//                summed over the rank pair, like a data-parallel all-reduce).
//   DualPipeV    one direction, a V: stage s < pp on (rank s, chunk 0), stage s >= pp on (rank 2pp-1-s,
//                chunk 1). num_stages = 2*pp; rank 0 holds the first and the last stage.
//
// Communication is implied by dependency (no SEND/RECV instructions):
//   - F of (mb, stage s > 0) consumes the activation produced by F of (mb, s-1).
//   - B or BW of (mb, s) consumes the gradient produced by B or BW of (mb, s+1) (the last stage starts the
//     backward from its own loss), and the activations saved by F of (mb, s) on this rank.
//   - W of (mb, s) consumes what B of (mb, s) left on this rank.
//   When producer and consumer sit on different ranks, the producer sends (non-blocking, buffered) as soon
//   as its instruction completes and the consumer blocks until the message has arrived; on one rank the
//   producer must simply come earlier in the list. An executor may post its receives early (irecv) as
//   DualPipe does; it never needs to reorder instructions. On every channel (sending rank, receiving rank,
//   activation or gradient, receiving chunk) messages are consumed in the order they are produced, so a
//   tag of (kind, chunk) suffices (the validator checks this).
//
// Instruction kinds (llm.c / DualPipe vocabulary):
//   F   forward of (mb, chunk).
//   B   backward for the inputs (dgrad) of (mb, chunk); the weight gradient is left for a later W.
//   W   backward for the weights (wgrad) of (mb, chunk), after its B.
//   BW  full backward of (mb, chunk): B then W as one instruction.
//   FB  forward of (mb, chunk) overlapped with the full backward (BW) of (mb_b, chunk_b): DualPipe's chunk
//       pair, whose all-to-all communication of each half hides under the other half's compute.
#ifndef FATHOM_PARALLEL_SCHEDULE_H_
#define FATHOM_PARALLEL_SCHEDULE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framework/config.h"

namespace fathom {

enum class ScheduleKind { k1F1B, kZB1P, kDualPipe, kDualPipeV };

// "1f1b" | "zb1p" | "dualpipe" | "dualpipev" (the recipe's parallel.schedule values).
absl::StatusOr<ScheduleKind> ParseScheduleKind(const std::string& name);
std::string ScheduleKindName(ScheduleKind kind);
// Chunks per rank: 1 for 1F1B and ZB1P, 2 for DualPipe and DualPipeV.
int ChunksPerRank(ScheduleKind kind);
// Stages a micro-batch passes through for `pp` ranks: pp, or 2*pp for DualPipeV.
int NumStages(ScheduleKind kind, int pp);
// Why (pp, micro_batches) is not allowed for `kind`, or OK:
//   1F1B, ZB1P: pp >= 1, micro_batches >= 1;
//   DualPipe: pp even, micro_batches even and >= 2*pp;  DualPipeV: pp >= 1, micro_batches >= 2*pp.
absl::Status CheckScheduleShape(ScheduleKind kind, int pp, int micro_batches);
// A recipe's parallel section against the schedules' rules (the one place that knows them; framework/
// config.h checks only what needs no schedule knowledge): parallel.schedule names a schedule, the model
// has a decoder layer for each of its NumStages stages, parallel.stage_layers (when given) has NumStages
// entries, and CheckScheduleShape. InvalidArgument naming the key.
absl::Status ValidateParallelSchedule(const ParallelConfig& parallel, const ModelConfig& model);

enum class OpKind : uint8_t { kF, kB, kW, kBW, kFB };
const char* OpKindName(OpKind kind);  // "F", "B", "W", "BW", "FB"

struct Instruction {
  OpKind kind = OpKind::kF;
  int32_t mb = 0;        // micro-batch of F / B / W / BW; of the forward half of FB
  int32_t chunk = 0;     // chunk on this rank of `mb`
  int32_t mb_b = -1;     // FB only: micro-batch of the backward half
  int32_t chunk_b = -1;  // FB only: its chunk

  static Instruction F(int mb, int chunk) { return {OpKind::kF, mb, chunk}; }
  static Instruction B(int mb, int chunk) { return {OpKind::kB, mb, chunk}; }
  static Instruction W(int mb, int chunk) { return {OpKind::kW, mb, chunk}; }
  static Instruction BW(int mb, int chunk) { return {OpKind::kBW, mb, chunk}; }
  static Instruction FB(int mb_f, int chunk_f, int mb_b, int chunk_b) {
    return {OpKind::kFB, mb_f, chunk_f, mb_b, chunk_b};
  }
  bool operator==(const Instruction&) const = default;
};

// "F(3,c0)", "FB(F 5,c0 | BW 2,c1)".
std::string ToString(const Instruction& ins);
// The name of an instruction's span in Chrome traces, the simulator's and the executor's alike:
// "F 3 c0", "BW 2 c1", "FB F5c0|BW2c1".
std::string TraceName(const Instruction& ins);

struct StageSlot {
  int rank = 0;
  int chunk = 0;
  bool operator==(const StageSlot&) const = default;
};

struct Schedule {
  ScheduleKind kind = ScheduleKind::k1F1B;
  int pp = 1;                                   // pipeline ranks
  int micro_batches = 1;                        // per step (DualPipe: both directions together)
  std::vector<std::vector<Instruction>> ranks;  // ranks[r]: what rank r runs, in order

  int chunks() const { return ChunksPerRank(kind); }
  int num_stages() const { return NumStages(kind, pp); }
  // Where micro-batch `mb` runs stage `stage` (see the placement table above).
  StageSlot Place(int mb, int stage) const;
  // The stage that (rank, chunk) runs for micro-batch `mb`, or -1 when `mb` never visits that chunk
  // (DualPipe: a micro-batch of the other direction).
  int StageOf(int rank, int chunk, int mb) const;
  // The model stage (slice of layers) that chunk `chunk` of `rank` holds.
  int ModelStage(int rank, int chunk) const;
};

// Generators. REQUIRES: CheckScheduleShape(kind, pp, micro_batches).ok() (FATHOM_CHECK otherwise).
// 1F1B (PipeDream-flush, as in Megatron): per rank, warm-up forwards, steady F/BW pairs, cool-down BWs.
Schedule Schedule1F1B(int pp, int micro_batches);
// ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism"): 1F1B with B and W split and the W of rank r
// delayed by r steady iterations, so the W passes fill the cool-down bubbles at 1F1B's activation memory.
Schedule ScheduleZB1P(int pp, int micro_batches);
// DualPipe (DeepSeek-V3): the eight phases of deepseek-ai/DualPipe, with overlapped FB pairs.
Schedule ScheduleDualPipe(int pp, int micro_batches);
// DualPipeV ("cut-in-half" DualPipe): the same eight phases over a V-shaped placement.
Schedule ScheduleDualPipeV(int pp, int micro_batches);
// Dispatches on `kind`; InvalidArgument naming pp / micro_batches when the shape is not allowed.
absl::StatusOr<Schedule> MakeSchedule(ScheduleKind kind, int pp, int micro_batches);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_SCHEDULE_H_
