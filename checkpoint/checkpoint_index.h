// The index of a distributed checkpoint: what index.json says, how it is written and read back.
//
// A checkpoint is a directory D/step_00000123/ holding one HDF5 file per writing rank (rank_00007.h5) and
// index.json. A rank file holds one 1-D dataset per kind of state it wrote ("value", "adam_m", "adam_v"),
// its pieces of every tensor concatenated in the rank's table order. index.json maps every tensor, by its
// HF name, to its global shape and, per kind, to its stored dtype and its slices: which file, which
// dataset, where in the dataset, and which flat range [begin, end) of the tensor (row-major, GLOBAL
// coordinates, so any mesh can read any part). Checksums: CRC-32C (framework/file_io.h's Crc32c) of the
// stored bytes of every chunk of kCrcChunkElements elements of a slice, counted from the slice's begin (the
// last chunk may be shorter); a reader verifies every chunk it reads, and reads whole chunks to do so.
//
// index.json (format_version 1; written compact, shown here indented):
//   { "format": "fathom-checkpoint", "format_version": 1, "fathom_version": "0.1.0",
//     "crc_chunk_elements": 1048576,
//     "metadata": { "step": 123, "lr_schedule_step": 123, "seed": 1234, "rng": {...},
//                   "data_loader": {...}, "extra": {...}, "recipe": "<YAML text>", "model": {HF keys} },
//     "files": [ { "name": "rank_00000.h5", "bytes": 123456,
//                  "datasets": [ { "name": "value", "dtype": "f32", "elements": 98304 } ] } ],
//     "tensors": { "model.embed_tokens.weight": { "shape": [256, 64], "kinds": {
//                    "value": { "dtype": "f32", "slices": [ { "file": 0, "dataset": "value",
//                      "offset": 0, "begin": 0, "end": 16384, "crc32c": [2018463742] } ] } } } } }
// Slices of one (tensor, kind) may overlap (a tensor held twice in the pipeline, e.g. the embedding on the
// first and the last stage, may be written by both); together they cover the whole tensor, and a reader
// takes each element from the first slice (by begin) that holds it.
//
// Errors parsing or validating an index are InvalidArgument naming the index file and the field or the
// tensor, and what was expected. Not thread safe (plain data).
#ifndef FATHOM_CHECKPOINT_CHECKPOINT_INDEX_H_
#define FATHOM_CHECKPOINT_CHECKPOINT_INDEX_H_

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framework/tensor.h"

namespace fathom {

inline constexpr char kCheckpointFormat[] = "fathom-checkpoint";
inline constexpr int kCheckpointFormatVersion = 1;
// Elements per checksummed chunk of a slice (4 MiB of f32): a reader reads at most one chunk more than it
// needs at each end of a range, and index.json carries one number per 4 MiB written.
inline constexpr int64_t kCrcChunkElements = int64_t{1} << 20;
inline constexpr char kIndexFileName[] = "index.json";

// The kinds of tensor state fathom stores. A kind is any [a-z0-9_]+ name (the dataset's name in a rank
// file); these three are the optimizer's.
inline constexpr char kKindValue[] = "value";   // f32 (or f64) master weights
inline constexpr char kKindAdamM[] = "adam_m";  // AdamW first moment, its stored dtype
inline constexpr char kKindAdamV[] = "adam_v";  // AdamW second moment, its stored dtype

// fathom's version (the CMake project version) as recorded in index.json.
std::string FathomVersion();
// "rank_00007.h5".
std::string RankFileName(int rank);
// True for a valid kind name ([a-z0-9_]+).
bool IsValidKindName(std::string_view kind);
// The dtypes a checkpoint stores: f32, f64, bf16.
bool IsStorableDType(DType dtype);

// The non-tensor state of a run, stored in index.json. Written from rank 0's copy.
struct CheckpointMetadata {
  int64_t step = 0;                               // optimizer steps completed when the state was taken
  int64_t lr_schedule_step = 0;                   // position in the LR schedule (usually == step)
  uint64_t seed = 0;                              // train.seed
  nlohmann::json rng = nlohmann::json::object();  // RNG state beyond the seed (opaque)
  nlohmann::json data_loader = nlohmann::json::object();  // the data loader's state (opaque, data/)
  // What else the trainer keeps (launch/trainer.cc): adam_step, global_batch_size (sequences per step;
  // absent from checkpoints older than it); an import's keys (checkpoint/hf_import.h).
  nlohmann::json extra = nlohmann::json::object();
  std::string recipe;                                     // the recipe as run (resolved YAML text)
  nlohmann::json model = nlohmann::json::object();        // ModelConfigToJson of the model
};

struct SliceRecord {
  int file = 0;                  // index into CheckpointIndex::files
  std::string dataset;           // the dataset's name in that file (= the kind)
  int64_t dataset_offset = 0;    // the dataset element holding the tensor's element `begin`
  int64_t begin = 0;             // [begin, end): flat elements of the tensor, global coordinates
  int64_t end = 0;               //
  std::vector<uint32_t> crc32c;  // one per kCrcChunkElements chunk of [begin, end), from begin
};

struct TensorKindRecord {
  DType dtype = DType::kF32;        // stored dtype
  std::vector<SliceRecord> slices;  // sorted by (begin, file)
};

struct TensorRecord {
  Shape shape;                                    // the whole tensor's (global) shape
  std::map<std::string, TensorKindRecord> kinds;  // "value", "adam_m", ...
};

struct DatasetRecord {
  std::string name;  // = the kind
  DType dtype = DType::kF32;
  int64_t elements = 0;
};

struct FileRecord {
  std::string name;   // relative to the checkpoint directory
  int64_t bytes = 0;  // the file's size when it was committed
  std::vector<DatasetRecord> datasets;
};

struct CheckpointIndex {
  int format_version = kCheckpointFormatVersion;
  std::string fathom_version;
  int64_t crc_chunk_elements = kCrcChunkElements;
  CheckpointMetadata metadata;
  std::vector<FileRecord> files;
  std::map<std::string, TensorRecord> tensors;
};

// What one rank wrote: its file and, per piece, the tensor, kind and slice (slice.file is the rank's
// position among the writers). Travels to the committing rank as JSON.
struct PieceRecord {
  std::string name;
  Shape shape;
  std::string kind;
  DType dtype = DType::kF32;
  SliceRecord slice;
};
struct RankWriteRecord {
  FileRecord file;
  std::vector<PieceRecord> pieces;
};

std::string RankWriteRecordToJson(const RankWriteRecord& record);
absl::StatusOr<RankWriteRecord> RankWriteRecordFromJson(std::string_view text);

// Builds the index from every rank's record (records[i] wrote file i) and the metadata. Errors (Internal:
// the writers disagree, a bug of the caller's sharding): a tensor with two shapes, a kind with two dtypes,
// a (tensor, kind) whose slices leave part of it uncovered.
absl::StatusOr<CheckpointIndex> MergeRankRecords(const std::vector<RankWriteRecord>& records,
                                                 CheckpointMetadata metadata);

std::string IndexToJson(const CheckpointIndex& index);
// Parses and validates index.json's text read from `path`: the format and its version (an unknown one is
// refused, naming both versions), every field's type, every slice's file, dataset, ranges and checksum
// count, and the coverage of every (tensor, kind). InvalidArgument naming `path` and what is wrong.
absl::StatusOr<CheckpointIndex> IndexFromJson(std::string_view text, const std::string& path);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_CHECKPOINT_INDEX_H_
