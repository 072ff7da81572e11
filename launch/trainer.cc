#include "launch/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_format.h"
#include "data/demo_corpus.h"
#include "data/tokenizer.h"
#include "optim/expert_bias.h"
#include "optim/grad_clip.h"
#include "optim/lr_schedule.h"

namespace fathom {

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const Recipe& recipe) {
  if (absl::Status s = recipe.Validate(); !s.ok()) return s;
  if (recipe.train.device != "cpu") {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: train.device is '%s', but this build's trainer runs on cpu only (the CUDA trainer is not part "
        "of it); set train.device: cpu",
        recipe.path, recipe.train.device));
  }
  if (recipe.parallel.pp != 1 || recipe.parallel.ep != 1) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: parallel.pp=%d, parallel.ep=%d need the distributed trainer; the single-process trainer "
        "needs pp=1 and ep=1",
        recipe.path, recipe.parallel.pp, recipe.parallel.ep));
  }
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
  return trainer;
}

Trainer::Trainer(const Recipe& recipe, std::vector<int32_t> tokens)
    : recipe_(recipe), tokens_(std::move(tokens)) {
  model_ = std::make_unique<Model>(recipe_.model, recipe_.loss);
  model_->Finalize(recipe_.train.dtype == "f64" ? DType::kF64 : DType::kF32, recipe_.train.seed);
  optimizer_ = std::make_unique<AdamW>(model_->params(), recipe_.optim);
}

MicroBatch Trainer::SampleMicroBatch(int64_t step, int mb) const {
  const int64_t b = recipe_.train.micro_batch_size, t = recipe_.train.seq_len;
  MicroBatch batch{Tensor::Empty({b, t}, DType::kI32), Tensor::Empty({b, t}, DType::kI32)};
  for (int64_t s = 0; s < b; ++s) {
    sampler_->Sample(step, mb * b + s, batch.input_ids.data<int32_t>() + s * t,
                     batch.labels.data<int32_t>() + s * t);
  }
  return batch;
}

absl::StatusOr<StepStats> Trainer::Step(int64_t step) {
  auto start = std::chrono::steady_clock::now();
  const int m = static_cast<int>(recipe_.parallel.micro_batches);
  std::vector<MicroBatch> batches;
  for (int mb = 0; mb < m; ++mb) batches.push_back(SampleMicroBatch(step, mb));
  LossNormalizers norm = model_->Normalizers(batches, m);

  // Forward and backward of every micro-batch; parameter gradients accumulate across them.
  ParamTable& params = model_->params();
  params.ZeroGrads();
  std::vector<MoE*> moes = model_->moe_layers();
  for (MoE* moe : moes) moe->ResetStats();
  LossSums total;
  total.mtp_ce.assign(norm.mtp_tokens.size(), 0.0);
  for (int mb = 0; mb < m; ++mb) {
    LossSums s = model_->Forward(mb, batches[mb], norm);
    model_->BackwardInput(mb);
    model_->BackwardWeight(mb);
    total.main_ce += s.main_ce;
    total.balance += s.balance;
    for (size_t k = 0; k < s.mtp_ce.size(); ++k) total.mtp_ce[k] += s.mtp_ce[k];
  }

  // Optimizer step: global-norm clipping, AdamW, then the auxiliary-loss-free bias update.
  StepStats st;
  st.step = step;
  st.grad_norm = std::sqrt(GradNormSquared(params));
  if (!std::isfinite(st.grad_norm)) {
    return absl::InternalError(absl::StrFormat(
        "step %d: the global gradient norm is %f (lm loss sum %f): training diverged; lower optim.lr or raise "
        "optim.warmup_steps",
        step + 1, st.grad_norm, total.main_ce));
  }
  ClipGradients(params, recipe_.optim.grad_clip, st.grad_norm);
  st.lr = LearningRate(recipe_.optim, step, recipe_.train.steps);
  optimizer_->Step(st.lr);
  for (MoE* moe : moes) {
    UpdateExpertBias(params.value(moe->bias_id()), moe->expert_load(), recipe_.optim.bias_update_speed);
    st.load_max_over_mean = std::max(st.load_max_over_mean, ComputeExpertLoadStats(moe->expert_load()).max_over_mean);
  }

  st.lm_loss = total.main_ce / std::max(norm.main_tokens, 1.0);
  double mtp_weighted = 0;
  for (size_t k = 0; k < total.mtp_ce.size(); ++k) {
    double lk = total.mtp_ce[k] / std::max(norm.mtp_tokens[k], 1.0);
    st.mtp_loss += lk / static_cast<double>(total.mtp_ce.size());
    mtp_weighted += recipe_.loss.mtp_lambda / static_cast<double>(total.mtp_ce.size()) * lk;
  }
  st.balance = moes.empty() ? 0.0 : total.balance / (static_cast<double>(m) * static_cast<double>(moes.size()));
  st.loss = st.lm_loss + mtp_weighted + recipe_.loss.balance_alpha * total.balance / static_cast<double>(m);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  st.tokens_per_s = static_cast<double>(m * recipe_.train.micro_batch_size * recipe_.train.seq_len) / seconds;
  return st;
}

std::string FormatStepLine(const StepStats& s, int64_t total_steps) {
  return absl::StrFormat(
      "step %5d/%d | lm %.4f | mtp %.4f | bal %.4f | loss %.4f | lr %.3e | gnorm %.4f | %8.0f tok/s | "
      "load max/mean %.2f",
      s.step + 1, total_steps, s.lm_loss, s.mtp_loss, s.balance, s.loss, s.lr, s.grad_norm, s.tokens_per_s,
      s.load_max_over_mean);
}

absl::StatusOr<std::vector<StepStats>> Trainer::Run(std::ostream& log) {
  const int64_t steps = recipe_.train.steps;
  const ModelConfig& mc = recipe_.model;
  log << absl::StrFormat(
      "fathom train %s: %d layers (%d dense), %d routed experts top-%d, MTP depth %d, %d parameters (%s), "
      "%d sequences x %d tokens per step, %d steps\n",
      recipe_.path, mc.num_hidden_layers, mc.first_k_dense_replace, mc.n_routed_experts, mc.num_experts_per_tok,
      mc.num_nextn_predict_layers, model_->params().numel(), recipe_.train.dtype,
      recipe_.parallel.micro_batches * recipe_.train.micro_batch_size, recipe_.train.seq_len, steps);
  std::vector<StepStats> all;
  auto start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    absl::StatusOr<StepStats> st = Step(step);
    if (!st.ok()) return st.status();
    all.push_back(*st);
    if ((step + 1) % recipe_.train.log_every == 0 || step + 1 == steps) {
      log << FormatStepLine(all.back(), steps) << "\n";
      log.flush();
    }
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const size_t window = std::min<size_t>(10, all.size());
  double first = 0, last = 0;
  for (size_t i = 0; i < window; ++i) {
    first += all[i].lm_loss / static_cast<double>(window);
    last += all[all.size() - window + i].lm_loss / static_cast<double>(window);
  }
  double tokens = static_cast<double>(steps * recipe_.parallel.micro_batches * recipe_.train.micro_batch_size *
                                      recipe_.train.seq_len);
  log << absl::StrFormat(
      "summary: %d steps, %.0f tokens in %.1f s (%.0f tok/s); lm loss %.4f -> %.4f (mean of first/last %d "
      "steps), ln(vocab) = %.4f\n",
      steps, tokens, seconds, tokens / seconds, first, last, window, std::log(static_cast<double>(mc.vocab_size)));
  return all;
}

}  // namespace fathom
