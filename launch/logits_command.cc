// fathom logits SOURCE --tokens TOKENS.safetensors --out LOGITS.safetensors [--dtype f32|f64]
//
// fathom's own forward on the CPU over a checkpoint or an HF directory: what tests/checkpoint/hf_check.py
// compares with transformers' logits on the same weights.
#include <sys/stat.h>

#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/hf_config.h"
#include "checkpoint/hf_directory.h"
#include "checkpoint/hf_import.h"
#include "checkpoint/param_slices.h"
#include "checkpoint/safetensors.h"
#include "framework/file_io.h"
#include "launch/command_line.h"
#include "launch/commands.h"
#include "layers/model.h"

namespace fathom {
namespace {

constexpr char kUsage[] =
    "usage: fathom logits SOURCE --tokens TOKENS.safetensors --out LOGITS.safetensors [--dtype f32|f64]\n"
    "  Runs fathom's forward on the CPU (one process) over the weights of SOURCE and writes the logits.\n"
    "  SOURCE                   an HF directory (config.json and safetensors), a fathom checkpoint, or a\n"
    "                           checkpoint.dir (its newest checkpoint)\n"
    "  --tokens FILE            safetensors with \"input_ids\": I64 or I32 (B, T), ids < vocab_size,\n"
    "                           T <= max_position_embeddings\n"
    "  --out FILE               safetensors with \"logits\" (B, T, V) in --dtype (written atomically)\n"
    "  --dtype f32|f64          the forward's dtype (default f32)\n"
    "  --help                   this text\n"
    "Exit codes: 0 written, 2 bad input, 1 an I/O failure.\n";

int Fail(int code, const absl::Status& s) {
  std::cerr << "fathom logits: " << s.message() << "\n";
  return code;
}

bool IsHfDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(absl::StrCat(path, "/", kHfConfigFileName).c_str(), &st) == 0;
}

// The model and, loaded into a fresh Model, its weights from an HF directory or a checkpoint.
absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& source, DType dtype) {
  if (IsHfDirectory(source)) {
    absl::StatusOr<std::unique_ptr<HfDirectory>> hf = HfDirectory::Open(source);
    if (!hf.ok()) return hf.status();
    absl::StatusOr<ModelConfig> config = (*hf)->Model();
    if (!config.ok()) return config.status();
    auto model = std::make_unique<Model>(*config, LossConfig{});
    model->Finalize(dtype, /*seed=*/1);
    if (absl::Status s = LoadHfDirectoryInto(source, *config, model->params()); !s.ok()) return s;
    return model;
  }
  CheckpointConfig where;
  where.resume = source;
  absl::StatusOr<std::optional<std::string>> path = ResolveResume(where);
  if (!path.ok()) {
    return absl::NotFoundError(
        absl::StrCat(source, " is neither an HF directory (config.json) nor a checkpoint"));
  }
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(**path);
  if (!reader.ok()) return reader.status();
  absl::StatusOr<ModelConfig> config =
      ModelConfigFromHfConfig((*reader)->metadata().model, absl::StrCat(**path, " (metadata.model)"), 0);
  if (!config.ok()) return config.status();
  auto model = std::make_unique<Model>(*config, LossConfig{});
  model->Finalize(dtype, /*seed=*/1);
  ParamTable& table = model->params();
  if (absl::Status s = (*reader)->ReadPieces(kKindValue, TablePieces(table, 0, table.numel()), table.values(),
                                             /*begin=*/0);
      !s.ok()) {
    return s;
  }
  return model;
}

}  // namespace

int RunLogits(const std::vector<std::string>& args) {
  absl::StatusOr<CommandLine> cl =
      ParseCommandLine(args, {"--tokens", "--out", "--dtype"}, /*recipe_required=*/false, {},
                       "SOURCE (a checkpoint or an HF directory)", /*takes_set=*/false);
  if (cl.ok() && cl->help) {
    std::cout << kUsage;
    return 0;
  }
  if (!cl.ok()) return Fail(2, absl::InvalidArgumentError(absl::StrCat(cl.status().message(), "\n", kUsage)));
  if (cl->recipe.empty())
    return Fail(2, absl::InvalidArgumentError(absl::StrCat("no SOURCE given\n", kUsage)));
  if (!cl->options.count("--tokens") || !cl->options.count("--out")) {
    return Fail(2, absl::InvalidArgumentError("--tokens and --out are required"));
  }
  if (absl::Status s =
          CheckNotAnInput(cl->options.at("--out"), {cl->recipe, cl->options.at("--tokens")}, "--out");
      !s.ok()) {
    return Fail(2, s);
  }
  const std::string dtype_name = cl->options.count("--dtype") ? cl->options.at("--dtype") : "f32";
  if (dtype_name != "f32" && dtype_name != "f64") {
    return Fail(
        2, absl::InvalidArgumentError(absl::StrCat("--dtype must be f32 or f64, got '", dtype_name, "'")));
  }
  const DType dtype = dtype_name == "f32" ? DType::kF32 : DType::kF64;

  absl::StatusOr<SafetensorsFile> tokens = SafetensorsFile::Open(cl->options.at("--tokens"));
  if (!tokens.ok()) return Fail(2, tokens.status());
  absl::StatusOr<Tensor> ids = tokens->Get("input_ids");
  if (!ids.ok() || ids->ndim() != 2 || (ids->dtype() != DType::kI64 && ids->dtype() != DType::kI32)) {
    return Fail(2, absl::InvalidArgumentError(absl::StrCat(cl->options.at("--tokens"),
                                                           ": expected \"input_ids\" I64 or I32 (B, T)")));
  }
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(cl->recipe, dtype);
  if (!model.ok()) return Fail(absl::IsInternal(model.status()) ? 1 : 2, model.status());
  const ModelConfig& config = (*model)->config();
  const int64_t batch = ids->dim(0), seq = ids->dim(1);
  if (seq < 1 || seq > config.max_position_embeddings) {
    return Fail(
        2, absl::InvalidArgumentError(absl::StrCat("input_ids has ", seq, " positions; the model takes 1 to ",
                                                   config.max_position_embeddings)));
  }
  // Labels are the next tokens (the last one ignored): the forward computes its losses, which are not
  // written; only the logits are.
  MicroBatch mb{ids->To(DType::kI32), Tensor::Empty({batch, seq}, DType::kI32)};
  const int32_t* id = mb.input_ids.data<int32_t>();
  int32_t* label = mb.labels.data<int32_t>();
  for (int64_t i = 0; i < batch * seq; ++i) {
    if (id[i] < 0 || id[i] >= config.vocab_size) {
      return Fail(2,
                  absl::InvalidArgumentError(absl::StrCat("input_ids holds ", id[i], " at element ", i,
                                                          "; ids must be in [0, ", config.vocab_size, ")")));
    }
    label[i] = (i % seq == seq - 1) ? -100 : id[i + 1];
  }
  const LossNormalizers norm = (*model)->Normalizers({mb}, 1);
  (*model)->head().set_keep_logits(true);
  (*model)->Forward(0, mb, norm);
  const Tensor logits = (*model)->head().logits(0).Reshape({batch, seq, config.vocab_size});
  if (absl::Status s = WriteSafetensors(cl->options.at("--out"), {{"logits", logits}},
                                        {{"source", cl->recipe}, {"dtype", dtype_name}});
      !s.ok()) {
    return Fail(absl::IsInternal(s) ? 1 : 2, s);
  }
  std::cout << absl::StrFormat("logits (%d, %d, %d) %s of %s written to %s\n", batch, seq, config.vocab_size,
                               dtype_name, cl->recipe, cl->options.at("--out"));
  return 0;
}

}  // namespace fathom
