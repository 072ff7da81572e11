// Exporting a fathom checkpoint as a DeepSeek-V3 HF directory that transformers, vLLM and SGLang load as
// they load DeepSeek-V3's own release (checkpoint/hf_layout.h names and orders the tensors,
// checkpoint/hf_config.h writes config.json):
//   HF_DIR/config.json, generation_config.json,
//   model-00001-of-0000N.safetensors ... (tensors in the release's order, a new shard whenever the next
//     tensor would take the current one past the shard size; a tensor larger than the size gets a shard of
//     its own; metadata {"format": "pt"}, which transformers requires),
//   model.safetensors.index.json ({"metadata": {"total_size": tensor bytes}, "weight_map": {name: file}}),
//   the tokenizer's files when a tokenizer directory is given.
// Dtypes: bf16 (the release's torch_dtype; round to nearest even from the f32 master weights), f32 (the
// master weights bit for bit), or fp8: the Linear weights the release quantizes as e4m3 plus
// "<name>_scale_inv" f32 block scales (checkpoint/fp8_blocks.h), everything else bf16. The expert bias is
// f32 in every export, as in the release.
//
// Streaming and parallelism: a shard is written tensor by tensor, each read from the checkpoint in blocks
// of 16M elements (FP8: bands of whole 128-row blocks), so peak memory is a few blocks (~200 MB), not a
// shard or the model. Collective over `comm`: the shards are split into contiguous runs, one per rank (rank
// r writes shards [r S / W, (r + 1) S / W)), each rank reading only the checkpoint files that hold its
// tensors; rank 0 writes the index, the configs and the tokenizer files. One process writes them all.
//
// Safety: everything goes into HF_DIR.tmp, created holding fathom's marker file (kOwnedMarkerName,
// checkpoint/checkpoint_dir.h); HF_DIR appears by a rename once every rank has written and fsynced its
// shards, and the marker is then removed, so a failed export leaves no HF_DIR and a successful one a
// complete directory. A leftover HF_DIR.tmp of a crashed export (it holds the marker, or nothing) is
// removed first; anything else of that name (a user's directory or file) is refused and left untouched.
// HF_DIR must not exist, or be an empty directory.
//
// Errors (the same Status on every rank: the lowest failing rank's): InvalidArgument for an HF_DIR that
// exists and is not empty, an HF_DIR.tmp that fathom did not make, a checkpoint that lacks a tensor of its
// own model or holds a non-finite value, a tokenizer directory without tokenizer files; NotFound / DataLoss
// as the checkpoint reader reports them (checkpoint/checkpoint_reader.h); Internal for I/O errors while
// writing.
// Thread safety: call from the thread that owns `comm`, on every rank of it.
#ifndef FATHOM_CHECKPOINT_HF_EXPORT_H_
#define FATHOM_CHECKPOINT_HF_EXPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/hf_config.h"
#include "checkpoint/hf_layout.h"
#include "checkpoint/safetensors_stream.h"
#include "parallel/communicator.h"

namespace fathom {

struct HfExportOptions {
  HfDType dtype = HfDType::kBF16;
  int64_t shard_bytes = 5'000'000'000;  // transformers' "5GB" (decimal)
  std::string tokenizer_dir;            // "": no tokenizer files are copied
  HfTokenIds tokens;                    // bos / eos for config.json and generation_config.json
};

// One tensor a shard holds: an HF tensor, or the block scales of the FP8 weight just before it.
struct HfShardEntry {
  int tensor = 0;      // index into the HfModelTensors list
  bool scale = false;  // the weight's "_scale_inv"
  SafetensorsDecl decl;
};
struct HfShard {
  std::string file;  // "model-00001-of-00004.safetensors"
  std::vector<HfShardEntry> entries;
  int64_t bytes = 0;  // data bytes
};

// The shards of an export of `tensors` (HfModelTensors) in `dtype`, at most `shard_bytes` each except a
// shard holding one tensor larger than that. A weight and its scales always share a shard.
std::vector<HfShard> PlanHfShards(const std::vector<HfTensorSpec>& tensors, HfDType dtype,
                                  int64_t shard_bytes);

// The shards rank `rank` of `world` writes: [first, end).
std::pair<int64_t, int64_t> HfShardsOfRank(int64_t shards, int rank, int world);

struct HfExportStats {
  std::string path;                          // HF_DIR
  int64_t shards = 0;                        // files of weights
  int64_t tensors = 0;                       // tensors written (scales included)
  int64_t bytes = 0;                         // tensor bytes written by all ranks (the index's total_size)
  int64_t read_bytes = 0;                    // checkpoint bytes read by all ranks (f32 values)
  int64_t rank_bytes = 0;                    // tensor bytes this rank wrote
  double seconds = 0;                        // the export's wall time (rank 0: from start to the rename)
  double slowest_write_seconds = 0;          // the slowest rank's shard writing
  std::vector<std::string> tokenizer_files;  // copied
  double gb_per_s() const { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0; }
};

// Exports the checkpoint `reader` holds (its model: metadata.model) to `out_dir`. Collective over `comm`.
absl::StatusOr<HfExportStats> ExportHfDirectory(CheckpointReader& reader, const std::string& out_dir,
                                                const HfExportOptions& options, Communicator& comm);

// The tokenizer files of `dir` an export copies (tokenizer.json, tokenizer_config.json, tokenizer.model,
// special_tokens_map.json, vocab.json, merges.txt, added_tokens.json, vocab.txt, chat_template.jinja,
// chat_template.json); InvalidArgument naming `dir` when it holds none of tokenizer.json, tokenizer.model
// and vocab.json, NotFound when it is not a directory.
absl::StatusOr<std::vector<std::string>> TokenizerFiles(const std::string& dir);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_HF_EXPORT_H_
