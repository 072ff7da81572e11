#include "checkpoint/hf_export.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/fp8_blocks.h"
#include "checkpoint/hf_directory.h"
#include "framework/file_io.h"
#include "framework/numeric.h"
#include "parallel/collective_status.h"

namespace fathom {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Elements per read from the checkpoint (64 MiB of f32): few enough that peak memory stays at a few
// blocks, many enough that the checksum chunks a read rounds out to (4 MiB at each end) cost little.
constexpr int64_t kBlockElements = int64_t{16} << 20;
// A rank writing a large share of a big model may run for long before the next collective.
constexpr double kWriteTimeoutSeconds = 24 * 3600.0;

constexpr const char* kTokenizerFileNames[] = {"tokenizer.json",      "tokenizer_config.json",
                                               "tokenizer.model",     "special_tokens_map.json",
                                               "vocab.json",          "merges.txt",
                                               "added_tokens.json",   "vocab.txt",
                                               "chat_template.jinja", "chat_template.json"};

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

int64_t Numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShardName(int64_t i, int64_t n) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", i, n);
}

// The model the checkpoint was saved from, from the HF-named copy of its config in index.json.
absl::StatusOr<ModelConfig> CheckpointModel(const CheckpointReader& reader) {
  const std::string where = absl::StrCat(reader.dir(), "/", kIndexFileName, " (metadata.model)");
  return ModelConfigFromHfConfig(reader.metadata().model, where, /*mtp_layers_found=*/0);
}

// Every tensor the export reads is in the checkpoint with its value and its model's shape.
absl::Status CheckCheckpointHolds(const CheckpointReader& reader, const std::vector<HfTensorSpec>& tensors) {
  std::vector<std::string> problems;
  for (const HfTensorSpec& t : tensors) {
    if (t.mtp_copy) continue;
    const TensorRecord* r = reader.Find(t.source);
    if (r == nullptr) {
      problems.push_back(absl::StrCat("'", t.source, "' is missing"));
    } else if (r->shape != t.shape) {
      problems.push_back(absl::StrCat("'", t.source, "' has shape ", ShapeString(r->shape),
                                      ", the model's is ", ShapeString(t.shape)));
    } else if (!r->kinds.count(kKindValue)) {
      problems.push_back(absl::StrCat("'", t.source, "' has no value"));
    }
  }
  if (problems.empty()) return absl::OkStatus();
  const size_t shown = std::min<size_t>(problems.size(), 20);
  return absl::InvalidArgumentError(absl::StrCat(
      "checkpoint ", reader.dir(), " does not hold its own model (", problems.size(), " problem(s)): ",
      absl::StrJoin(problems.begin(), problems.begin() + static_cast<std::ptrdiff_t>(shown), "; "),
      shown < problems.size() ? "; ..." : ""));
}

absl::Status CheckFinite(const std::string& name, int64_t begin, const float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(v[i])) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' holds ", v[i], " at element ",
                                                     begin + i, "; an export needs finite weights"));
    }
  }
  return absl::OkStatus();
}

// Writes one shard; returns its data bytes.
absl::StatusOr<int64_t> WriteShard(CheckpointReader& reader, const std::vector<HfTensorSpec>& tensors,
                                   const HfShard& shard, const std::string& path) {
  std::vector<SafetensorsDecl> decls;
  for (const HfShardEntry& e : shard.entries) decls.push_back(e.decl);
  SafetensorsWriter writer;
  if (absl::Status s = writer.Open(path, decls, {{"format", "pt"}}); !s.ok()) return s;
  std::vector<float> scales;  // the last FP8 weight's, appended as the next entry
  std::vector<uint16_t> bf16;
  std::vector<uint8_t> codes;
  for (const HfShardEntry& e : shard.entries) {
    const HfTensorSpec& t = tensors[static_cast<size_t>(e.tensor)];
    if (e.scale) {
      if (absl::Status s = writer.Append(scales.data(), scales.size() * sizeof(float)); !s.ok()) return s;
      continue;
    }
    const int64_t numel = Numel(t.shape);
    const bool fp8 = e.decl.dtype == "F8_E4M3";
    // FP8: bands of whole 128-row blocks, so each band's scales are final.
    const int64_t cols = t.shape.size() == 2 ? t.shape[1] : numel;
    const int64_t step =
        fp8 ? std::max<int64_t>(1, kBlockElements / (kFp8BlockSize * cols)) * kFp8BlockSize * cols
            : kBlockElements;
    if (fp8) {
      const Shape grid = Fp8ScaleShape(t.shape[0], t.shape[1]);
      scales.assign(static_cast<size_t>(grid[0] * grid[1]), 0.0f);
    }
    for (int64_t b = 0; b < numel; b += step) {
      const int64_t n = std::min(step, numel - b);
      Tensor values = Tensor::Empty({n}, DType::kF32);
      if (absl::Status s = reader.Read(t.source, kKindValue, b, b + n, values); !s.ok()) return s;
      const float* v = values.data<float>();
      if (absl::Status s = CheckFinite(t.source, b, v, n); !s.ok()) return s;
      absl::Status appended;
      if (e.decl.dtype == "F32") {
        appended = writer.Append(v, static_cast<size_t>(n) * sizeof(float));
      } else if (e.decl.dtype == "BF16") {
        bf16.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) bf16[static_cast<size_t>(i)] = FloatToBf16(v[i]).bits;
        appended = writer.Append(bf16.data(), bf16.size() * sizeof(uint16_t));
      } else {
        codes.resize(static_cast<size_t>(n));
        const int64_t band_rows = n / cols;
        const int64_t first_block_row = (b / cols) / kFp8BlockSize;
        const int64_t grid_cols = Fp8ScaleShape(1, cols)[1];
        QuantizeE4M3Blocks(v, band_rows, cols, codes.data(), scales.data() + first_block_row * grid_cols);
        appended = writer.Append(codes.data(), codes.size());
      }
      if (!appended.ok()) return appended;
    }
  }
  if (absl::Status s = writer.Commit(); !s.ok()) return s;
  return static_cast<int64_t>(writer.data_bytes());
}

// Rank 0's part after the shards: index, configs, tokenizer files, then HF_DIR by rename.
absl::Status FinishOnRankZero(const std::vector<HfShard>& shards, const ModelConfig& model,
                              const HfExportOptions& options, const std::string& tmp,
                              const std::string& out_dir, HfExportStats& stats) {
  json weight_map = json::object();
  int64_t total = 0;
  for (const HfShard& shard : shards) {
    for (const HfShardEntry& e : shard.entries) weight_map[e.decl.name] = shard.file;
    total += shard.bytes;
  }
  const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  const json generation = {{"_from_model_config", true},
                           {"bos_token_id", options.tokens.bos ? json(*options.tokens.bos) : json(nullptr)},
                           {"eos_token_id", options.tokens.eos ? json(*options.tokens.eos) : json(nullptr)}};
  const std::vector<std::pair<std::string, std::string>> files = {
      {kHfIndexFileName, index.dump(2) + "\n"},
      {kHfConfigFileName, HfConfigJson(model, options.dtype, options.tokens).dump(2) + "\n"},
      {"generation_config.json", generation.dump(2) + "\n"}};
  for (const auto& [name, text] : files) {
    if (absl::Status s = WriteFileAtomically(absl::StrCat(tmp, "/", name), text); !s.ok()) return s;
  }
  if (!options.tokenizer_dir.empty()) {
    absl::StatusOr<std::vector<std::string>> names = TokenizerFiles(options.tokenizer_dir);
    if (!names.ok()) return names.status();
    for (const std::string& name : *names) {
      const std::string from = absl::StrCat(options.tokenizer_dir, "/", name);
      std::ifstream in(from, std::ios::binary);
      std::ostringstream bytes;
      bytes << in.rdbuf();
      if (!in.good() && !in.eof()) return absl::InternalError(absl::StrCat("cannot read ", from));
      if (absl::Status s = WriteFileAtomically(absl::StrCat(tmp, "/", name), bytes.str()); !s.ok()) return s;
      stats.tokenizer_files.push_back(name);
    }
  }
  if (absl::Status s = FsyncDirectory(tmp); !s.ok()) return s;
  std::error_code ec;
  if (fs::is_directory(fs::symlink_status(out_dir, ec))) fs::remove(out_dir, ec);  // empty, checked before
  if (std::rename(tmp.c_str(), out_dir.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", out_dir, ": ", std::strerror(errno)));
  }
  if (absl::Status s = FsyncDirectory(DirectoryOf(out_dir)); !s.ok()) return s;
  // Complete: the marker goes (a crash just before leaves a complete directory with one hidden file more).
  return DropOwnedMarker(out_dir);
}

// HF_DIR is new or an empty directory, and HF_DIR.tmp is fresh, empty but for fathom's marker. A leftover
// HF_DIR.tmp is removed only when a fathom export made it (the marker): the name is common enough to be a
// user's own.
absl::Status PrepareOnRankZero(const std::string& out_dir, const std::string& tmp) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(out_dir, ec);
  if (fs::exists(st)) {
    if (fs::is_symlink(st)) {  // the final rename would replace the link, not fill what it points to
      const fs::path target = fs::read_symlink(out_dir, ec);
      return absl::InvalidArgumentError(absl::StrCat(
          "--out ", out_dir, " is a symbolic link (to ", target.string(),
          "); the export is renamed onto --out when complete, which would replace the link: give the "
          "directory itself as --out"));
    }
    if (!fs::is_directory(st)) {
      return absl::InvalidArgumentError(absl::StrCat("--out ", out_dir, " exists and is not a directory"));
    }
    if (!fs::is_empty(out_dir, ec)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--out ", out_dir, " exists and is not empty; export into a new directory (or remove it first)"));
    }
  }
  if (absl::Status s = RemoveOwnedLeftover(tmp, absl::StrCat("for the export's temporary directory (it is "
                                                             "renamed to --out ",
                                                             out_dir, " when complete)"));
      !s.ok()) {
    return s;
  }
  const std::string parent = DirectoryOf(out_dir);
  fs::create_directories(parent, ec);
  if (absl::Status s = CreateOwnedDirectory(tmp); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(s.message(), " (beside --out ", out_dir, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<HfShard> PlanHfShards(const std::vector<HfTensorSpec>& tensors, HfDType dtype,
                                  int64_t shard_bytes) {
  FATHOM_CHECK(shard_bytes > 0, "[PlanHfShards] shard size ", shard_bytes);
  std::vector<HfShard> shards;
  HfShard current;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const HfTensorSpec& t = tensors[i];
    std::vector<HfShardEntry> entries;
    if (dtype == HfDType::kFP8 && t.fp8) {
      const Shape grid = Fp8ScaleShape(t.shape[0], t.shape[1]);
      entries.push_back({static_cast<int>(i), false, {t.name, "F8_E4M3", t.shape}});
      entries.push_back({static_cast<int>(i), true, {Fp8ScaleName(t.name), "F32", grid}});
    } else {
      const char* type = t.f32 || dtype == HfDType::kF32 ? "F32" : "BF16";
      entries.push_back({static_cast<int>(i), false, {t.name, type, t.shape}});
    }
    int64_t bytes = 0;
    for (const HfShardEntry& e : entries) {
      bytes += Numel(e.decl.shape) * static_cast<int64_t>(SafetensorsDTypeSize(e.decl.dtype));
    }
    if (!current.entries.empty() && current.bytes + bytes > shard_bytes) {
      shards.push_back(std::move(current));
      current = HfShard{};
    }
    for (HfShardEntry& e : entries) current.entries.push_back(std::move(e));
    current.bytes += bytes;
  }
  if (!current.entries.empty()) shards.push_back(std::move(current));
  for (size_t i = 0; i < shards.size(); ++i) {
    shards[i].file = ShardName(static_cast<int64_t>(i) + 1, static_cast<int64_t>(shards.size()));
  }
  return shards;
}

std::pair<int64_t, int64_t> HfShardsOfRank(int64_t shards, int rank, int world) {
  return {shards * rank / world, shards * (rank + 1) / world};
}

absl::StatusOr<std::vector<std::string>> TokenizerFiles(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("tokenizer directory ", dir, " does not exist (or is not a directory)"));
  }
  std::vector<std::string> found;
  bool vocabulary = false;
  for (const char* name : kTokenizerFileNames) {
    if (!fs::is_regular_file(fs::path(dir) / name, ec)) continue;
    found.push_back(name);
    const std::string n = name;
    vocabulary |= n == "tokenizer.json" || n == "tokenizer.model" || n == "vocab.json";
  }
  if (!vocabulary) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer directory ", dir, " holds none of tokenizer.json, tokenizer.model, vocab.json"));
  }
  return found;
}

absl::StatusOr<HfExportStats> ExportHfDirectory(CheckpointReader& reader, const std::string& out_dir_arg,
                                                const HfExportOptions& options, Communicator& comm) {
  const auto start = std::chrono::steady_clock::now();
  std::string out_dir = out_dir_arg;
  while (out_dir.size() > 1 && out_dir.back() == '/') out_dir.pop_back();
  const std::string tmp = out_dir + ".tmp";

  // Every rank checks what it will read; all agree before anything is created.
  absl::StatusOr<ModelConfig> model = CheckpointModel(reader);
  std::vector<HfTensorSpec> tensors;
  absl::Status ok = model.status();
  if (ok.ok()) {
    tensors = HfModelTensors(*model);
    ok = CheckCheckpointHolds(reader, tensors);
  }
  if (ok.ok() && comm.rank() == 0 && !options.tokenizer_dir.empty())
    ok = TokenizerFiles(options.tokenizer_dir).status();
  if (absl::Status s = AgreeOnStatus(comm, ok); !s.ok()) return s;
  if (absl::Status s =
          AgreeOnStatus(comm, comm.rank() == 0 ? PrepareOnRankZero(out_dir, tmp) : absl::OkStatus());
      !s.ok()) {
    return s;
  }
  std::error_code ec;
  absl::Status visible = fs::is_directory(tmp, ec)
                             ? absl::OkStatus()
                             : absl::InvalidArgumentError(absl::StrCat(
                                   tmp,
                                   " made by rank 0 is not visible here: --out must be on a file system "
                                   "every rank sees"));
  if (absl::Status s = AgreeOnStatus(comm, visible); !s.ok()) {
    if (comm.rank() == 0) RemoveOwnedTree(tmp).IgnoreError();
    return s;
  }

  const std::vector<HfShard> shards = PlanHfShards(tensors, options.dtype, options.shard_bytes);
  const auto [first, end] = HfShardsOfRank(static_cast<int64_t>(shards.size()), comm.rank(), comm.size());
  HfExportStats stats;
  const auto write_start = std::chrono::steady_clock::now();
  absl::Status written;
  for (int64_t i = first; i < end && written.ok(); ++i) {
    const HfShard& shard = shards[static_cast<size_t>(i)];
    absl::StatusOr<int64_t> bytes = WriteShard(reader, tensors, shard, absl::StrCat(tmp, "/", shard.file));
    if (bytes.ok()) stats.rank_bytes += *bytes;
    written = bytes.status();
  }
  const double write_seconds = Seconds(write_start);
  absl::Status all_written;
  {
    // The slowest writer is awaited, however long it takes.
    ScopedTimeout deadline(comm, kWriteTimeoutSeconds, "fathom export's shard-write deadline (24 h)");
    all_written = AgreeOnStatus(comm, written);
  }
  // Per-rank numbers for rank 0's summary: "bytes seconds".
  const std::vector<std::string> reports =
      GatherStrings(comm, absl::StrCat(stats.rank_bytes, " ", write_seconds), /*root=*/0);
  absl::Status finished = all_written;
  if (comm.rank() == 0) {
    if (finished.ok()) finished = FinishOnRankZero(shards, *model, options, tmp, out_dir, stats);
    if (!finished.ok() && fs::exists(fs::symlink_status(tmp, ec))) RemoveOwnedTree(tmp).IgnoreError();
  }
  if (absl::Status s = AgreeOnStatus(comm, finished); !s.ok()) return s;

  stats.path = out_dir;
  stats.shards = static_cast<int64_t>(shards.size());
  for (const HfShard& shard : shards) {
    stats.tensors += static_cast<int64_t>(shard.entries.size());
    stats.bytes += shard.bytes;
  }
  for (const HfTensorSpec& t : tensors) stats.read_bytes += Numel(t.shape) * 4;
  for (const std::string& report : reports) {
    std::vector<std::string> parts = absl::StrSplit(report, ' ');
    if (parts.size() == 2)
      stats.slowest_write_seconds = std::max(stats.slowest_write_seconds, std::stod(parts[1]));
  }
  stats.seconds = Seconds(start);
  return stats;
}

}  // namespace fathom
