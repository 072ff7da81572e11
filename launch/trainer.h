// The single-process training loop: sample a step's micro-batches, forward and backward each, clip,
// step AdamW, update the expert biases from the step's expert loads, log one line. Reads top to bottom
// like the algorithm (llm.c style); distributed execution replaces the inner loop, not this structure.
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
#include "optim/adamw.h"

namespace fathom {

struct StepStats {
  int64_t step = 0;
  double lm_loss = 0;       // main next-token loss (mean over the step's valid labels)
  double mtp_loss = 0;      // mean over depths of the MTP losses (0 without MTP)
  double balance = 0;       // balance statistic sum_i f_i P_i, mean over MoE layers and sequences (1 = even)
  double loss = 0;          // the optimised total: lm + lambda * mtp + alpha * sum over layers of balance
  double lr = 0;
  double grad_norm = 0;     // before clipping
  double tokens_per_s = 0;
  double load_max_over_mean = 0;  // worst MoE layer's busiest expert over the mean load
};

class Trainer {
 public:
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const Recipe& recipe);

  // One optimizer step. Fails (nothing updated) when the gradient norm is not finite.
  absl::StatusOr<StepStats> Step(int64_t step);
  // Runs recipe.train.steps steps, one log line per train.log_every steps, then a summary.
  absl::StatusOr<std::vector<StepStats>> Run(std::ostream& log);

  Model& model() { return *model_; }

 private:
  Trainer(const Recipe& recipe, std::vector<int32_t> tokens);
  MicroBatch SampleMicroBatch(int64_t step, int mb) const;

  Recipe recipe_;
  std::vector<int32_t> tokens_;
  std::unique_ptr<SequenceSampler> sampler_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<AdamW> optimizer_;
};

std::string FormatStepLine(const StepStats& s, int64_t total_steps);

}  // namespace fathom

#endif  // FATHOM_LAUNCH_TRAINER_H_
