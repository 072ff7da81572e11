// From a rank's flat parameter table to the HF tensors a checkpoint stores, and back.
//
// A checkpoint names every tensor by its HF name and addresses its elements in GLOBAL coordinates: a
// slice is a flat range [begin, end) of the HF tensor's row-major flattening, whatever mesh wrote it. A
// rank's table (framework/param_table.h) holds one stage's tensors, and its ZeRO-1 shard (parallel/zero.h)
// is an arbitrary contiguous range of that table, crossing tensor boundaries. TablePieces cuts such a range
// into pieces of HF tensors:
//   - a plain spec is one HF tensor of the spec's name and shape;
//   - a stacked routed-expert spec "...experts.{e}.gate_proj.weight" of shape (E_local, I, H) holds the
//     HF tensors "...experts.<expert_begin + i>.gate_proj.weight" of shape (I, H), i < E_local, so a range
//     of it splits at expert boundaries (transformers' and DeepSeek-V3's per-expert names);
//   - the padding the table puts between tensors (16-element alignment) belongs to no tensor and is
//     skipped.
// The same pieces serve both ways: a writer stores each piece's elements under its name and range, and a
// reader fills table offsets from whatever slices of the checkpoint overlap each piece (any mesh).
//
// Pure functions of the table's specs; thread safe for const tables.
#ifndef FATHOM_CHECKPOINT_PARAM_SLICES_H_
#define FATHOM_CHECKPOINT_PARAM_SLICES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "framework/param_table.h"

namespace fathom {

struct TensorPiece {
  std::string name;          // HF name, e.g. "model.layers.3.mlp.experts.5.gate_proj.weight"
  Shape shape;               // the whole HF tensor's shape, e.g. (I, H)
  int64_t begin = 0;         // [begin, end): elements of the HF tensor's row-major flattening
  int64_t end = 0;           //
  int64_t table_offset = 0;  // the table's flat element holding element `begin` (values, grads, moments)
  bool trainable = true;     // the spec's `trainable` (false: a buffer such as the expert bias)

  int64_t numel() const { return end - begin; }
};

// The HF name of slot `slot` of a spec: for a stacked spec the name with "{e}" replaced by
// expert_begin + slot (REQUIRES 0 <= slot < shape[0]); otherwise the spec's name (slot ignored).
std::string HfTensorName(const ParamSpec& spec, int64_t slot);
// The shape of one HF tensor of `spec`: a stacked spec without its leading expert dimension.
Shape HfTensorShape(const ParamSpec& spec);
bool IsStackedExpertSpec(const ParamSpec& spec);

// Which pieces TablePieces returns: every tensor's, or only those of trainable specs (the optimizer
// moments exist for trainable parameters only).
enum class PieceFilter { kAll, kTrainableOnly };

// The pieces of HF tensors that the table elements [begin, end) hold, in table order (ascending
// table_offset), padding skipped. REQUIRES: table finalized, 0 <= begin <= end <= table.numel().
std::vector<TensorPiece> TablePieces(const ParamTable& table, int64_t begin, int64_t end,
                                     PieceFilter filter = PieceFilter::kAll);

// Elements covered by `pieces` (their numel summed).
int64_t PieceElements(const std::vector<TensorPiece>& pieces);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_PARAM_SLICES_H_
