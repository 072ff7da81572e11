// The recipe's validation (framework/config.h): each section's Validate, the data blend and split, the
// global batch. framework/config.cc parses; this file decides what a parsed recipe may say.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "framework/config.h"

namespace fathom {
namespace {

// The longest wait the watchdog accepts (parallel/communicator.h's Communicator::kMaxTimeoutSeconds).
constexpr double kMaxTimeoutSeconds = 7 * 24 * 3600.0;
constexpr int64_t kMaxMicroBatches = 65536;

// ---------------------------------------------------------------------------------------------------
// Validation helpers. Each returns an InvalidArgument naming the key, the constraint and the value.

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

absl::Status CheckAtLeast(const std::string& key, int64_t value, int64_t min) {
  if (value >= min) return absl::OkStatus();
  return Invalid(absl::StrCat(key, " must be >= ", min, ", got ", value));
}

absl::Status CheckPositive(const std::string& key, double value) {
  if (value > 0) return absl::OkStatus();  // also rejects NaN
  return Invalid(absl::StrCat(key, " must be > 0, got ", value));
}

absl::Status CheckNonNegative(const std::string& key, double value) {
  if (value >= 0) return absl::OkStatus();  // also rejects NaN
  return Invalid(absl::StrCat(key, " must be >= 0, got ", value));
}

absl::Status CheckOneOf(const std::string& key, const std::string& value,
                        std::initializer_list<const char*> allowed) {
  for (const char* a : allowed) {
    if (value == a) return absl::OkStatus();
  }
  return Invalid(absl::StrCat(key, " must be one of ", absl::StrJoin(allowed, ", "), "; got '", value, "'"));
}

// The first non-OK status of a list of checks, evaluated in order.
absl::Status FirstError(std::initializer_list<absl::Status> checks) {
  for (const absl::Status& s : checks) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ModelConfig::Validate() const {
  absl::Status s = FirstError({
      CheckAtLeast("model.vocab_size", vocab_size, 2),
      CheckAtLeast("model.hidden_size", hidden_size, 1),
      CheckAtLeast("model.intermediate_size", intermediate_size, 1),
      CheckAtLeast("model.moe_intermediate_size", moe_intermediate_size, 1),
      CheckAtLeast("model.num_hidden_layers", num_hidden_layers, 1),
      CheckAtLeast("model.first_k_dense_replace", first_k_dense_replace, 0),
      CheckAtLeast("model.num_attention_heads", num_attention_heads, 1),
      CheckAtLeast("model.q_lora_rank", q_lora_rank, 0),
      CheckAtLeast("model.kv_lora_rank", kv_lora_rank, 1),
      CheckAtLeast("model.qk_nope_head_dim", qk_nope_head_dim, 1),
      CheckAtLeast("model.qk_rope_head_dim", qk_rope_head_dim, 1),
      CheckAtLeast("model.v_head_dim", v_head_dim, 1),
      CheckAtLeast("model.n_routed_experts", n_routed_experts, 1),
      CheckAtLeast("model.n_shared_experts", n_shared_experts, 0),
      CheckAtLeast("model.num_experts_per_tok", num_experts_per_tok, 1),
      CheckAtLeast("model.n_group", n_group, 1),
      CheckAtLeast("model.topk_group", topk_group, 1),
      CheckAtLeast("model.num_nextn_predict_layers", num_nextn_predict_layers, 0),
      CheckAtLeast("model.max_position_embeddings", max_position_embeddings, 1),
      CheckPositive("model.routed_scaling_factor", routed_scaling_factor),
      CheckPositive("model.rms_norm_eps", rms_norm_eps),
      CheckPositive("model.rope_theta", rope_theta),
      CheckPositive("model.initializer_range", initializer_range),
  });
  if (!s.ok()) return s;
  // Token ids are int32 everywhere (datasets, embedding, labels): a larger vocabulary cannot be indexed.
  if (vocab_size > std::numeric_limits<int32_t>::max()) {
    return Invalid(
        absl::StrCat("model.vocab_size must be <= 2147483647 (token ids are 32-bit), got ", vocab_size));
  }
  if (first_k_dense_replace > num_hidden_layers) {
    return Invalid(absl::StrCat("model.first_k_dense_replace (", first_k_dense_replace,
                                ") must be <= model.num_hidden_layers (", num_hidden_layers, ")"));
  }
  if (qk_rope_head_dim % 2 != 0) {
    return Invalid(absl::StrCat("model.qk_rope_head_dim (", qk_rope_head_dim,
                                ") must be even (RoPE rotates pairs of dimensions)"));
  }
  if (n_routed_experts % n_group != 0) {
    return Invalid(absl::StrCat("model.n_routed_experts (", n_routed_experts,
                                ") must be divisible by model.n_group (", n_group, ")"));
  }
  const int64_t per_group = n_routed_experts / n_group;
  if (n_group > 1 && per_group < 2) {
    return Invalid(absl::StrCat("model.n_routed_experts / model.n_group (", n_routed_experts, " / ", n_group,
                                " = ", per_group, ") must be >= 2 experts per group when model.n_group > 1 ",
                                "(a group's score is the sum of its top-2 expert scores)"));
  }
  if (topk_group > n_group) {
    return Invalid(
        absl::StrCat("model.topk_group (", topk_group, ") must be <= model.n_group (", n_group, ")"));
  }
  if (num_experts_per_tok > n_routed_experts) {
    return Invalid(absl::StrCat("model.num_experts_per_tok (", num_experts_per_tok,
                                ") must be <= model.n_routed_experts (", n_routed_experts, ")"));
  }
  if (num_experts_per_tok > topk_group * per_group) {
    return Invalid(absl::StrCat("model.num_experts_per_tok (", num_experts_per_tok,
                                ") must be <= model.topk_group * (model.n_routed_experts / model.n_group) = ",
                                topk_group, " * (", n_routed_experts, " / ", n_group,
                                ") = ", topk_group * per_group, ", the experts in the kept groups"));
  }
  s = CheckOneOf("model.rope_scaling.type", rope_scaling.type, {"none", "yarn"});
  if (!s.ok()) return s;
  if (!(rope_scaling.factor >= 1)) {
    return Invalid(absl::StrCat("model.rope_scaling.factor must be >= 1, got ", rope_scaling.factor));
  }
  if (rope_scaling.type == "none" && rope_scaling.factor != 1) {
    return Invalid(absl::StrCat("model.rope_scaling.factor (", rope_scaling.factor,
                                ") has no effect unless model.rope_scaling.type is yarn (it is none)"));
  }
  if (rope_scaling.type == "yarn") {
    s = FirstError({
        CheckAtLeast("model.rope_scaling.original_max_position_embeddings",
                     rope_scaling.original_max_position_embeddings, 1),
        CheckPositive("model.rope_scaling.beta_fast", rope_scaling.beta_fast),
        CheckPositive("model.rope_scaling.beta_slow", rope_scaling.beta_slow),
    });
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// The other sections

// The schedule's own rules (its name, how many stages it cuts the model into, the micro-batch counts it
// accepts) live with the schedules: parallel/schedule.h's ValidateParallelSchedule.
absl::Status ParallelConfig::Validate(const ModelConfig& model) const {
  absl::Status s = FirstError({
      CheckAtLeast("parallel.pp", pp, 1),
      CheckAtLeast("parallel.ep", ep, 1),
      CheckAtLeast("parallel.micro_batches", micro_batches, 1),
  });
  if (!s.ok()) return s;
  if (schedule.empty()) return Invalid("parallel.schedule must name a pipeline schedule; got ''");
  // The pipeline schedule lists every micro-batch of a step before it runs (DeepSeek-V3 runs 120 per
  // pipeline); a count beyond this is a typo, and would cost memory before the memory check can see it.
  if (micro_batches > kMaxMicroBatches) {
    return Invalid(
        absl::StrCat("parallel.micro_batches must be <= ", kMaxMicroBatches, ", got ", micro_batches));
  }
  for (const auto& [key, seconds] : {std::pair<const char*, double>{"parallel.timeout_s", timeout_s},
                                     {"parallel.first_step_timeout_s", first_step_timeout_s},
                                     {"parallel.save_timeout_s", save_timeout_s}}) {
    if (!(seconds > 0 && seconds <= kMaxTimeoutSeconds)) {
      return Invalid(
          absl::StrCat(key, " must be in (0, ", kMaxTimeoutSeconds, "] seconds (a week), got ", seconds));
    }
  }
  s = CheckOneOf("parallel.overlap", overlap, {"none", "two_micro_batch"});
  if (!s.ok()) return s;
  if (overlap == "two_micro_batch" && pp != 1) {
    return Invalid(
        absl::StrCat("parallel.overlap two_micro_batch overlaps micro-batches on a single stage "
                     "and needs parallel.pp = 1, got ",
                     pp,
                     " (across stages, parallel.schedule dualpipe or dualpipev overlaps "
                     "forward and backward chunks)"));
  }
  if (model.n_routed_experts % ep != 0) {
    return Invalid(absl::StrCat("parallel.ep (", ep, ") must divide model.n_routed_experts (",
                                model.n_routed_experts, ")"));
  }
  if (!stage_layers.empty()) {
    int64_t sum = 0;
    for (size_t i = 0; i < stage_layers.size(); ++i) {
      s = CheckAtLeast(absl::StrCat("parallel.stage_layers[", i, "]"), stage_layers[i], 1);
      if (!s.ok()) return s;
      sum += stage_layers[i];
    }
    if (sum != model.num_hidden_layers) {
      return Invalid(absl::StrCat("parallel.stage_layers [", absl::StrJoin(stage_layers, ", "), "] sums to ",
                                  sum, ", must sum to model.num_hidden_layers (", model.num_hidden_layers,
                                  ")"));
    }
  }
  return absl::OkStatus();
}

namespace {

// train.precision fp8 on the GPU: bf16 compute, and shapes cuBLASLt's block-scaled FP8 GEMMs take (the
// dimensions of every FP8 weight multiples of 16; the routed experts of a layer in one grouped call).
absl::Status ValidateGpuFp8(const TrainConfig& t, const ModelConfig& m) {
  if (t.dtype != "bf16") {
    return Invalid(
        absl::StrCat("train.precision fp8 on train.device cuda needs train.dtype bf16 (the dtype of "
                     "everything that is not an FP8 GEMM), got ",
                     t.dtype));
  }
  const std::vector<std::pair<std::string, int64_t>> dims = {
      {"model.hidden_size", m.hidden_size},
      {"model.intermediate_size", m.intermediate_size},
      {"model.moe_intermediate_size", m.moe_intermediate_size},
      {"model.q_lora_rank", m.q_lora_rank},
      {"model.kv_lora_rank + model.qk_rope_head_dim", m.kv_lora_rank + m.qk_rope_head_dim},
      {"model.kv_lora_rank", m.kv_lora_rank},
      {"model.num_attention_heads x (model.qk_nope_head_dim + model.qk_rope_head_dim)",
       m.num_attention_heads * m.qk_head_dim()},
      {"model.num_attention_heads x (model.qk_nope_head_dim + model.v_head_dim)",
       m.num_attention_heads * (m.qk_nope_head_dim + m.v_head_dim)},
      {"model.num_attention_heads x model.v_head_dim", m.num_attention_heads * m.v_head_dim},
  };
  for (const auto& [name, value] : dims) {
    if (value % 16 != 0) {
      return Invalid(
          absl::StrCat("train.precision fp8 on train.device cuda needs every FP8 weight dimension to be "
                       "a multiple of 16 (cuBLASLt's FP8 kernels); ",
                       name, " is ", value));
    }
  }
  if (m.n_routed_experts > 256) {
    return Invalid(
        absl::StrCat("train.precision fp8 on train.device cuda runs at most 256 routed experts per "
                     "grouped GEMM; model.n_routed_experts is ",
                     m.n_routed_experts));
  }
  return absl::OkStatus();
}

}  // namespace

bool TrainConfig::RunsTiledExpertKernels() const {
  return device == "cuda" && (precision == "fp8" ? fp8_expert_gemm != "cublaslt" : expert_gemm != "cublaslt");
}

std::vector<int64_t> TrainConfig::TracedSteps() const {
  if (trace.empty()) return {};
  if (trace_steps.empty()) return {std::min<int64_t>(2, steps)};
  std::vector<int64_t> out = trace_steps;
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

absl::Status TrainConfig::Validate(const ModelConfig& model) const {
  if (!trace_steps.empty() && trace.empty()) {
    return Invalid(
        "train.trace_steps chooses the steps of train.trace, which is not set; set train.trace to "
        "the trace file's path");
  }
  for (size_t i = 0; i < trace_steps.size(); ++i) {
    if (trace_steps[i] < 1 || trace_steps[i] > steps) {
      return Invalid(absl::StrCat("train.trace_steps[", i, "] must be a step in [1, train.steps = ", steps,
                                  "], got ", trace_steps[i]));
    }
  }
  absl::Status s = FirstError({
      CheckAtLeast("train.steps", steps, 1),
      CheckAtLeast("train.seq_len", seq_len, 2),
      CheckAtLeast("train.micro_batch_size", micro_batch_size, 1),
      CheckAtLeast("train.log_every", log_every, 1),
      CheckOneOf("train.device", device, {"cpu", "cuda"}),
      CheckAtLeast("train.eval_steps", eval_steps, 1),
      CheckAtLeast("train.max_skipped_steps", max_skipped_steps, 1),
  });
  if (!(loss_spike_factor == 0 || loss_spike_factor > 1)) {
    return Invalid(absl::StrCat("train.loss_spike_factor must be 0 (off) or > 1, got ", loss_spike_factor));
  }
  if (!s.ok()) return s;
  if (seq_len > model.max_position_embeddings) {
    return Invalid(absl::StrCat("train.seq_len (", seq_len, ") must be <= model.max_position_embeddings (",
                                model.max_position_embeddings, ")"));
  }
  if (s = CheckOneOf("train.precision", precision, {"bf16", "fp8"}); !s.ok()) return s;
  if (s = CheckOneOf("train.fp8_expert_gemm", fp8_expert_gemm, {"own", "own_all", "cublaslt"}); !s.ok()) return s;
  if (s = CheckOneOf("train.expert_gemm", expert_gemm, {"own", "own_wgrad", "cublaslt"}); !s.ok()) return s;
  if (expert_gemm != "cublaslt" && (device != "cuda" || dtype != "bf16" || precision != "bf16")) {
    return Invalid(absl::StrCat("train.expert_gemm ", expert_gemm,
                                " runs fathom's bf16 tiled expert kernels: it needs train.device "
                                "cuda, train.dtype bf16 and train.precision bf16 (got ",
                                device, ", ", dtype, ", ", precision,
                                "); FP8's expert kernels are chosen by train.fp8_expert_gemm"));
  }
  if (expert_gemm_cluster != 1 && expert_gemm_cluster != 2) {
    return Invalid(
        absl::StrCat("train.expert_gemm_cluster must be 1 or 2 (CTAs per cluster of fathom's tiled "
                     "expert kernels), got ",
                     expert_gemm_cluster));
  }
  // expert_gemm_tma_store (on by default) shapes the tiled kernels' epilogue where they run; clusters of two
  // change how they are scheduled, asked for only to run them, so without them the key is refused.
  if (expert_gemm_cluster != 1 && !RunsTiledExpertKernels()) {
    return Invalid(absl::StrCat(
        "train.expert_gemm_cluster shapes fathom's tiled expert kernels, which this recipe does not run: "
        "it needs train.device cuda and train.expert_gemm own or own_wgrad (bf16) or train.fp8_expert_gemm "
        "own or own_all (fp8); got device ",
        device, ", precision ", precision, ", expert_gemm ", expert_gemm, ", fp8_expert_gemm ",
        fp8_expert_gemm));
  }
  if (device == "cpu") {
    if (dtype == "bf16") {
      return Invalid(
          "train.dtype bf16 is a GPU compute dtype, not supported with train.device cpu; use f32 or f64");
    }
    return CheckOneOf("train.dtype", dtype, {"f32", "f64"});
  }
  if (s = CheckOneOf("train.dtype", dtype, {"f32", "bf16"}); !s.ok()) return s;
  return precision == "fp8" ? ValidateGpuFp8(*this, model) : absl::OkStatus();
}

absl::Status OptimConfig::Validate() const {
  absl::Status s = CheckPositive("optim.lr", lr);
  if (!s.ok()) return s;
  if (!(min_lr >= 0 && min_lr <= lr)) {
    return Invalid(absl::StrCat("optim.min_lr must be in [0, optim.lr] = [0, ", lr, "], got ", min_lr));
  }
  s = FirstError({CheckAtLeast("optim.warmup_steps", warmup_steps, 0),
                  CheckAtLeast("optim.constant_steps", constant_steps, 0)});
  if (!s.ok()) return s;
  if (decay_steps < -1) {
    return Invalid(
        absl::StrCat("optim.decay_steps must be >= 0, or -1 for until the last step; got ", decay_steps));
  }
  for (const auto& [key, beta] :
       {std::pair<const char*, double>{"optim.beta1", beta1}, {"optim.beta2", beta2}}) {
    if (!(beta >= 0 && beta < 1)) return Invalid(absl::StrCat(key, " must be in [0, 1), got ", beta));
  }
  return FirstError({
      CheckPositive("optim.eps", eps),
      CheckNonNegative("optim.weight_decay", weight_decay),
      CheckNonNegative("optim.grad_clip", grad_clip),
      CheckOneOf("optim.decay_style", decay_style, {"cosine", "linear", "constant"}),
      CheckOneOf("optim.moment_dtype", moment_dtype, {"f32", "bf16"}),
      CheckNonNegative("optim.bias_update_speed", bias_update_speed),
  });
}

absl::Status LossConfig::Validate() const {
  absl::Status s = FirstError({CheckNonNegative("loss.mtp_lambda", mtp_lambda),
                               CheckNonNegative("loss.balance_alpha", balance_alpha)});
  if (!s.ok()) return s;
  if (ignore_index >= 0) {
    return Invalid(absl::StrCat("loss.ignore_index must be negative (it must never equal a token id), got ",
                                ignore_index));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<DataBlendEntry>> DataConfig::Blend() const {
  if (path.empty())
    return Invalid("data.path is empty; expected [PREFIX] or [WEIGHT, PREFIX, WEIGHT, PREFIX, ...]");
  std::vector<DataBlendEntry> blend;
  if (path.size() == 1) {
    if (path[0].empty()) return Invalid("data.path[0] is an empty path");
    blend.push_back({1.0, path[0]});
    return blend;
  }
  // Megatron's rule: with more than one entry, the list alternates weight and prefix.
  if (path.size() % 2 != 0) {
    return Invalid(absl::StrCat("data.path has ", path.size(), " entries; a blend alternates weight and ",
                                "prefix ([0.7, PREFIX_A, 0.3, PREFIX_B]), so it needs an even number"));
  }
  double sum = 0;
  for (size_t i = 0; i < path.size(); i += 2) {
    double w = 0;
    if (!absl::SimpleAtod(path[i], &w) || !std::isfinite(w)) {
      return Invalid(absl::StrCat("data.path[", i, "] must be the weight of ", path[i + 1],
                                  " (a number > 0), got '", path[i], "'"));
    }
    if (!(w > 0)) {
      return Invalid(
          absl::StrCat("data.path[", i, "]: the weight of ", path[i + 1], " must be > 0, got ", path[i]));
    }
    if (path[i + 1].empty()) return Invalid(absl::StrCat("data.path[", i + 1, "] is an empty path"));
    double unused = 0;
    if (absl::SimpleAtod(path[i + 1], &unused)) {
      return Invalid(absl::StrCat("data.path[", i + 1, "] must be a dataset prefix, got the number ",
                                  path[i + 1], " (a blend alternates weight and prefix)"));
    }
    blend.push_back({w, path[i + 1]});
    sum += w;
  }
  for (DataBlendEntry& e : blend) e.weight /= sum;
  return blend;
}

absl::StatusOr<std::vector<double>> DataConfig::SplitFractions() const {
  const std::string expected = "expected up to three numbers >= 0 separated by ',' or '/', e.g. \"969,30,1\"";
  std::vector<std::string> parts = absl::StrSplit(split, absl::ByAnyChar(",/"));
  if (parts.size() > 3) {
    return Invalid(absl::StrCat("data.split '", split, "' has ", parts.size(),
                                " parts (train, valid, test); ", expected));
  }
  std::vector<double> fractions(3, 0.0);
  double sum = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    double v = 0;
    if (!absl::SimpleAtod(absl::StripAsciiWhitespace(parts[i]), &v) || !std::isfinite(v) || v < 0) {
      return Invalid(absl::StrCat("data.split '", split, "': part ", i + 1, " ('", parts[i],
                                  "') is not a number >= 0; ", expected));
    }
    fractions[i] = v;
    sum += v;
  }
  if (!(sum > 0)) return Invalid(absl::StrCat("data.split '", split, "' sums to 0; ", expected));
  for (double& f : fractions) f /= sum;
  return fractions;
}

absl::Status DataConfig::Validate(const ModelConfig& model) const {
  absl::Status s = CheckOneOf("data.source", source, {"demo", "synthetic", "megatron", "hdf5"});
  if (!s.ok()) return s;
  if (source == "demo" && model.vocab_size < 256) {
    return Invalid(
        absl::StrCat("data.source demo needs model.vocab_size >= 256 (the demo corpus uses a byte ",
                     "tokenizer), got ", model.vocab_size));
  }
  const bool files = source == "megatron" || source == "hdf5";
  if (files && path.empty()) {
    return Invalid(absl::StrCat("data.path is required with data.source ", source,
                                ": [PREFIX] or [WEIGHT, PREFIX, WEIGHT, PREFIX, ...]"));
  }
  if (!files && !path.empty()) {
    return Invalid(
        absl::StrCat("data.path is read only with data.source megatron or hdf5; data.source is ", source));
  }
  if (files) {
    if (absl::StatusOr<std::vector<DataBlendEntry>> b = Blend(); !b.ok()) return b.status();
  }
  if (absl::StatusOr<std::vector<double>> f = SplitFractions(); !f.ok()) return f.status();
  if (eod_token_id < -1 || eod_token_id >= model.vocab_size) {
    return Invalid(absl::StrCat("data.eod_token_id must be -1 (insert none) or a token id in [0, ",
                                "model.vocab_size) = [0, ", model.vocab_size, "), got ", eod_token_id));
  }
  return absl::OkStatus();
}

absl::Status CheckpointConfig::Validate() const {
  absl::Status s = FirstError({CheckAtLeast("checkpoint.save_every", save_every, 0),
                               CheckAtLeast("checkpoint.keep_last", keep_last, 0)});
  if (!s.ok()) return s;
  if (save_every > 0 && dir.empty()) {
    return Invalid(absl::StrCat("checkpoint.save_every (", save_every,
                                ") needs checkpoint.dir, the directory the checkpoints go to"));
  }
  if (resume.empty()) {
    return Invalid(
        "checkpoint.resume must be auto (the newest complete checkpoint in checkpoint.dir), none, "
        "or the path of a checkpoint; got ''");
  }
  return absl::OkStatus();
}

absl::Status Recipe::Validate(RecipeUse use) const {
  absl::Status s =
      FirstError({model.Validate(), use == RecipeUse::kPlan ? absl::OkStatus() : parallel.Validate(model),
                  train.Validate(model), optim.Validate(), loss.Validate(), data.Validate(model),
                  checkpoint.Validate()});
  if (s.ok() || path.empty()) return s;
  return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
}

absl::Status CheckGlobalBatch(const Recipe& recipe, int64_t dp) {
  const int64_t runs = dp * recipe.parallel.micro_batches * recipe.train.micro_batch_size;
  if (recipe.train.global_batch_size == 0 || recipe.train.global_batch_size == runs) return absl::OkStatus();
  return Invalid(absl::StrCat(
      recipe.path.empty() ? "" : recipe.path + ": ", "train.global_batch_size (",
      recipe.train.global_batch_size, " sequences) disagrees with the batch this mesh runs: dp (", dp,
      ") x parallel.micro_batches (", recipe.parallel.micro_batches, ") x train.micro_batch_size (",
      recipe.train.micro_batch_size, ") = ", runs, "; change one of them, or drop train.global_batch_size"));
}

// ---------------------------------------------------------------------------------------------------
// Loading

}  // namespace fathom
