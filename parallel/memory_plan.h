// The start-up device memory plan of a GPU rank (issue 5, "Memory"; DESIGN.md idea 8): what the rank's
// parameters, gradients, compute copies, optimizer moments and GEMM workspace take, an estimate of the
// activations its pipeline schedule holds at once, a safety reserve, and the activation pool that gets
// the rest of the device's free memory. Printed as a table at start-up; a plan whose estimate does not fit
// is rejected with the numbers and the recipe knobs that reduce memory. Pure host arithmetic.
//
// Rows (bytes):
//   parameters         param_elements x 4          f32 values (master weights) of this rank's ParamTable
//   gradients          param_elements x 4          f32 gradient accumulators, the same layout
//   compute copy       param_elements x 2 or 0     bf16 copies of the weights for the GEMMs (none for f32),
//                      + fp8_weight_bytes           and the FP8 copies under train.precision fp8
//   optimizer moments  optimizer_elements x 2 x moment_bytes   AdamW's two moments of this rank's shards
//   gemm workspace     the cuBLASLt workspace
//   activations (est.) micro_batches_in_flight x activation_bytes_per_micro_batch + transient_bytes (from the
//                      recipe: ActivationPeakBytes, the in-flight micro-batches at their forward's bytes and
//                      the rest as the worst pass's working set)
//   reserve            max(2 GiB, 5% of free): cuBLAS, NCCL and cuDNN internals, CUDA context growth
// static = the first five rows; activation pool = free - static - reserve. The plan fits when the pool holds
// the activation estimate.
#ifndef FATHOM_PARALLEL_MEMORY_PLAN_H_
#define FATHOM_PARALLEL_MEMORY_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "framework/config.h"
#include "layers/activations.h"
#include "layers/model.h"
#include "parallel/schedule.h"

namespace fathom {

struct MemoryPlanInput {
  int64_t param_elements = 0;      // this rank's ParamTable::numel() (values and grads f32)
  int64_t compute_copy_bytes = 0;  // per parameter: 2 with bf16 compute copies, 0 when GEMMs read the f32
  int64_t fp8_weight_bytes = 0;    // train.precision fp8: ParamTable::Fp8WeightBytes() (the caller sets it)
  int64_t optimizer_elements = 0;  // elements this rank's AdamW updates (its ZeRO shards; one GPU: numel)
  int64_t moment_bytes = 4;        // per moment (optim.moment_dtype): 4 f32, 2 bf16
  double activation_bytes_per_micro_batch = 0;  // saved by the forward of one micro-batch on this rank
  int64_t micro_batches_in_flight = 1;          // micro-batches whose activations the schedule holds at once
  double transient_bytes = 0;  // working set of the worst pass on top of the saved activations (B's output
                               // gradients kept for W, temporaries)
  int64_t gemm_workspace_bytes = 0;
  int64_t free_bytes = 0;  // free device memory at start-up (cudaMemGetInfo), before any of the above
  // A few words for the activation row (dtype, tokens per micro-batch); may be empty.
  std::string activation_note;
};

struct MemoryRow {
  std::string name;  // "parameters", "gradients", ...
  int64_t bytes = 0;
  std::string what;  // one line: what the bytes are
};

struct MemoryPlan {
  std::vector<MemoryRow> rows;   // parameters, gradients, compute copy, optimizer moments, gemm workspace,
                                 // activations (est.), reserve: always all seven, in this order
  int64_t static_bytes = 0;      // the first five rows
  int64_t activation_bytes = 0;  // the estimate (row 6)
  int64_t reserve_bytes = 0;     // row 7
  int64_t free_bytes = 0;
  int64_t pool_bytes = 0;  // free - static - reserve; negative when even the static part does not fit
  bool fits() const { return pool_bytes >= activation_bytes; }
  int64_t shortfall() const { return fits() ? 0 : activation_bytes - pool_bytes; }
};

// max(2 GiB, 5% of free_bytes).
int64_t DeviceMemoryReserve(int64_t free_bytes);

// The rows and the pool, fitting or not. REQUIRES: counts and bytes >= 0 (FATHOM_CHECK).
MemoryPlan EstimateDeviceMemory(const MemoryPlanInput& input);
// EstimateDeviceMemory, or ResourceExhausted when the activation estimate does not fit the pool: the
// message gives the bytes needed and free, the shortfall, the biggest rows, the knobs that reduce memory
// (train.micro_batch_size, train.seq_len, optim.moment_dtype, parallel.pp / parallel.ep) and the table.
absl::StatusOr<MemoryPlan> PlanDeviceMemory(const MemoryPlanInput& input);

// An aligned table in GiB, one line per row plus the static total, the free bytes and the pool:
//   device memory plan (GiB):
//     parameters            3.980  f32 values (master weights), 1068498944 elements
//     ...
//     activation pool      52.113  free - static - reserve; holds the activation estimate
std::string FormatMemoryPlan(const MemoryPlan& plan);

// ---- Inputs from the recipe ----------------------------------------------------------------------------
// Activation estimates are the cost model's for what fathom runs (layers/cost.h PrecisionPolicy::Fathom:
// fathom's layers as layers/activations.h itemises them, in the compute dtype with f32 statistics under
// bf16, nothing recomputed, the received expert rows when parallel.ep > 1), and the peak over the rank's
// program is the simulator's (parallel/simulator_memory.h ActivationPeak), so `fathom plan --policy
// fathom`, `fathom simulate` and this plan agree.

// One micro-batch (micro_batch_size x seq_len tokens) on the nodes of `slice` (the embedding when
// slice.embedding, decoder layers [first_layer, end_layer), the head with the MTP modules when slice.head):
// kept after its forward, kept after its B until W, and the peaks during its forward and its B.
// The routed experts' tiled layout (layers/moe.h; on CUDA without an expert exchange) pads each
// expert's rows to MoE::kTileRows: the expected extra bytes of ONE MoE layer and micro-batch, E * (tile - 1)
// / 2 rows at a routed row's bytes (held_f = peak_f, held_b = peak_b); zero where the layout packs; with
// train.expert_gemm own (the device layout) its worst-case budget's pad rows, cpu::MaxPaddedRows(R, E, tile) - R.
// SliceActivations (and the simulator) add the graph's NodeCost::act_tiled_padding per MoE layer and
// micro-batch to each MoE node before composing the nodes (on an H200, recipes/small.yaml without MTP, one
// BW pass: an estimate of 8.16 GiB against a pool peak of 8.14).
ActivationBytes ExpertPaddingBytes(const Recipe& recipe);
ActivationBytes SliceActivations(const Recipe& recipe, const ModelSlice& slice);
// SliceActivations(...).held_f: what the forward keeps for the backward.
double MicroBatchActivationBytes(const Recipe& recipe, const ModelSlice& slice);
// The most `program` (this rank's instruction list) holds at once: waiting micro-batches at their held
// bytes, the running pass's at its peak.
double ActivationPeakBytes(const Recipe& recipe, const ModelSlice& slice,
                           const std::vector<Instruction>& program);
// The most micro-batch-chunks live at once in a rank's program: one is live from its F until its W or BW
// (an FB counts its forward half before its backward half). Two-chunk schedules count each chunk as one.
int64_t MicroBatchesInFlight(const std::vector<Instruction>& program);

// Everything from the recipe and the rank's program; the caller supplies what only the running rank knows.
// compute copy: 2 bytes for train.dtype bf16, else 0; moments from optim.moment_dtype.
MemoryPlanInput MemoryPlanInputFor(const Recipe& recipe, const ModelSlice& slice,
                                   const std::vector<Instruction>& program, int64_t param_elements,
                                   int64_t optimizer_elements, int64_t gemm_workspace_bytes,
                                   int64_t free_bytes);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_MEMORY_PLAN_H_
