// The training loop. Reads top to bottom like the algorithm (llm.c style):
//   sample this rank's micro-batches -> step-wide loss normalisers (all-reduced over dp) -> the pipeline
//   executor runs this rank's schedule (forward, backward for inputs, backward for weights per
//   micro-batch; expert all-to-alls inside the MoE layers) -> gradients reduced (ZeRO-1) -> global norm,
//   clipping, AdamW on this rank's shards -> parameters all-gathered -> expert-bias update from the
//   step's loads (all-reduced over dp) -> one log line on rank 0.
// One code path for every mesh: a single process is the mesh pp = ep = dp = 1 on the local communicator.
#ifndef FATHOM_LAUNCH_TRAINER_H_
#define FATHOM_LAUNCH_TRAINER_H_

#include <cstdint>
#include <memory>
#include <ostream>
#include <vector>

#include "absl/status/statusor.h"
#include "data/sampler.h"
#include "framework/config.h"
#include "layers/model.h"
#include "parallel/mesh.h"
#include "parallel/pipeline_executor.h"
#include "parallel/schedule.h"
#include "parallel/zero.h"

namespace fathom {

struct StepStats {
  int64_t step = 0;
  double lm_loss = 0;   // main next-token loss (mean over the step's valid labels)
  double mtp_loss = 0;  // mean over depths of the MTP losses (0 without MTP)
  double balance = 0;   // balance statistic sum_i f_i P_i, mean over MoE layers and sequences (1 = even)
  double loss = 0;      // the optimised total: lm + lambda * mtp + alpha * sum over layers of balance
  double lr = 0;
  double grad_norm = 0;  // before clipping
  double tokens_per_s = 0;
  double load_max_over_mean = 0;                   // worst MoE layer's busiest expert over the mean load
  std::vector<std::vector<int64_t>> expert_loads;  // this stage's MoE layers, global counts of the step
};

// Device memory of a GPU rank (all zero on the CPU).
struct DeviceMemoryStats {
  size_t static_bytes = 0;   // parameters, gradients, compute copies, optimizer moments: allocated once
  size_t pool_capacity = 0;  // the activation pool sized at start-up (launch/memory_plan.h)
  size_t pool_peak = 0;      // the most of it in use since start-up or ResetDeviceMemoryPeak()
};

class Trainer {
 public:
  // `mesh` (not owned) must outlive the trainer; its layout must match recipe.parallel.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const Recipe& recipe, DeviceMesh& mesh);

  // One optimizer step. Fails (nothing updated) when the gradient norm is not finite.
  absl::StatusOr<StepStats> Step(int64_t step);
  // Runs recipe.train.steps steps; rank 0 logs one line per train.log_every steps, then a summary.
  absl::StatusOr<std::vector<StepStats>> Run(std::ostream& log);

  ~Trainer();

  DeviceMemoryStats device_memory() const;
  void ResetDeviceMemoryPeak();
  // The start-up device memory plan as a table (launch/memory_plan.h); empty on the CPU.
  std::string memory_plan_table() const;

  Model& model() { return *model_; }
  const std::vector<int64_t>& stage_layers() const { return stage_layers_; }

 private:
  // With train.device cuda (one GPU so far): the device pool, op context and optimizer; defined in
  // trainer.cc so that CPU builds carry none of it.
  struct GpuState;

  Trainer(const Recipe& recipe, DeviceMesh& mesh, std::vector<int32_t> tokens,
          std::vector<int64_t> stage_layers);
  // Builds the model slice, moves it to the GPU (train.device cuda: NCCL groups for several GPUs, the
  // memory plan, the pools) and creates the optimizer and the pipeline executor. Called once by Create.
  absl::Status SetUp();
  MicroBatch SampleMicroBatch(int64_t step, int mb) const;

  Recipe recipe_;
  DeviceMesh& mesh_;
  // The groups that move tensors: mesh_ itself, or NCCL groups of the same layout for several GPUs.
  DeviceMesh* groups_ = nullptr;
  std::vector<int32_t> tokens_;
  std::vector<int64_t> stage_layers_;
  std::unique_ptr<SequenceSampler> sampler_;
  std::unique_ptr<GpuState> gpu_;  // declared before model_: the model's device tensors go first
  std::unique_ptr<Model> model_;
  std::unique_ptr<ZeroOptimizer> optimizer_;
  std::unique_ptr<PipelineExecutor> executor_;
  std::vector<Instruction> program_;
};

std::string FormatStepLine(const StepStats& s, int64_t total_steps);

}  // namespace fathom

#endif  // FATHOM_LAUNCH_TRAINER_H_
