// The start-up memory check (issue 17, "Bounded allocations"): before anything large is allocated, the
// memory a recipe implies for each rank is compared with what the machine has, and an impossible recipe is
// refused with the bytes needed and available (exit 2) in well under a second, instead of ending in an
// overflowed allocation size, an abort or an unbounded climb.
//
// Arithmetic is overflow-safe: element counts and bytes are int64 that saturate at kSaturatedBytes (every
// product goes through __builtin_mul_overflow), so model.hidden_size = 10^18 reads "more than 8 EiB", not
// a wrapped-around small number. Nothing here loops over layers or allocates per layer: the counts are
// closed forms (a dense layer, a MoE layer, the embedding, the head, an MTP module, times how many the
// rank holds), so num_hidden_layers = 10^8 costs what 3 does.
//
// What is counted, per rank (its pipeline stage; its share of the routed experts, E / ep):
//   parameters   the slice's elements x the parameter dtype (train.dtype f64: 8, else 4 bytes: f32 master
//                weights). On the first stage the embedding; on the last the final norm, the output head,
//                the MTP modules and, with MTP and pp > 1, the last stage's copy of the embedding.
//   gradients    the same elements and width (f32/f64 accumulators).
//   optimizer    AdamW's two moments (optim.moment_dtype: 4 or 2 bytes) of this rank's ZeRO-1 shard:
//                the replicated parameters divided by dp, the routed experts by edp.
//   activations  what the forward keeps per token for the backward, itemised as layers/cost.h does with
//                nothing recomputed (the layer's inputs, norm outputs, latents, per-head q/k/v and attention
//                output, the router's scores, the experts' routed copies and SwiGLU inputs; the head's
//                logit gradient), x micro_batch_size x seq_len tokens x the micro-batches a single-chunk
//                schedule holds on the stage (min(pp - stage, parallel.micro_batches)), in the compute width;
//                dualpipe / dualpipev: min(pp + 1, micro_batches) micro-batches of the lighter chunk.
// A rank of dualpipe or dualpipev holds two model chunks (both counted). Decoder layers per stage: the
// runtime's split (parallel/stage_split.h: parallel.stage_layers, else the cost-balanced one). The
// estimate leaves out transient buffers, the GEMM workspace, reserves and allocator overhead: it is a floor
// (at most what parallel/memory_plan.h's device plan counts, and 40.5 GiB for recipes/small.yaml, which
// measured 47.5 GiB), so that the check never refuses a run that would fit, and catches every recipe that
// cannot.
//
// Host: the ranks of a node share its memory; a rank's node holds the ranks [rank - local_rank,
// rank - local_rank + local_size) (the launcher's by-slot order) and their needs add up. Available:
// MemAvailable of /proc/meminfo. With train.device cuda the host holds only the parameters and gradients
// while the model is built (they move to the GPU after), and the device check compares the rest with the
// GPU's free memory (cudaMemGetInfo) before anything is allocated there.
#ifndef FATHOM_LAUNCH_MEMORY_CHECK_H_
#define FATHOM_LAUNCH_MEMORY_CHECK_H_

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framework/config.h"
#include "parallel/communicator.h"
#include "parallel/mesh.h"

namespace fathom {

inline constexpr int64_t kSaturatedBytes = std::numeric_limits<int64_t>::max();

// Saturating arithmetic on non-negative counts (REQUIRES a, b >= 0): kSaturatedBytes once it overflows.
int64_t SaturatingAdd(int64_t a, int64_t b);
int64_t SaturatingMul(int64_t a, int64_t b);

// Parameter elements of the slice of world rank `rank` under `layout` (exactly what Model's ParamTable
// holds for that slice when its decoder layers are `first_layer`..`end_layer`; saturating).
struct RankSlice {
  int stage = 0;
  int64_t first_layer = 0, end_layer = 0;  // decoder layers held
  bool embedding = false, head = false;
  int64_t local_experts = 0;  // routed experts held per MoE layer
};
// The slices world rank `rank` holds, one per model chunk of the recipe's schedule (two for dualpipe and
// dualpipev): the model stage the schedule places there (parallel/schedule.h's ModelStage) and its layers
// as the runtime splits them (parallel/stage_split.h).
std::vector<RankSlice> SlicesOfRank(const Recipe& recipe, const MeshLayout& layout, int rank);
// Its first chunk's (the only one of 1f1b and zb1p).
RankSlice SliceOfRank(const Recipe& recipe, const MeshLayout& layout, int rank);
int64_t SliceParameterElements(const ModelConfig& model, const RankSlice& slice);
// The routed experts' share of SliceParameterElements (the slice's MoE layers, MTP's included).
int64_t SliceRoutedExpertElements(const ModelConfig& model, const RankSlice& slice);

// Bytes one rank needs (see the top), each saturating.
struct MemoryNeed {
  int64_t parameters = 0, gradients = 0, optimizer = 0, activations = 0;
  int64_t total() const;
  // "1.20e+21 bytes (parameters 4.0e+20, gradients 4.0e+20, optimizer moments 4.0e+20, activations
  // 1.2e+10 (est.))".
  std::string Describe() const;
};
// `device`: the GPU's share with train.device cuda (compute copy included, activations in bf16 when
// train.dtype is bf16); false: the host's (with train.device cuda only parameters and gradients).
MemoryNeed EstimateRankMemory(const Recipe& recipe, const MeshLayout& layout, int rank, bool device);

// "123456789 bytes (117.7 MiB)", or "more than 9223372036854775807 bytes (8 EiB)" when saturated.
std::string FormatBytes(int64_t bytes);

// Pure verdict for the node of world rank `rank` (`local_rank`, `local_size` as the launcher says; a
// local_size < 1 counts this rank alone): OK when the node's ranks need at most `available_bytes`, else
// ResourceExhausted naming the rank, its stage, its need itemised, the node's total and the bytes
// available, and the knobs that reduce memory.
absl::Status CheckNodeHostMemory(const Recipe& recipe, const MeshLayout& layout, int rank, int local_rank,
                                 int local_size, int64_t available_bytes);
// The same for one GPU: this rank's device need against `free_bytes`.
absl::Status CheckRankDeviceMemory(const Recipe& recipe, const MeshLayout& layout, int rank,
                                   int64_t free_bytes);

// MemAvailable from /proc/meminfo, in bytes; an error naming the file when it cannot be read.
absl::StatusOr<int64_t> HostMemoryAvailable();

// Collective over `world` (whose size is layout.world()): every rank checks its node's host memory (skipped
// where /proc/meminfo cannot be read) and, with train.device cuda in a CUDA build, its GPU's free memory;
// every rank returns the same status (parallel/rank_agreement.h's AgreeOnStatus: the lowest failing rank's
// message). Call it after the recipe is known to be the same everywhere and before building the model.
absl::Status CheckMemory(const Recipe& recipe, const MeshLayout& layout, Communicator& world, int local_rank,
                         int local_size);

}  // namespace fathom

#endif  // FATHOM_LAUNCH_MEMORY_CHECK_H_
