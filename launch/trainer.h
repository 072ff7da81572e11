// The training loop. Reads top to bottom like the algorithm (llm.c style):
//   sample this rank's micro-batches -> the stage runtime's step (normalisers, the pipeline program with
//   its expert all-to-alls, gradient sync, clipping, AdamW; parallel/stage_runtime.h) -> expert-bias update
//   from the step's loads -> one log line on rank 0.
// Everything that depends on the mesh lives in the runtime; one code path for every mesh (a single process
// is the mesh pp = ep = dp = 1 on the local communicator).
#ifndef FATHOM_LAUNCH_TRAINER_H_
#define FATHOM_LAUNCH_TRAINER_H_

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint_index.h"
#include "checkpoint/checkpoint_writer.h"
#include "data/token_loader.h"
#include "framework/config.h"
#include "framework/run_log.h"
#include "parallel/stage_runtime.h"

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
  std::vector<ExpertLoadRecord> expert_load;       // every MoE layer of the model (any stage): the run log's
  double seconds = 0;                              // wall time of the step on this rank
  bool skipped = false;   // the gradient norm was not finite: no update (StepResult::skipped)
  std::string nonfinite;  // then: the first tensor with a non-finite gradient, and its rank
};

class Trainer {
 public:
  // `mesh` (not owned) must outlive the trainer; its layout must match recipe.parallel. With
  // checkpoint.resume (auto finding one, or a path) the state is loaded here, on any mesh: parameters,
  // AdamW moments and step count, expert biases, the data position; first_step() says where to go on.
  // A bad checkpoint (missing, truncated, corrupt, another model) is InvalidArgument / NotFound / DataLoss
  // on every rank alike, naming the file and the tensor; nothing on disk is touched.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const Recipe& recipe, DeviceMesh& mesh);
  ~Trainer();

  // One optimizer step (0-based). When the gradient norm is not finite nothing is updated and the stats say
  // so (skipped); Run stops after train.max_skipped_steps of those in a row.
  absl::StatusOr<StepStats> Step(int64_t step);
  // Sequences per optimizer step over all replicas: dp x parallel.micro_batches x train.micro_batch_size.
  int64_t global_batch() const {
    return runtime_->layout().dp() * recipe_.parallel.micro_batches * recipe_.train.micro_batch_size;
  }
  // The main LM loss on train.eval_steps batches of the valid split (the same batches every time).
  // FailedPrecondition when the recipe's data has no valid split.
  absl::StatusOr<double> Evaluate();
  // Runs steps first_step() .. recipe.train.steps-1; rank 0 logs one line per train.log_every steps (with the
  // ETA), a validation line every train.eval_every steps, after the last step (not after a preemption) one on
  // train.eval_steps batches of the test split when data.split gives it a share (Megatron's test loss; a test
  // split that cannot be read, e.g. one given no documents, is named in a "not evaluated" line instead), then
  // a summary; with train.log_dir, rank 0 also writes metrics.jsonl and TensorBoard events there
  // (framework/run_log.h: a resumed run removes the records the interrupted one wrote past its checkpoint; a
  // fresh one keeps earlier runs' records and says so). With checkpoint.dir and save_every it saves every
  // save_every steps and after the last one (checkpoint.async: in the background). A SIGTERM or SIGUSR1 on
  // any rank (Slurm's --signal=USR1@120) ends the run after the current step with a checkpoint (when
  // checkpoint.dir is set), rank 0 naming the signal and the ranks it reached; preempted() is then true.
  absl::StatusOr<std::vector<StepStats>> Run(std::ostream& log);

  // Saves the state after `steps_done` steps into checkpoint.dir (synchronously; collective). The
  // checkpoint's step is steps_done.
  absl::Status SaveCheckpoint(int64_t steps_done, std::ostream& log);

  int64_t first_step() const { return first_step_; }
  bool preempted() const { return preempted_; }

  StageRuntime& runtime() { return *runtime_; }
  Model& model() { return runtime_->model(); }
  DeviceMemoryStats device_memory() const { return runtime_->device_memory(); }
  void ResetDeviceMemoryPeak() { runtime_->ResetDeviceMemoryPeak(); }
  std::string memory_plan_table() const { return runtime_->memory_plan_table(); }

 private:
  explicit Trainer(const Recipe& recipe) : recipe_(recipe) {}
  // This rank's micro-batches of `step` from `loader`: data-parallel rank d takes micro-batches
  // [d * M, (d + 1) * M) of the step's global batch, so any mesh sees the same global batch as one rank
  // with dp * M micro-batches.
  absl::StatusOr<std::vector<MicroBatch>> SampleMicroBatches(TokenLoader& loader, int64_t step) const;
  // The main LM loss on train.eval_steps batches ("steps" 0 .. eval_steps-1) of `loader`'s split.
  absl::StatusOr<double> EvaluateOn(TokenLoader& loader);
  // The test line after the last step (see Run): the loss, NaN when data.split gives the test split no
  // share or it cannot be read (then said on rank 0). Collective.
  absl::StatusOr<double> EvaluateTestSplit(std::ostream& log);
  // The record of a step for the run log (rank 0).
  // valid_loss / test_loss: NaN when not evaluated at this step.
  StepRecord MakeRecord(const StepStats& st, double valid_loss, double test_loss) const;

  Recipe recipe_;
  std::unique_ptr<TokenLoader> train_data_, valid_data_;  // valid_data_: with train.eval_every > 0
  // The checkpoint state of the step loop: what a save records besides the tensors.
  CheckpointMetadata MetadataAfter(int64_t steps_done) const;
  absl::Status Resume(const std::string& path);
  absl::Status StartSave(int64_t steps_done, bool async, std::ostream& log);
  absl::Status PollSave(bool finish, std::ostream& log);
  // Counts skipped steps (an error after train.max_skipped_steps in a row) and warns on rank 0 about a
  // loss spike or a gradient norm of exactly 0.
  absl::Status CheckNumerics(const StepStats& st, std::ostream& log);

  std::unique_ptr<StageRuntime> runtime_;
  std::unique_ptr<CheckpointWriter> checkpoints_;  // with checkpoint.dir
  int64_t first_step_ = 0;
  // The LR schedule's position: the updates made so far (a skipped step, with non-finite gradients, does not
  // advance it, as in Megatron-LM); saved as the checkpoint's lr_schedule_step.
  int64_t lr_step_ = 0;
  std::string resumed_from_;  // the checkpoint resumed from ("" for a fresh run), for the run log
  bool preempted_ = false;
  int64_t skipped_in_a_row_ = 0, skipped_total_ = 0;
  std::vector<double> recent_losses_;  // the last losses, for the spike warning
};

std::string FormatStepLine(const StepStats& s, int64_t total_steps);

// The run summary's loss windows: the mean lm loss of the first and of the last `window` steps, with
// window = min(10, steps / 2) (1 for a single step), so the two windows never overlap.
struct LossWindows {
  size_t window = 0;
  double first = 0, last = 0;
};
LossWindows SummarizeLosses(const std::vector<StepStats>& steps);

}  // namespace fathom

#endif  // FATHOM_LAUNCH_TRAINER_H_
