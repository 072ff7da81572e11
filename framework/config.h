// Typed configuration, one struct per component, each with its own Validate() (torchtitan style).
// A recipe YAML has the sections model / parallel / train / optim / loss / data / checkpoint; the model
// section uses HF config.json key names. Parsing rejects unknown keys and wrong types; Validate() checks the
// cross-field constraints. Every error names the key and what was expected.
//
// No silent defaults for the model: a recipe must state the keys that give the model its shape, the ones
// DeepSeek-V3's config.json states (RequiredModelKeys()):
//   vocab_size, hidden_size, intermediate_size, moe_intermediate_size, num_hidden_layers,
//   first_k_dense_replace, num_attention_heads, q_lora_rank (null for none), kv_lora_rank,
//   qk_nope_head_dim, qk_rope_head_dim, v_head_dim, n_routed_experts, n_shared_experts,
//   num_experts_per_tok, n_group, topk_group, norm_topk_prob, routed_scaling_factor,
//   num_nextn_predict_layers, max_position_embeddings.
// An empty recipe, one without `model:`, or one missing any of these is an error naming the missing keys.
// The numerical constants of the model (rms_norm_eps, rope_theta, rope_interleave, rope_scaling,
// initializer_range) default to DeepSeek-V3's values, which are also transformers' DeepseekV3Config
// defaults; training knobs (every other section) keep their defaults. ModelConfig's C++ defaults below
// serve code that builds configs directly (tests); recipes never fall back on the shape ones.
#ifndef FATHOM_FRAMEWORK_CONFIG_H_
#define FATHOM_FRAMEWORK_CONFIG_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fathom {

// HF `rope_scaling` (DeepSeek-V3 uses type "yarn").
struct RopeScalingConfig {
  std::string type = "none";  // "none" or "yarn"
  double factor = 1.0;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

// YaRN's attention-scale correction, HF's get_mscale: 1 for scale <= 1, else 0.1 * mscale * ln(scale) + 1.
double YarnGetMscale(double scale, double mscale = 1.0);

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t hidden_size = 64;
  int64_t intermediate_size = 128;     // dense MLP of the first `first_k_dense_replace` layers
  int64_t moe_intermediate_size = 32;  // each routed expert, and each shared expert
  int64_t num_hidden_layers = 2;
  int64_t first_k_dense_replace = 1;
  int64_t num_attention_heads = 4;
  int64_t q_lora_rank = 0;  // 0 (HF: null) = a single q_proj
  int64_t kv_lora_rank = 32;
  int64_t qk_nope_head_dim = 16;
  int64_t qk_rope_head_dim = 8;
  int64_t v_head_dim = 16;
  int64_t n_routed_experts = 8;
  int64_t n_shared_experts = 1;
  int64_t num_experts_per_tok = 2;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  int64_t num_nextn_predict_layers = 0;  // MTP depth D
  int64_t max_position_embeddings = 4096;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool rope_interleave = true;
  RopeScalingConfig rope_scaling;
  double initializer_range = 0.02;
  // Not a config.json key: an HF DeepSeek-V3 directory (checkpoint/hf_directory.h) whose weights a fresh
  // run starts from instead of the random initialisation (its config.json must describe this model; a
  // resumed checkpoint takes precedence). "" = random initialisation.
  std::string init_from;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const { return layer >= first_k_dense_replace; }
  // Softmax scale of MLA: qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN.
  double softmax_scale() const;
  absl::Status Validate() const;
};

// The model keys a recipe must state (see the top), in config.json order of importance.
const std::vector<std::string>& RequiredModelKeys();

struct ParallelConfig {
  int64_t pp = 1;
  int64_t ep = 1;
  int64_t micro_batches = 1;          // micro-batches per step per data-parallel rank
  std::vector<int64_t> stage_layers;  // optional: decoder layers per pipeline stage
  std::string schedule = "1f1b";
  // The watchdog (parallel/communicator.h): how long any wait for other ranks may last before the job is
  // ended with a report naming the operation and the ranks that have not arrived. Seconds, in
  // (0, 604800]. The first step (NCCL connects lazily, kernels are chosen, memory is first touched) and a
  // checkpoint save get their own, longer deadlines.
  double timeout_s = 300;
  double first_step_timeout_s = 1800;
  double save_timeout_s = 1800;
  // How a single stage hides its expert all-to-alls: "none", or "two_micro_batch" (pp 1): micro-batches
  // run in pairs, forward with forward and backward with backward, so that one's dispatch or combine
  // travels while the other computes (DualPipe's FB pair does this across stages by itself).
  std::string overlap = "none";
  absl::Status Validate(const ModelConfig& model) const;
};

struct TrainConfig {
  int64_t steps = 300;
  int64_t seq_len = 64;
  int64_t micro_batch_size = 4;
  // Sequences per optimizer step; 0: not stated. What `fathom plan` keeps fixed while it chooses the
  // layout (it refuses a recipe without one). `fathom train` runs dp x parallel.micro_batches x
  // micro_batch_size sequences per step and, when this is stated, checks that it agrees
  // (CheckGlobalBatch).
  int64_t global_batch_size = 0;
  uint64_t seed = 1234;
  int64_t log_every = 1;  // print every N-th step's own values (TorchTitan's; Megatron averages the interval)
  std::string dtype = "f32";  // compute/parameter dtype on CPU: f32 or f64
  // The Linear GEMMs of attention, the dense MLPs and the experts (forward, dgrad, wgrad): "bf16" runs them
  // in train.dtype like everything else; "fp8" in e4m3 with 1x128 / 128x128 block scaling and f32
  // accumulation, with the routed experts' token rows dispatched in FP8 (the DeepSeek-V3 report's recipe;
  // embedding, head, router, norms and the attention core stay in train.dtype). fp8 needs train.dtype bf16 on
  // cuda (every FP8 weight dimension a multiple of 16, at most 256 routed experts) and is emulated exactly in
  // f32 on the CPU (train.dtype f32 or f64).
  std::string precision = "bf16";
  // Which kernels run the routed experts' FP8 GEMMs on cuda (train.precision fp8): "own_all" (default):
  // fathom's tiled kernel (one launch for every expert) for the forward, the input gradient and the weight
  // gradient; "own": the own kernel for the forward and the input gradient, cuBLASLt for the weight gradient;
  // "cublaslt": one cuBLASLt block-scaled matmul per expert, spread over 4 streams, for all three. The same
  // numerics either way (each is tested against the CPU emulation); the choice is speed only. On an H200 at
  // recipes/small.yaml's shape without MTP (2026-12-05, `fathom bench`, one call): own_all with TMA stores
  // 88.4 ms per step, cublaslt 91.5.
  std::string fp8_expert_gemm = "own_all";
  // Which kernels run the routed experts' bf16 GEMMs on cuda (train.precision bf16) where all experts are
  // local (no expert all-to-all): "cublaslt" (default): cuBLASLt's pointer-array batches of 128-row tiles,
  // sized from the per-expert counts the host waits for once per MoE layer and micro-batch; "own": fathom's
  // tiled kernels over a worst-case tile budget, laid out from the counts on the device (layers/moe.h,
  // "Device layout"): no host synchronisation in the MoE layers; "own_wgrad": cublaslt's layout and forward /
  // input-gradient GEMMs with the weight gradients on fathom's own TN kernel. The same numbers either way. On
  // an H200 at recipes/small.yaml's shape without MTP (2026-12-05, two calls, TMA stores on): cublaslt 78.9 /
  // 79.9 ms per step, own_wgrad 78.7 / 79.3, own 80.6 / 81.3 (the own NT / NN kernels run 500-547 TFLOP/s
  // against cuBLASLt's 541-576; its TN is the faster one, 414-467 against 404, which own_wgrad takes).
  std::string expert_gemm = "cublaslt";
  // How fathom's tiled expert kernels launch, wherever train.expert_gemm or train.fp8_expert_gemm runs them
  // (framework/kernels/cuda/grouped_gemm.h, TiledLaunch): expert_gemm_cluster 2 pairs CTAs that share one
  // row tile's loads by TMA multicast; expert_gemm_tma_store stores the results through shared memory with
  // TMA (where a form has that epilogue; cuBLASLt's GEMMs do not read it). The same numbers either way. On an
  // H200 (2026-12-05, gpu_bench BM_OwnTiled, K/N 2048/1408 and 1408/2048): TMA stores take the bf16 NT and
  // NN forms from 423-465 to 498-547 TFLOP/s and the FP8 NT from 658 to 763, so they are on by default;
  // clusters of two ran at 200-380 TFLOP/s, slower than one CTA in every form (a cluster-scope fence per
  // k-block, since removed; not yet re-measured), so 1 stays the default.
  int64_t expert_gemm_cluster = 1;
  bool expert_gemm_tma_store = true;
  // Bitwise reproducible steps on the GPU (Megatron's --deterministic-mode, torchtitan's
  // debug.deterministic): the same recipe, seed, GPUs and mesh give the same bits every run, so a GPU run
  // resumed from a checkpoint continues exactly as the uninterrupted one. Every fathom kernel already sums
  // in a fixed order; what this changes is the attention backward, whose cuDNN engines accumulate dq with
  // f32 atomics: with it on, cuDNN's graph that writes dq directly (no accumulator) and engines without
  // cuDNN's "non-deterministic" note are required, else fathom's own tensor-core kernels run (start-up says
  // which). cuDNN's deterministic backward can need B x H x T^2 x 2 bytes of workspace (1 GiB at
  // recipes/small.yaml's shape) from the memory plan's reserve. The CPU is deterministic either way.
  bool deterministic = false;
  std::string device = "cpu";
  int64_t eval_every = 0;    // evaluate on the valid split every this many steps; 0 = never
  int64_t eval_steps = 10;   // global batches of the valid split per evaluation (the same ones each time)
  std::string log_dir = "";  // rank 0 writes metrics.jsonl and TensorBoard event files here; "" = none
  // Numerics. A step whose global gradient norm is not finite is skipped (no update) and counted; this many
  // skipped steps in a row stop the job, naming the first tensor whose gradient went non-finite.
  int64_t max_skipped_steps = 5;
  // A loss above this factor x the running mean of the recent losses is logged as a warning; 0 = never.
  double loss_spike_factor = 3.0;
  // Silent-data-corruption check: every this many steps the data-parallel replicas compare checksums of
  // the parameters they hold in common and stop the job on a mismatch, naming ranks, hosts and tensors;
  // 0 = never.
  int64_t check_replicas_every = 0;
  // A Chrome/Perfetto trace of the run (empty = none): the executor's instructions, all-to-alls, pipeline
  // receives and the step tail of every rank, for the steps `trace_steps` (1-based, as the log counts;
  // empty = step 2, or step 1 of a one-step run), written once the last of them has run.
  std::string trace;
  std::vector<int64_t> trace_steps;
  // The steps traced when `trace` is set (sorted, unique; empty without a trace).
  std::vector<int64_t> TracedSteps() const;
  // Whether the routed experts run on fathom's tiled kernels (train.expert_gemm in bf16 or
  // train.fp8_expert_gemm in fp8 other than cublaslt, on cuda): what expert_gemm_cluster and
  // expert_gemm_tma_store shape.
  bool RunsTiledExpertKernels() const;
  absl::Status Validate(const ModelConfig& model) const;
};

struct OptimConfig {
  double lr = 3e-3;
  double min_lr = 3e-4;
  int64_t warmup_steps = 20;
  int64_t constant_steps = 0;          // at peak lr after warmup, before the decay
  // The decay window's length, counted after warmup_steps + constant_steps (Megatron's lr_decay_iters counts
  // from step 0); -1: until the last step. optim/lr_schedule.h has the formula and its conventions.
  int64_t decay_steps = -1;
  std::string decay_style = "cosine";  // cosine | linear | constant (the peak for good, as Megatron's)
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;            // global L2 norm; 0 disables
  std::string moment_dtype = "f32";  // f32 | bf16
  double bias_update_speed = 0.001;  // gamma of the auxiliary-loss-free bias update; 0 disables
  absl::Status Validate() const;
};

struct LossConfig {
  double mtp_lambda = 0.3;      // lambda of the report's MTP loss
  double balance_alpha = 1e-4;  // alpha of the sequence-wise balance loss
  int64_t ignore_index = -100;
  absl::Status Validate() const;
};

// One dataset of data.path (Megatron's --data-path form).
struct DataBlendEntry {
  double weight = 1;   // normalised: the weights of a blend sum to 1
  std::string prefix;  // megatron: PREFIX of PREFIX.bin and PREFIX.idx; hdf5: the HDF5 file
};

struct DataConfig {
  // demo: the embedded corpus, synthetic: uniform random ids (both: windows drawn with replacement);
  // megatron: Megatron .bin/.idx datasets; hdf5: HDF5 token files (data/hdf5_dataset.h). The last two
  // pack documents into windows (data/packed_split.h).
  std::string source = "demo";
  // megatron and hdf5 only: [PREFIX] (also a bare PREFIX) or [w1, PREFIX1, w2, PREFIX2, ...] with every
  // weight > 0 (normalised to sum 1). Relative paths are relative to the working directory.
  std::vector<std::string> path;
  // train/valid/test shares of each dataset's documents, Megatron's --split: "969,30,1", "98,2", "100"
  // (missing shares are 0; separators ',' or '/').
  std::string split = "969,30,1";
  // Inserted after every document when packing (the byte tokenizer's NUL, which text never contains);
  // -1 inserts nothing, for data whose documents already end with their EOD (Megatron's --append-eod).
  // Megatron's GPTDataset inserts nothing: for data tokenized by an HF tokenizer set -1 (or its EOD id),
  // since the default 0 is that tokenizer's token 0 (DeepSeek-V3's begin-of-sentence).
  int64_t eod_token_id = 0;
  // true: every token of the split is checked < model.vocab_size when the loader opens (a sequential read
  // of the files); false: tokens are checked only as they are read for a step.
  bool verify_tokens = true;
  // A directory of HF tokenizer files (tokenizer.json, tokenizer_config.json, ...) describing the
  // dataset's token ids; `fathom export` copies them into the HF directory. "" = fathom's byte tokenizer
  // (data/tokenizer.h), which has no HF files.
  std::string tokenizer_dir;
  absl::Status Validate(const ModelConfig& model) const;
  // data.path parsed, weights normalised. InvalidArgument naming data.path for a malformed list.
  absl::StatusOr<std::vector<DataBlendEntry>> Blend() const;
  // data.split as three fractions (train, valid, test) summing to 1; InvalidArgument naming data.split.
  absl::StatusOr<std::vector<double>> SplitFractions() const;
};

// Distributed checkpoints (checkpoint/): where they go, how often, how many stay, and where a run resumes.
struct CheckpointConfig {
  std::string dir;              // the checkpoints' directory (D/step_00000123/); "" = no checkpoints
  int64_t save_every = 0;       // save after every save_every-th step; 0 = never (REQUIRES dir when > 0)
  int64_t keep_last = 0;        // complete checkpoints kept in dir (older ones pruned); 0 = keep all
  std::string resume = "auto";  // auto: the newest complete checkpoint in dir, if any | none | a path
  bool async = false;           // write in a background thread; the step loop stalls only for the copy
  absl::Status Validate() const;
};

// What a recipe is loaded for. kPlan: `fathom plan` replaces the parallel section, so its constraints
// against the model (ParallelConfig::Validate: ep dividing the experts, stage_layers summing to the layers,
// ...) are not checked; its keys are still parsed, so unknown keys and wrong types stay errors.
enum class RecipeUse { kTrain, kPlan };

struct Recipe {
  std::string path;  // where it was read from, for messages
  ModelConfig model;
  ParallelConfig parallel;
  TrainConfig train;
  OptimConfig optim;
  LossConfig loss;
  DataConfig data;
  CheckpointConfig checkpoint;
  // Every section (kPlan: all but parallel), then the cross-section constraints.
  absl::Status Validate(RecipeUse use = RecipeUse::kTrain) const;
};

// With train.global_batch_size stated, InvalidArgument unless it equals dp x parallel.micro_batches x
// train.micro_batch_size (the batch `fathom train` runs on a mesh with `dp` data-parallel ranks); the
// message names both sides. OK when it is not stated (0).
absl::Status CheckGlobalBatch(const Recipe& recipe, int64_t dp);

// Reads a recipe, applies `overrides` ("section.key=value", value parsed as YAML) and validates it for
// `use`. Errors: NotFound for a missing file; InvalidArgument naming the key for everything else (also for
// a model key of RequiredModelKeys() that the recipe does not state).
absl::StatusOr<Recipe> LoadRecipe(const std::string& path, const std::vector<std::string>& overrides = {},
                                  RecipeUse use = RecipeUse::kTrain);
absl::StatusOr<Recipe> ParseRecipe(const std::string& yaml_text, const std::string& origin,
                                   const std::vector<std::string>& overrides = {},
                                   RecipeUse use = RecipeUse::kTrain);

// The recipe as it runs: every section and every key fathom reads, with its resolved value (the file's,
// an override's or the default), one key per line in a fixed order, as YAML that ParseRecipe reads back
// to the same values. Canonical: equal recipes give equal text on every rank and build (what the ranks
// compare at start-up, parallel/rank_agreement.h), and a run's log shows exactly what it trained with.
// Written by the same parse functions that read a recipe (YamlMapReader::Emitter), so a key added to a
// parser appears here without further work.
std::string ResolvedRecipeYaml(const Recipe& recipe);
// The (key path, value) lines of ResolvedRecipeYaml's text, in order ("optim.lr", "0.003";
// "model.rope_scaling.factor", "40"); map headers ("model:") only set the path.
std::vector<std::pair<std::string, std::string>> ResolvedRecipeKeyValues(const std::string& yaml);

}  // namespace fathom

#endif  // FATHOM_FRAMEWORK_CONFIG_H_
