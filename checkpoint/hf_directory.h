// An HF model directory opened for reading, tensor by tensor: config.json, the weight map, the headers of
// its safetensors files (checkpoint/safetensors_stream.h), and reads of any element range of any tensor
// converted to f32 or f64.
//
// Layouts: a sharded directory (model.safetensors.index.json: {"metadata": {...}, "weight_map": {tensor:
// file}}, the files beside it) or one model.safetensors. Tensor dtypes read: F32, F64, BF16, and F8_E4M3
// with its "<name>_scale_inv" F32 block scales of shape (ceil(rows/128), ceil(cols/128)) (dequantized as
// checkpoint/fp8_blocks.h says). transformers' fused expert tensors (mlp.experts.gate_up_proj (E, 2I, H)
// and mlp.experts.down_proj (E, H, I)) are also read under the per-expert names the release uses
// (mlp.experts.{e}.gate_proj.weight = gate_up_proj[e, :I], up_proj = gate_up_proj[e, I:], down_proj =
// down_proj[e]), when the per-expert names are absent; in F32, F64 or BF16 only.
//
// Validation. Open parses config.json and the index, opens every file the index names and checks that each
// holds the tensors the index maps to it, so a missing shard, an index naming a tensor its shard lacks, a
// truncated file or a malformed header fail at Open. CheckTensor tells what is wrong with one tensor the
// caller needs (absent, another shape, a dtype fathom cannot read, an FP8 tensor without a valid scale
// tensor). Reads check every value they return (and every scale they use) is finite.
//
// Errors: NotFound for a missing directory, config.json, index or shard; InvalidArgument for malformed
// JSON, an index naming what its shard lacks, a bad header, an unreadable dtype, a non-finite value or
// scale; DataLoss for a file that shrank; Internal for I/O errors. Messages name the file and the tensor.
// Memory: the headers, and per read the bytes of the range (plus an FP8 tensor's scales).
// Thread safety: const methods may be called concurrently.
#ifndef FATHOM_CHECKPOINT_HF_DIRECTORY_H_
#define FATHOM_CHECKPOINT_HF_DIRECTORY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/safetensors_stream.h"
#include "framework/config.h"
#include "framework/tensor.h"

namespace fathom {

inline constexpr char kHfIndexFileName[] = "model.safetensors.index.json";
inline constexpr char kHfSingleFileName[] = "model.safetensors";
inline constexpr char kHfConfigFileName[] = "config.json";

// Where one tensor's elements are: a file, the stored tensor and the element it starts at (0 except for a
// per-expert view of a fused tensor).
struct HfTensorLocation {
  const SafetensorsReader* file = nullptr;
  std::string stored_name;  // the tensor's name in the file
  const SafetensorsEntry* entry = nullptr;
  int64_t element_offset = 0;
  Shape shape;  // the (per-expert) tensor's shape
  std::string dtype;
};

class HfDirectory {
 public:
  static absl::StatusOr<std::unique_ptr<HfDirectory>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::string config_path() const;
  const nlohmann::json& config() const { return config_; }
  // The model of config.json (checkpoint/hf_config.h), num_nextn_predict_layers counted among the weights
  // when config.json does not state it.
  absl::StatusOr<ModelConfig> Model() const;
  // MTP modules among the weights: the k >= 1 such that model.layers.{N + j - 1}.eh_proj.weight exists for
  // every j <= k.
  int64_t MtpLayersFound(int64_t num_hidden_layers) const;

  // The tensor, or nullptr when the directory has none of that name.
  const HfTensorLocation* Find(const std::string& name) const;
  // What keeps tensor `name` from being read as `shape`: absent, another shape, a dtype outside F32, F64,
  // BF16, F8_E4M3, an F8_E4M3 tensor that is not 2-D, lacks its F32 scale tensor or has one of another
  // shape. Empty when it can be read.
  std::vector<std::string> CheckTensor(const std::string& name, const Shape& shape) const;
  // Elements [begin, end) of tensor `name` (row-major) into `out`, converted to out's dtype (f32 or f64;
  // f64 files narrowed to f32 round to nearest even). REQUIRES: CheckTensor(name, ...) empty, `out` a CPU
  // tensor of end - begin elements, 0 <= begin <= end <= numel.
  absl::Status Read(const std::string& name, int64_t begin, int64_t end, const Tensor& out) const;

  // Files opened, and their total size in bytes.
  int64_t file_count() const { return static_cast<int64_t>(files_.size()); }
  int64_t file_bytes() const { return file_bytes_; }

 private:
  explicit HfDirectory(std::string dir) : dir_(std::move(dir)) {}
  absl::Status AddFusedExperts();
  absl::StatusOr<std::vector<float>> ReadScales(const std::string& name, const HfTensorLocation& t) const;

  std::string dir_;
  nlohmann::json config_;
  std::map<std::string, std::unique_ptr<SafetensorsReader>> files_;  // by file name
  std::map<std::string, HfTensorLocation> tensors_;
  int64_t file_bytes_ = 0;
};

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_HF_DIRECTORY_H_
