// The activation memory of fathom's layers (layers/cost.h's ActivationModel::kFathom), itemised from what
// their Ctx structs keep (layers/*.cc), per token of a micro-batch, and how the bytes of consecutive
// nodes add up over a stage's passes. Pure arithmetic; the cost model (layers/cost.cc) stores the results
// per node, the simulator (parallel/) and the start-up memory plan (parallel/memory_plan) read them.
//
// Every quantity follows one micro-batch through its passes:
//   held_f  kept after its forward, until its backward-for-inputs (B) starts;
//   held_b  kept after its B, until its backward-for-weights (W): each Linear's input and output gradient,
//           each RMSNorm's input, rstd and output gradient, the experts' rows and their gradients;
//   peak_f  the most it holds while its forward runs (temporaries of the pass included);
//   peak_b  the most it holds while its B runs (the W only frees);
//   peak_bw (a sequence's, see Sequence) the most it holds while a B pass runs that does each part's W right
//           after that part's B (a BW or FB instruction: Model::BackwardPass with `weight`), so a part's
//           output gradients and inputs are gone before the next part's B starts. A single part's W follows
//           its whole B: its peak_bw is its peak_b, and the per-part functions below leave the field 0.
// Widths: `a` bytes per activation value (the compute dtype), `s` per statistic (rstd, log-sum-exp, router
// scores: f32 under bf16, else the compute dtype; the router keeps its input as given and widens it again
// for its W), `r` per value of the routed token rows the MoE keeps (its permuted or received inputs and their
// output gradients): `a`, or under train.precision fp8 the FP8 rows' Fp8RowBytes(H) / H (e4m3 codes plus a
// f32 scale per 128). The FP8 paths' transient quantised copies (of the hidden rows, the input gradients
// and the weight gradients' column operands) are not counted. Token ids and labels are i32, expert ids and
// row slots i64.
#ifndef FATHOM_LAYERS_ACTIVATIONS_H_
#define FATHOM_LAYERS_ACTIVATIONS_H_

#include <vector>

#include "framework/config.h"

namespace fathom {

struct ActivationBytes {
  double held_f = 0, held_b = 0, peak_f = 0, peak_b = 0;
  double peak_bw = 0;  // set by Sequence (0 for one part: read its peak_b)
};

// One micro-batch through consecutive parts run forward in order, B in reverse, then W (a decoder block's
// attention then MLP, a stage's nodes): held sums; peak_f = max_i (held_f of the parts before i +
// peak_f_i); peak_b = max_i (held_f before i + peak_b_i + held_b after i). With each part's W right after
// its B (a stage's nodes in a BW pass), peak_bw = max_i (held_f before i + peak_b_i), except that the parts
// from `w_group` on run their W together after the B of part `w_group` (the head and the MTP modules, which
// share the lm_head and embedding gradients: layers/model_pass.cc): for them the peak_b rule holds within
// the group. A decoder block runs its W after the whole block's B, so only a stage's sequence of nodes has a
// meaningful peak_bw. `w_group` = parts.size(): no group.
ActivationBytes Sequence(const std::vector<ActivationBytes>& parts);
ActivationBytes Sequence(const std::vector<ActivationBytes>& parts, size_t w_group);

// Per token, fathom's layers (see the file comment). A node counts its input (the previous node's output).
ActivationBytes FathomEmbeddingBytes(const ModelConfig& m, double a, double s);
// A decoder block (MoE or dense); `exchange_bytes` receives the bytes of the MoE's received rows, which
// exist only under expert parallelism (not included in the result).
ActivationBytes FathomBlockBytes(const ModelConfig& m, bool moe, double a, double s, double r,
                                 double* exchange_bytes);
ActivationBytes FathomHeadBytes(const ModelConfig& m, double a, double s);
// An MTP module: its embedding, norms, concatenation and projection, then its block and its head.
ActivationBytes FathomMtpBytes(const ModelConfig& m, bool moe, double a, double s, double r,
                               double* exchange_bytes);
// Per MoE layer and MICRO-BATCH (not per token): the expected pad rows of the routed experts' tiled layout
// (layers/moe.h; without an expert exchange), E * (tile - 1) / 2 rows at a routed row's bytes: the
// gathered input (r per value), gate, up, hidden, output and slot kept by the forward (held_f = peak_f),
// plus the output gradient (r per value) and the gate and up gradients after B (held_b = peak_b).
ActivationBytes TiledExpertPadding(const ModelConfig& m, double a, double r, int64_t tile_rows);
// The device layout (train.expert_gemm own, layers/moe.h "Device layout") lays out its worst-case tile budget
// whatever the counts: cpu::MaxPaddedRows(R, E, tile) - R pad rows for the R = tokens * top-k routed rows of
// a micro-batch. TiledExpertPadding's bytes times this factor are its pad rows' bytes.
double DeviceLayoutPaddingFactor(const ModelConfig& m, int64_t tokens_per_micro_batch, int64_t tile_rows);

}  // namespace fathom

#endif  // FATHOM_LAYERS_ACTIVATIONS_H_
