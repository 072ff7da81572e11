// Recipe parsing and validation: the tiny recipe loads, DeepSeek-V3's own config.json model keys parse,
// and every class of bad input gives the right status code and a message naming the key and constraint.
#include "framework/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "framework/yaml_reader.h"
#include "tests/common/recipe_testing.h"

namespace fathom {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

using testing::TinyError;
using testing::TinyPath;

// Parses inline YAML and expects InvalidArgument; returns the message.
std::string InlineError(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  absl::StatusOr<Recipe> r = ParseRecipe(yaml, "inline.yaml", overrides);
  EXPECT_FALSE(r.ok()) << "recipe accepted";
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  return std::string(r.status().message());
}

TEST(ConfigTest, TinyRecipeLoadsAndValidates) {
  absl::StatusOr<Recipe> r = LoadRecipe(TinyPath());
  ASSERT_TRUE(r.ok()) << r.status();
  const ModelConfig& m = r->model;
  EXPECT_EQ(r->path, TinyPath());
  EXPECT_EQ(m.vocab_size, 256);
  EXPECT_EQ(m.hidden_size, 64);
  EXPECT_EQ(m.intermediate_size, 160);
  EXPECT_EQ(m.num_hidden_layers, 3);
  EXPECT_EQ(m.q_lora_rank, 32);
  EXPECT_EQ(m.n_group, 2);
  EXPECT_EQ(m.topk_group, 1);
  EXPECT_DOUBLE_EQ(m.routed_scaling_factor, 2.5);
  EXPECT_EQ(m.num_nextn_predict_layers, 1);
  EXPECT_EQ(m.rope_scaling.type, "yarn");
  EXPECT_DOUBLE_EQ(m.rope_scaling.factor, 4.0);
  EXPECT_EQ(m.rope_scaling.original_max_position_embeddings, 1024);
  EXPECT_DOUBLE_EQ(m.rope_scaling.mscale_all_dim, 1.0);
  EXPECT_EQ(r->parallel.micro_batches, 2);
  EXPECT_EQ(r->train.steps, 300);
  EXPECT_EQ(r->train.seed, 1234u);
  EXPECT_DOUBLE_EQ(r->optim.lr, 3e-3);
  EXPECT_DOUBLE_EQ(r->optim.min_lr, 3e-4);
  EXPECT_EQ(r->optim.warmup_steps, 30);
  EXPECT_DOUBLE_EQ(r->loss.balance_alpha, 1e-4);
  EXPECT_EQ(r->data.source, "demo");
  EXPECT_TRUE(r->Validate().ok());
}

TEST(ConfigTest, SoftmaxScaleAppliesYarnMscale) {
  ModelConfig m;
  m.qk_nope_head_dim = 128;
  m.qk_rope_head_dim = 64;
  EXPECT_DOUBLE_EQ(m.softmax_scale(), 1.0 / std::sqrt(192.0));
  m.rope_scaling.type = "yarn";
  m.rope_scaling.factor = 40;
  m.rope_scaling.mscale_all_dim = 0;  // no correction without mscale_all_dim
  EXPECT_DOUBLE_EQ(m.softmax_scale(), 1.0 / std::sqrt(192.0));
  m.rope_scaling.mscale_all_dim = 1.0;
  const double mscale = 0.1 * 1.0 * std::log(40.0) + 1.0;
  EXPECT_DOUBLE_EQ(m.softmax_scale(), mscale * mscale / std::sqrt(192.0));
  m.rope_scaling.factor = 1.0;  // get_mscale(s <= 1) = 1
  EXPECT_DOUBLE_EQ(m.softmax_scale(), 1.0 / std::sqrt(192.0));
}

// A model section stating exactly the required keys (a small, valid model).
constexpr char kModelYaml[] = R"(model:
  vocab_size: 256
  hidden_size: 96
  intermediate_size: 128
  moe_intermediate_size: 32
  num_hidden_layers: 2
  first_k_dense_replace: 1
  num_attention_heads: 4
  q_lora_rank: null
  kv_lora_rank: 32
  qk_nope_head_dim: 16
  qk_rope_head_dim: 8
  v_head_dim: 16
  n_routed_experts: 8
  n_shared_experts: 1
  num_experts_per_tok: 2
  n_group: 1
  topk_group: 1
  norm_topk_prob: true
  routed_scaling_factor: 1.0
  num_nextn_predict_layers: 0
  max_position_embeddings: 4096
)";

TEST(ConfigTest, TrainingKnobsAndModelConstantsKeepDefaults) {
  absl::StatusOr<Recipe> r = ParseRecipe(std::string(kModelYaml) + "data:\n", "inline.yaml");
  ASSERT_TRUE(r.ok()) << r.status();
  const ModelConfig defaults;
  EXPECT_EQ(r->model.hidden_size, 96);
  EXPECT_EQ(r->model.q_lora_rank, 0);
  EXPECT_DOUBLE_EQ(r->model.rms_norm_eps, defaults.rms_norm_eps);
  EXPECT_EQ(r->model.rope_scaling.type, "none");
  EXPECT_EQ(r->train.steps, TrainConfig{}.steps);
  EXPECT_DOUBLE_EQ(r->optim.lr, OptimConfig{}.lr);
  EXPECT_DOUBLE_EQ(r->parallel.timeout_s, 300);
  EXPECT_EQ(r->data.source, "demo");
}

TEST(ConfigTest, EmptyRecipeOrNoModelNamesTheKeysToState) {
  for (const char* text : {"", "train:\n  steps: 3\n", "model:\n", "model: {}\n"}) {
    const std::string msg = InlineError(text);
    EXPECT_THAT(msg,
                AllOf(HasSubstr("inline.yaml: the recipe states no model"), HasSubstr("model.vocab_size"),
                      HasSubstr("model.num_hidden_layers"), HasSubstr("model.max_position_embeddings")))
        << "recipe: '" << text << "'";
  }
}

TEST(ConfigTest, MissingModelKeyIsNamed) {
  std::string text = kModelYaml;
  const std::string line = "  num_hidden_layers: 2\n";
  text.erase(text.find(line), line.size());
  EXPECT_THAT(InlineError(text), AllOf(HasSubstr("inline.yaml: model.num_hidden_layers is not stated"),
                                       Not(HasSubstr("model.vocab_size,"))));
  // Two missing: both named. An override stating a key counts as stating it.
  const std::string group = "  n_group: 1\n";
  text.erase(text.find(group), group.size());
  EXPECT_THAT(InlineError(text), HasSubstr("model.num_hidden_layers, model.n_group are not stated"));
  absl::StatusOr<Recipe> r =
      ParseRecipe(text, "inline.yaml", {"model.num_hidden_layers=2", "model.n_group=1"});
  EXPECT_TRUE(r.ok()) << r.status();
}

TEST(ConfigTest, MisspeltModelKeyIsUnknownRatherThanMissing) {
  std::string text = kModelYaml;
  text.replace(text.find("num_hidden_layers"), 17, "num_hiden_layers");
  EXPECT_THAT(InlineError(text), AllOf(HasSubstr("unknown key 'model.num_hiden_layers'"),
                                       HasSubstr("did you mean 'model.num_hidden_layers'?")));
}

TEST(ConfigTest, EveryRequiredKeyIsOneAModelSectionReads) {
  // Each required key, removed from tiny.yaml's full model, is reported by name.
  for (const std::string& key : RequiredModelKeys()) {
    std::string text = kModelYaml;
    const size_t at = text.find("  " + key + ":");
    ASSERT_NE(at, std::string::npos) << key;
    text.erase(at, text.find('\n', at) - at + 1);
    EXPECT_THAT(InlineError(text), HasSubstr("model." + key + " is not stated")) << key;
  }
}

TEST(ConfigTest, VocabularyBeyondInt32TokenIds) {
  EXPECT_THAT(TinyError({"model.vocab_size=100000000000"}),
              HasSubstr("model.vocab_size must be <= 2147483647 (token ids are 32-bit)"));
}

TEST(ConfigTest, AbsurdMicroBatchCountIsRefused) {
  EXPECT_THAT(TinyError({"parallel.micro_batches=100000000000"}),
              HasSubstr("parallel.micro_batches must be <= 65536, got 100000000000"));
  EXPECT_TRUE(LoadRecipe(TinyPath(), {"parallel.micro_batches=4096"}).ok());
}

TEST(ConfigTest, WatchdogTimeouts) {
  absl::StatusOr<Recipe> r = LoadRecipe(
      TinyPath(),
      {"parallel.timeout_s=2.5", "parallel.first_step_timeout_s=60", "parallel.save_timeout_s=90"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_DOUBLE_EQ(r->parallel.timeout_s, 2.5);
  EXPECT_DOUBLE_EQ(r->parallel.first_step_timeout_s, 60);
  EXPECT_DOUBLE_EQ(r->parallel.save_timeout_s, 90);
  EXPECT_THAT(TinyError({"parallel.timeout_s=0"}), HasSubstr("parallel.timeout_s must be in (0, 604800]"));
  EXPECT_THAT(TinyError({"parallel.save_timeout_s=1e9"}), HasSubstr("parallel.save_timeout_s must be in"));
  EXPECT_THAT(TinyError({"parallel.first_step_timeout_s=-1"}),
              HasSubstr("parallel.first_step_timeout_s must be in"));
}

TEST(ConfigTest, ResolvedRecipeListsEveryKeyAndReadsBackTheSame) {
  absl::StatusOr<Recipe> r = LoadRecipe(TinyPath(), {"optim.lr=1.25e-3", "parallel.stage_layers=[3]"});
  ASSERT_TRUE(r.ok()) << r.status();
  const std::string yaml = ResolvedRecipeYaml(*r);
  // Stated values, overrides and defaults alike, each section once, nested maps indented.
  EXPECT_THAT(yaml, AllOf(HasSubstr("model:\n  vocab_size: 256\n"), HasSubstr("\n  lr: 0.00125\n"),
                          HasSubstr("\n  beta2: 0.95\n"), HasSubstr("\n  stage_layers: [3]\n"),
                          HasSubstr("\n  timeout_s: 300\n"), HasSubstr("\n  dtype: \"f32\"\n"),
                          HasSubstr("\n  rope_scaling:\n    type: \"yarn\"\n    factor: 4\n"),
                          Not(HasSubstr("rope_type")), Not(HasSubstr("hidden_act"))));
  EXPECT_EQ(yaml.find("\noptim:\n"), yaml.rfind("\noptim:\n"));
  absl::StatusOr<Recipe> again = ParseRecipe(yaml, "resolved.yaml");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << yaml;
  EXPECT_EQ(ResolvedRecipeYaml(*again), yaml);
  EXPECT_EQ(again->optim.lr, 1.25e-3);  // exactly: doubles are written in round-trip form
  // Every double keeps its bits, however it was written.
  r = LoadRecipe(TinyPath(), {"optim.lr=0.1234567890123456789", "model.rope_theta=1e+300",
                              "train.seed=18446744073709551615", "model.q_lora_rank=null"});
  ASSERT_TRUE(r.ok()) << r.status();
  again = ParseRecipe(ResolvedRecipeYaml(*r), "resolved.yaml");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->optim.lr, r->optim.lr);
  EXPECT_EQ(again->model.rope_theta, 1e300);
  EXPECT_EQ(again->train.seed, 18446744073709551615ull);
  EXPECT_EQ(again->model.q_lora_rank, 0);
  EXPECT_THAT(ResolvedRecipeYaml(*r), HasSubstr("q_lora_rank: null"));
}

TEST(ConfigTest, ResolvedRecipeDiffersExactlyWhereTheRecipesDo) {
  absl::StatusOr<Recipe> a = LoadRecipe(TinyPath());
  absl::StatusOr<Recipe> b = LoadRecipe(TinyPath(), {"optim.lr=0.003"});  // the same value, stated again
  absl::StatusOr<Recipe> c = LoadRecipe(TinyPath(), {"optim.lr=0.0030000000000000005"});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(ResolvedRecipeYaml(*a), ResolvedRecipeYaml(*b));
  EXPECT_NE(ResolvedRecipeYaml(*a), ResolvedRecipeYaml(*c));  // one ulp apart still differs
}

TEST(ConfigTest, DeepSeekV3ConfigJsonModelKeysParse) {
  // A representative subset of DeepSeek-V3's config.json, pasted as the model section (JSON is YAML).
  const std::string yaml = R"({
  "model": {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": false,
    "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
                 "AutoModel": "modeling_deepseek.DeepseekV3Model"},
    "aux_loss_alpha": 0.001,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "first_k_dense_replace": 3,
    "hidden_act": "silu",
    "hidden_size": 7168,
    "initializer_range": 0.02,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 8,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "norm_topk_prob": true,
    "num_attention_heads": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1,
    "pretraining_tp": 1,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "seq_aux": true,
    "tie_word_embeddings": false,
    "topk_group": 4,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1",
    "use_cache": true,
    "v_head_dim": 128,
    "vocab_size": 129280
  }
})";
  absl::StatusOr<Recipe> r = ParseRecipe(yaml, "deepseek_v3.json");
  ASSERT_TRUE(r.ok()) << r.status();
  const ModelConfig& m = r->model;
  EXPECT_EQ(m.vocab_size, 129280);
  EXPECT_EQ(m.hidden_size, 7168);
  EXPECT_EQ(m.num_hidden_layers, 61);
  EXPECT_EQ(m.first_k_dense_replace, 3);
  EXPECT_EQ(m.q_lora_rank, 1536);
  EXPECT_EQ(m.kv_lora_rank, 512);
  EXPECT_EQ(m.qk_head_dim(), 192);
  EXPECT_EQ(m.n_routed_experts, 256);
  EXPECT_EQ(m.n_group, 8);
  EXPECT_EQ(m.topk_group, 4);
  EXPECT_EQ(m.num_experts_per_tok, 8);
  EXPECT_DOUBLE_EQ(m.rms_norm_eps, 1e-6);
  EXPECT_EQ(m.rope_scaling.type, "yarn");
  EXPECT_DOUBLE_EQ(m.rope_scaling.factor, 40.0);
  EXPECT_EQ(m.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(m.rope_scaling.beta_fast, 32.0);
  const double mscale = 0.1 * std::log(40.0) + 1.0;
  EXPECT_DOUBLE_EQ(m.softmax_scale(), mscale * mscale / std::sqrt(192.0));
}

TEST(ConfigTest, HfNullsMeanNone) {
  absl::StatusOr<Recipe> r = LoadRecipe(TinyPath(), {"model.q_lora_rank=null", "model.rope_scaling=null"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->model.q_lora_rank, 0);
  EXPECT_EQ(r->model.rope_scaling.type, "none");
  EXPECT_DOUBLE_EQ(r->model.rope_scaling.factor, 1.0);
}

TEST(ConfigTest, UnknownKeySuggestsClosest) {
  const std::string msg = InlineError("model:\n  hidden_size: 64\n  hiden_sise: 64\n");
  EXPECT_THAT(msg, AllOf(HasSubstr("inline.yaml:3"), HasSubstr("unknown key 'model.hiden_sise'"),
                         HasSubstr("did you mean 'model.hidden_size'?")));
  // Nothing within edit distance 3: no suggestion.
  EXPECT_THAT(InlineError("optim:\n  banana_split: 1\n"),
              AllOf(HasSubstr("unknown key 'optim.banana_split'"), Not(HasSubstr("did you mean"))));
  // Keys of nested maps carry their full path.
  EXPECT_THAT(InlineError("model:\n  rope_scaling: {type: yarn, factr: 4}\n"),
              AllOf(HasSubstr("unknown key 'model.rope_scaling.factr'"),
                    HasSubstr("did you mean 'model.rope_scaling.factor'?")));
}

// A key that lives in another section, or under the name Megatron-Core / TorchTitan give it, says where it
// is; data and tensor parallelism, which a recipe does not set, say why instead of a spelling suggestion.
TEST(ConfigTest, UnknownKeyFromAnotherSectionOrStackSaysWhereItIs) {
  EXPECT_THAT(InlineError("train:\n  lr: 0.1\n"),
              AllOf(HasSubstr("unknown key 'train.lr'"), HasSubstr("it is 'optim.lr' in fathom")));
  EXPECT_THAT(InlineError("data:\n  save_every: 3\n"), HasSubstr("it is 'checkpoint.save_every' in fathom"));
  EXPECT_THAT(InlineError("optim:\n  learning_rate: 0.1\n"), HasSubstr("it is 'optim.lr' in fathom"));
  EXPECT_THAT(InlineError("parallel:\n  tp: 2\n"),
              AllOf(HasSubstr("no tensor parallelism"), Not(HasSubstr("did you mean"))));
  EXPECT_THAT(InlineError("parallel:\n  dp: 2\n"),
              AllOf(HasSubstr("it is the world size / parallel.pp"), Not(HasSubstr("did you mean"))));
  EXPECT_THAT(InlineError("optim:\n  banana_split: 1\n"), Not(HasSubstr("in fathom")));
}

// yaml-cpp says "illegal map value" for a tab among the indentation; the message says what to fix.
TEST(ConfigTest, TabInTheIndentationIsNamed) {
  EXPECT_THAT(InlineError("train:\n\tsteps: 3\n"),
              AllOf(HasSubstr("inline.yaml:2:"), HasSubstr("YAML indents with spaces only")));
  EXPECT_THAT(InlineError("train:\n  steps: [3\n"), Not(HasSubstr("tab")));
}

TEST(ConfigTest, UnknownSection) {
  const std::string msg = InlineError("modle:\n  hidden_size: 64\n");
  EXPECT_THAT(msg, AllOf(HasSubstr("inline.yaml:1"), HasSubstr("unknown section 'modle'"),
                         HasSubstr("did you mean 'model'?")));
}

TEST(ConfigTest, StringForIntIsATypeError) {
  const std::string msg = InlineError("train:\n  steps: many\n");
  EXPECT_THAT(msg, AllOf(HasSubstr("inline.yaml:2"), HasSubstr("train.steps"), HasSubstr("'many'"),
                         HasSubstr("expected a non-negative integer")));
  // A quoted number is a string.
  EXPECT_THAT(
      InlineError("optim:\n  lr: \"0.1\"\n"),
      AllOf(HasSubstr("optim.lr"), HasSubstr("expected a finite number"), HasSubstr("quoted string")));
}

TEST(ConfigTest, FloatForIntIsATypeError) {
  EXPECT_THAT(TinyError({"parallel.pp=1.5"}), AllOf(HasSubstr("parallel.pp"), HasSubstr("'1.5'"),
                                                    HasSubstr("expected a non-negative integer")));
  EXPECT_THAT(InlineError("loss:\n  ignore_index: -1e2\n"),
              AllOf(HasSubstr("loss.ignore_index"), HasSubstr("'-1e2'"), HasSubstr("expected an integer")));
}

TEST(ConfigTest, MapForScalarIsATypeError) {
  EXPECT_THAT(InlineError("train:\n  seq_len: {a: 1}\n"),
              AllOf(HasSubstr("train.seq_len"), HasSubstr("found a map")));
  EXPECT_THAT(InlineError("model:\n  norm_topk_prob: yes\n"),
              AllOf(HasSubstr("model.norm_topk_prob"), HasSubstr("'yes'"), HasSubstr("expected a boolean")));
  EXPECT_THAT(InlineError("model: 3\n"), AllOf(HasSubstr("model"), HasSubstr("expected a map")));
}

TEST(ConfigTest, NegativeCountIsATypeError) {
  const std::string msg = TinyError({"model.hidden_size=-64"});
  EXPECT_THAT(msg, AllOf(HasSubstr("model.hidden_size"), HasSubstr("'-64'"),
                         HasSubstr("expected a non-negative integer"),
                         HasSubstr("override 'model.hidden_size=-64'")));
  EXPECT_THAT(InlineError("parallel:\n  pp: 2\n  stage_layers: [1, -1]\n"),
              AllOf(HasSubstr("parallel.stage_layers[1]"), HasSubstr("'-1'")));
}

TEST(ConfigTest, ZeroSizeFailsValidation) {
  EXPECT_THAT(TinyError({"model.hidden_size=0"}),
              AllOf(HasSubstr("model.hidden_size must be >= 1, got 0"), HasSubstr("tiny.yaml")));
}

TEST(ConfigTest, TopkGroupAboveNGroup) {
  EXPECT_THAT(TinyError({"model.topk_group=3"}),
              HasSubstr("model.topk_group (3) must be <= model.n_group (2)"));
}

TEST(ConfigTest, ExpertsNotDivisibleByGroups) {
  EXPECT_THAT(TinyError({"model.n_routed_experts=10", "model.n_group=4"}),
              HasSubstr("model.n_routed_experts (10) must be divisible by model.n_group (4)"));
}

TEST(ConfigTest, GroupsNeedTwoExperts) {
  EXPECT_THAT(
      TinyError({"model.n_group=8"}),
      AllOf(HasSubstr("model.n_routed_experts / model.n_group (8 / 8 = 1)"), HasSubstr(">= 2 experts")));
}

TEST(ConfigTest, ExpertsPerTokenAboveRoutedExperts) {
  EXPECT_THAT(TinyError({"model.num_experts_per_tok=9"}),
              HasSubstr("model.num_experts_per_tok (9) must be <= model.n_routed_experts (8)"));
}

TEST(ConfigTest, TooFewExpertsInKeptGroups) {
  // 2 groups of 4, 1 kept: at most 4 experts can be chosen.
  EXPECT_THAT(
      TinyError({"model.num_experts_per_tok=5"}),
      AllOf(HasSubstr("model.num_experts_per_tok (5)"),
            HasSubstr("model.topk_group * (model.n_routed_experts / model.n_group) = 1 * (8 / 2) = 4")));
}

TEST(ConfigTest, OddRopeHeadDim) {
  EXPECT_THAT(TinyError({"model.qk_rope_head_dim=7"}), HasSubstr("model.qk_rope_head_dim (7) must be even"));
}

TEST(ConfigTest, SeqLenAboveMaxPositions) {
  EXPECT_THAT(TinyError({"train.seq_len=8192"}),
              HasSubstr("train.seq_len (8192) must be <= model.max_position_embeddings (4096)"));
}

TEST(ConfigTest, MissingFileIsNotFound) {
  const std::string path = std::string(FATHOM_SOURCE_DIR) + "/recipes/no_such_recipe.yaml";
  absl::StatusOr<Recipe> r = LoadRecipe(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(path));
}

TEST(ConfigTest, YamlSyntaxErrorNamesLine) {
  // A mis-indented key: reported at its line (3) and column.
  EXPECT_THAT(InlineError("model:\n  hidden_size: 64\n   vocab_size: 256\n"),
              AllOf(HasSubstr("inline.yaml:3:"), HasSubstr("YAML syntax error")));
  // An unclosed flow list: yaml-cpp notices it where the next key starts (line 3).
  EXPECT_THAT(InlineError("model:\n  vocab_size: [256\ntrain:\n  steps: 3\n"),
              AllOf(HasSubstr("inline.yaml:3:"), HasSubstr("YAML syntax error"),
                    HasSubstr("end of sequence flow not found")));
}

TEST(ConfigTest, DuplicateKey) {
  EXPECT_THAT(
      InlineError("train:\n  steps: 3\n  steps: 4\n"),
      AllOf(HasSubstr("inline.yaml:3"), HasSubstr("duplicate key 'train.steps'"), HasSubstr("line 2")));
}

TEST(ConfigTest, OverridesApply) {
  absl::StatusOr<Recipe> r = LoadRecipe(
      TinyPath(), {"parallel.pp=3", "optim.lr=1e-3", "model.rope_scaling.factor=2", "train.dtype=f64",
                   "parallel.stage_layers=[1, 1, 1]", " parallel.schedule = zb1p "});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->parallel.pp, 3);
  EXPECT_DOUBLE_EQ(r->optim.lr, 1e-3);
  EXPECT_DOUBLE_EQ(r->model.rope_scaling.factor, 2.0);
  EXPECT_EQ(r->model.rope_scaling.type, "yarn");  // the rest of the map is kept
  EXPECT_EQ(r->train.dtype, "f64");
  EXPECT_EQ(r->parallel.stage_layers, (std::vector<int64_t>{1, 1, 1}));
  EXPECT_EQ(r->parallel.schedule, "zb1p");
  // A section missing from the file is created.
  absl::StatusOr<Recipe> bare = ParseRecipe(kModelYaml, "model_only.yaml", {"data.source=synthetic"});
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->data.source, "synthetic");
}

TEST(ConfigTest, OverrideOfUnknownKey) {
  const std::string msg = TinyError({"model.hiden_size=3"});
  EXPECT_THAT(msg,
              AllOf(HasSubstr("unknown key 'model.hiden_size'"), HasSubstr("override 'model.hiden_size=3'"),
                    HasSubstr("did you mean 'model.hidden_size'?")));
  EXPECT_THAT(TinyError({"trian.steps=3"}),
              AllOf(HasSubstr("unknown section 'trian'"), HasSubstr("did you mean 'train'?")));
}

TEST(ConfigTest, MalformedOverride) {
  EXPECT_THAT(TinyError({"parallel.pp"}),
              AllOf(HasSubstr("malformed override 'parallel.pp'"), HasSubstr("expected key=value")));
  EXPECT_THAT(TinyError({"=3"}), AllOf(HasSubstr("malformed override '=3'"), HasSubstr("empty key")));
  EXPECT_THAT(TinyError({"model..hidden_size=3"}),
              AllOf(HasSubstr("malformed override 'model..hidden_size=3'"), HasSubstr("empty component")));
  EXPECT_THAT(TinyError({"pp=2"}), AllOf(HasSubstr("malformed override 'pp=2'"), HasSubstr("at least 2")));
  EXPECT_THAT(TinyError({"model.hidden_size.x=2"}), AllOf(HasSubstr("override 'model.hidden_size.x=2'"),
                                                          HasSubstr("model.hidden_size holds '64'")));
  EXPECT_THAT(TinyError({"optim.lr=[1"}),
              AllOf(HasSubstr("override 'optim.lr=[1'"), HasSubstr("not valid YAML")));
}

TEST(ConfigTest, EpMustDivideExperts) {
  EXPECT_THAT(TinyError({"parallel.ep=3"}),
              HasSubstr("parallel.ep (3) must divide model.n_routed_experts (8)"));
}

TEST(ConfigTest, StageLayersMustSumToLayers) {
  EXPECT_THAT(TinyError({"parallel.pp=2", "parallel.stage_layers=[1, 1]"}),
              HasSubstr("parallel.stage_layers [1, 1] sums to 2, must sum to model.num_hidden_layers (3)"));
  // How many entries stage_layers needs is the schedule's rule: tests/parallel/schedule_test.cc.
}

TEST(ConfigTest, OverlapKey) {
  absl::StatusOr<Recipe> none = LoadRecipe(TinyPath());
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->parallel.overlap, "none");
  absl::StatusOr<Recipe> pairs =
      LoadRecipe(TinyPath(), {"parallel.overlap=two_micro_batch", "parallel.ep=2"});
  ASSERT_TRUE(pairs.ok()) << pairs.status();
  EXPECT_EQ(pairs->parallel.overlap, "two_micro_batch");
  EXPECT_THAT(TinyError({"parallel.overlap=dual"}), AllOf(HasSubstr("parallel.overlap"), HasSubstr("dual")));
  EXPECT_THAT(TinyError({"parallel.overlap=two_micro_batch", "parallel.pp=2"}),
              AllOf(HasSubstr("parallel.overlap two_micro_batch"), HasSubstr("parallel.pp = 1, got 2")));
}

TEST(ConfigTest, TraceKeys) {
  absl::StatusOr<Recipe> off = LoadRecipe(TinyPath());
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_TRUE(off->train.trace.empty());
  EXPECT_TRUE(off->train.TracedSteps().empty());
  // Without steps: the second step (the first one warms up), or the only one.
  absl::StatusOr<Recipe> plain = LoadRecipe(TinyPath(), {"train.trace=run.json"});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->train.TracedSteps(), (std::vector<int64_t>{2}));
  absl::StatusOr<Recipe> one = LoadRecipe(TinyPath(), {"train.trace=run.json", "train.steps=1"});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->train.TracedSteps(), (std::vector<int64_t>{1}));
  absl::StatusOr<Recipe> chosen =
      LoadRecipe(TinyPath(), {"train.trace=run.json", "train.trace_steps=[7, 3, 7]"});
  ASSERT_TRUE(chosen.ok()) << chosen.status();
  EXPECT_EQ(chosen->train.TracedSteps(), (std::vector<int64_t>{3, 7}));
  EXPECT_THAT(TinyError({"train.trace_steps=[2]"}),
              AllOf(HasSubstr("train.trace_steps"), HasSubstr("train.trace")));
  EXPECT_THAT(TinyError({"train.trace=run.json", "train.trace_steps=[301]"}),
              HasSubstr("train.trace_steps[0] must be a step in [1, train.steps = 300], got 301"));
}

// `fathom plan` loads a recipe with RecipeUse::kPlan: the parallel section's checks against the model are
// skipped (the planner replaces it), its keys are still parsed.
TEST(ConfigTest, PlanningSkipsTheParallelChecks) {
  const std::vector<std::string> bad = {"parallel.ep=3", "parallel.pp=2", "parallel.stage_layers=[5, 5]"};
  EXPECT_THAT(TinyError(bad), HasSubstr("parallel.ep (3)"));
  absl::StatusOr<Recipe> plan = LoadRecipe(TinyPath(), bad, RecipeUse::kPlan);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->parallel.ep, 3);
  // Unknown keys and wrong types are still errors, and the other sections are still checked.
  EXPECT_FALSE(LoadRecipe(TinyPath(), {"parallel.epp=3"}, RecipeUse::kPlan).ok());
  EXPECT_FALSE(LoadRecipe(TinyPath(), {"parallel.ep=x"}, RecipeUse::kPlan).ok());
  absl::StatusOr<Recipe> bad_model = LoadRecipe(TinyPath(), {"model.topk_group=9"}, RecipeUse::kPlan);
  ASSERT_FALSE(bad_model.ok());
  EXPECT_THAT(bad_model.status().message(), HasSubstr("model.topk_group"));
}

// train.global_batch_size: absent (0) unless stated; when stated, fathom train's batch must agree.
TEST(ConfigTest, GlobalBatchMustAgreeWithTheMesh) {
  absl::StatusOr<Recipe> r = LoadRecipe(TinyPath());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->train.global_batch_size, 0);
  EXPECT_TRUE(CheckGlobalBatch(*r, 3).ok());  // not stated: nothing to check
  const int64_t per_rank = r->parallel.micro_batches * r->train.micro_batch_size;
  r = LoadRecipe(TinyPath(), {"train.global_batch_size=" + std::to_string(2 * per_rank)});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->train.global_batch_size, 2 * per_rank);
  EXPECT_TRUE(CheckGlobalBatch(*r, 2).ok());
  const absl::Status s = CheckGlobalBatch(*r, 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("train.global_batch_size (" + std::to_string(2 * per_rank)),
                                 HasSubstr("dp (4)"), HasSubstr("parallel.micro_batches"),
                                 HasSubstr("train.micro_batch_size")));
  EXPECT_THAT(TinyError({"train.global_batch_size=-1"}), HasSubstr("train.global_batch_size"));
}

TEST(ConfigTest, Bf16RejectedOnCpu) {
  EXPECT_THAT(TinyError({"train.dtype=bf16"}),
              AllOf(HasSubstr("train.dtype bf16"), HasSubstr("train.device cpu")));
  absl::StatusOr<Recipe> gpu = LoadRecipe(TinyPath(), {"train.dtype=bf16", "train.device=cuda"});
  EXPECT_TRUE(gpu.ok()) << gpu.status();
}

TEST(ConfigTest, MustBeValueViolated) {
  EXPECT_THAT(TinyError({"model.hidden_act=gelu"}),
              AllOf(HasSubstr("model.hidden_act must be silu"), HasSubstr("'gelu'")));
  EXPECT_THAT(
      TinyError({"model.num_key_value_heads=2"}),
      AllOf(HasSubstr("model.num_key_value_heads must be 4"), HasSubstr("model.num_attention_heads")));
  EXPECT_THAT(TinyError({"model.tie_word_embeddings=true"}),
              HasSubstr("model.tie_word_embeddings must be false"));
}

TEST(ConfigTest, EnumsListAllowedValues) {
  EXPECT_THAT(TinyError({"model.rope_scaling.type=linear"}),
              HasSubstr("model.rope_scaling.type must be one of none, yarn; got 'linear'"));
  EXPECT_THAT(TinyError({"data.source=web"}), HasSubstr("data.source must be one of demo, synthetic"));
}

TEST(ConfigTest, OptimLossAndDataRanges) {
  EXPECT_THAT(TinyError({"optim.min_lr=0.1"}), HasSubstr("optim.min_lr must be in [0, optim.lr]"));
  EXPECT_THAT(TinyError({"optim.beta2=1"}), HasSubstr("optim.beta2 must be in [0, 1), got 1"));
  EXPECT_THAT(TinyError({"optim.eps=0"}), HasSubstr("optim.eps must be > 0, got 0"));
  EXPECT_THAT(TinyError({"loss.mtp_lambda=-0.5"}), HasSubstr("loss.mtp_lambda must be >= 0, got -0.5"));
  EXPECT_THAT(TinyError({"model.vocab_size=128"}),
              HasSubstr("data.source demo needs model.vocab_size >= 256"));
}

TEST(ConfigTest, EditDistance) {
  EXPECT_EQ(EditDistance("", ""), 0);
  EXPECT_EQ(EditDistance("kitten", "sitting"), 3);
  EXPECT_EQ(EditDistance("n_group", "n_groups"), 1);
  EXPECT_EQ(EditDistance("abc", ""), 3);
}

}  // namespace
}  // namespace fathom
