#include "launch/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/hf_import.h"
#include "checkpoint/hf_init.h"
#include "checkpoint/model_config_json.h"
#include "checkpoint/stage_state.h"
#include "layers/cost.h"
#include "optim/lr_schedule.h"
#include "parallel/collective_status.h"
#include "parallel/fault.h"
#include "parallel/preemption.h"
#include "parallel/rank_agreement.h"
#include "parallel/zero.h"

namespace fathom {
namespace {

// The recipe keys that define the LR schedule and the order of the data (data.* too, but for
// data.verify_tokens and data.tokenizer_dir). A resume may change them (a longer run, another batch), which
// is legitimate, but the run then no longer follows the saved run's curve (a longer cosine jumps the LR):
// each change is named.
constexpr const char* kScheduleKeys[] = {
    "train.steps",       "train.seq_len",          "train.micro_batch_size",
    "train.seed",        "parallel.micro_batches", "optim.lr",
    "optim.min_lr",      "optim.warmup_steps",     "optim.constant_steps",
    "optim.decay_steps", "optim.decay_style"};
// metadata.extra: the sequences per step (dp x micro_batches x micro_batch_size), which the recipe alone
// does not hold (dp is the mesh's). Checkpoints from before it was recorded lack it.
constexpr char kGlobalBatchKey[] = "global_batch_size";

bool IsScheduleKey(const std::string& key) {
  if (absl::StartsWith(key, "data.")) return key != "data.verify_tokens" && key != "data.tokenizer_dir";
  for (const char* k : kScheduleKeys) {
    if (key == k) return true;
  }
  return false;
}

// "train.steps 20 -> 26" for each schedule or data-order key that differs between the checkpoint's recipe
// and `recipe` (running with `global_batch` sequences per step).
std::vector<std::string> ScheduleChanges(const CheckpointMetadata& meta, const Recipe& recipe,
                                         int64_t global_batch) {
  std::vector<std::string> out;
  if (!meta.recipe.empty()) {
    for (const RecipeDifference& d : RecipeDifferences(meta.recipe, ResolvedRecipeYaml(recipe))) {
      if (IsScheduleKey(d.key)) out.push_back(absl::StrCat(d.key, " ", d.left, " -> ", d.right));
    }
  }
  if (meta.extra.is_object() && meta.extra.contains(kGlobalBatchKey) &&
      meta.extra[kGlobalBatchKey].is_number_integer()) {
    const int64_t saved = meta.extra[kGlobalBatchKey].get<int64_t>();
    if (saved != global_batch) {
      out.push_back(absl::StrCat("global batch (sequences per step) ", saved, " -> ", global_batch));
    }
  }
  return out;
}

// A save refuses to replace a step directory that is not a complete checkpoint (checkpoint/checkpoint_dir.h);
// this finds the ones the run's scheduled saves would meet before any step is trained.
// `foreign`: ForeignLeftovers(checkpoint.dir).
absl::Status CheckScheduledSaves(const Recipe& recipe, int64_t first_step,
                                 const std::vector<SkippedStepEntry>& foreign) {
  const CheckpointConfig& c = recipe.checkpoint;
  if (c.dir.empty() || c.save_every <= 0) return absl::OkStatus();
  std::vector<SkippedStepEntry> skipped;
  absl::StatusOr<std::vector<CheckpointEntry>> listed = ListCheckpoints(c.dir, &skipped);
  if (!listed.ok()) return listed.status();
  auto scheduled = [&](int64_t step) {
    return step > first_step && step <= recipe.train.steps &&
           (step % c.save_every == 0 || step == recipe.train.steps);
  };
  for (const SkippedStepEntry& e : skipped) {
    if (!scheduled(e.step)) continue;
    return absl::InvalidArgumentError(absl::StrFormat(
        "checkpoint.dir %s: this run saves step %d, but %s is not a complete checkpoint: %s; fathom "
        "replaces only its own complete checkpoints: move it out of %s",
        c.dir, e.step, e.path, e.reason, c.dir));
  }
  // A save writes step_N.tmp first and removes only a leftover of its own there.
  for (const SkippedStepEntry& e : foreign) {
    if (!scheduled(e.step) || e.path != CheckpointTmpPath(c.dir, e.step)) continue;
    return absl::InvalidArgumentError(absl::StrFormat(
        "checkpoint.dir %s: this run saves step %d through %s, which exists and fathom did not make it (no "
        "marker): move it out of %s",
        c.dir, e.step, e.path, c.dir));
  }
  return absl::OkStatus();
}

}  // namespace

Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const Recipe& recipe, DeviceMesh& mesh) {
  if (absl::Status s = recipe.Validate(); !s.ok()) return s;
  auto trainer = std::unique_ptr<Trainer>(new Trainer(recipe));
  // The data first: a bad dataset is reported before anything is allocated (every rank alike).
  const int64_t global_batch =
      mesh.layout().dp() * recipe.parallel.micro_batches * recipe.train.micro_batch_size;
  absl::StatusOr<std::unique_ptr<TokenLoader>> train =
      OpenTokenLoader(recipe, DataSplit::kTrain, global_batch);
  if (!train.ok()) return train.status();
  trainer->train_data_ = *std::move(train);
  if (recipe.train.eval_every > 0) {
    absl::StatusOr<std::unique_ptr<TokenLoader>> valid =
        OpenTokenLoader(recipe, DataSplit::kValid, global_batch);
    if (!valid.ok()) return valid.status();
    trainer->valid_data_ = *std::move(valid);
  }
  absl::StatusOr<std::unique_ptr<StageRuntime>> runtime = StageRuntime::Create(recipe, mesh);
  if (!runtime.ok()) return runtime.status();
  trainer->runtime_ = *std::move(runtime);
  if (!recipe.checkpoint.dir.empty()) {
    trainer->checkpoints_ = std::make_unique<CheckpointWriter>(mesh.world(), recipe.checkpoint);
  }
  std::vector<std::string> skipped;
  absl::StatusOr<std::optional<std::string>> resume =
      ResolveResumeOnAllRanks(recipe.checkpoint, mesh.world(), &skipped);
  if (!resume.ok()) return resume.status();
  std::vector<SkippedStepEntry> foreign;  // rank 0's, named now and checked against the saves below
  if (mesh.world().rank() == 0) {
    for (const std::string& w : skipped) {
      std::cout << "warning: checkpoint.resume " << recipe.checkpoint.resume << " " << w << "\n";
    }
    if (!recipe.checkpoint.dir.empty()) foreign = ForeignLeftovers(recipe.checkpoint.dir);
    for (const SkippedStepEntry& e : foreign) {
      std::cout << "warning: checkpoint.dir holds " << DescribeSkipped(e) << "\n";
    }
  }
  if (resume->has_value()) {
    if (absl::Status s = trainer->Resume(**resume); !s.ok()) return s;
  } else if (!recipe.model.init_from.empty()) {
    // A fresh run from an HF directory's weights (fathom import's format, read directly).
    if (absl::Status s = InitFromHfDirectory(recipe.model.init_from, *trainer->runtime_); !s.ok()) {
      // A fathom checkpoint (a step directory, or a checkpoint.dir holding some) is not an HF directory: say
      // which key takes it.
      const std::string& from = recipe.model.init_from;
      std::error_code ec;
      absl::StatusOr<std::vector<CheckpointEntry>> held = ListCheckpoints(from);
      std::string hint;
      if (std::filesystem::is_regular_file(std::filesystem::path(from) / "index.json", ec)) {
        hint = absl::StrCat("; ", from,
                            " is a fathom checkpoint: resume from it with checkpoint.resume: ", from);
      } else if (held.ok() && !held->empty()) {
        hint = absl::StrCat("; ", from,
                            " holds fathom checkpoints: resume from its newest with checkpoint.dir: ", from,
                            " (checkpoint.resume: auto)");
      }
      if (!hint.empty()) hint += " (model.init_from takes an HF directory)";
      return absl::Status(s.code(), absl::StrFormat("model.init_from: %s%s", s.message(), hint));
    }
    if (mesh.world().rank() == 0) {
      std::cout << "initialised from " << recipe.model.init_from << " (AdamW, LR schedule and data fresh)\n";
    }
  }
  if (trainer->checkpoints_) {
    absl::Status s = mesh.world().rank() == 0 ? CheckScheduledSaves(recipe, trainer->first_step_, foreign)
                                              : absl::OkStatus();
    if (s = AgreeOnStatus(mesh.world(), s); !s.ok()) return s;
  }
  return trainer;
}

absl::Status Trainer::Resume(const std::string& path) {
  Communicator& world = runtime_->host_mesh().world();
  std::unique_ptr<CheckpointReader> reader;
  std::vector<std::string> notes;
  {
    absl::StatusOr<std::unique_ptr<CheckpointReader>> opened = CheckpointReader::Open(path);
    absl::Status s = opened.status();
    if (s.ok()) {
      reader = *std::move(opened);
      s = reader->CheckModel(recipe_.model, &notes);
    }
    if (s = AgreeOnStatus(world, s); !s.ok()) return s;
  }
  const CheckpointMetadata& meta = reader->metadata();
  if (meta.step > recipe_.train.steps) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: the checkpoint is at step %d, past train.steps (%d): raise train.steps to train further", path,
        meta.step, recipe_.train.steps));
  }
  const int64_t adam_step = meta.extra.value("adam_step", meta.step);
  bool moments = false;
  const auto load_start = std::chrono::steady_clock::now();
  if (absl::Status s = RestoreStageState(*reader, *runtime_, adam_step, &moments); !s.ok()) return s;
  const double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  // The data position: file sources check that the data and seed did not change (the message says what
  // changed); a weights-only checkpoint (fathom import) starts the data from its beginning.
  if (!meta.data_loader.empty()) {
    absl::StatusOr<LoaderState> state = LoaderStateFromJson(meta.data_loader);
    absl::Status s = state.status();
    if (s.ok()) s = train_data_->Restore(*state);
    if (s = AgreeOnStatus(world, s); !s.ok()) {
      return absl::Status(s.code(), absl::StrFormat("%s: %s", path, s.message()));
    }
  }
  first_step_ = meta.step;
  // An imported (weights-only) checkpoint starts the schedule fresh; older checkpoints hold lr_schedule_step
  // == step, which is what they ran.
  lr_step_ = IsWeightsOnlyCheckpoint(meta) ? 0 : meta.lr_schedule_step;
  resumed_from_ = path;
  if (runtime_->coord().rank == 0) {
    // The directory's bytes over the time every rank took to read its slices (the restore ends together).
    std::error_code ec;
    double bytes = 0;
    for (const auto& e : std::filesystem::directory_iterator(path, ec)) {
      if (e.is_regular_file(ec)) bytes += static_cast<double>(e.file_size(ec));
    }
    std::cout << absl::StrFormat("resumed from %s: step %d%s; %.3f GB loaded in %.3f s (%.2f GB/s)\n", path,
                                 meta.step, moments ? "" : " (weights only: AdamW starts from zero)",
                                 bytes / 1e9, load_seconds, bytes / 1e9 / std::max(load_seconds, 1e-9));
    for (const std::string& n : notes) std::cout << "  note: " << n << "\n";
    // An imported checkpoint starts the schedule and the data fresh: nothing of its recipe continues.
    if (!IsWeightsOnlyCheckpoint(meta)) {
      for (const std::string& change : ScheduleChanges(meta, recipe_, global_batch())) {
        std::cout << "notice: " << change
                  << " since the checkpoint was saved (the LR schedule and the data order follow the new "
                     "value)\n";
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::CheckNumerics(const StepStats& st, std::ostream& log) {
  const bool logs = runtime_->coord().rank == 0;
  if (st.skipped) {
    ++skipped_total_;
    if (++skipped_in_a_row_ >= recipe_.train.max_skipped_steps) {
      return absl::InternalError(absl::StrFormat(
          "step %d: %d steps in a row had a non-finite gradient norm (train.max_skipped_steps); the first "
          "non-finite gradient: %s. Training diverged: lower optim.lr, raise optim.warmup_steps or check the "
          "data",
          st.step + 1, skipped_in_a_row_, st.nonfinite));
    }
    if (logs) {
      log << absl::StrFormat(
          "warning: step %d skipped: gradient norm %f, first non-finite gradient %s (%d in "
          "a row, %d in all)\n",
          st.step + 1, st.grad_norm, st.nonfinite, skipped_in_a_row_, skipped_total_);
    }
    return absl::OkStatus();
  }
  skipped_in_a_row_ = 0;
  // A spike against the mean of the recent losses, and a gradient that vanished entirely.
  constexpr size_t kWindow = 20, kMinimum = 5;
  if (recent_losses_.size() >= kMinimum && recipe_.train.loss_spike_factor > 0) {
    double mean = 0;
    for (double l : recent_losses_) mean += l / static_cast<double>(recent_losses_.size());
    if (st.loss > recipe_.train.loss_spike_factor * mean && logs) {
      log << absl::StrFormat(
          "warning: step %d loss %.4g is %.1f x the mean of the last %d steps (%.4g; "
          "train.loss_spike_factor %g)\n",
          st.step + 1, st.loss, st.loss / mean, recent_losses_.size(), mean, recipe_.train.loss_spike_factor);
    }
  }
  if (st.grad_norm == 0 && logs) {
    log << absl::StrFormat("warning: step %d gradient norm is exactly 0: nothing is learning\n", st.step + 1);
  }
  recent_losses_.push_back(st.loss);
  if (recent_losses_.size() > kWindow) recent_losses_.erase(recent_losses_.begin());
  return absl::OkStatus();
}

CheckpointMetadata Trainer::MetadataAfter(int64_t steps_done) const {
  CheckpointMetadata m;
  m.step = steps_done;
  m.lr_schedule_step = lr_step_;
  m.seed = recipe_.train.seed;
  m.data_loader = LoaderStateToJson(train_data_->state(steps_done));
  m.extra = {{"adam_step", runtime_->optimizer().step()}, {kGlobalBatchKey, global_batch()}};
  m.recipe = ResolvedRecipeYaml(recipe_);
  m.model = ModelConfigToJson(recipe_.model);
  return m;
}

absl::Status Trainer::StartSave(int64_t steps_done, bool async, std::ostream& log) {
  // Saves wait on every rank's file system: they get the longer deadline.
  ScopedTimeout deadline(runtime_->host_mesh().world(), recipe_.parallel.save_timeout_s,
                         "parallel.save_timeout_s");
  if (checkpoints_->in_flight()) {
    if (absl::Status s = PollSave(/*finish=*/true, log); !s.ok()) return s;
  }
  const std::vector<ShardSource> sources = StageStateSources(*runtime_);
  if (async) return checkpoints_->StartAsync(sources, MetadataAfter(steps_done));
  absl::StatusOr<CheckpointSaveStats> saved = checkpoints_->Save(sources, MetadataAfter(steps_done));
  if (!saved.ok()) return saved.status();
  if (runtime_->coord().rank == 0) log << DescribeSave(*saved) << "\n" << std::flush;
  return absl::OkStatus();
}

absl::Status Trainer::PollSave(bool finish, std::ostream& log) {
  if (!checkpoints_ || !checkpoints_->in_flight()) return absl::OkStatus();
  absl::StatusOr<std::optional<CheckpointSaveStats>> done =
      finish ? checkpoints_->Finish() : checkpoints_->Poll();
  if (!done.ok()) return done.status();
  if (done->has_value() && runtime_->coord().rank == 0) log << DescribeSave(**done) << "\n" << std::flush;
  return absl::OkStatus();
}

absl::Status Trainer::SaveCheckpoint(int64_t steps_done, std::ostream& log) {
  if (!checkpoints_) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: saving a checkpoint needs checkpoint.dir", recipe_.path));
  }
  return StartSave(steps_done, /*async=*/false, log);
}

absl::StatusOr<std::vector<MicroBatch>> Trainer::SampleMicroBatches(TokenLoader& loader, int64_t step) const {
  const int64_t m = recipe_.parallel.micro_batches, b = recipe_.train.micro_batch_size;
  const int64_t t = recipe_.train.seq_len;
  std::vector<MicroBatch> batches;
  for (int64_t mb = 0; mb < m; ++mb) {
    const int64_t first = (runtime_->coord().dp_rank * m + mb) * b;  // index in the step's global batch
    MicroBatch batch{Tensor::Empty({b, t}, DType::kI32), Tensor::Empty({b, t}, DType::kI32)};
    if (absl::Status s =
            loader.Fill(step, first, b, batch.input_ids.data<int32_t>(), batch.labels.data<int32_t>());
        !s.ok()) {
      return s;
    }
    batches.push_back(std::move(batch));
  }
  return batches;
}

absl::StatusOr<StepStats> Trainer::Step(int64_t step) {
  const auto start = std::chrono::steady_clock::now();
  if (ShouldInjectFault(runtime_->coord().rank, step + 1)) InjectFault(runtime_->coord().rank, step + 1);
  absl::StatusOr<std::vector<MicroBatch>> batches = SampleMicroBatches(*train_data_, step);
  if (!batches.ok()) return batches.status();
  const double lr = LearningRate(recipe_.optim, lr_step_, recipe_.train.steps);
  const std::vector<int64_t> traced = recipe_.train.TracedSteps();
  const bool trace = std::find(traced.begin(), traced.end(), step + 1) != traced.end();
  if (trace) runtime_->BeginStepTrace(step + 1);
  absl::StatusOr<StepResult> r = runtime_->Step(*batches, lr);
  if (!r.ok())
    return absl::Status(r.status().code(), absl::StrFormat("step %d: %s", step + 1, r.status().message()));
  if (trace) {
    if (absl::Status s = runtime_->EndStepTrace(); !s.ok()) return s;
  }
  if (!r->skipped) {
    runtime_->UpdateExpertBiases(*r, recipe_.optim.bias_update_speed);
    ++lr_step_;
  }

  StepStats st;
  st.step = step;
  st.lm_loss = r->lm_loss;
  st.mtp_loss = r->mtp_loss;
  st.balance = r->balance;
  st.loss = r->loss;
  st.lr = lr;
  st.grad_norm = r->grad_norm;
  st.load_max_over_mean = r->load_max_over_mean;
  st.skipped = r->skipped;
  st.nonfinite = r->nonfinite;
  st.expert_loads = std::move(r->expert_loads);
  for (const LayerLoad& l : r->layer_loads) st.expert_load.push_back({l.layer, l.max, l.mean});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double tokens = static_cast<double>(global_batch() * recipe_.train.seq_len);
  st.tokens_per_s = tokens / seconds;
  st.seconds = seconds;
  return st;
}

absl::StatusOr<double> Trainer::Evaluate() {
  if (!valid_data_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: evaluation needs a valid split: set train.eval_every > 0 with data.source megatron or hdf5",
        recipe_.path));
  }
  return EvaluateOn(*valid_data_);  // the same batches every time
}

absl::StatusOr<double> Trainer::EvaluateOn(TokenLoader& loader) {
  double sum = 0;
  for (int64_t j = 0; j < recipe_.train.eval_steps; ++j) {
    absl::StatusOr<std::vector<MicroBatch>> batches = SampleMicroBatches(loader, j);
    if (!batches.ok()) return batches.status();
    sum += runtime_->Evaluate(*batches);
  }
  return sum / static_cast<double>(recipe_.train.eval_steps);
}

absl::StatusOr<double> Trainer::EvaluateTestSplit(std::ostream& log) {
  const double none = std::nan("");
  absl::StatusOr<std::vector<double>> fractions = recipe_.data.SplitFractions();
  if (!fractions.ok() || fractions->size() < 3 || !((*fractions)[2] > 0)) return none;
  const bool logs = runtime_->coord().rank == 0;
  absl::StatusOr<std::unique_ptr<TokenLoader>> test =
      OpenTokenLoader(recipe_, DataSplit::kTest, global_batch());
  // Every rank opens the same files: the verdict is agreed so that all evaluate or none.
  if (absl::Status s = AgreeOnStatus(runtime_->host_mesh().world(), test.status()); !s.ok()) {
    if (logs) log << "test: not evaluated: " << s.message() << "\n";
    return none;
  }
  absl::StatusOr<double> loss = EvaluateOn(**test);
  if (!loss.ok()) return loss.status();
  if (logs) {
    log << absl::StrFormat("test  %5d/%d | test lm %.4f | ppl %.2f (%d batches of the test split)\n",
                           recipe_.train.steps, recipe_.train.steps, *loss, std::exp(*loss),
                           recipe_.train.eval_steps);
  }
  return *loss;
}

StepRecord Trainer::MakeRecord(const StepStats& st, double valid_loss, double test_loss) const {
  StepRecord rec;
  rec.step = st.step + 1;
  const double flops_per_token = [&] {
    double f = 0;
    for (const NodeCost& n : BuildCostGraph(recipe_.model, recipe_.train.seq_len)) {
      if (n.kind != NodeKind::kMtp) f += n.model_flops;
    }
    return f;
  }();
  const double tflops_per_gpu =
      st.tokens_per_s * flops_per_token / 1e12 / static_cast<double>(runtime_->layout().world());
  rec.scalars = {{"loss", st.loss},
                 {"lm_loss", st.lm_loss},
                 {"mtp_loss", st.mtp_loss},
                 {"balance", st.balance},
                 {"lr", st.lr},
                 {"grad_norm", st.grad_norm},
                 {"tokens_per_s", st.tokens_per_s},
                 {"tflops_per_gpu", tflops_per_gpu},
                 {"step_seconds", st.seconds}};
  if (recipe_.train.device == "cuda") {
    const DeviceMemoryStats mem = runtime_->device_memory();
    rec.scalars.push_back({"mfu", tflops_per_gpu / 989.0});
    rec.scalars.push_back({"memory_gib", static_cast<double>(mem.static_bytes + mem.pool_peak) / (1 << 30)});
  }
  if (!std::isnan(valid_loss)) {
    rec.scalars.push_back({"valid_loss", valid_loss});
    rec.scalars.push_back({"valid_perplexity", std::exp(valid_loss)});
  }
  if (!std::isnan(test_loss)) {
    rec.scalars.push_back({"test_loss", test_loss});
    rec.scalars.push_back({"test_perplexity", std::exp(test_loss)});
  }
  rec.expert_load = st.expert_load;  // every stage's layers, not only rank 0's
  return rec;
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
  const int64_t global_sequences = global_batch();
  if (logs) {
    log << absl::StrFormat(
        "fathom train %s: %d layers (%d dense), %d routed experts top-%d, MTP depth %d, %s; stage layers %s; "
        "%d sequences x %d tokens per step, %d steps\n",
        recipe_.path, mc.num_hidden_layers, mc.first_k_dense_replace, mc.n_routed_experts,
        mc.num_experts_per_tok, mc.num_nextn_predict_layers, recipe_.train.dtype,
        absl::StrJoin(runtime_->stage_layers(), "+"), global_sequences, recipe_.train.seq_len, steps);
    log << runtime_->memory_plan_table() << runtime_->attention_path();
  }
  if (logs) log << train_data_->Describe() << "\n";
  std::unique_ptr<RunLog> run_log;
  if (logs && !recipe_.train.log_dir.empty()) {
    // A resumed run drops what the interrupted one logged past the checkpoint (framework/run_log.h).
    absl::StatusOr<std::unique_ptr<RunLog>> opened =
        RunLog::Open(recipe_.train.log_dir, RunStart{first_step_, resumed_from_});
    if (!opened.ok()) return opened.status();
    run_log = *std::move(opened);
    if (!run_log->notice().empty()) log << run_log->notice() << "\n";
  }
  if (absl::Status s = InstallPreemptionHandlers(); !s.ok()) return s;
  Communicator& world = runtime_->host_mesh().world();
  const CheckpointConfig& ckpt = recipe_.checkpoint;
  std::vector<StepStats> all;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = first_step_; step < steps; ++step) {
    absl::StatusOr<StepStats> st;
    {
      // The first step (allocations, NCCL connections, cuDNN plans) gets the longer deadline.
      std::optional<ScopedTimeout> first;
      if (step == first_step_) {
        first.emplace(world, recipe_.parallel.first_step_timeout_s, "parallel.first_step_timeout_s");
      }
      st = Step(step);
    }
    if (!st.ok()) return st.status();
    all.push_back(*st);
    if (absl::Status s = CheckNumerics(*st, log); !s.ok()) return s;
    if (recipe_.train.check_replicas_every > 0 && (step + 1) % recipe_.train.check_replicas_every == 0) {
      if (ShouldFlipParameterBit(runtime_->coord().rank, step + 1)) runtime_->FlipOneParameterBitForTesting();
      if (absl::Status s = runtime_->CheckReplicas(); !s.ok()) {
        return absl::Status(s.code(), absl::StrFormat("step %d: %s", step + 1, s.message()));
      }
    }
    double valid_loss = std::nan("");
    if (recipe_.train.eval_every > 0 && ((step + 1) % recipe_.train.eval_every == 0 || step + 1 == steps)) {
      absl::StatusOr<double> v = Evaluate();
      if (!v.ok()) return v.status();
      valid_loss = *v;
      if (logs) {
        log << absl::StrFormat("eval  %5d/%d | valid lm %.4f | ppl %.2f (%d batches)\n", step + 1, steps,
                               valid_loss, std::exp(valid_loss), recipe_.train.eval_steps);
      }
    }
    double test_loss = std::nan("");  // after the last step (a preempted run stops before it)
    if (recipe_.train.eval_every > 0 && step + 1 == steps) {
      absl::StatusOr<double> t = EvaluateTestSplit(log);
      if (!t.ok()) return t.status();
      test_loss = *t;
    }
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (logs && ((step + 1) % recipe_.train.log_every == 0 || step + 1 == steps)) {
      log << FormatStepLine(all.back(), steps);
      if (step + 1 < steps) {
        log << " | eta "
            << FormatDuration(elapsed / static_cast<double>(step + 1 - first_step_) *
                              static_cast<double>(steps - step - 1));
      }
      log << "\n";
      log.flush();
    }
    if (run_log) {
      if (absl::Status s = run_log->Log(MakeRecord(all.back(), valid_loss, test_loss)); !s.ok()) return s;
    }
    // Checkpoints: finish a background save when every rank is done; save on schedule, after the last
    // step, and when any rank was told to stop (SIGTERM / SIGUSR1: the same step on every rank).
    if (absl::Status s = PollSave(/*finish=*/false, log); !s.ok()) return s;
    const StopAgreement agreed = AgreeToStop(world);
    const bool stop = agreed.stop();
    const bool last = step + 1 == steps;
    const bool scheduled = ckpt.save_every > 0 && (last || (step + 1) % ckpt.save_every == 0);
    if (checkpoints_ && (stop || scheduled)) {
      if (absl::Status s = StartSave(step + 1, ckpt.async && !stop && !last, log); !s.ok()) {
        if (!stop) return s;
        return absl::Status(s.code(), absl::StrFormat("preempted (%s) after step %d; its checkpoint: %s",
                                                      DescribeStop(agreed), step + 1, s.message()));
      }
    }
    if (stop) {
      preempted_ = true;
      if (logs) {
        log << absl::StrFormat("preempted: %s; stopping after step %d%s\n", DescribeStop(agreed), step + 1,
                               checkpoints_ ? " with a checkpoint" : " (no checkpoint.dir: nothing saved)");
      }
      break;
    }
  }
  if (absl::Status s = PollSave(/*finish=*/true, log); !s.ok()) return s;
  if (run_log) {
    if (absl::Status s = run_log->Close(); !s.ok()) return s;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const LossWindows w = SummarizeLosses(all);
  const double tokens =
      static_cast<double>(static_cast<int64_t>(all.size()) * global_sequences * recipe_.train.seq_len);
  if (logs) {
    log << absl::StrFormat(
        "summary: %d steps, %.0f tokens in %.1f s (%.0f tok/s); lm loss %.4f -> %.4f (mean of first/last %d "
        "steps), ln(vocab) = %.4f\n",
        static_cast<int64_t>(all.size()), tokens, seconds, tokens / seconds, w.first, w.last, w.window,
        std::log(static_cast<double>(mc.vocab_size)));
  }
  return all;
}

}  // namespace fathom
