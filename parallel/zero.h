// ZeRO-1 data parallelism over one rank's ParamTable (DESIGN.md idea 6): the replicated parameters are
// sharded over the stage's data-parallel group (dp), the routed experts over their expert-data-parallel
// group (edp). Per step:
//   ReduceGradients   reduce-scatter (sum) each group's gradient range; this rank keeps its shard's sums
//   LocalNormSquared  the trainable gradient norm^2 of this rank's shards, less `exclude` ranges (a tensor
//                     held twice in the pipeline, e.g. the last stage's copy of the embedding)
//   Step              clip by the global norm, AdamW on this rank's shards
//   GatherParameters  all-gather the updated shards so every replica holds the whole range again
// Shards are equal chunks of ceil(range / group size) elements (the last one shorter or empty). A group of
// size 1 owns its whole range: ReduceGradients and GatherParameters move nothing for it (no collective, no
// copy).
//
// Devices. The table's device decides where everything runs; one code path moves the data (views of the
// flat buffers and ops::Copy / ops::Zero of framework/ops.h, a memcpy on the CPU):
//   CPU   (f32 or f64) AdamW and the norm of optim/, clipping scales the whole grads buffer
//         (ClipGradients); the communicators move host tensors (MpiCommunicator, LocalCommunicator).
//   CUDA  (f32, CUDA builds) DeviceAdamW per non-empty shard (optim/cuda/device_adamw.h): the norm terms
//         of every shard are queued into one device buffer and copied to the host once; Step is ONE fused
//         pass per shard (DeviceAdamW::FusedStep: the clip factor applied as the gradients are read, AdamW,
//         bf16 moments) over the owned shards only (AdamW reads nothing else; the rest of the grads buffer
//         keeps stale sums and is overwritten by the next step's backward). When this rank owns the whole
//         table (every group of size 1: one GPU, or pipeline / expert parallelism without data
//         replication) the same pass also rounds the updated values into the table's bf16 compute copy
//         and marks the table (ParamTable::MarkComputeValuesRefreshed) so that the caller's next
//         RefreshComputeValues() is a no-op: the step costs two passes over memory (the norm's read of
//         the gradients, then the fused pass); gradients are zeroed lazily by the table (ZeroGrads).
//         With larger groups, GatherParameters brings other ranks' values and RefreshComputeValues does
//         its own pass. With FP8 weights on, their compute copies are not refreshed (the table keeps none
//         for them; ParamTable::compute_value refuses them) and the refresh quantises them from the masters.
//         The communicators of groups larger than one must
//         move CUDA tensors (NcclCommunicator). REQUIRES for every call: a current cuda::DevicePool (the
//         collectives' temporaries) and a current ops::OpContext whose stream is the pool's stream and the
//         NCCL communicators' compute stream (checked): device work is queued there, the collectives are
//         ordered after it, and their Wait() orders it again. LocalNormSquared returns a host value, so it
//         waits: it first calls Synchronize() on the NCCL communicators, so a dead peer surfaces as that
//         communicator's message rather than a hang. In a build without CUDA a CUDA table fails at
//         construction.
// Results: on the CPU bit-identical to AdamW / GradNormSquared / ClipGradients over the same shards; on the
// GPU the AdamW update equals the CPU's to the last bit for equal inputs (framework/kernels/cuda/adamw.h),
// the norm to double round-off, and NCCL's sums follow nccl_communicator.h (bitwise with two ranks).
#ifndef FATHOM_PARALLEL_ZERO_H_
#define FATHOM_PARALLEL_ZERO_H_

#include <memory>
#include <utility>
#include <vector>

#include "framework/config.h"
#include "framework/param_table.h"
#include "optim/adamw.h"
#include "parallel/communicator.h"

namespace fathom {

// Device-memory traffic of one optimizer step on the GPU (`fathom bench` prints it against bandwidth).
struct OptimizerTraffic {
  int64_t elements = 0;  // trainable elements of this rank's (largest) shards
  double bytes = 0;      // bytes read + written by the step's passes (NCCL traffic not counted)
};

// Call order per step (the trainer's):
//   ReduceGradients -> LocalNormSquared (host sum over ranks) -> Step -> GatherParameters
//   -> table.RefreshComputeValues() -> ... -> table.ZeroGrads() before the next backward.
class ZeroOptimizer {
 public:
  // `dp` shards the kReplicated range, `edp` the kExpert range; both and `table` must outlive this object.
  // A CUDA table allocates its optimizer state on the current device here (start-up).
  ZeroOptimizer(ParamTable& table, const OptimConfig& cfg, Communicator& dp, Communicator& edp,
                std::vector<std::pair<int64_t, int64_t>> exclude_from_norm = {});
  ~ZeroOptimizer();

  // Elements of the largest shard of each group summed: the optimizer state a rank holds at most for
  // groups of dp_size and edp_size ranks (start-up memory planning, before the optimizer exists).
  static int64_t MaxShardElements(const ParamTable& table, int dp_size, int edp_size);
  // The bytes one GPU step moves through device memory for groups of dp_size and edp_size ranks (the norm
  // pass, the fused pass and, unless one rank owns the whole table, the compute copy's refresh), from the
  // table's specs and compute copy; the CPU path is not described.
  static OptimizerTraffic StepTraffic(const ParamTable& table, const OptimConfig& cfg, int dp_size,
                                      int edp_size);
  ZeroOptimizer(const ZeroOptimizer&) = delete;
  ZeroOptimizer& operator=(const ZeroOptimizer&) = delete;

  void ReduceGradients();
  double LocalNormSquared() const;
  // Scales this rank's shards by min(1, max_norm / (total_norm + 1e-6)) (max_norm 0: no clipping), then
  // AdamW. REQUIRES max_norm >= 0 and a finite total_norm >= 0 (the caller stops on a non-finite norm).
  void Step(double lr, double total_norm, double max_norm);
  void GatherParameters();

  // Bytes of optimizer state this rank holds: both moments of its shards (host or device memory).
  size_t state_bytes() const;
  // This rank's shard of each group, [begin, end) in flat elements (may be empty).
  std::pair<int64_t, int64_t> shard(ParamGroup group) const { return shards_[static_cast<int>(group)].owned; }

  // This rank's AdamW state of `group`'s shard, for checkpoints: the two moments as views of the
  // optimizer's storage (host or device, f32 or bf16; element i is flat element shard(group).first + i),
  // undefined when the shard is empty. Writing into them (a checkpoint load) changes the optimizer's state.
  struct MomentViews {
    Tensor exp_avg, exp_avg_sq;
  };
  MomentViews moments(ParamGroup group) const;
  // AdamW updates taken so far (bias corrections depend on it), the same for every shard; set_step
  // restores it from a checkpoint. REQUIRES step >= 0.
  int64_t step() const;
  void set_step(int64_t step);

 private:
  struct Shard {
    Communicator* comm;
    std::pair<int64_t, int64_t> range;  // the group's whole range in the table
    int64_t chunk;                      // elements per rank
    std::pair<int64_t, int64_t> owned;  // this rank's part of `range`
    std::unique_ptr<AdamW> adamw;       // CPU tables: null when `owned` is empty
  };
  // CUDA tables: the device optimizers and the norm terms' buffer (defined in zero.cc, so that CPU builds
  // carry none of it).
  struct DeviceState;

  bool OwnsWholeTable() const;  // every group's shard is its whole range (groups of one)

  ParamTable& table_;
  Shard shards_[2];
  std::vector<std::pair<int64_t, int64_t>> exclude_;
  std::unique_ptr<DeviceState> device_;
  int64_t restored_step_ = 0;  // step() of a rank without shards
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_ZERO_H_
