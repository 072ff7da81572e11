#include "checkpoint/hf_import.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/fp8_blocks.h"
#include "checkpoint/hf_config.h"
#include "checkpoint/hf_directory.h"
#include "checkpoint/hf_layout.h"
#include "checkpoint/model_config_json.h"
#include "checkpoint/param_slices.h"
#include "checkpoint/rank_file_writer.h"
#include "framework/file_io.h"
#include "framework/numeric.h"
#include "framework/ops.h"

namespace fathom {
namespace {

namespace fs = std::filesystem;

// Elements per read while filling a table: 64 MiB of f32 values.
constexpr int64_t kReadBlockElements = int64_t{16} << 20;

// The first 20 problems and their count, as one message.
std::string ListProblems(const std::vector<std::string>& problems) {
  const size_t shown = std::min<size_t>(problems.size(), 20);
  std::string text =
      absl::StrJoin(problems.begin(), problems.begin() + static_cast<std::ptrdiff_t>(shown), "; ");
  if (shown < problems.size()) absl::StrAppend(&text, "; and ", problems.size() - shown, " more");
  return text;
}

// The directory's config.json describes `model` (every differing key named otherwise).
absl::Status CheckSameModel(const HfDirectory& dir, const ModelConfig& model) {
  absl::StatusOr<ModelConfig> hf = dir.Model();
  if (!hf.ok()) return hf.status();
  const std::vector<std::string> differ = ModelConfigMismatches(*hf, model);
  if (differ.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(dir.config_path(),
                                                 " describes another model than the recipe (", differ.size(),
                                                 " key(s) differ): ", absl::StrJoin(differ, "; ")));
}

// Every (name, shape) readable from `dir`; one error listing the problems otherwise.
absl::Status CheckTensors(const HfDirectory& dir, const std::vector<std::pair<std::string, Shape>>& wanted) {
  std::vector<std::string> problems;
  for (const auto& [name, shape] : wanted) {
    for (std::string& p : dir.CheckTensor(name, shape)) problems.push_back(std::move(p));
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("HF directory ", dir.dir(), ": ", problems.size(),
                                                 " tensor problem(s): ", ListProblems(problems)));
}

// Bytes of the directory's files a read of the whole tensor touches (its block scales included).
int64_t StoredBytes(const HfDirectory& dir, const std::string& name) {
  const HfTensorLocation* t = dir.Find(name);
  int64_t numel = 1;
  for (int64_t d : t->shape) numel *= d;
  int64_t bytes = numel * static_cast<int64_t>(SafetensorsDTypeSize(t->dtype));
  if (t->dtype == "F8_E4M3") {
    const Shape grid = Fp8ScaleShape(t->shape[0], t->shape[1]);
    bytes += grid[0] * grid[1] * 4;
  }
  return bytes;
}

// The MTP modules' copies of the embedding and the head that `dir` holds must equal model.embed_tokens /
// lm_head, which fathom shares with them (as DeepSeek-V3 does): a directory whose copies differ (trained
// apart) cannot be imported without losing them, so it is refused. Values are compared as read (f32);
// where the two are stored in different dtypes, both are first rounded to bf16 when either is bf16 (the
// coarser one decides what "equal" can mean). Copies the directory lacks are not needed.
absl::Status CheckMtpCopies(const HfDirectory& dir, const ModelConfig& model) {
  std::vector<std::string> problems;
  for (const HfTensorSpec& t : HfModelTensors(model)) {
    if (!t.mtp_copy) continue;
    const HfTensorLocation* copy = dir.Find(t.name);
    const HfTensorLocation* source = dir.Find(t.source);
    if (copy == nullptr || source == nullptr) continue;
    if (std::vector<std::string> p = dir.CheckTensor(t.name, t.shape); !p.empty()) {
      for (std::string& one : p) problems.push_back(std::move(one));
      continue;
    }
    const bool bf16 = copy->dtype != source->dtype && (copy->dtype == "BF16" || source->dtype == "BF16");
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    double largest = 0;
    int64_t differing = 0, first = -1;
    for (int64_t b = 0; b < numel; b += kReadBlockElements) {
      const int64_t e = std::min(numel, b + kReadBlockElements);
      Tensor a = Tensor::Empty({e - b}, DType::kF32), c = Tensor::Empty({e - b}, DType::kF32);
      if (absl::Status s = dir.Read(t.source, b, e, a); !s.ok()) return s;
      if (absl::Status s = dir.Read(t.name, b, e, c); !s.ok()) return s;
      for (int64_t i = 0; i < e - b; ++i) {
        float x = a.data<float>()[i], y = c.data<float>()[i];
        if (bf16) x = Bf16ToFloat(FloatToBf16(x)), y = Bf16ToFloat(FloatToBf16(y));
        if (FloatBits(x) == FloatBits(y) || x == y) continue;
        if (first < 0) first = b + i;
        ++differing;
        largest = std::max(largest, std::fabs(static_cast<double>(x) - static_cast<double>(y)));
      }
    }
    if (differing > 0) {
      problems.push_back(absl::StrCat(t.name, " differs from ", t.source, " in ", differing, " of ", numel,
                                      " values (the first at element ", first, ", the largest difference ",
                                      largest, ")"));
    }
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("HF directory ", dir.dir(), ": ", ListProblems(problems),
                   "; fathom shares the MTP modules' embedding and head with model.embed_tokens.weight and "
                   "lm_head.weight (as DeepSeek-V3 does) and cannot keep copies that differ"));
}

}  // namespace

absl::Status CheckHfMtpCopies(const std::string& dir, const ModelConfig& model) {
  absl::StatusOr<std::unique_ptr<HfDirectory>> hf = HfDirectory::Open(dir);
  if (!hf.ok()) return hf.status();
  if (absl::Status s = CheckSameModel(**hf, model); !s.ok()) return s;
  return CheckMtpCopies(**hf, model);
}

bool IsWeightsOnlyCheckpoint(const CheckpointMetadata& metadata) {
  return metadata.extra.is_object() && metadata.extra.value(kWeightsOnlyKey, false) == true;
}

absl::Status LoadHfDirectoryRange(const std::string& dir, const ModelConfig& model, const ParamTable& table,
                                  int64_t begin, int64_t end, const Tensor& dst) {
  FATHOM_CHECK(table.finalized() && (table.dtype() == DType::kF32 || table.dtype() == DType::kF64),
               "[LoadHfDirectoryRange] needs a finalized f32 or f64 table");
  FATHOM_CHECK(dst.dtype() == table.dtype() && dst.numel() == end - begin, "[LoadHfDirectoryRange] dst ",
               dst.shape_str(), " ", DTypeName(dst.dtype()), " for table elements [", begin, ", ", end, ")");
  absl::StatusOr<std::unique_ptr<HfDirectory>> hf = HfDirectory::Open(dir);
  if (!hf.ok()) return hf.status();
  if (absl::Status s = CheckSameModel(**hf, model); !s.ok()) return s;
  // The pieces of HF tensors the range holds (an expert of a stacked spec is a tensor of its own, the
  // expert bias included; a ZeRO shard may cut a tensor anywhere: Read takes any flat range).
  const std::vector<TensorPiece> pieces = TablePieces(table, begin, end);
  std::vector<std::pair<std::string, Shape>> wanted;
  for (const TensorPiece& p : pieces) wanted.emplace_back(p.name, p.shape);
  if (absl::Status s = CheckTensors(**hf, wanted); !s.ok()) return s;
  // A device destination is filled through a host copy of it (padding elements keep their values).
  Tensor host = dst;
  if (dst.device() != Device::kCPU) {
    host = Tensor::Empty(dst.shape(), dst.dtype());
    ops::Copy(host, dst);
  }
  const Tensor flat = host.Reshape({end - begin});
  for (const TensorPiece& p : pieces) {
    for (int64_t b = p.begin; b < p.end; b += kReadBlockElements) {
      const int64_t e = std::min(p.end, b + kReadBlockElements);
      const int64_t at = p.table_offset - begin + (b - p.begin);
      if (absl::Status s = (*hf)->Read(p.name, b, e, flat.Rows(at, at + (e - b))); !s.ok()) return s;
    }
  }
  if (dst.device() != Device::kCPU) ops::Copy(dst, host);
  return absl::OkStatus();
}

absl::Status LoadHfDirectoryInto(const std::string& dir, const ModelConfig& model, ParamTable& table) {
  return LoadHfDirectoryRange(dir, model, table, 0, table.numel(), table.values());
}

absl::StatusOr<HfImportStats> ImportHfDirectory(const std::string& hf_dir, const Recipe& recipe,
                                                const std::string& checkpoint_dir) {
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<HfDirectory>> opened = HfDirectory::Open(hf_dir);
  if (!opened.ok()) return opened.status();
  const HfDirectory& hf = **opened;
  if (absl::Status s = CheckSameModel(hf, recipe.model); !s.ok()) return s;
  std::vector<std::pair<std::string, Shape>> wanted;
  for (const HfTensorSpec& t : HfModelTensors(recipe.model)) {
    if (!t.mtp_copy) wanted.emplace_back(t.name, t.shape);
  }
  if (absl::Status s = CheckTensors(hf, wanted); !s.ok()) return s;
  if (absl::Status s = CheckMtpCopies(hf, recipe.model); !s.ok()) return s;

  absl::StatusOr<std::vector<CheckpointEntry>> existing = ListCheckpoints(checkpoint_dir);
  if (!existing.ok()) return existing.status();
  if (!existing->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint directory ", checkpoint_dir, " already holds ", existing->size(),
                     " checkpoint(s) (the newest is step ", existing->back().step,
                     "); a resume would pick the newest, not the import: import into a new directory"));
  }
  std::error_code ec;
  const bool created = !fs::exists(checkpoint_dir, ec);
  fs::create_directories(checkpoint_dir, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create checkpoint directory ", checkpoint_dir, ": ", ec.message()));
  }
  const std::string tmp = CheckpointTmpPath(checkpoint_dir, 0);
  const std::string final_path = CheckpointPath(checkpoint_dir, 0);
  // A failed import leaves the output as it found it: no temporary, and no directory it created.
  auto abandon = [&](absl::Status s) {
    std::error_code ignored;
    // The error that stopped the import is the one to report.
    if (fs::exists(fs::symlink_status(tmp, ignored))) RemoveOwnedTree(tmp).IgnoreError();
    if (created) fs::remove(checkpoint_dir, ignored);  // only if still empty
    return s;
  };
  // step_00000000 (not a checkpoint: none was listed) would be replaced by the rename: it is not ours.
  if (fs::exists(fs::symlink_status(final_path, ec))) {
    return abandon(absl::InvalidArgumentError(
        absl::StrCat(final_path, " exists and is not a complete checkpoint (no ", kIndexFileName,
                     "); the import would replace it: move it elsewhere, or import into a new directory")));
  }
  // The leftover of a crashed import or save, if fathom made it; anything else of that name is refused.
  if (absl::Status s = RemoveOwnedLeftover(tmp, "for the import's temporary directory"); !s.ok()) {
    return abandon(s);
  }
  if (absl::Status s = CreateOwnedDirectory(tmp); !s.ok()) return abandon(s);

  HfImportStats stats;
  nlohmann::json source_dtypes = nlohmann::json::object();
  std::vector<StreamedPiece> pieces;
  for (const auto& [name, shape] : wanted) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    pieces.push_back({name, shape, 0, numel, [&hf, name = name](int64_t b, const Tensor& out) {
                        return hf.Read(name, b, b + out.numel(), out);
                      }});
    const std::string& dtype = hf.Find(name)->dtype;
    source_dtypes[dtype] = source_dtypes.value(dtype, 0) + 1;
    stats.read_bytes += StoredBytes(hf, name);
    stats.written_bytes += numel * 4;
  }
  stats.tensors = static_cast<int64_t>(pieces.size());
  absl::StatusOr<RankWriteRecord> record =
      WriteStreamedRankFile(absl::StrCat(tmp, "/", RankFileName(0)), kKindValue, DType::kF32, pieces);
  if (!record.ok()) return abandon(record.status());

  CheckpointMetadata metadata;
  metadata.seed = recipe.train.seed;
  metadata.recipe = ResolvedRecipeYaml(recipe);
  metadata.model = ModelConfigToJson(recipe.model);
  metadata.extra = {{kWeightsOnlyKey, true},
                    {"imported_from", fs::absolute(hf_dir).lexically_normal().string()},
                    {"source_dtypes", source_dtypes}};
  absl::StatusOr<CheckpointIndex> index = MergeRankRecords({*record}, metadata);
  if (!index.ok()) return abandon(index.status());
  if (absl::Status s = WriteFileAtomically(absl::StrCat(tmp, "/", kIndexFileName), IndexToJson(*index));
      !s.ok()) {
    return abandon(s);
  }
  if (absl::Status s = FsyncDirectory(tmp); !s.ok()) return abandon(s);
  if (std::rename(tmp.c_str(), final_path.c_str()) != 0) {
    return abandon(absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", final_path, ": ", std::strerror(errno))));
  }
  if (absl::Status s = FsyncDirectory(checkpoint_dir); !s.ok()) return s;
  if (absl::Status s = DropOwnedMarker(final_path); !s.ok()) return s;
  stats.path = final_path;
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

}  // namespace fathom
