// fathom import HF_DIR --out CHECKPOINT_DIR [--recipe RECIPE.yaml] [--set section.key=value ...]
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/hf_directory.h"
#include "checkpoint/hf_import.h"
#include "checkpoint/model_config_json.h"
#include "launch/command_line.h"
#include "launch/commands.h"
#include "launch/job_start.h"
#include "parallel/fault.h"

namespace fathom {
namespace {

constexpr char kUsage[] =
    "usage: fathom import HF_DIR --out CHECKPOINT_DIR [--recipe RECIPE.yaml] [--set section.key=value ...]\n"
    "  Reads a DeepSeek-V3 HF directory (sharded with model.safetensors.index.json, or one\n"
    "  model.safetensors; F32, BF16 or FP8 with weight_scale_inv; with or without MTP layers) and writes\n"
    "  it as a fathom checkpoint CHECKPOINT_DIR/step_00000000 holding the weights only (no optimizer\n"
    "  state). `fathom train RECIPE --set checkpoint.dir=CHECKPOINT_DIR` then starts from it: AdamW, the\n"
    "  LR schedule and the data start fresh, as they would from a random initialisation.\n"
    "  --out CHECKPOINT_DIR    a checkpoint.dir holding no checkpoint yet (created if missing)\n"
    "  --recipe RECIPE.yaml    the recipe to train with: HF_DIR/config.json must describe its model (every\n"
    "                          differing key is named); without it the model is config.json's and the\n"
    "                          other sections take their defaults\n"
    "  --set section.key=value override a recipe key (repeatable)\n"
    "  --help                  this text\n"
    "  (model.init_from: HF_DIR in a recipe loads the same weights at start-up without a checkpoint.)\n"
    "Exit codes: 0 imported, 2 bad input (nothing written), 1 an I/O failure (nothing written).\n";

[[noreturn]] void Reject(const absl::Status& status) {
  ExitAllRanks(kExitInvalidInput, "fathom import: " + std::string(status.message()));
}

// The recipe the checkpoint records: --recipe's, or config.json's model with every other section at its
// default (data synthetic for a vocabulary the byte-tokenized demo corpus does not fit).
absl::StatusOr<Recipe> ImportRecipe(const CommandLine& cl, const std::string& hf_dir) {
  if (cl.options.count("--recipe")) return LoadRecipe(cl.options.at("--recipe"), cl.overrides);
  absl::StatusOr<std::unique_ptr<HfDirectory>> hf = HfDirectory::Open(hf_dir);
  if (!hf.ok()) return hf.status();
  absl::StatusOr<ModelConfig> model = (*hf)->Model();
  if (!model.ok()) return model.status();
  if (const std::string note = (*hf)->MtpNote(); !note.empty()) std::cout << "note: " << note << "\n";
  std::string yaml = "model:\n";
  const nlohmann::json keys = ModelConfigToJson(*model);
  for (const auto& [key, value] : keys.items()) {
    absl::StrAppend(&yaml, "  ", key, ": ", value.dump(), "\n");
  }
  if (model->vocab_size < 256) absl::StrAppend(&yaml, "data:\n  source: synthetic\n");
  return ParseRecipe(yaml, (*hf)->config_path(), cl.overrides);
}

}  // namespace

int RunImport(const std::vector<std::string>& args) {
  absl::StatusOr<CommandLine> cl =
      ParseCommandLine(args, {"--out", "--recipe"}, /*recipe_required=*/false, {}, "HF directory");
  if (cl.ok() && cl->help) {
    if (ProcessRank() == 0) std::cout << kUsage;
    return 0;
  }
  Job job = StartJob("fathom import");
  if (job.world->size() != 1) {
    Reject(absl::InvalidArgumentError(absl::StrCat("runs as one process (it writes one rank file); ",
                                                   "started on ", job.world->size(), " ranks")));
  }
  if (!cl.ok()) Reject(absl::InvalidArgumentError(absl::StrCat(cl.status().message(), "\n", kUsage)));
  if (cl->recipe.empty()) Reject(absl::InvalidArgumentError(absl::StrCat("no HF_DIR given\n", kUsage)));
  if (!cl->options.count("--out")) Reject(absl::InvalidArgumentError("--out CHECKPOINT_DIR is required"));
  const std::string& hf_dir = cl->recipe;
  const std::string& out = cl->options.at("--out");
  absl::StatusOr<Recipe> recipe = ImportRecipe(*cl, hf_dir);
  if (!recipe.ok()) Reject(recipe.status());
  absl::StatusOr<HfImportStats> stats = ImportHfDirectory(hf_dir, *recipe, out);
  if (!stats.ok()) {
    const int code = absl::IsInternal(stats.status()) ? kExitFailure : kExitInvalidInput;
    ExitAllRanks(code, "fathom import: " + std::string(stats.status().message()));
  }
  std::cout << absl::StrFormat(
      "imported %s to %s (weights only, step 0): %d tensors, %.3f GB read, %.3f GB of f32 values written in "
      "%.2f s (%.2f GB/s read)\n"
      "train from it: fathom train %s --set checkpoint.dir=%s\n",
      hf_dir, stats->path, stats->tensors, static_cast<double>(stats->read_bytes) / 1e9,
      static_cast<double>(stats->written_bytes) / 1e9, stats->seconds,
      stats->seconds > 0 ? static_cast<double>(stats->read_bytes) / stats->seconds / 1e9 : 0.0,
      cl->options.count("--recipe") ? cl->options.at("--recipe") : "RECIPE.yaml", out);
  FinishJob(job);
  return 0;
}

}  // namespace fathom
