#include "checkpoint/hf_directory.h"

#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "checkpoint/fp8_blocks.h"
#include "checkpoint/hf_config.h"
#include "checkpoint/hf_layout.h"
#include "framework/numeric.h"

namespace fathom {
namespace {

using nlohmann::json;

bool IsRegularFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

absl::StatusOr<json> ReadJsonFile(const std::string& path, const std::string& what) {
  if (!IsRegularFile(path)) return absl::NotFoundError(absl::StrCat(path, " is missing (", what, ")"));
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) return absl::InternalError(absl::StrCat("cannot read ", path));
  json parsed = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, " is not valid JSON"));
  if (!parsed.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, " is not a JSON object"));
  return parsed;
}

int64_t Numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool Readable(const std::string& dtype) {
  return dtype == "F32" || dtype == "F64" || dtype == "BF16" || dtype == "F8_E4M3";
}

// A file name an index may name: a plain name inside the directory.
bool PlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos;
}

}  // namespace

std::string HfDirectory::config_path() const { return absl::StrCat(dir_, "/", kHfConfigFileName); }

absl::StatusOr<std::unique_ptr<HfDirectory>> HfDirectory::Open(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("HF directory ", dir, " does not exist (or is not a directory)"));
  }
  std::unique_ptr<HfDirectory> d(new HfDirectory(dir));
  absl::StatusOr<json> config = ReadJsonFile(d->config_path(), "every HF model directory has one");
  if (!config.ok()) return config.status();
  d->config_ = *std::move(config);

  const std::string index_path = absl::StrCat(dir, "/", kHfIndexFileName);
  const std::string single_path = absl::StrCat(dir, "/", kHfSingleFileName);
  std::map<std::string, std::string> weight_map;  // tensor -> file
  if (IsRegularFile(index_path)) {
    absl::StatusOr<json> index = ReadJsonFile(index_path, "");
    if (!index.ok()) return index.status();
    if (!index->contains("weight_map") || !(*index)["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, " has no \"weight_map\" object"));
    }
    for (const auto& [tensor, file] : (*index)["weight_map"].items()) {
      if (!file.is_string() || !PlainFileName(file.get<std::string>())) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map maps '", tensor, "' to ",
                                                       file.dump(), ", expected a file name in ", dir));
      }
      weight_map[tensor] = file.get<std::string>();
    }
    if (weight_map.empty())
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map is empty"));
  } else if (IsRegularFile(single_path)) {
    absl::StatusOr<std::unique_ptr<SafetensorsReader>> file = SafetensorsReader::Open(single_path);
    if (!file.ok()) return file.status();
    for (const auto& [name, entry] : (*file)->header().entries) weight_map[name] = kHfSingleFileName;
    d->files_[kHfSingleFileName] = *std::move(file);
  } else {
    return absl::NotFoundError(
        absl::StrCat(dir, " has neither ", kHfIndexFileName, " nor ", kHfSingleFileName, ": no weights"));
  }

  // Every file the index names, opened once; every tensor found in the file the index says.
  std::map<std::string, std::vector<std::string>> by_file;
  for (const auto& [tensor, file] : weight_map) by_file[file].push_back(tensor);
  for (const auto& [file, names] : by_file) {
    if (!d->files_.count(file)) {
      const std::string path = absl::StrCat(dir, "/", file);
      absl::StatusOr<std::unique_ptr<SafetensorsReader>> reader = SafetensorsReader::Open(path);
      if (!reader.ok()) {
        if (absl::IsNotFound(reader.status())) {
          return absl::NotFoundError(absl::StrCat(index_path, " maps ", names.size(), " tensor(s) (e.g. '",
                                                  names.front(), "') to ", file, ", which is missing"));
        }
        return reader.status();
      }
      d->files_[file] = *std::move(reader);
    }
    const SafetensorsReader* reader = d->files_[file].get();
    d->file_bytes_ += static_cast<int64_t>(reader->header().data_start);
    for (const std::string& name : names) {
      const SafetensorsEntry* entry = reader->Find(name);
      if (entry == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, " maps tensor '", name, "' to ", file, ", which does not hold it"));
      }
      d->file_bytes_ += static_cast<int64_t>(entry->end - entry->begin);
      d->tensors_[name] = HfTensorLocation{reader, name, entry, 0, entry->shape, entry->dtype};
    }
  }
  if (absl::Status s = d->AddFusedExperts(); !s.ok()) return s;
  return d;
}

absl::Status HfDirectory::AddFusedExperts() {
  // transformers' in-memory layout, should a directory store it: per-expert views of the fused tensors.
  static const std::regex kFused(R"((.*\.mlp\.experts)\.(gate_up_proj|down_proj))");
  std::vector<std::pair<std::string, HfTensorLocation>> views;
  for (const auto& [name, t] : tensors_) {
    std::smatch m;
    if (!std::regex_match(name, m, kFused)) continue;
    if (t.shape.size() != 3) {
      return absl::InvalidArgumentError(absl::StrCat(dir_, ": fused expert tensor '", name, "' has shape ",
                                                     ShapeString(t.shape), ", expected 3 dimensions"));
    }
    const std::string prefix = m[1].str();
    const int64_t experts = t.shape[0], rows = t.shape[1], cols = t.shape[2];
    const bool gate_up = m[2].str() == "gate_up_proj";
    if (gate_up && rows % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(dir_, ": fused expert tensor '", name, "' has shape ",
                                                     ShapeString(t.shape), ", an odd gate_up dimension"));
    }
    const int64_t part_rows = gate_up ? rows / 2 : rows;
    for (int64_t e = 0; e < experts; ++e) {
      for (int part = 0; part < (gate_up ? 2 : 1); ++part) {
        const char* proj = gate_up ? (part == 0 ? "gate_proj" : "up_proj") : "down_proj";
        HfTensorLocation view = t;
        view.element_offset = e * rows * cols + part * part_rows * cols;
        view.shape = {part_rows, cols};
        views.emplace_back(absl::StrCat(prefix, ".", e, ".", proj, ".weight"), std::move(view));
      }
    }
  }
  for (auto& [name, view] : views) tensors_.emplace(name, std::move(view));  // per-expert tensors win
  return absl::OkStatus();
}

int64_t HfDirectory::MtpLayersFound(int64_t num_hidden_layers) const {
  int64_t k = 0;
  while (tensors_.count(absl::StrCat("model.layers.", num_hidden_layers + k, ".eh_proj.weight"))) ++k;
  return k;
}

absl::StatusOr<ModelConfig> HfDirectory::Model() const {
  int64_t mtp = 0;
  if (config_.contains("num_hidden_layers") && config_["num_hidden_layers"].is_number_integer()) {
    mtp = MtpLayersFound(config_["num_hidden_layers"].get<int64_t>());
  }
  return ModelConfigFromHfConfig(config_, config_path(), mtp);
}

const HfTensorLocation* HfDirectory::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> HfDirectory::CheckTensor(const std::string& name, const Shape& shape) const {
  const HfTensorLocation* t = Find(name);
  if (t == nullptr) return {absl::StrCat("'", name, "' is missing")};
  if (t->shape != shape) {
    return {
        absl::StrCat("'", name, "' has shape ", ShapeString(t->shape), ", expected ", ShapeString(shape))};
  }
  if (!Readable(t->dtype)) {
    return {absl::StrCat("'", name, "' has dtype ", t->dtype, ", expected F32, BF16, F64 or F8_E4M3")};
  }
  if (t->dtype != "F8_E4M3") return {};
  if (t->element_offset != 0 || t->stored_name != name) {
    return {absl::StrCat("'", name, "' is part of the fused F8_E4M3 tensor '", t->stored_name,
                         "'; fathom reads fused experts in F32, F64 or BF16 only")};
  }
  if (shape.size() != 2) {
    return {absl::StrCat("'", name, "' is F8_E4M3 with shape ", ShapeString(shape),
                         "; block-quantized weights are matrices")};
  }
  const std::string scale_name = Fp8ScaleName(name);
  const HfTensorLocation* s = Find(scale_name);
  const Shape want = Fp8ScaleShape(shape[0], shape[1]);
  if (s == nullptr)
    return {absl::StrCat("'", name, "' is F8_E4M3 but its scales '", scale_name, "' are missing")};
  if (s->dtype != "F32" || s->shape != want) {
    return {absl::StrCat("'", scale_name, "' is ", s->dtype, " ", ShapeString(s->shape), ", expected F32 ",
                         ShapeString(want), " (one scale per 128x128 block of '", name, "')")};
  }
  return {};
}

absl::StatusOr<std::vector<float>> HfDirectory::ReadScales(const std::string& name,
                                                           const HfTensorLocation& t) const {
  const std::string scale_name = Fp8ScaleName(name);
  const HfTensorLocation* s = Find(scale_name);
  FATHOM_CHECK(s != nullptr, "[HfDirectory] unchecked FP8 tensor ", name);
  std::vector<float> scales(static_cast<size_t>(Numel(s->shape)));
  if (absl::Status st = s->file->ReadBytes(s->stored_name, *s->entry, 0, scales.size() * 4, scales.data());
      !st.ok()) {
    return st;
  }
  for (size_t i = 0; i < scales.size(); ++i) {
    if (!std::isfinite(scales[i])) {
      return absl::InvalidArgumentError(absl::StrCat(s->file->path(), ": tensor '", scale_name, "' holds ",
                                                     scales[i], " at element ", i,
                                                     "; block scales must be finite"));
    }
  }
  return scales;
}

absl::Status HfDirectory::Read(const std::string& name, int64_t begin, int64_t end, const Tensor& out) const {
  const HfTensorLocation* t = Find(name);
  FATHOM_CHECK(t != nullptr && Readable(t->dtype), "[HfDirectory] unchecked tensor ", name);
  FATHOM_CHECK(out.device() == Device::kCPU && (out.dtype() == DType::kF32 || out.dtype() == DType::kF64) &&
                   out.numel() == end - begin && 0 <= begin && begin <= end && end <= Numel(t->shape),
               "[HfDirectory] Read ", name, " [", begin, ", ", end, ") into ", out.shape_str());
  const int64_t count = end - begin;
  const size_t element = SafetensorsDTypeSize(t->dtype);
  std::vector<char> raw(static_cast<size_t>(count) * element);
  if (absl::Status s = t->file->ReadBytes(t->stored_name, *t->entry,
                                          static_cast<uint64_t>(t->element_offset + begin) * element,
                                          raw.size(), raw.data());
      !s.ok()) {
    return s;
  }
  // Every value goes through a double, which holds each source dtype exactly. The source dtype is
  // decided once; the switch inside the loop is on an enum.
  enum class Source { kF32, kF64, kBF16, kFP8 } source = Source::kFP8;
  if (t->dtype == "F32") source = Source::kF32;
  if (t->dtype == "F64") source = Source::kF64;
  if (t->dtype == "BF16") source = Source::kBF16;
  std::vector<float> dequantized;
  if (source == Source::kFP8) {
    absl::StatusOr<std::vector<float>> scales = ReadScales(name, *t);
    if (!scales.ok()) return scales.status();
    dequantized.resize(static_cast<size_t>(count));
    DequantizeE4M3Blocks(reinterpret_cast<const uint8_t*>(raw.data()), begin, count, t->shape[1],
                         scales->data(), dequantized.data());
  }
  const char* bytes = raw.data();
  float* out_f32 = out.dtype() == DType::kF32 ? out.data<float>() : nullptr;
  double* out_f64 = out.dtype() == DType::kF64 ? out.data<double>() : nullptr;
  for (int64_t i = 0; i < count; ++i) {
    double v = 0;
    switch (source) {
      case Source::kF32: {
        float f;
        std::memcpy(&f, bytes + i * 4, 4);
        v = f;
        break;
      }
      case Source::kF64:
        std::memcpy(&v, bytes + i * 8, 8);
        break;
      case Source::kBF16: {
        Bf16 b;
        std::memcpy(&b.bits, bytes + i * 2, 2);
        v = Bf16ToFloat(b);
        break;
      }
      case Source::kFP8:
        v = dequantized[static_cast<size_t>(i)];
        break;
    }
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat(t->file->path(), ": tensor '", name, "' holds ", v,
                                                     " at element ", begin + i, "; weights must be finite"));
    }
    if (out_f32 != nullptr) {
      out_f32[i] = static_cast<float>(v);
    } else {
      out_f64[i] = v;
    }
  }
  return absl::OkStatus();
}

}  // namespace fathom
