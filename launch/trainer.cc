#include "launch/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "data/demo_corpus.h"
#include "data/tokenizer.h"
#include "optim/lr_schedule.h"
#include "parallel/fault.h"

namespace fathom {

Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const Recipe& recipe, DeviceMesh& mesh) {
  if (absl::Status s = recipe.Validate(); !s.ok()) return s;
  std::vector<int32_t> tokens;
  if (recipe.data.source == "demo") {
    tokens = EncodeBytes(DemoCorpus());
  } else {
    tokens = SyntheticTokens(std::max<int64_t>(1 << 20, 4 * recipe.train.seq_len), recipe.model.vocab_size,
                             recipe.train.seed);
  }
  auto trainer = std::unique_ptr<Trainer>(new Trainer(recipe, std::move(tokens)));
  auto sampler = SequenceSampler::Create(&trainer->tokens_, recipe.train.seq_len, recipe.train.seed);
  if (!sampler.ok()) return sampler.status();
  trainer->sampler_ = std::make_unique<SequenceSampler>(*std::move(sampler));
  absl::StatusOr<std::unique_ptr<StageRuntime>> runtime = StageRuntime::Create(recipe, mesh);
  if (!runtime.ok()) return runtime.status();
  trainer->runtime_ = *std::move(runtime);
  return trainer;
}

Trainer::Trainer(const Recipe& recipe, std::vector<int32_t> tokens)
    : recipe_(recipe), tokens_(std::move(tokens)) {}

std::vector<MicroBatch> Trainer::SampleMicroBatches(int64_t step) const {
  const int64_t m = recipe_.parallel.micro_batches, b = recipe_.train.micro_batch_size;
  const int64_t t = recipe_.train.seq_len;
  std::vector<MicroBatch> batches;
  for (int64_t mb = 0; mb < m; ++mb) {
    const int64_t first = (runtime_->coord().dp_rank * m + mb) * b;  // global sequence index
    MicroBatch batch{Tensor::Empty({b, t}, DType::kI32), Tensor::Empty({b, t}, DType::kI32)};
    sampler_->SampleBatch(step, first, b, batch.input_ids.data<int32_t>(), batch.labels.data<int32_t>());
    batches.push_back(std::move(batch));
  }
  return batches;
}

absl::StatusOr<StepStats> Trainer::Step(int64_t step) {
  const auto start = std::chrono::steady_clock::now();
  if (ShouldInjectFault(runtime_->coord().rank, step)) InjectFault(runtime_->coord().rank, step);
  const std::vector<MicroBatch> batches = SampleMicroBatches(step);
  const double lr = LearningRate(recipe_.optim, step, recipe_.train.steps);
  const std::vector<int64_t> traced = recipe_.train.TracedSteps();
  const bool trace = std::find(traced.begin(), traced.end(), step + 1) != traced.end();
  if (trace) runtime_->BeginStepTrace(step + 1);
  absl::StatusOr<StepResult> r = runtime_->Step(batches, lr);
  if (!r.ok())
    return absl::Status(r.status().code(), absl::StrFormat("step %d: %s", step + 1, r.status().message()));
  if (trace) {
    if (absl::Status s = runtime_->EndStepTrace(); !s.ok()) return s;
  }
  runtime_->UpdateExpertBiases(*r, recipe_.optim.bias_update_speed);

  StepStats st;
  st.step = step;
  st.lm_loss = r->lm_loss;
  st.mtp_loss = r->mtp_loss;
  st.balance = r->balance;
  st.loss = r->loss;
  st.lr = lr;
  st.grad_norm = r->grad_norm;
  st.load_max_over_mean = r->load_max_over_mean;
  st.expert_loads = std::move(r->expert_loads);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double tokens = static_cast<double>(recipe_.parallel.micro_batches * runtime_->layout().dp() *
                                            recipe_.train.micro_batch_size * recipe_.train.seq_len);
  st.tokens_per_s = tokens / seconds;
  return st;
}

std::string FormatStepLine(const StepStats& s, int64_t total_steps) {
  return absl::StrFormat(
      "step %5d/%d | lm %.4f | mtp %.4f | bal %.4f | loss %.4f | lr %.3e | gnorm %.4f | %8.0f tok/s | "
      "load max/mean %.2f",
      s.step + 1, total_steps, s.lm_loss, s.mtp_loss, s.balance, s.loss, s.lr, s.grad_norm, s.tokens_per_s,
      s.load_max_over_mean);
}

LossWindows SummarizeLosses(const std::vector<StepStats>& steps) {
  LossWindows w;
  if (steps.empty()) return w;
  w.window = std::max<size_t>(1, std::min<size_t>(10, steps.size() / 2));
  for (size_t i = 0; i < w.window; ++i) {
    w.first += steps[i].lm_loss / static_cast<double>(w.window);
    w.last += steps[steps.size() - w.window + i].lm_loss / static_cast<double>(w.window);
  }
  return w;
}

absl::StatusOr<std::vector<StepStats>> Trainer::Run(std::ostream& log) {
  const int64_t steps = recipe_.train.steps;
  const ModelConfig& mc = recipe_.model;
  const bool logs = runtime_->coord().rank == 0;
  const int64_t global_sequences =
      recipe_.parallel.micro_batches * recipe_.train.micro_batch_size * runtime_->layout().dp();
  if (logs) {
    log << absl::StrFormat(
        "fathom train %s: %d layers (%d dense), %d routed experts top-%d, MTP depth %d, %s; stage layers %s; "
        "%d sequences x %d tokens per step, %d steps\n",
        recipe_.path, mc.num_hidden_layers, mc.first_k_dense_replace, mc.n_routed_experts,
        mc.num_experts_per_tok, mc.num_nextn_predict_layers, recipe_.train.dtype,
        absl::StrJoin(runtime_->stage_layers(), "+"), global_sequences, recipe_.train.seq_len, steps);
    log << runtime_->memory_plan_table();
  }
  std::vector<StepStats> all;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    absl::StatusOr<StepStats> st = Step(step);
    if (!st.ok()) return st.status();
    all.push_back(*st);
    if (logs && ((step + 1) % recipe_.train.log_every == 0 || step + 1 == steps)) {
      log << FormatStepLine(all.back(), steps) << "\n";
      log.flush();
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const LossWindows w = SummarizeLosses(all);
  const double tokens = static_cast<double>(steps * global_sequences * recipe_.train.seq_len);
  if (logs) {
    log << absl::StrFormat(
        "summary: %d steps, %.0f tokens in %.1f s (%.0f tok/s); lm loss %.4f -> %.4f (mean of first/last %d "
        "steps), ln(vocab) = %.4f\n",
        steps, tokens, seconds, tokens / seconds, w.first, w.last, w.window,
        std::log(static_cast<double>(mc.vocab_size)));
  }
  return all;
}

}  // namespace fathom
