// Reading DeepSeek-V3 HF directories into fathom (checkpoint/hf_directory.h reads the directory):
//   LoadHfDirectoryInto  fills the values of a ParamTable of any slice (pipeline stage, expert shard) from
//                        the directory, tensor by tensor: what `model.init_from: HF_DIR` does at start-up;
//   ImportHfDirectory    writes the whole model as a fathom checkpoint (`fathom import`), streaming.
// Both first check the directory's config.json against the recipe's model (every differing key named,
// initializer_range aside) and every tensor they need (present, of the model's shape, readable), and
// report all problems at once before reading a value. Weights are read as stored (F32, F64, BF16) or
// dequantized from F8_E4M3 with their weight_scale_inv. The MTP modules' copies of the embedding and the
// head (model.layers.L.embed_tokens, shared_head.head) are not loaded: fathom shares model.embed_tokens and
// lm_head with them (checkpoint/hf_layout.h), as DeepSeek-V3 does. ImportHfDirectory checks that the
// copies a directory holds equal them (both decoded to f32, and rounded to bf16 first where the two are
// stored in different dtypes one of which is bf16) and refuses a directory whose copies differ, naming
// the tensor, how many values differ and the largest difference; LoadHfDirectoryRange reads slices and does
// not compare them: `model.init_from` calls CheckHfMtpCopies once (rank 0) before every rank loads.
//
// A checkpoint made by ImportHfDirectory is "weights only": step 0, values of every tensor (the expert bias
// included) and no AdamW moments; metadata.extra holds {"weights_only": true, "imported_from": HF_DIR,
// "source_dtypes": {...}}, metadata.data_loader and metadata.rng are empty. A resume from it
// (IsWeightsOnlyCheckpoint) loads the values and starts everything else fresh, exactly as a new run whose
// initial weights are the directory's: AdamW moments zero and its step count 0, the LR schedule at step
// 0 (warm-up included), the data loader at the start of its first epoch, the RNG from train.seed.
//
// Errors (every one about the user's input; commands exit 2): NotFound for a missing directory, file or
// tensor; InvalidArgument for a config.json that disagrees with the recipe or describes something fathom
// does not compute, tensors of the wrong shape or dtype, non-finite values or scales, or (import) MTP
// copies that differ from the shared tensors, an output directory that already holds checkpoints, or whose
// step_00000000 or step_00000000.tmp is something fathom did not make (checkpoint/checkpoint_dir.h: never
// removed); Internal for I/O errors while writing. An import that fails leaves the output directory as it
// was (the checkpoint appears only by a final rename).
// Thread safety: none needed beyond the caller's (no shared state).
#ifndef FATHOM_CHECKPOINT_HF_IMPORT_H_
#define FATHOM_CHECKPOINT_HF_IMPORT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/checkpoint_index.h"
#include "framework/config.h"
#include "framework/param_table.h"

namespace fathom {

// The metadata.extra key a weights-only checkpoint carries (true).
inline constexpr char kWeightsOnlyKey[] = "weights_only";

// True for a checkpoint without optimizer state, such as ImportHfDirectory writes: a resume loads its
// values and starts the optimizer, the schedule, the data and the RNG fresh (see above).
bool IsWeightsOnlyCheckpoint(const CheckpointMetadata& metadata);

// Fills every tensor of `table` (values) from the HF directory `dir`, whose config.json must describe
// `model`. Any slice works: the table's specs name the tensors (routed experts by their global ids). Peak
// extra memory: one block of at most 16M elements (plus, for a CUDA table, a host copy of its values).
// REQUIRES: table finalized, f32 or f64; `model` is the model the table was built from; a CUDA table
// needs what ops::Copy needs (a current OpContext on its device, framework/ops.h). On an error before
// reading (config, missing or misshapen tensors) the table is untouched; on a read error (a corrupt value
// or scale) it may be partly filled.
absl::Status LoadHfDirectoryInto(const std::string& dir, const ModelConfig& model, ParamTable& table);

// The same for the table elements [begin, end) only (a ZeRO shard: the range may cut tensors anywhere),
// into `dst`: a flat tensor of end - begin elements in the table's dtype, on the CPU or a GPU (then
// through a host copy). Only the tensors the range touches are checked and read.
absl::Status LoadHfDirectoryRange(const std::string& dir, const ModelConfig& model, const ParamTable& table,
                                  int64_t begin, int64_t end, const Tensor& dst);

// The check ImportHfDirectory makes before it writes (config.json describes `model`, and the MTP copies the
// directory holds equal the shared tensors; see above), for callers that load slices instead
// (checkpoint/hf_init.h). Reads both copies whole, one 16M-element block at a time.
absl::Status CheckHfMtpCopies(const std::string& dir, const ModelConfig& model);

struct HfImportStats {
  std::string path;           // the checkpoint written, CHECKPOINT_DIR/step_00000000
  int64_t tensors = 0;        // HF tensors read (the MTP copies not counted)
  int64_t read_bytes = 0;     // bytes of the directory's files read (scales included)
  int64_t written_bytes = 0;  // f32 values written
  double seconds = 0;
};

// Writes the whole model of `recipe` from the HF directory `hf_dir` as the weights-only checkpoint
// `checkpoint_dir`/step_00000000 (checkpoint/checkpoint_dir.h), one rank file streamed tensor by tensor
// (memory: one 64 MiB block) and its index; metadata.recipe is `recipe` resolved. `checkpoint_dir` is
// created if missing and must hold no complete checkpoint (a resume would pick the newest, not this one).
absl::StatusOr<HfImportStats> ImportHfDirectory(const std::string& hf_dir, const Recipe& recipe,
                                                const std::string& checkpoint_dir);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_HF_IMPORT_H_
