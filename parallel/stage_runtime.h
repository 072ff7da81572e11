// The stage runtime: the one "parallelize" step (torchtitan's shape). Built once from the recipe and the
// host mesh, it owns everything of this rank that depends on the mesh, so that the trainer reads like the
// algorithm (sample -> runtime step -> bias update -> log):
//   - the transports: the host mesh (MPI or the local communicator) for host values (loss sums, loads,
//     normalisers, counts) and, for several GPUs, NCCL groups of the same layout for device tensors;
//   - the model chunks of this rank (stage split from the recipe or the cost model): one for 1F1B and
//     ZB1P; two for DualPipeV (model stages r and 2*pp-1-r; rank 0 holds the embedding and the head with
//     the MTP modules) and DualPipe (chunk 0 = model stage r for the micro-batches entering at rank 0,
//     chunk 1 = model stage pp-1-r for those entering at rank pp-1); their routed experts (PlaceExperts)
//     and the expert exchange they all share;
//   - on the GPU: the start-up memory plan (parallel/memory_plan.h), the parameter pool and the
//     activation pool (no cudaMalloc in the step loop);
//   - ZeRO-1 (parallel/zero.h), one optimizer per chunk, and the pipeline executor with the validated
//     schedule (parallel/schedule_validate.h) and this rank's list. DualPipe's two copies of a model stage
//     (chunk 0 of rank s, chunk 1 of rank pp-1-s) are replicas as the planner models them: their ZeRO
//     groups join both ranks of the pair (2 * dp ranks for attention and dense parameters, 2 * edp for
//     experts), so the reduce-scatter sums the two copies' gradients, the norm counts every parameter once
//     and both copies receive the same updated values;
//   - the per-step glue: the step-wide loss normalisers, the embedding-gradient sum between the first and
//     last model stage (MTP), the global gradient norm, clipping and AdamW, the reduction of losses, expert
//     loads and balance statistics over the job, and the expert-bias update;
//   - overlap: two-chunk schedules overlap a forward and a backward chunk by their FB instructions;
//     parallel.overlap two_micro_batch (pp 1) runs the micro-batches in overlapped pairs;
//   - the trace of chosen steps (train.trace; parallel/step_trace.h).
// Callers never see which transport carries which collective.
//
// Tags on the pipeline group: the executor's messages travel on communicators of their own
// (parallel/pipeline_channels.h); kEmbeddingGradTag = Communicator::kMaxTag carries the single-chunk
// embedding-gradient exchange after the executor's run.
//
// Devices: train.device cpu runs everything on the host; cuda puts one GPU per rank (the device op
// context, pools and NCCL groups are created here and live as long as the runtime). NCCL cannot share one
// GPU between two ranks (NcclCommunicator ends such a launch), so a pipeline (pp 2 and up) needs a GPU per
// rank; on one GPU, pp 1 runs every schedule but DualPipe (which needs an even pp) and two-micro-batch
// overlap (with ep 1 there is no all-to-all to hide: the pairs interleave compute only). Thread safety:
// one thread. Every public call is collective over the mesh: all ranks call it in the same order.
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

class AllToAllExpertExchange;
class PipelineExecutor;
class StepTrace;
class ZeroOptimizer;

// One MoE layer's routed tokens in a step, over the global batch.
struct LayerLoad {
  int layer = 0;    // HF layer index (MTP modules continue after the last decoder layer)
  double max = 0;   // tokens of the busiest expert
  double mean = 0;  // mean tokens per expert
};

// What one optimizer step produced, reduced over the job: every rank holds the same values (expert_loads:
// this stage's layers; layer_loads: every stage's).
struct StepResult {
  double lm_loss = 0;    // main next-token loss (mean over the step's valid labels)
  double mtp_loss = 0;   // mean over depths of the MTP losses (0 without MTP)
  double balance = 0;    // balance statistic sum_i f_i P_i, mean over MoE layers and sequences (1 = even)
  double loss = 0;       // the optimised total: lm + lambda * mtp + alpha * sum over layers of balance
  double grad_norm = 0;  // global L2 norm before clipping
  // The norm was not finite: no parameter was updated. `nonfinite` names the first tensor (in layer
  // order, the lowest stage first) whose gradient holds a NaN or an infinity, and the rank.
  bool skipped = false;
  std::string nonfinite;
  // This rank's MoE layers, chunk 0's then chunk 1's (model_stage order inside a chunk).
  std::vector<int> moe_layers;                     // HF layer index
  std::vector<std::vector<int64_t>> expert_loads;  // per MoE layer in moe_layers: tokens per expert, global
  double load_max_over_mean = 0;                   // the worst MoE layer of any stage: busiest expert / mean
  // Every MoE layer of the model, whichever stage holds it, in layer order (the run log's expert_load,
  // which rank 0 writes holding only its own stage's layers).
  std::vector<LayerLoad> layer_loads;
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
  // section does not allow (ValidateParallelSchedule), two-micro-batch overlap with a two-chunk schedule,
  // a train.trace path that cannot be written, cuda without a CUDA build or device, a device memory plan
  // that does not fit. Every rank returns the same verdict before any collective, except the memory plan
  // (each rank's own device).
  static absl::StatusOr<std::unique_ptr<StageRuntime>> Create(const Recipe& recipe, DeviceMesh& mesh);
  ~StageRuntime();
  StageRuntime(const StageRuntime&) = delete;
  StageRuntime& operator=(const StageRuntime&) = delete;

  // One optimizer step over `batches` (this rank's micro-batches, host tensors, parallel.micro_batches of
  // them): normalisers, the pipeline program (forward, backward, expert all-to-alls), the embedding
  // gradient sum, ZeRO-1 reduce-scatter, global norm, clipping and AdamW at learning rate `lr`, all-gather,
  // compute-copy refresh. When the global gradient norm is not finite, nothing is updated and the result
  // says so (skipped, nonfinite); the caller decides how many such steps to accept.
  absl::StatusOr<StepResult> Step(const std::vector<MicroBatch>& batches, double lr);

  // The silent-data-corruption check (collective): the data-parallel replicas compare CRC-32C checksums of
  // every parameter they hold in common (replicated tensors over dp, routed experts over edp). DataLoss on
  // every rank when two replicas differ, naming the tensor, the ranks, their hosts and GPUs; OK otherwise.
  absl::Status CheckReplicas();
  // Test hook (FATHOM_TEST_FLIP_BIT, parallel/fault.h): flips the sign of one parameter value of this rank
  // (the middle element of its last replicated tensor), as a bit flip in a GPU's memory would.
  void FlipOneParameterBitForTesting();

  // A forward-only pass over `batches` (this rank's micro-batches of an evaluation batch, host tensors,
  // parallel.micro_batches of them), nothing updated, every saved activation dropped afterwards. Returns
  // the main LM loss over the evaluation batch's valid labels (every rank the same value).
  double Evaluate(const std::vector<MicroBatch>& batches);

  // Auxiliary-loss-free balancing (DeepSeek-V3 report): b_i += speed * sign(mean load - load_i) for every
  // MoE layer of this stage, from the step's global loads (result.expert_loads).
  void UpdateExpertBiases(const StepResult& result, double speed);

  // Tracing (train.trace; nothing happens without it). BeginStepTrace before Step (a barrier over the
  // job, so the ranks' clocks start together), EndStepTrace after it: when `step` is the last of
  // train.trace_steps, every rank's events are gathered and rank 0 writes the file (the status of that
  // write on every rank: InvalidArgument / Internal naming the path). `step` counts from 1, as the log.
  void BeginStepTrace(int64_t step);
  absl::Status EndStepTrace();

  const MeshLayout& layout() const;
  const MeshCoord& coord() const;
  // This rank's model chunks: chunk c holds model stage chunk_model_stage(c).
  int num_chunks() const { return static_cast<int>(chunks_.size()); }
  Model& model(int chunk = 0);
  int chunk_model_stage(int chunk) const;
  // A chunk's optimizer (its shards and moments: what a checkpoint saves and restores). DualPipe's two
  // copies of a model stage share their ZeRO groups, so each element of a stage is owned by one chunk of
  // one rank of the pair.
  ZeroOptimizer& optimizer(int chunk = 0);
  // The host mesh: its world communicator carries host values (checkpoint commits, agreements).
  DeviceMesh& host_mesh() { return mesh_; }
  // After parameter values were written from outside (a checkpoint load into this rank's shards): every
  // replica gathers the shards and the compute copies follow (collective).
  void SyncLoadedParameters();
  // Decoder layers per model stage (NumStages of them).
  const std::vector<int64_t>& stage_layers() const { return stage_layers_; }
  // The validated schedule (every rank's list); this rank runs schedule().ranks[coord().pp_rank].
  const Schedule& schedule() const { return schedule_; }
  // The instructions the last Step executed, in order (PipelineExecutor::executed).
  const std::vector<Instruction>& executed_program() const;
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
  // One model chunk of this rank and its optimizer.
  struct Chunk {
    int model_stage = 0;
    ModelSlice slice;
    std::unique_ptr<Model> model;
    std::unique_ptr<ZeroOptimizer> optimizer;
    Chunk();
    Chunk(Chunk&&) noexcept;
    ~Chunk();
  };
  // The groups over which a chunk's parameters are replicated (ZeRO-1) and its statistics summed: the
  // mesh's dp / edp, or for DualPipe those of the rank pair holding the two copies of each model stage.
  struct ReplicaGroups;

  StageRuntime(const Recipe& recipe, DeviceMesh& mesh, std::vector<int64_t> stage_layers, Schedule schedule);
  absl::Status SetUp();
  // The slice of model stage `stage` on this rank (layers, embedding, head, experts, exchange).
  ModelSlice SliceOfStage(int stage) const;
  void SetUpReplicaGroups();
  void SetUpTrace();
  // Chunk indices by model stage: the order in which every rank of a replica group handles its chunks.
  std::vector<int> ChunksByStage() const;
  void SumEmbeddingGradients();
  // The first tensor with a non-finite gradient on any rank, "name (rank R)" (collective).
  std::string FirstNonFiniteGradientOfJob();
  // The step's losses and statistics from every chunk's micro-batch stats, reduced over the job. The stats
  // are device tensors (layers/model.h); they are summed on the device into one f64 buffer and copied to
  // the host once (ops::AccumulateF64, then the step's only statistics transfer).
  //
  // Host synchronisations of a GPU step (any schedule, M micro-batches, L MoE layers over the rank's
  // chunks):
  //   forward/backward  L x M: each MoE layer's forward brings its per-expert counts to the host, which
  //                     the cuBLASLt grouped GEMMs (one problem per expert) and the expert exchange's layout
  //                     need there (layers/moe.h: waited for as late as the phases allow). Token ids, labels
  //                     and MTP inputs go up without a wait (ops::ToDeviceAsync); losses, balance values and
  //                     counts stay on the device. NCCL receives order the stream, not the host.
  //   optimizer         1: the global gradient norm (a host value: clipping and the divergence check).
  //   statistics        1: this copy.
  //   bias update       0: the loads go up asynchronously and the rule runs on the device.
  // (Checks outside these two functions, e.g. the non-finite gradient scan, add their own.)
  StepResult ReduceStatistics(const std::vector<std::vector<MicroBatchStats>>& stats,
                              const LossNormalizers& norm);

  Recipe recipe_;
  DeviceMesh& mesh_;
  // The groups that move tensors: mesh_ itself, or NCCL groups of the same layout for several GPUs.
  DeviceMesh* groups_ = nullptr;
  std::vector<int64_t> stage_layers_;
  Schedule schedule_;
  std::string attention_path_;
  std::vector<std::string> hosts_;       // per world rank: "host" or "host, GPU d" (CheckReplicas' messages)
  std::unique_ptr<DeviceState> device_;  // declared before the models: its device tensors go first
  std::unique_ptr<ReplicaGroups> replicas_;
  std::unique_ptr<StepTrace> trace_;
  std::unique_ptr<AllToAllExpertExchange> exchange_;
  std::vector<Chunk> chunks_;
  std::unique_ptr<PipelineExecutor> executor_;
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_STAGE_RUNTIME_H_
