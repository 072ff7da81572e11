// MoE: the DeepSeekMoE feed-forward of transformers' DeepseekV3MoE, with the sequence-wise balance loss
// of the DeepSeek-V3 report (eq. 17-20).
//
//   y (B, T, H) = sum over the K chosen experts e of weight_e * expert_e(x) + shared_experts(x)
//
// Parameters (prefix = "model.layers.{L}.mlp"; E = n_routed_experts, I = moe_intermediate_size,
// K = num_experts_per_tok):
//   "<prefix>.gate.weight" (E, H), "<prefix>.gate.e_score_correction_bias" (E)      the Router
//   "<prefix>.experts.{e}.gate_proj.weight" (E, I, H)  \  routed experts stacked per projection,
//   "<prefix>.experts.{e}.up_proj.weight"   (E, I, H)   > ParamGroup::kExpert; "{e}" stays literal: row e
//   "<prefix>.experts.{e}.down_proj.weight" (E, H, I)  /  of a stack is global expert expert_begin + e (0)
//   "<prefix>.shared_experts.{gate,up,down}_proj.weight"  a DenseMlp with I * n_shared_experts
//                                                         (absent when n_shared_experts == 0)
// Every token goes to exactly K experts: no capacity, no dropping; an expert may receive zero tokens.
//
// The forward runs as explicit phases so that expert parallelism can put an all-to-all between them:
//   route (router + balance value + selection margin) -> permute (token copies sorted by expert, per-expert
//   counts on the device, their copy to the host started) -> shared expert -> wait for the host counts ->
//   dispatch (through the exchange, which returns a handle kept with the micro-batch) -> expert compute
//   (grouped GEMMs over contiguous per-expert row blocks) -> combine (back through the exchange with the
//   handle, then unpermute + weighted sum) -> add the shared expert's output.
// BackwardInput mirrors it (combine, experts, permute, router, shared expert dgrad); BackwardWeight
// accumulates the expert, router and shared-expert weight gradients. Layer contract of layers/layer.h; the
// routed experts' wgrad overwrites instead where the ParamTable knows the gradient to be zero (the first
// weight-gradient pass after ZeroGrads(): the same values, without reading the zeros; see
// ParamTable::GradForWrite).
//
// Phases (the overlap hook, DESIGN.md idea 3): Forward is ForwardBegin (route, permute, START the dispatch,
// then the shared expert while the rows travel) -> ForwardExperts (wait for the dispatch, the routed
// experts, START the combine) -> ForwardEnd (wait for the combine, unpermute and weight, add the shared
// expert). BackwardInput is BackwardInputBegin (combine's backward, START the dispatch of the output
// gradient, then the shared expert's dgrad) -> BackwardInputExperts (wait, the experts' dgrad, START the
// combine of the input gradient) -> BackwardInputEnd (wait, permute's backward, balance loss, router). A
// caller may run other work (another micro-batch's phases) between the phases of one micro-batch; the
// blocking forms run them back to back. Phases of one micro-batch come in this order, each once; with an
// exchange, every rank of the expert-parallel group must start the phases of all its micro-batches in the
// same order (the movements are collectives). Without an exchange nothing is in flight. The numbers do
// not depend on the interleaving.
//
// FP8 (train.precision fp8: the table has FP8 weights, framework/param_table.h): the permuted token rows are
// quantised to packed FP8 rows (e4m3 codes with their 1x128 scales) before the dispatch, so the all-to-all
// moves 1 + 4/128 bytes per value, and the experts' gate/up GEMMs read them as they arrive; the hidden
// activation and, in the backward, the output gradient (quantised before it is dispatched to the experts)
// and the SwiGLU input gradients are quantised for their GEMMs; the weight gradients quantise the kept FP8
// rows and activations along the tokens. Combine and its backward stay in the activations' dtype. The
// dispatched rows are the only copy of the experts' input kept for the backward (in FP8: the report's FP8
// activation cache for the expert GEMMs).
//
// Statistics are returned, never kept: Forward fills a MoeStats for its micro-batch (the tokens routed to
// each expert, the input of the bias update, and the balance value) as tensors on the layer's device, and
// the caller sums them there (parallel/stage_runtime.h copies a step's sums to the host once).
//
// Synchronisation with the host (CUDA): ONE per forward of a layer and micro-batch, the per-expert counts
// the grouped GEMMs (cuBLASLt problems and pointer arrays sized on the host), the padded layout and the
// expert exchange's layout need on the host. The copy is queued right after the permutation and waited for
// (its event only) as late as the phases allow: with an exchange in ForwardBegin before the dispatch starts
// (the exchange lays the rows out by the counts; the shared expert then runs while the rows travel); without
// one in ForwardExperts, after the shared expert and whatever the caller ran between the phases were queued,
// so the GPU stays busy while the host waits. The backward reuses the handle's host counts (DispatchHandle):
// no sync. The balance value and the counts of MoeStats stay on the device. The device layout (below) has
// none at all.
//
// Padded (tiled) layout (no exchange; on CUDA by default, see set_expert_layout): the sort runs in
// ForwardBegin, and once the host has the counts ForwardExperts gathers each expert's rows into a block of
// its count rounded up to kTileRows rows, zero pad rows at the end of each block (ops::MoePadLayout). The
// GEMM context runs the forward and dgrad GEMMs over such blocks as ONE pointer-array batch of 128-row
// tiles, each tile reading its expert's weight, however unevenly the tokens are routed; the wgrad runs one
// batch per distinct row count. Under FP8 the tokens' rows are quantised once in ForwardBegin and those FP8
// rows gathered by ForwardExperts as bytes (1x128 along the hidden size: a row's codes do not depend on where
// it sits and are the packed layout's), and the block-scaled GEMMs stay per expert on cuBLASLt (it has no
// batched block-scaled mode below its grouped GEMM), but every expert's rows are a multiple of 128: none
// needs the FP8 path's padded tail product (framework/kernels/cuda/fp8_gemm.cu), and the wgrad's 128-token
// column blocks hold the same values as the packed layout's zero-padded ones. Pad rows are zero in the input,
// so they are zero in every GEMM output and gradient and add nothing to the weight gradients; combine and its
// backward skip them.
// The numbers equal the packed layout's. Cost: up to kTileRows - 1 pad rows per expert (~6% of the rows at
// 32 experts x 1024). Measured on an H200 (tests/gpu_bench/gemm_bench.cc, 32 experts x 1024 rows,
// 2048 x 1408): 597-648 TFLOP/s for the pointer-array batch against 450-500 on the per-expert
// multi-stream path. (A first version padded every expert to one capacity and ran the busier experts'
// overflow per expert: at the benchmark model's routing, 1.6-1.9x max/mean load, its ~15 overflowing
// experts per layer cost what the batch saved: 31.1 ms of experts against 30.7.)
//
// Device layout (MoE::ExpertLayout::kDevice, train.expert_gemm own; bf16 without an exchange): the padded
// layout laid out over the worst-case tile budget (cuda::MaxExpertTiles(R, E) tiles of 128 rows, up to
// ~E * 64 rows more than the padded layout needs on average) from the counts ON THE DEVICE: the sort, the
// tile map (ops::MoeTileExperts: each tile's expert and each expert's first tile), the gather (rows past the
// layout are -1 and zero, like pad rows) and the routed GEMMs (ops::TiledGroupedMatmul{NT,NN,TN}: fathom's
// own kernels, which read the tile map) need nothing on the host, so the layer has NO host synchronisation,
// forward or backward. Rows past the layout are never written by the GEMMs and never read by combine or the
// weight gradients. The numbers equal the padded layout's (tests/layers/moe_test.cc on the CPU twin; the
// kernels against f64 in tests/gpu/grouped_gemm_test.cc).
//
// Balance loss: Forward computes, per micro-batch, the mean over the B sequences of Bal_b (see
// cpu::SequenceBalanceLoss) and returns it in MoeStats::balance. BackwardInput adds the gradient of
// balance_weight * that value (through the normalised scores and the sigmoid, to the router weight and
// x; f_i is a constant), with the balance_weight given to that micro-batch's Forward (the model passes
// alpha / micro-batches of the step; 0 = none).
#ifndef FATHOM_LAYERS_MOE_H_
#define FATHOM_LAYERS_MOE_H_

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "framework/config.h"
#include "framework/ops.h"
#include "framework/param_table.h"
#include "layers/expert_exchange.h"
#include "layers/layer.h"
#include "layers/mlp.h"
#include "layers/router.h"

namespace fathom {

// One micro-batch's statistics of one MoE layer, on the layer's device (no sync to produce them).
struct MoeStats {
  int layer = -1;        // the HF layer index of the MoE block
  Tensor expert_counts;  // (E) i64: token copies routed to each global expert (every (token, k) once)
  // (1) f64 on the CPU, f32 on CUDA: the unweighted balance value, the mean over the micro-batch's
  // sequences of Bal_b (ops::SequenceBalanceLoss)
  Tensor balance;
  // Tests: the smallest routing decision margin (cpu::RouterSelectionMargin) when the layer tracks it
  // (set_track_selection_margin), else +infinity.
  double min_selection_margin = std::numeric_limits<double>::infinity();
};

// What the padded layout did in this process since the last reset (fathom bench prints it): MoE forward
// passes that padded, their routed rows and their padded layout's rows; weight-gradient passes that ran on
// the own TN kernel over the tiles (the device layout, or set_own_wgrad).
struct ExpertLayoutTally {
  int64_t passes = 0, rows = 0, layout_rows = 0;
  int64_t tiled_wgrad_passes = 0;
};

class MoE {
 public:
  // Holds the routed experts of `placement` (all by default); `exchange` (not owned, may be null when all
  // experts are local) moves token rows to and from the ranks holding the others.
  MoE(ParamTable& table, const ModelConfig& config, const std::string& prefix, int layer = -1,
      ExpertPlacement placement = {}, ExpertExchange* exchange = nullptr);
  MoE(const MoE&) = delete;
  MoE& operator=(const MoE&) = delete;

  // x (B, T, H) -> y (B, T, H). `balance_weight` scales this micro-batch's balance-loss gradient in its
  // backward; `stats` (may be null) receives the micro-batch's statistics.
  Tensor Forward(int mb, const Tensor& x, double balance_weight = 0.0, MoeStats* stats = nullptr);
  Tensor BackwardInput(int mb, const Tensor& dy);  // dy (B, T, H) -> dx (B, T, H)
  void BackwardWeight(int mb);

  // The phases of Forward and BackwardInput (see the top of this file). `stats` must stay valid until
  // ForwardBegin returns.
  void ForwardBegin(int mb, const Tensor& x, double balance_weight = 0.0, MoeStats* stats = nullptr);
  void ForwardExperts(int mb);
  Tensor ForwardEnd(int mb);  // -> y (B, T, H)
  void BackwardInputBegin(int mb, const Tensor& dy);
  // Also accumulates the routed experts' weight gradients when `expert_weights` (they need nothing else,
  // and run while the input gradient travels); BackwardWeight then skips them.
  void BackwardInputExperts(int mb, bool expert_weights = false);
  Tensor BackwardInputEnd(int mb);  // -> dx (B, T, H)

  // The routed experts' row layout without an exchange (see "Padded (tiled) layout" above): kAuto pads on
  // CUDA, kPacked never pads, kPadded always pads (tests use it to run the padded layout on the CPU, with
  // `tile` rows per tile instead of kTileRows when given), kDevice pads from the device counts (see "Device
  // layout" above; CPU: its twin, for tests). FP8 and the exchange always pack (kDevice included).
  enum class ExpertLayout { kAuto, kPacked, kPadded, kDevice };
  void set_expert_layout(ExpertLayout layout, int64_t tile = 0) {
    layout_ = layout;
    forced_tile_ = tile;
  }
  // The tile of the padded layout: cuda::GemmContext::kTileRows (the rows of one pointer-array problem).
  static constexpr int64_t kTileRows = 128;
  static ExpertLayoutTally& layout_tally();  // process-wide; not thread safe
  // Tests: when on, Forward also reports the smallest routing decision margin (MoeStats), so a gradient
  // check can make sure its perturbations flip no selection. Configuration, not per-step state.
  void set_track_selection_margin(bool on) { track_margin_ = on; }
  // The padded layout's (host counts, 128-row tiles, bf16) routed weight gradients on fathom's own TN kernel
  // (ops::TiledGroupedMatmulTN, the experts' tile ranges made from the device counts) instead of cuBLASLt's
  // batches; the forward and input gradient keep cuBLASLt (train.expert_gemm own_wgrad). Same numbers.
  void set_own_wgrad(bool on) { own_wgrad_ = on; }

  int64_t num_experts() const { return num_experts_; }
  bool has_exchange() const { return exchange_ != nullptr; }
  int64_t num_local_experts() const { return local_experts_; }
  int layer() const { return layer_; }
  int bias_id() const { return router_.bias_id(); }
  int router_weight_id() const { return router_.weight_id(); }
  int gate_proj_id() const { return gate_proj_; }  // (E_local, I, H)
  int up_proj_id() const { return up_proj_; }      // (E_local, I, H)
  int down_proj_id() const { return down_proj_; }  // (E_local, H, I)
  const Router& router() const { return router_; }
  const DenseMlp* shared_experts() const { return shared_.get(); }  // null when n_shared_experts == 0

 private:
  struct Ctx {
    int64_t batch = 0, seq = 0;
    double balance_weight = 0;
    RouterOutput routing;  // scores (N, E), topk_index (N, K) i64, topk_weight (N, K)
    Tensor x_perm;         // (R, H) token copies sorted by expert, R = N * K
    Tensor row_slot;       // (R) i64 slot t * K + k held by each permuted row
    Tensor device_counts;  // (E) i64 rows per expert, on the layer's device
    Tensor counts;         // (E) i64 the same, HOST (once the forward has waited for its copy)
    ops::PendingHostCopy
        host_counts;          // without an exchange: the counts' copy, from ForwardBegin to ForwardExperts
    DispatchHandle dispatch;  // the exchange's layout (local_counts alone without an exchange)
    // The rows of the local experts (all rows without an exchange), R_local of them grouped by local expert.
    Tensor x_local;      // (R_local, H)
    Tensor gate, up, h;  // (R_local, I) expert pre-activations and hidden
    Tensor y_perm;       // (R, H) expert outputs back in this rank's order, unweighted
    Tensor dy_local;     // (R_local, H) set by BackwardInput
    Tensor dgate, dup;   // (R_local, I) set by BackwardInput
    // Between phases: the movement in flight, and what the shared expert computed meanwhile.
    RowsInFlight in_flight;
    Tensor shared_out;  // (N, H) the shared expert's output (forward) or input gradient (backward)
    Tensor dweight;     // (N, K) the routing weights' gradient (backward)
    bool expert_weights_done = false;  // BackwardInputExperts accumulated the routed experts' wgrad
    // FP8 (see the top): x_local and dy_local as packed FP8 rows instead (x_perm is dropped once quantised).
    DType dtype = DType::kF32;  // the activations'
    Fp8Rows xq_local, dyq_local;
    // FP8 in the padded layout: x2's rows quantised once, the shared expert's input too, then gathered into
    // xq_local (each row's codes do not depend on where it sits).
    Fp8Rows xq_tokens;
    // Padded layout (see the top): x2 (N, H) the input, kept from the sort to the gather; the blocks'
    // rows per expert (E, HOST, multiples of the tile); row_slot then has their sum P of rows, -1 at pads.
    Tensor x2;
    bool padded = false;
    Tensor block_counts;
    // Device layout (see the top): the padded layout over the worst-case tile budget, described by
    // tile_expert (T) i32 and tile_begin (E + 1) i32 on the device; counts and block_counts stay undefined.
    bool device_layout = false;
    Tensor tile_expert, tile_begin;
  };

  // Forward steps.
  void Route(int mb, Ctx& c, const Tensor& x2, MoeStats* stats);
  // Sorts the token copies by expert and starts the copy of the counts to the host (returned).
  ops::PendingHostCopy Permute(Ctx& c, const Tensor& x2);
  Tensor ComputeExperts(Ctx& c);  // x_local -> the local experts' outputs (R_local, H)
  // Without an exchange: the gather of the sorted rows, packed or padded (sets x_local and the layout);
  // the device layout's gather needs no host counts.
  void GatherLocalRows(Ctx& c);
  void GatherDeviceLayout(Ctx& c);
  // Whether this layer lays its rows out from the device counts (kDevice, no exchange, not FP8).
  bool device_layout() const { return layout_ == ExpertLayout::kDevice && exchange_ == nullptr && !fp8(); }
  const Tensor& ExpertCounts(const Ctx& c) const;  // the row counts the grouped GEMMs take (HOST)
  Tensor Combine(Ctx& c);                          // (N, H), routed part only
  // Backward steps. dy_local (R_local, H) -> dx_local (R_local, H); sets c.dgate, c.dup.
  Tensor ExpertsBackwardInput(Ctx& c);
  void ExpertsBackwardWeight(Ctx& c);
  // The FP8 forms (layers/moe_fp8.cc), taken when fp8(). StartRowsFp8 starts the dispatch of quantised rows
  // (R, H) (forward: with the counts, recording c.dispatch; backward: with c.dispatch's layout);
  // ArrivedFp8 wraps what arrived.
  bool fp8() const { return table_->fp8(gate_proj_); }
  RowsInFlight StartRowsFp8(Ctx& c, const Fp8Rows& q, bool forward);
  Fp8Rows ArrivedFp8(Ctx& c);
  Tensor ComputeExpertsFp8(Ctx& c);
  Tensor ExpertsBackwardInputFp8(Ctx& c);
  void ExpertsBackwardWeightFp8(Ctx& c);

  ParamTable* table_;
  int64_t hidden_, intermediate_, num_experts_, top_k_;
  int64_t first_expert_, local_experts_;
  ExpertExchange* exchange_;
  int layer_;
  Router router_;
  int gate_proj_, up_proj_, down_proj_;
  std::unique_ptr<DenseMlp> shared_;
  bool track_margin_ = false;
  bool own_wgrad_ = false;
  ExpertLayout layout_ = ExpertLayout::kAuto;
  int64_t forced_tile_ = 0;
  SavedByMicroBatch<Ctx> saved_;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_MOE_H_
