// fathom export CHECKPOINT --out HF_DIR [--dtype bf16|fp8|f32] [--shard-size 5GB] [--tokenizer-dir DIR]
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/hf_export.h"
#include "launch/command_line.h"
#include "launch/commands.h"
#include "launch/job_start.h"
#include "parallel/collective_status.h"
#include "parallel/fault.h"

namespace fathom {
namespace {

constexpr char kUsage[] =
    "usage: fathom export CHECKPOINT --out HF_DIR [--dtype bf16|fp8|f32] [--shard-size 5GB]\n"
    "                     [--tokenizer-dir DIR]\n"
    "  Writes a fathom checkpoint as a DeepSeek-V3 HF directory (config.json, generation_config.json,\n"
    "  model-0000i-of-0000N.safetensors, model.safetensors.index.json, tokenizer files) that transformers,\n"
    "  vLLM and SGLang load as they load DeepSeek-V3's release. Under mpirun every rank writes its share\n"
    "  of the shards.\n"
    "  CHECKPOINT              a checkpoint (D/step_00000123), or a checkpoint.dir (its newest checkpoint)\n"
    "  --out HF_DIR            the directory to create (it must not exist, or be empty); it appears only\n"
    "                          when complete (written as HF_DIR.tmp, which must not exist unless a\n"
    "                          crashed export left it)\n"
    "  --dtype bf16|fp8|f32    bf16 (default) like the release's bf16 copy; fp8 like the release (e4m3 "
    "Linear\n"
    "                          weights with 128x128 block scales, the rest bf16); f32 the master weights\n"
    "  --shard-size SIZE       largest shard, e.g. 5GB (default), 500MB, 2GiB, or bytes\n"
    "  --tokenizer-dir DIR     HF tokenizer files to copy (default: the recipe's data.tokenizer_dir; none\n"
    "                          for fathom's byte tokenizer)\n"
    "  --help                  this text\n"
    "Exit codes: 0 exported, 2 bad input (nothing written), 1 an I/O failure (nothing written).\n";

[[noreturn]] void Reject(const absl::Status& status) {
  ExitAllRanks(kExitInvalidInput, "fathom export: " + std::string(status.message()));
}

// The user's input (a checkpoint, a directory, an option) or the machine's (I/O).
int ExitCodeOf(const absl::Status& s) {
  return absl::IsInternal(s) || absl::IsResourceExhausted(s) || absl::IsUnknown(s) ? kExitFailure
                                                                                   : kExitInvalidInput;
}

// "5GB" -> 5e9, "2GiB" -> 2^31, "500MB", "100KB", "123" (bytes): transformers' max_shard_size spellings.
absl::StatusOr<int64_t> ParseSize(const std::string& text) {
  static const std::pair<const char*, double> kUnits[] = {
      {"GIB", 1073741824.0}, {"MIB", 1048576.0}, {"KIB", 1024.0}, {"GB", 1e9},
      {"MB", 1e6},           {"KB", 1e3},        {"B", 1.0}};
  const std::string upper = absl::AsciiStrToUpper(text);
  double scale = 1, number = 0;
  std::string digits = upper;
  for (const auto& [suffix, factor] : kUnits) {
    const std::string s = suffix;
    if (upper.size() > s.size() && upper.compare(upper.size() - s.size(), s.size(), s) == 0) {
      digits = upper.substr(0, upper.size() - s.size());
      scale = factor;
      break;
    }
  }
  if (!absl::SimpleAtod(digits, &number) || !(number * scale >= 1) || number * scale > 1e15) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shard-size '", text, "' is not a size such as 5GB, 500MB, 2GiB or a byte count"));
  }
  return static_cast<int64_t>(std::llround(number * scale));
}

// bos / eos from the tokenizer directory's config.json or generation_config.json when it has them;
// for the byte tokenizer the EOD the data packs after each document.
HfTokenIds TokenIds(const std::string& tokenizer_dir, const Recipe* recipe) {
  HfTokenIds ids;
  if (tokenizer_dir.empty()) {
    if (recipe != nullptr && recipe->data.eod_token_id >= 0) ids.eos = recipe->data.eod_token_id;
    return ids;
  }
  for (const char* name : {"generation_config.json", "config.json"}) {
    std::ifstream in(tokenizer_dir + "/" + name);
    if (!in) continue;
    std::stringstream text;
    text << in.rdbuf();
    const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) continue;
    if (!ids.bos && j.contains("bos_token_id") && j["bos_token_id"].is_number_integer())
      ids.bos = j["bos_token_id"].get<int64_t>();
    if (!ids.eos && j.contains("eos_token_id") && j["eos_token_id"].is_number_integer())
      ids.eos = j["eos_token_id"].get<int64_t>();
  }
  return ids;
}

}  // namespace

int RunExport(const std::vector<std::string>& args) {
  absl::StatusOr<CommandLine> cl = ParseCommandLine(
      args, {"--out", "--dtype", "--shard-size", "--tokenizer-dir"}, /*recipe_required=*/false, {},
      "checkpoint (a step directory or a checkpoint.dir)", /*takes_set=*/false);
  if (cl.ok() && cl->help) {
    if (ProcessRank() == 0) std::cout << kUsage;
    return 0;
  }
  Job job = StartJob("fathom export");
  Communicator& world = *job.world;
  const bool logs = world.rank() == 0;
  if (!cl.ok()) Reject(absl::InvalidArgumentError(absl::StrCat(cl.status().message(), "\n", kUsage)));
  if (cl->recipe.empty()) Reject(absl::InvalidArgumentError(absl::StrCat("no CHECKPOINT given\n", kUsage)));
  if (!cl->options.count("--out")) Reject(absl::InvalidArgumentError("--out HF_DIR is required"));
  HfExportOptions options;
  if (cl->options.count("--dtype")) {
    absl::StatusOr<HfDType> dtype = ParseHfDType(cl->options.at("--dtype"));
    if (!dtype.ok()) Reject(dtype.status());
    options.dtype = *dtype;
  }
  if (cl->options.count("--shard-size")) {
    absl::StatusOr<int64_t> size = ParseSize(cl->options.at("--shard-size"));
    if (!size.ok()) Reject(size.status());
    options.shard_bytes = *size;
  }

  CheckpointConfig where;
  where.resume = cl->recipe;
  std::vector<std::string> skipped;
  absl::StatusOr<std::optional<std::string>> path = ResolveResumeOnAllRanks(where, world, &skipped);
  if (!path.ok()) {
    Reject(absl::NotFoundError(absl::StrCat(cl->recipe,
                                            " is not a checkpoint (a directory with index.json) "
                                            "nor a directory of checkpoints")));
  }
  for (const std::string& w : skipped) {
    if (logs) std::cout << "warning: " << w << "\n";  // the newest complete checkpoint is exported
  }
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(**path);
  if (absl::Status s = AgreeOnStatus(world, reader.status()); !s.ok()) Reject(s);

  // The run's recipe says which tokenizer its token ids come from.
  const CheckpointMetadata& meta = (*reader)->metadata();
  absl::StatusOr<Recipe> recipe =
      ParseRecipe(meta.recipe, absl::StrCat(**path, " (the recipe it was saved with)"), {}, RecipeUse::kPlan);
  if (!recipe.ok() && logs) {
    std::cout << "note: the checkpoint's recipe cannot be read (" << recipe.status().message()
              << "); token ids in config.json stay unknown\n";
  }
  options.tokenizer_dir = cl->options.count("--tokenizer-dir") ? cl->options.at("--tokenizer-dir")
                          : recipe.ok()                        ? recipe->data.tokenizer_dir
                                                               : "";
  options.tokens = TokenIds(options.tokenizer_dir, recipe.ok() ? &*recipe : nullptr);

  absl::StatusOr<HfExportStats> stats = ExportHfDirectory(**reader, cl->options.at("--out"), options, world);
  if (!stats.ok())
    ExitAllRanks(ExitCodeOf(stats.status()), "fathom export: " + std::string(stats.status().message()));
  if (logs) {
    std::cout << absl::StrFormat(
        "exported %s (step %d) to %s: %d shards, %d tensors, %.3f GB %s in %.2f s (%.2f GB/s written, %.2f "
        "GB "
        "of f32 values read), %d rank(s), slowest writer %.2f s\n",
        **path, meta.step, stats->path, stats->shards, stats->tensors,
        static_cast<double>(stats->bytes) / 1e9, HfDTypeName(options.dtype), stats->seconds,
        stats->gb_per_s(), static_cast<double>(stats->read_bytes) / 1e9, world.size(),
        stats->slowest_write_seconds);
    if (options.tokenizer_dir.empty()) {
      std::cout << "no tokenizer files: the run used fathom's byte tokenizer (token id = byte value"
                << (options.tokens.eos ? absl::StrCat(", EOD ", *options.tokens.eos) : std::string())
                << "); set "
                << "data.tokenizer_dir (or --tokenizer-dir) to ship an HF tokenizer\n";
    } else {
      std::cout << "tokenizer files from " << options.tokenizer_dir << ": "
                << absl::StrJoin(stats->tokenizer_files, ", ") << "\n";
    }
    std::cout << std::flush;
  }
  reader->reset();
  FinishJob(job);
  return 0;
}

}  // namespace fathom
