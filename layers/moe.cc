#include "layers/moe.h"

#include <algorithm>
#include <utility>

#include "framework/kernels/cpu/moe.h"
#include "framework/ops.h"
#include "layers/phases.h"

namespace fathom {

MoE::MoE(ParamTable& table, const ModelConfig& config, const std::string& prefix, int layer,
         ExpertPlacement placement, ExpertExchange* exchange)
    : table_(&table),
      hidden_(config.hidden_size),
      intermediate_(config.moe_intermediate_size),
      num_experts_(config.n_routed_experts),
      top_k_(config.num_experts_per_tok),
      first_expert_(placement.begin),
      local_experts_(placement.count < 0 ? config.n_routed_experts : placement.count),
      exchange_(exchange),
      layer_(layer),
      router_(table, config, prefix, layer) {
  FATHOM_CHECK(first_expert_ >= 0 && local_experts_ >= 1 && first_expert_ + local_experts_ <= num_experts_,
               "[moe ", prefix, "] experts [", first_expert_, ", ", first_expert_ + local_experts_, ") of ",
               num_experts_);
  FATHOM_CHECK(exchange_ != nullptr || local_experts_ == num_experts_, "[moe ", prefix, "] holds ",
               local_experts_, " of ", num_experts_, " experts but has no expert exchange");
  auto expert = [&](const char* proj, Shape shape) {
    return table.Add({.name = prefix + ".experts.{e}." + proj + ".weight",
                      .shape = std::move(shape),
                      .group = ParamGroup::kExpert,
                      .layer = layer,
                      .expert_begin = static_cast<int>(first_expert_),
                      .gemm = GemmPrecision::kFp8});
  };
  gate_proj_ = expert("gate_proj", {local_experts_, intermediate_, hidden_});
  up_proj_ = expert("up_proj", {local_experts_, intermediate_, hidden_});
  down_proj_ = expert("down_proj", {local_experts_, hidden_, intermediate_});
  FATHOM_CHECK(config.n_shared_experts >= 0, "[moe ", prefix, "] n_shared_experts ", config.n_shared_experts);
  if (config.n_shared_experts > 0) {
    shared_ = std::make_unique<DenseMlp>(table, prefix + ".shared_experts", hidden_,
                                         intermediate_ * config.n_shared_experts, layer);
  }
}

Tensor MoE::Forward(int mb, const Tensor& x, double balance_weight, MoeStats* stats) {
  ForwardBegin(mb, x, balance_weight, stats);
  ForwardExperts(mb);
  return ForwardEnd(mb);
}

void MoE::ForwardBegin(int mb, const Tensor& x, double balance_weight, MoeStats* stats) {
  FATHOM_CHECK(x.ndim() == 3 && x.dim(2) == hidden_, "[moe ", table_->spec(gate_proj_).name, "] input ",
               x.shape_str(), ", expected (B, T, ", hidden_, ")");
  // Phases (bench): routing, permutation, the exchange and the combine are dispatch/combine; the routed
  // and shared experts' GEMMs and SwiGLU are experts (nested scopes count exclusively).
  ScopedPhase phase(phases::kDispatchCombine);
  Ctx& c = saved_.Put(mb);
  c.batch = x.dim(0);
  c.seq = x.dim(1);
  c.balance_weight = balance_weight;
  c.dtype = x.dtype();
  Tensor x2 = x.Flatten2D();
  Route(mb, c, x2, stats);
  ops::PendingHostCopy host_counts = Permute(c, x2);  // empty in the device layout: nothing to wait for
  if (stats) {
    stats->layer = layer_;
    stats->expert_counts = c.device_counts;  // the permutation's counts: every (token, k) once
  }
  // Without an exchange the permuted rows are the local experts' rows; with one, they travel to the ranks
  // holding their experts (DESIGN.md idea 3: the dispatch communication phase). The exchange lays the rows
  // out by the host counts, so it waits for them here (the layer's one host synchronisation, see the
  // header) and the shared expert runs while the rows travel. Without one, the wait moves to
  // ForwardExperts: the shared expert (and whatever the caller runs between the phases) is queued first and
  // keeps the GPU busy while the host waits. FP8 rows are quantised and laid out by the host counts here,
  // except in the padded layout, which quantises the tokens' rows once here (xq_tokens, the shared expert's
  // input too) and gathers those FP8 rows in ForwardExperts.
  if (fp8() && c.x_perm.defined()) {
    c.counts = host_counts.Wait();
    c.in_flight = StartRowsFp8(c, ops::QuantizeRows(c.x_perm), /*forward=*/true);
    c.x_perm = Tensor();
  } else if (exchange_) {
    c.counts = host_counts.Wait();
    c.in_flight = exchange_->StartDispatch(c.x_perm, c.counts, &c.dispatch);
  } else {
    c.host_counts = std::move(host_counts);
    if (c.x_perm.defined()) c.in_flight = RowsInFlight(c.x_perm);
  }
  // FP8 in the padded layout: the tokens' rows quantised once, for the shared expert and the routed rows.
  if (fp8() && c.x2.defined()) c.xq_tokens = ops::QuantizeRows(x2);
  if (shared_) {  // needs only x: runs while the rows travel
    ScopedPhase experts(phases::kExperts);
    c.shared_out = shared_->Forward(mb, x2, c.xq_tokens.data.defined() ? &c.xq_tokens : nullptr);
  }
}

void MoE::ForwardExperts(int mb) {
  Ctx& c = saved_.Get(mb);
  ScopedPhase phase(phases::kDispatchCombine);
  Tensor y_local;
  if (c.host_counts.pending()) {  // no exchange: the counts' copy was left running by ForwardBegin
    c.counts = c.host_counts.Wait();
    c.dispatch.local_counts = c.counts;
  }
  if (c.device_layout) {
    GatherDeviceLayout(c);
    y_local = ComputeExperts(c);
  } else if (fp8()) {
    if (c.x2.defined()) {  // the padded layout: the tokens' FP8 rows gathered into it
      GatherLocalRows(c);
    } else {
      c.xq_local = ArrivedFp8(c);
    }
    y_local = ComputeExpertsFp8(c);
  } else {
    if (c.x2.defined()) {
      GatherLocalRows(c);  // the sort ran alone: the layout waited for the counts
    } else {
      c.x_local = c.in_flight.Wait();
    }
    y_local = ComputeExperts(c);
  }
  // The way back to the tokens' ranks (the combine communication phase).
  c.in_flight = exchange_ ? exchange_->StartCombine(y_local, c.dispatch) : RowsInFlight(y_local);
}

Tensor MoE::ForwardEnd(int mb) {
  Ctx& c = saved_.Get(mb);
  ScopedPhase phase(phases::kDispatchCombine);
  c.y_perm = c.in_flight.Wait();
  Tensor y = Combine(c);
  if (shared_) ops::AddInPlace(y, c.shared_out);
  c.shared_out = Tensor();
  return y.Reshape({c.batch, c.seq, hidden_});
}

// The router saves x for its own backward; the balance value is a statistic here, its gradient is applied
// in BackwardInput (scaled by the micro-batch's balance weight).
void MoE::Route(int mb, Ctx& c, const Tensor& x2, MoeStats* stats) {
  c.routing = router_.Forward(mb, x2);
  // Only a statistic in the forward (left on the device); the backward recomputes what its gradient needs.
  if (stats)
    stats->balance = ops::SequenceBalanceLoss(c.routing.scores, c.routing.topk_index, c.batch, c.seq);
  if (track_margin_ && stats) {
    // A test-only statistic, computed on the host from host router scores.
    FATHOM_CHECK(c.routing.scores.device() == Device::kCPU, "[moe ", table_->spec(gate_proj_).name,
                 "] selection-margin tracking reads HOST router scores, got scores on ",
                 DeviceName(c.routing.scores.device()));
    stats->min_selection_margin =
        cpu::RouterSelectionMargin(c.routing.scores, table_->value(router_.bias_id()), router_.dims());
  }
}

// Every (token, k) selection is counted once, as in topk_index. The counts are made on the activations'
// device; their copy to the host starts here and is waited for by Forward as late as it can.
// Where the layout may be padded (no exchange), only the sort runs here: the gather waits for the counts
// (GatherLocalRows), so that it can write the padded layout directly.
ops::PendingHostCopy MoE::Permute(Ctx& c, const Tensor& x2) {
  const int64_t rows = x2.dim(0) * top_k_;
  c.row_slot = Tensor::Empty({rows}, DType::kI64, x2.device());
  c.device_counts = Tensor::Empty({num_experts_}, DType::kI64, x2.device());
  c.device_layout = device_layout();
  const bool may_pad = exchange_ == nullptr && layout_ != ExpertLayout::kPacked &&
                       (layout_ == ExpertLayout::kPadded || x2.device() == Device::kCUDA);
  if (c.device_layout || may_pad) {
    ops::MoeSortByExpert(c.row_slot, c.device_counts, c.routing.topk_index);
    c.x2 = x2;
  } else {
    c.x_perm = Tensor::Empty({rows, hidden_}, x2.dtype(), x2.device());
    ops::MoePermute(c.x_perm, c.row_slot, c.device_counts, x2, c.routing.topk_index);
  }
  if (c.device_layout) return {};  // the counts stay on the device
  return ops::CopyToHostAsync(c.device_counts);
}

ExpertLayoutTally& MoE::layout_tally() {
  static ExpertLayoutTally tally;
  return tally;
}

void MoE::GatherLocalRows(Ctx& c) {
  const Device dev = c.x2.device();
  const int64_t tile = forced_tile_ > 0 ? forced_tile_ : kTileRows;
  const int64_t rows = cpu::PaddedRows(c.counts, tile);
  Tensor padded = Tensor::Empty({rows}, DType::kI64, dev);
  ops::MoePadLayout(padded, c.row_slot, c.device_counts, tile);
  c.row_slot = padded;
  if (c.xq_tokens.data.defined()) {  // FP8: the quantised rows, as bytes
    c.xq_local = Fp8Rows::Empty(rows, hidden_, dev);
    ops::MoeGatherRows(c.xq_local.data, c.xq_tokens.data, c.row_slot, top_k_);
    c.xq_tokens = Fp8Rows();
  } else {
    c.x_local = Tensor::Empty({rows, hidden_}, c.x2.dtype(), dev);
    ops::MoeGatherRows(c.x_local, c.x2, c.row_slot, top_k_);
  }
  c.block_counts = Tensor::Empty({num_experts_}, DType::kI64);
  ExpertLayoutTally& tally = layout_tally();
  ++tally.passes;
  tally.layout_rows += rows;
  for (int64_t e = 0; e < num_experts_; ++e) {
    const int64_t n = c.counts.data<int64_t>()[e];
    c.block_counts.data<int64_t>()[e] = (n + tile - 1) / tile * tile;
    tally.rows += n;
  }
  c.padded = true;
  c.x2 = Tensor();
}

// The device layout: the budget's tiles, their experts from the device counts, the rows gathered into them.
void MoE::GatherDeviceLayout(Ctx& c) {
  const Device dev = c.x2.device();
  const int64_t routed = c.row_slot.dim(0), rows = cpu::MaxPaddedRows(routed, num_experts_, kTileRows);
  const int64_t tiles = rows / kTileRows;
  c.tile_expert = Tensor::Empty({tiles}, DType::kI32, dev);
  c.tile_begin = Tensor::Empty({num_experts_ + 1}, DType::kI32, dev);
  ops::MoeTileExperts(c.tile_expert, c.tile_begin, c.device_counts);
  Tensor padded = Tensor::Empty({rows}, DType::kI64, dev);
  ops::MoePadLayout(padded, c.row_slot, c.device_counts, kTileRows, /*budget=*/true);
  c.row_slot = padded;
  c.x_local = Tensor::Empty({rows, hidden_}, c.x2.dtype(), dev);
  ops::MoeGatherRows(c.x_local, c.x2, c.row_slot, top_k_);
  ExpertLayoutTally& tally = layout_tally();
  ++tally.passes;
  tally.layout_rows += rows;
  tally.rows += routed;
  c.padded = true;
  c.x2 = Tensor();
}

// The padded layout's GEMMs take the block counts (multiples of the tile, which the GEMM context runs as
// one pointer-array batch of tiles for NT and NN); the packed layout's the routed counts.
const Tensor& MoE::ExpertCounts(const Ctx& c) const {
  return c.padded ? c.block_counts : c.dispatch.local_counts;
}

Tensor MoE::ComputeExperts(Ctx& c) {
  ScopedPhase phase(phases::kExperts);
  const int64_t rows = c.x_local.dim(0);
  const DType dt = c.x_local.dtype();
  const Device dev = c.x_local.device();
  c.gate = Tensor::Empty({rows, intermediate_}, dt, dev);
  c.up = Tensor::Empty({rows, intermediate_}, dt, dev);
  c.h = Tensor::Empty({rows, intermediate_}, dt, dev);
  Tensor y_local = Tensor::Empty({rows, hidden_}, dt, dev);
  if (c.device_layout) {
    ops::TiledGroupedMatmulNT(c.gate, c.x_local, table_->compute_value(gate_proj_), c.tile_expert);
    ops::TiledGroupedMatmulNT(c.up, c.x_local, table_->compute_value(up_proj_), c.tile_expert);
    ops::SwiGluForward(c.h, c.gate, c.up);
    ops::TiledGroupedMatmulNT(y_local, c.h, table_->compute_value(down_proj_), c.tile_expert);
    return y_local;
  }
  const Tensor& counts = ExpertCounts(c);
  ops::GroupedMatmulNT(c.gate, c.x_local, table_->compute_value(gate_proj_), counts);
  ops::GroupedMatmulNT(c.up, c.x_local, table_->compute_value(up_proj_), counts);
  ops::SwiGluForward(c.h, c.gate, c.up);
  ops::GroupedMatmulNT(y_local, c.h, table_->compute_value(down_proj_), counts);
  return y_local;
}

Tensor MoE::Combine(Ctx& c) {
  Tensor y = Tensor::Empty({c.batch * c.seq, hidden_}, c.y_perm.dtype(), c.y_perm.device());
  ops::MoeCombine(y, c.y_perm, c.row_slot, c.routing.topk_weight);
  return y;
}

Tensor MoE::BackwardInput(int mb, const Tensor& dy) {
  BackwardInputBegin(mb, dy);
  BackwardInputExperts(mb);
  return BackwardInputEnd(mb);
}

void MoE::BackwardInputBegin(int mb, const Tensor& dy) {
  Ctx& c = saved_.Get(mb);
  FATHOM_CHECK(dy.ndim() == 3 && dy.dim(0) == c.batch && dy.dim(1) == c.seq && dy.dim(2) == hidden_,
               "[moe] dy ", dy.shape_str());
  ScopedPhase phase(phases::kDispatchCombine);
  Tensor dy2 = dy.Flatten2D();
  // dweight is in the router's dtype (topk_weight's), the output gradient in the activations'.
  c.dweight = Tensor::Empty(c.routing.topk_weight.shape(), c.routing.topk_weight.dtype(), dy2.device());
  // Combine's backward produces the output gradient in this rank's row order (in FP8 quantised in the same
  // pass where the GPU can); it travels to the experts the same way the tokens did (the combine-backward
  // communication phase).
  if (fp8()) {
    c.in_flight = StartRowsFp8(
        c, ops::MoeCombineBackwardQuantized(c.dweight, dy2, c.y_perm, c.row_slot, c.routing.topk_weight),
        /*forward=*/false);
  } else {
    Tensor dy_perm = Tensor::Empty(c.y_perm.shape(), dy2.dtype(), dy2.device());
    ops::MoeCombineBackward(dy_perm, c.dweight, dy2, c.y_perm, c.row_slot, c.routing.topk_weight);
    c.in_flight = exchange_ ? exchange_->StartDispatch(dy_perm, c.dispatch) : RowsInFlight(dy_perm);
  }
  if (shared_) {  // needs only dy: runs while the gradient travels
    ScopedPhase experts(phases::kExperts);
    c.shared_out = shared_->BackwardInput(mb, dy2);
  }
}

void MoE::BackwardInputExperts(int mb, bool expert_weights) {
  Ctx& c = saved_.Get(mb);
  ScopedPhase phase(phases::kDispatchCombine);
  Tensor dx_local;
  if (fp8()) {
    c.dyq_local = ArrivedFp8(c);
    dx_local = ExpertsBackwardInputFp8(c);
  } else {
    c.dy_local = c.in_flight.Wait();
    dx_local = ExpertsBackwardInput(c);
  }
  // The input gradient goes back to the tokens' ranks.
  c.in_flight = exchange_ ? exchange_->StartCombine(dx_local, c.dispatch) : RowsInFlight(dx_local);
  if (expert_weights) {
    ScopedPhase experts(phases::kExperts);
    ExpertsBackwardWeight(c);
    c.expert_weights_done = true;
  }
}

Tensor MoE::BackwardInputEnd(int mb) {
  Ctx& c = saved_.Get(mb);
  ScopedPhase phase(phases::kDispatchCombine);
  Tensor dx_perm = c.in_flight.Wait();
  const int64_t tokens = c.batch * c.seq;
  Tensor dx;
  if (shared_) {
    dx = c.shared_out;
    c.shared_out = Tensor();
    ops::MoePermuteBackward(dx, dx_perm, c.row_slot, /*accumulate=*/true, top_k_);
  } else {
    dx = Tensor::Empty({tokens, hidden_}, dx_perm.dtype(), dx_perm.device());
    ops::MoePermuteBackward(dx, dx_perm, c.row_slot, /*accumulate=*/false, top_k_);
  }
  Tensor dscores;  // the balance loss is the only other consumer of the router scores
  if (c.balance_weight != 0.0) {
    dscores = Tensor::Zeros(c.routing.scores.shape(), c.routing.scores.dtype(), c.routing.scores.device());
    ops::SequenceBalanceLossBackward(dscores, c.routing.scores, c.routing.topk_index, c.batch, c.seq,
                                     c.balance_weight);
  }
  router_.BackwardInput(mb, dx, c.dweight, dscores);
  c.dweight = Tensor();
  return dx.Reshape({c.batch, c.seq, hidden_});
}

// dy_local (R_local, H) -> dx_local (R_local, H) through the local experts.
Tensor MoE::ExpertsBackwardInput(Ctx& c) {
  ScopedPhase phase(phases::kExperts);
  const int64_t rows = c.x_local.dim(0);
  const DType dt = c.x_local.dtype();
  const Device dev = c.x_local.device();
  Tensor dh = Tensor::Empty({rows, intermediate_}, dt, dev);
  c.dgate = Tensor::Empty({rows, intermediate_}, dt, dev);
  c.dup = Tensor::Empty({rows, intermediate_}, dt, dev);
  Tensor dx_local = Tensor::Empty({rows, hidden_}, dt, dev);
  if (c.device_layout) {
    ops::TiledGroupedMatmulNN(dh, c.dy_local, table_->compute_value(down_proj_), c.tile_expert);
    ops::SwiGluBackward(c.dgate, c.dup, dh, c.gate, c.up);
    ops::TiledGroupedMatmulNN(dx_local, c.dgate, table_->compute_value(gate_proj_), c.tile_expert);
    ops::TiledGroupedMatmulNN(dx_local, c.dup, table_->compute_value(up_proj_), c.tile_expert, /*accumulate=*/true);
    return dx_local;
  }
  const Tensor& counts = ExpertCounts(c);
  ops::GroupedMatmulNN(dh, c.dy_local, table_->compute_value(down_proj_), counts);
  ops::SwiGluBackward(c.dgate, c.dup, dh, c.gate, c.up);
  ops::GroupedMatmulNN(dx_local, c.dgate, table_->compute_value(gate_proj_), counts);
  ops::GroupedMatmulNN(dx_local, c.dup, table_->compute_value(up_proj_), counts, /*accumulate=*/true);
  return dx_local;
}

void MoE::BackwardWeight(int mb) {
  Ctx& c = saved_.Get(mb);
  FATHOM_CHECK(c.dy_local.defined() || c.dyq_local.defined(),
               "[moe] BackwardWeight before BackwardInput for micro-batch ", mb);
  ScopedPhase phase(phases::kExperts);  // with the router's small weight gradient
  if (!c.expert_weights_done) ExpertsBackwardWeight(c);
  router_.BackwardWeight(mb);
  if (shared_) shared_->BackwardWeight(mb);
  saved_.Drop(mb);
}

// The expert stacks' gradients have no other writer, so on the first weight-gradient pass of a step (in
// whatever micro-batch order the schedule runs them) the table still knows them to be zero: the GEMMs then
// overwrite (beta 0) instead of adding into zeros, which gives the same values and does not read the f32
// gradients (4 bytes per routed-expert weight per step: 7.75 GB on recipes/small.yaml's 1.94 G expert
// weights). Later micro-batches of the step accumulate, as the gradient contract says.
void MoE::ExpertsBackwardWeight(Ctx& c) {
  if (fp8()) return ExpertsBackwardWeightFp8(c);
  auto wgrad = [&](int id, const Tensor& x, const Tensor& y) {
    bool known_zero = false;
    const Tensor grad = table_->GradForWrite(id, &known_zero);
    if (c.tile_begin.defined()) {  // the device layout, or the padded one under set_own_wgrad
      ops::TiledGroupedMatmulTN(grad, x, y, c.tile_begin, /*accumulate=*/!known_zero);
    } else {
      ops::GroupedMatmulTN(grad, x, y, ExpertCounts(c), /*accumulate=*/!known_zero);
    }
  };
  if (own_wgrad_ && c.padded && !c.device_layout && (forced_tile_ == 0 || forced_tile_ == kTileRows)) {
    // The padded layout's tiles and each expert's first tile, from the counts still on the device.
    const Device dev = c.x_local.device();
    c.tile_expert = Tensor::Empty({c.x_local.dim(0) / kTileRows}, DType::kI32, dev);
    c.tile_begin = Tensor::Empty({num_experts_ + 1}, DType::kI32, dev);
    ops::MoeTileExperts(c.tile_expert, c.tile_begin, c.device_counts);
  }
  if (c.tile_begin.defined()) ++layout_tally().tiled_wgrad_passes;
  wgrad(down_proj_, c.dy_local, c.h);
  wgrad(gate_proj_, c.dgate, c.x_local);
  wgrad(up_proj_, c.dup, c.x_local);
}

}  // namespace fathom
