#include "framework/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "framework/yaml_reader.h"

namespace fathom {
namespace {

// ---------------------------------------------------------------------------------------------------
// Parsing

// Keys of DeepSeek-V3's config.json that have no ModelConfig field, so that the real file's model keys
// can be pasted into a recipe unchanged. kAny: carries nothing fathom needs, any value accepted and
// ignored. The others: fathom implements exactly one value, and any other is an error rather than being
// silently trained as something else.
enum class HfKeyRule { kAny, kString, kNumber, kBool, kEqualsNumAttentionHeads };
struct HfFixedKey {
  const char* key;
  HfKeyRule rule;
  const char* value;  // for kString; for kNumber and kBool, its text ("0", "1", "false")
  const char* why;
};
constexpr HfFixedKey kHfFixedKeys[] = {
    {"model_type", HfKeyRule::kAny, "", ""},
    {"architectures", HfKeyRule::kAny, "", ""},
    {"auto_map", HfKeyRule::kAny, "", ""},
    {"bos_token_id", HfKeyRule::kAny, "", ""},
    {"eos_token_id", HfKeyRule::kAny, "", ""},
    {"pad_token_id", HfKeyRule::kAny, "", ""},
    {"torch_dtype", HfKeyRule::kAny, "", ""},  // the precision policy is fathom's own
    {"transformers_version", HfKeyRule::kAny, "", ""},
    {"use_cache", HfKeyRule::kAny, "", ""},  // an inference setting
    {"pretraining_tp", HfKeyRule::kAny, "", ""},
    {"ep_size", HfKeyRule::kAny, "", ""},              // expert parallelism is parallel.ep
    {"aux_loss_alpha", HfKeyRule::kAny, "", ""},       // the balance loss weight is loss.balance_alpha
    {"seq_aux", HfKeyRule::kAny, "", ""},              // the balance loss is always sequence-wise
    {"quantization_config", HfKeyRule::kAny, "", ""},  // FP8 export is checkpoint/'s business
    {"attention_dropout", HfKeyRule::kNumber, "0", "fathom has no attention dropout"},
    {"moe_layer_freq", HfKeyRule::kNumber, "1",
     "every layer from model.first_k_dense_replace on is a MoE layer"},
    {"num_key_value_heads", HfKeyRule::kEqualsNumAttentionHeads, "",
     "must equal model.num_attention_heads: MLA has no grouped-query attention"},
    {"hidden_act", HfKeyRule::kString, "silu", "the MLPs and experts are SwiGLU"},
    {"scoring_func", HfKeyRule::kString, "sigmoid", "DeepSeek-V3's router scores with a sigmoid"},
    {"topk_method", HfKeyRule::kString, "noaux_tc",
     "routing is group-limited top-k with the auxiliary-loss-free bias"},
    {"attention_bias", HfKeyRule::kBool, "false", "the attention projections have no bias"},
    {"tie_word_embeddings", HfKeyRule::kBool, "false", "the embedding and the head are separate"},
};

void ParseRopeScaling(YamlMapReader& model, RopeScalingConfig* rope) {
  if (!model.Has("rope_scaling")) return;
  if (model.IsNull("rope_scaling")) {  // HF: null = no scaling
    *rope = RopeScalingConfig{};
    return;
  }
  std::optional<YamlMapReader> r = model.Map("rope_scaling");
  if (!r) return;  // not a map: the error is recorded in `model`
  // Parsing starts from the defaults (a fresh ModelConfig's); an emitter writes the values it holds.
  RopeScalingConfig parsed = *rope;
  // HF wrote "type" until transformers 4.45 and "rope_type" since; newer files carry both. An emitter
  // writes the resolved type once, as "type".
  std::string type = r->emitting() ? rope->type : "";
  std::string rope_type;
  r->String("type", &type);
  if (!r->emitting()) r->String("rope_type", &rope_type);
  r->Double("factor", &parsed.factor);
  r->Count("original_max_position_embeddings", &parsed.original_max_position_embeddings);
  r->Double("beta_fast", &parsed.beta_fast);
  r->Double("beta_slow", &parsed.beta_slow);
  r->Double("mscale", &parsed.mscale);
  r->Double("mscale_all_dim", &parsed.mscale_all_dim);
  if (r->status().ok()) {
    if (type.empty() && rope_type.empty()) {
      r->Fail("", absl::StrCat(r->KeyPath("type"), " (or ", r->KeyPath("rope_type"),
                               ") is required when model.rope_scaling is a map; use null for no scaling"));
    } else if (!type.empty() && !rope_type.empty() && type != rope_type) {
      r->Fail("rope_type", absl::StrCat(r->KeyPath("type"), " (", type, ") and ", r->KeyPath("rope_type"),
                                        " (", rope_type, ") disagree"));
    }
    parsed.type = type.empty() ? rope_type : type;
  }
  absl::Status s = r->Finish();
  if (s.ok()) *rope = parsed;
  model.Merge(s);
}

void ParseModel(YamlMapReader& r, ModelConfig* m) {
  r.Count("vocab_size", &m->vocab_size);
  r.Count("hidden_size", &m->hidden_size);
  r.Count("intermediate_size", &m->intermediate_size);
  r.Count("moe_intermediate_size", &m->moe_intermediate_size);
  r.Count("num_hidden_layers", &m->num_hidden_layers);
  r.Count("first_k_dense_replace", &m->first_k_dense_replace);
  r.Count("num_attention_heads", &m->num_attention_heads);
  r.CountOrNull("q_lora_rank", 0, &m->q_lora_rank);
  r.Count("kv_lora_rank", &m->kv_lora_rank);
  r.Count("qk_nope_head_dim", &m->qk_nope_head_dim);
  r.Count("qk_rope_head_dim", &m->qk_rope_head_dim);
  r.Count("v_head_dim", &m->v_head_dim);
  r.Count("n_routed_experts", &m->n_routed_experts);
  r.Count("n_shared_experts", &m->n_shared_experts);
  r.Count("num_experts_per_tok", &m->num_experts_per_tok);
  r.Count("n_group", &m->n_group);
  r.Count("topk_group", &m->topk_group);
  r.Bool("norm_topk_prob", &m->norm_topk_prob);
  r.Double("routed_scaling_factor", &m->routed_scaling_factor);
  r.Count("num_nextn_predict_layers", &m->num_nextn_predict_layers);
  r.Count("max_position_embeddings", &m->max_position_embeddings);
  r.Double("rms_norm_eps", &m->rms_norm_eps);
  r.Double("rope_theta", &m->rope_theta);
  r.Bool("rope_interleave", &m->rope_interleave);
  ParseRopeScaling(r, &m->rope_scaling);
  r.Double("initializer_range", &m->initializer_range);
  r.String("init_from", &m->init_from);
  for (const HfFixedKey& k : kHfFixedKeys) {
    switch (k.rule) {
      case HfKeyRule::kAny:
        r.Ignore(k.key);
        break;
      case HfKeyRule::kString:
        r.RequireString(k.key, k.value, k.why);
        break;
      case HfKeyRule::kNumber:
        r.RequireNumber(k.key, std::stod(k.value), k.why);
        break;
      case HfKeyRule::kBool:
        r.RequireBool(k.key, std::string(k.value) == "true", k.why);
        break;
      case HfKeyRule::kEqualsNumAttentionHeads:
        // Read after num_attention_heads above, so the comparison sees the recipe's value.
        r.RequireNumber(k.key, static_cast<double>(m->num_attention_heads), k.why);
        break;
    }
  }
}

void ParseParallel(YamlMapReader& r, ParallelConfig* p) {
  r.Count("pp", &p->pp);
  r.Count("ep", &p->ep);
  r.Count("micro_batches", &p->micro_batches);
  r.CountList("stage_layers", &p->stage_layers);
  r.String("schedule", &p->schedule);
  r.Double("timeout_s", &p->timeout_s);
  r.Double("first_step_timeout_s", &p->first_step_timeout_s);
  r.Double("save_timeout_s", &p->save_timeout_s);
  r.String("overlap", &p->overlap);
}

void ParseTrain(YamlMapReader& r, TrainConfig* t) {
  r.Count("steps", &t->steps);
  r.Count("seq_len", &t->seq_len);
  r.Count("micro_batch_size", &t->micro_batch_size);
  r.Count("global_batch_size", &t->global_batch_size);
  r.Uint("seed", &t->seed);
  r.Count("log_every", &t->log_every);
  r.String("dtype", &t->dtype);
  r.String("precision", &t->precision);
  r.String("fp8_expert_gemm", &t->fp8_expert_gemm);
  r.String("expert_gemm", &t->expert_gemm);
  r.Count("expert_gemm_cluster", &t->expert_gemm_cluster);
  r.Bool("expert_gemm_tma_store", &t->expert_gemm_tma_store);
  r.Bool("deterministic", &t->deterministic);
  r.String("device", &t->device);
  r.Count("eval_every", &t->eval_every);
  r.Count("eval_steps", &t->eval_steps);
  r.String("log_dir", &t->log_dir);
  r.Count("max_skipped_steps", &t->max_skipped_steps);
  r.Double("loss_spike_factor", &t->loss_spike_factor);
  r.Count("check_replicas_every", &t->check_replicas_every);
  r.String("trace", &t->trace);
  r.CountList("trace_steps", &t->trace_steps);
}

void ParseOptim(YamlMapReader& r, OptimConfig* o) {
  r.Double("lr", &o->lr);
  r.Double("min_lr", &o->min_lr);
  r.Count("warmup_steps", &o->warmup_steps);
  r.Count("constant_steps", &o->constant_steps);
  r.Int("decay_steps", &o->decay_steps);  // -1 is meaningful
  r.String("decay_style", &o->decay_style);
  r.Double("beta1", &o->beta1);
  r.Double("beta2", &o->beta2);
  r.Double("eps", &o->eps);
  r.Double("weight_decay", &o->weight_decay);
  r.Double("grad_clip", &o->grad_clip);
  r.String("moment_dtype", &o->moment_dtype);
  r.Double("bias_update_speed", &o->bias_update_speed);
}

void ParseLoss(YamlMapReader& r, LossConfig* l) {
  r.Double("mtp_lambda", &l->mtp_lambda);
  r.Double("balance_alpha", &l->balance_alpha);
  r.Int("ignore_index", &l->ignore_index);
}

void ParseData(YamlMapReader& r, DataConfig* d) {
  r.String("source", &d->source);
  r.ScalarList("path", &d->path);
  r.String("split", &d->split);
  r.Int("eod_token_id", &d->eod_token_id);
  r.Bool("verify_tokens", &d->verify_tokens);
  r.String("tokenizer_dir", &d->tokenizer_dir);
}

void ParseCheckpoint(YamlMapReader& r, CheckpointConfig* c) {
  r.String("dir", &c->dir);
  r.Count("save_every", &c->save_every);
  r.Count("keep_last", &c->keep_last);
  r.String("resume", &c->resume);
  r.Bool("async", &c->async);
}

// Where a key that section `section` does not know lives instead, for the unknown-key message: the names
// Megatron-Core and TorchTitan users bring along, then the same key in another section (train.lr ->
// optim.lr). "" when nothing fits.
std::string KeyElsewhere(const std::string& section, const std::string& key) {
  static const std::map<std::string, std::string> kForeign = {
      {"learning_rate", "optim.lr"},
      {"min_learning_rate", "optim.min_lr"},
      {"lr_warmup_iters", "optim.warmup_steps"},
      {"warmup", "optim.warmup_steps"},
      {"clip_grad", "optim.grad_clip"},
      {"max_norm", "optim.grad_clip"},
      {"train_iters", "train.steps"},
      {"training_steps", "train.steps"},
      {"seq_length", "train.seq_len"},
      {"global_batch", "train.global_batch_size"},
      {"micro_batches", "parallel.micro_batches"},
      {"num_microbatches", "parallel.micro_batches"},
      {"pipeline_model_parallel_size", "parallel.pp"},
      {"pipeline_parallel_degree", "parallel.pp"},
      {"expert_model_parallel_size", "parallel.ep"},
      {"expert_parallel_degree", "parallel.ep"},
      {"save_interval", "checkpoint.save_every"},
      {"interval", "checkpoint.save_every"},
      {"load", "checkpoint.resume"},
  };
  static const std::map<std::string, std::string> kAbsent = {
      {"dp", "data parallelism is not set: it is the world size / parallel.pp (dp = ep x edp)"},
      {"data_parallel_size",
       "data parallelism is not set: it is the world size / parallel.pp (dp = ep x edp)"},
      {"data_parallel_shard_degree",
       "data parallelism is not set: it is the world size / parallel.pp (ZeRO-1 shards the optimizer state)"},
      {"tp", "fathom has no tensor parallelism, by design (pipeline x expert x data parallelism)"},
      {"tensor_model_parallel_size",
       "fathom has no tensor parallelism, by design (pipeline x expert x data "
       "parallelism)"},
      {"tensor_parallel_degree",
       "fathom has no tensor parallelism, by design (pipeline x expert x data "
       "parallelism)"},
      {"cp", "fathom has no context parallelism"},
      {"context_parallel_degree", "fathom has no context parallelism"},
  };
  if (auto it = kAbsent.find(key); it != kAbsent.end()) return it->second;
  std::string target;
  if (auto it = kForeign.find(key); it != kForeign.end()) {
    target = it->second;
  } else {
    // The same key directly under another section of the resolved recipe.
    static const auto* const all = [] {
      const Recipe defaults;
      return new std::vector<std::pair<std::string, std::string>>(
          ResolvedRecipeKeyValues(ResolvedRecipeYaml(defaults)));
    }();
    for (const auto& [path, value] : *all) {
      const size_t dot = path.find('.');
      if (dot != std::string::npos && path.substr(dot + 1) == key && path.substr(0, dot) != section) {
        target = path;
        break;
      }
    }
  }
  return target.empty() ? "" : absl::StrCat("it is '", target, "' in fathom");
}

// Parses one section into `config` when present; errors are recorded in `root`. An unknown key that
// belongs elsewhere says where (KeyElsewhere).
template <class Config>
void ParseSection(YamlMapReader& root, std::optional<YamlMapReader>& section, const std::string& name,
                  void (*parse)(YamlMapReader&, Config*), Config* config) {
  if (!section || !root.status().ok()) return;
  parse(*section, config);
  absl::Status s = section->Finish();
  if (std::optional<std::string> key = section->FirstUnknownKey(); !s.ok() && key) {
    if (const std::string hint = KeyElsewhere(name, *key); !hint.empty()) {
      // The hint replaces the spelling suggestion ("parallel.tp: did you mean 'parallel.pp'?" misleads).
      const std::string message(s.message());
      s = absl::Status(s.code(), absl::StrCat(message.substr(0, message.find("; did you mean")), "; ", hint));
    }
  }
  root.Merge(s);
}

// Sections in the order a recipe lists them; ParseRecipe reads them and ResolvedRecipeYaml writes them
// through the same calls.
void ParseSections(YamlMapReader& root, Recipe* recipe) {
  std::optional<YamlMapReader> model = root.Map("model");
  std::optional<YamlMapReader> parallel = root.Map("parallel");
  std::optional<YamlMapReader> train = root.Map("train");
  std::optional<YamlMapReader> optim = root.Map("optim");
  std::optional<YamlMapReader> loss = root.Map("loss");
  std::optional<YamlMapReader> data = root.Map("data");
  std::optional<YamlMapReader> checkpoint = root.Map("checkpoint");
  // Unknown sections first: a misspelt section name explains everything that follows.
  root.Merge(root.Finish());
  ParseSection(root, model, "model", ParseModel, &recipe->model);
  ParseSection(root, parallel, "parallel", ParseParallel, &recipe->parallel);
  ParseSection(root, train, "train", ParseTrain, &recipe->train);
  ParseSection(root, optim, "optim", ParseOptim, &recipe->optim);
  ParseSection(root, loss, "loss", ParseLoss, &recipe->loss);
  ParseSection(root, data, "data", ParseData, &recipe->data);
  ParseSection(root, checkpoint, "checkpoint", ParseCheckpoint, &recipe->checkpoint);
}

// The required model keys the document (after the overrides) does not state, as "model.<key>".
std::vector<std::string> UnstatedModelKeys(const YamlDocument& doc) {
  // Looked up by iteration: indexing a yaml-cpp node that lacks the key yields a node that throws.
  auto find = [](const YAML::Node& map, const std::string& key) -> std::optional<YAML::Node> {
    if (!map.IsMap()) return std::nullopt;
    for (auto it = map.begin(); it != map.end(); ++it) {
      if (it->first.IsScalar() && it->first.Scalar() == key) return it->second;
    }
    return std::nullopt;
  };
  const std::optional<YAML::Node> model = find(doc.root(), "model");
  std::vector<std::string> missing;
  for (const std::string& key : RequiredModelKeys()) {
    if (!model || !find(*model, key)) missing.push_back("model." + key);
  }
  return missing;
}

absl::Status CheckModelStated(const YamlDocument& doc, const std::string& origin) {
  const std::vector<std::string> missing = UnstatedModelKeys(doc);
  if (missing.empty()) return absl::OkStatus();
  const std::string all =
      absl::StrJoin(RequiredModelKeys(), ", ",
                    [](std::string* out, const std::string& key) { absl::StrAppend(out, "model.", key); });
  if (missing.size() == RequiredModelKeys().size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin,
                     ": the recipe states no model (no 'model:' section, or an empty one); a recipe "
                     "must state the model's shape, the keys of DeepSeek-V3's config.json: ",
                     all));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      origin, ": ", absl::StrJoin(missing, ", "), missing.size() == 1 ? " is" : " are",
      " not stated; a recipe must state every shape key of the model, those DeepSeek-V3's config.json "
      "states (the list: framework/config.h); fathom does not guess a model"));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// ModelConfig

const std::vector<std::string>& RequiredModelKeys() {
  static const std::vector<std::string> keys = {"vocab_size",
                                                "hidden_size",
                                                "intermediate_size",
                                                "moe_intermediate_size",
                                                "num_hidden_layers",
                                                "first_k_dense_replace",
                                                "num_attention_heads",
                                                "q_lora_rank",
                                                "kv_lora_rank",
                                                "qk_nope_head_dim",
                                                "qk_rope_head_dim",
                                                "v_head_dim",
                                                "n_routed_experts",
                                                "n_shared_experts",
                                                "num_experts_per_tok",
                                                "n_group",
                                                "topk_group",
                                                "norm_topk_prob",
                                                "routed_scaling_factor",
                                                "num_nextn_predict_layers",
                                                "max_position_embeddings"};
  return keys;
}

double YarnGetMscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

double ModelConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (rope_scaling.type == "yarn" && rope_scaling.mscale_all_dim != 0) {
    const double m = YarnGetMscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

absl::StatusOr<Recipe> ParseRecipe(const std::string& yaml_text, const std::string& origin,
                                   const std::vector<std::string>& overrides, RecipeUse use) {
  absl::StatusOr<YamlDocument> doc = YamlDocument::Parse(yaml_text, origin);
  if (!doc.ok()) return doc.status();
  for (const std::string& o : overrides) {
    absl::Status s = doc->ApplyOverride(o, /*min_depth=*/2);
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat(origin, ": ", s.message()));
  }
  Recipe recipe;
  recipe.path = origin;
  try {
    YamlMapReader root(*doc);
    ParseSections(root, &recipe);
    if (!root.status().ok()) return root.status();
    // After the readers: a misspelt model key is reported as unknown (with a suggestion), not as missing.
    if (absl::Status s = CheckModelStated(*doc, origin); !s.ok()) return s;
  } catch (const YAML::Exception& e) {
    // The readers only inspect nodes in ways that do not throw; this is the boundary that guarantees a
    // malformed file is a Status, never an escaped exception.
    return absl::InvalidArgumentError(absl::StrCat(origin, ": YAML error: ", std::string(e.what())));
  }
  absl::Status s = recipe.Validate(use);
  if (!s.ok()) return s;
  return recipe;
}

std::string ResolvedRecipeYaml(const Recipe& recipe) {
  Recipe copy = recipe;  // the parse functions take mutable configs; an emitter only reads them
  YamlMapReader root = YamlMapReader::Emitter();
  ParseSections(root, &copy);
  return root.EmittedText();
}

std::vector<std::pair<std::string, std::string>> ResolvedRecipeKeyValues(const std::string& yaml) {
  std::vector<std::pair<std::string, std::string>> out;
  std::vector<std::string> path;
  for (absl::string_view line : absl::StrSplit(yaml, '\n', absl::SkipEmpty())) {
    const size_t spaces = line.find_first_not_of(' ');
    const size_t colon = line.find(':');
    if (spaces == absl::string_view::npos || colon == absl::string_view::npos) continue;
    path.resize(std::min(path.size(), spaces / 2));
    path.emplace_back(line.substr(spaces, colon - spaces));
    absl::string_view value = line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
    if (!value.empty()) out.emplace_back(absl::StrJoin(path, "."), std::string(value));
  }
  return out;
}

absl::StatusOr<Recipe> LoadRecipe(const std::string& path, const std::vector<std::string>& overrides,
                                  RecipeUse use) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("recipe file not found (or not a regular file): ", path));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) return absl::NotFoundError(absl::StrCat("recipe file is not readable: ", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::NotFoundError(absl::StrCat("recipe file could not be read: ", path));
  return ParseRecipe(text.str(), path, overrides, use);
}

}  // namespace fathom
