// The stage runtime: the one "parallelize" step (torchtitan's shape). Built once from the recipe and the
// host mesh, it owns everything of this rank that depends on the mesh, so that the trainer reads like the
// algorithm (sample -> runtime step -> bias update -> log):
//   - the transports: the host mesh (MPI or the local communicator) for host values (loss sums, loads,
//     normalisers, counts) and, for several GPUs, NCCL groups of the same layout for device tensors;
//   - the model slice of this rank's pipeline stage (stage split from the recipe or the cost model),
//     its routed experts (PlaceExperts) and the expert exchange they share;
//   - on the GPU: the start-up memory plan (parallel/memory_plan.h), the parameter pool and the
//     activation pool (no cudaMalloc in the step loop);
//   - ZeRO-1 (parallel/zero.h) and the pipeline executor with this rank's instruction list;
//   - the per-step glue: the step-wide loss normalisers, the embedding-gradient sum between the first and
//     last stage (MTP), the global gradient norm, clipping and AdamW, the reduction of losses, expert loads
//     and balance statistics over the job, and the expert-bias update.
// Callers never see which transport carries which collective.
//
// Tags on the pipeline group besides the executor's (2*mb, 2*mb+1, Communicator::kMaxTag - 1):
// kEmbeddingGradTag = Communicator::kMaxTag for the embedding-gradient exchange after the executor's run.
//
// Devices: train.device cpu runs everything on the host; cuda puts one GPU per rank (the device op
// context, pools and NCCL groups are created here and live as long as the runtime). Thread safety: one
// thread. Every public call is collective over the mesh: all ranks call it in the same order.
#ifndef FATHOM_PARALLEL_STAGE_RUNTIME_H_
#define FATHOM_PARALLEL_STAGE_RUNTIME_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "framework/config.h"
#include "layers/model.h"
#include "parallel/mesh.h"
#include "parallel/schedule.h"

namespace fathom {

class ExpertExchange;
class PipelineExecutor;
class ZeroOptimizer;

// What one optimizer step produced, reduced over the job: every rank holds the same values (expert loads:
// this stage's layers).
struct StepResult {
  double lm_loss = 0;    // main next-token loss (mean over the step's valid labels)
  double mtp_loss = 0;   // mean over depths of the MTP losses (0 without MTP)
  double balance = 0;    // balance statistic sum_i f_i P_i, mean over MoE layers and sequences (1 = even)
  double loss = 0;       // the optimised total: lm + lambda * mtp + alpha * sum over layers of balance
  double grad_norm = 0;  // global L2 norm before clipping
  std::vector<int> moe_layers;                     // HF layer index of this stage's MoE layers
  std::vector<std::vector<int64_t>> expert_loads;  // per MoE layer of this stage: tokens per expert, global
  double load_max_over_mean = 0;                   // the worst MoE layer of any stage: busiest expert / mean
};

// Device memory of a GPU rank (all zero on the CPU).
struct DeviceMemoryStats {
  size_t static_bytes = 0;   // parameters, gradients, compute copies, optimizer moments: allocated once
  size_t pool_capacity = 0;  // the activation pool sized at start-up
  size_t pool_peak = 0;      // the most of it in use since start-up or ResetDeviceMemoryPeak()
};

class StageRuntime {
 public:
  // `mesh` (not owned, the host mesh) must outlive the runtime and match recipe.parallel (pp, ep).
  // Errors (InvalidArgument / FailedPrecondition, naming the key): a schedule the recipe's parallel
  // section does not allow (ValidateParallelSchedule), a two-chunk schedule (not run yet), cuda without a
  // CUDA build or device, a device memory plan that does not fit. Every rank returns the same verdict
  // before any collective, except the memory plan (each rank's own device).
  static absl::StatusOr<std::unique_ptr<StageRuntime>> Create(const Recipe& recipe, DeviceMesh& mesh);
  ~StageRuntime();
  StageRuntime(const StageRuntime&) = delete;
  StageRuntime& operator=(const StageRuntime&) = delete;

  // One optimizer step over `batches` (this rank's micro-batches, host tensors, parallel.micro_batches of
  // them): normalisers, the pipeline program (forward, backward, expert all-to-alls), the embedding
  // gradient sum, ZeRO-1 reduce-scatter, global norm, clipping and AdamW at learning rate `lr`, all-gather,
  // compute-copy refresh. Internal (nothing updated) when the global gradient norm is not finite.
  absl::StatusOr<StepResult> Step(const std::vector<MicroBatch>& batches, double lr);

  // A forward-only pass over `batches` (this rank's micro-batches of an evaluation batch, host tensors,
  // parallel.micro_batches of them), nothing updated, every saved activation dropped afterwards. Returns
  // the main LM loss over the evaluation batch's valid labels (every rank the same value).
  double Evaluate(const std::vector<MicroBatch>& batches);

  // Auxiliary-loss-free balancing (DeepSeek-V3 report): b_i += speed * sign(mean load - load_i) for every
  // MoE layer of this stage, from the step's global loads (result.expert_loads).
  void UpdateExpertBiases(const StepResult& result, double speed);

  const MeshLayout& layout() const;
  const MeshCoord& coord() const;
  Model& model() { return *model_; }
  const std::vector<int64_t>& stage_layers() const { return stage_layers_; }
  // Sums `values` over every rank of the job (host values, f64).
  std::vector<double> SumOverWorld(const std::vector<double>& values);
  // Element-wise maximum over every rank.
  std::vector<double> MaxOverWorld(const std::vector<double>& values);

  DeviceMemoryStats device_memory() const;
  void ResetDeviceMemoryPeak();
  // The start-up device memory plan as a table (parallel/memory_plan.h); empty on the CPU.
  std::string memory_plan_table() const;
  // One line (with its newline) naming the kernels attention runs on (cuDNN's fused SDPA, fathom's own
  // tensor-core or SIMT kernels) and why; empty on the CPU. Their plans and workspaces are built at
  // start-up, outside the step loop.
  const std::string& attention_path() const { return attention_path_; }

 private:
  struct DeviceState;  // train.device cuda: op context, NCCL groups, pools, memory plan (stage_runtime.cc)

  StageRuntime(const Recipe& recipe, DeviceMesh& mesh, std::vector<int64_t> stage_layers,
               std::vector<Instruction> program);
  absl::Status SetUp();
  void SumEmbeddingGradients();
  // The step's losses and statistics from every micro-batch's stats, reduced over the job. The stats are
  // device tensors (layers/model.h); they are summed on the device into one f64 buffer and copied to the
  // host once (ops::AccumulateF64, then the step's only statistics transfer).
  //
  // Host synchronisations of a GPU step (pp x ep x dp any, M micro-batches, L MoE layers in the stage):
  //   forward/backward  L x M: each MoE layer's forward brings its per-expert counts to the host, which
  //                     the cuBLASLt grouped GEMMs (one problem per expert) and the expert exchange's layout
  //                     need there (layers/moe.h: waited for after the shared expert is queued). Token ids,
  //                     labels and MTP inputs go up without a wait (ops::ToDeviceAsync); losses, balance
  //                     values and counts stay on the device. NCCL receives order the stream, not the host.
  //   optimizer         1: the global gradient norm (a host value: clipping and the divergence check).
  //   statistics        1: this copy, after the optimizer has been queued.
  //   bias update       0: the loads go up asynchronously and the rule runs on the device.
  StepResult ReduceStatistics(const std::vector<MicroBatchStats>& stats, const LossNormalizers& norm);

  Recipe recipe_;
  DeviceMesh& mesh_;
  // The groups that move tensors: mesh_ itself, or NCCL groups of the same layout for several GPUs.
  DeviceMesh* groups_ = nullptr;
  std::vector<int64_t> stage_layers_;
  std::vector<Instruction> program_;
  std::string attention_path_;
  std::unique_ptr<DeviceState> device_;  // declared before the model: its device tensors go first
  std::unique_ptr<ExpertExchange> exchange_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<ZeroOptimizer> optimizer_;
  std::unique_ptr<PipelineExecutor> executor_;
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_STAGE_RUNTIME_H_
