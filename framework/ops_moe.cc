#include "framework/kernels/cpu/activation.h"
#include "framework/kernels/cpu/moe.h"
#include "framework/ops.h"
#include "framework/ops_checks.h"
#include "framework/ops_cuda.h"

// The MoE ops of framework/ops.h: router selection, the sequence-wise balance loss, token permutation and
// the weighted combine, with their backwards.
namespace fathom::ops {

using checks::Floats;
using checks::FloatsOn;
using checks::Index;
using checks::OneDevice;
using checks::SameDevice;

// ---- Router and balance loss
// -------------------------------------------------------------------------------

void RouterSelect(const Tensor& topk_index, const Tensor& topk_weight, const Tensor& scores,
                  const Tensor& logits, const Tensor& bias, const RouterDims& d) {
  const char* op = "router_select";
  const Device dev = OneDevice(op, "topk_index", topk_index, "topk_weight", topk_weight, "scores", scores,
                               "logits", logits, "bias", bias);
  Index(op, "topk_index", topk_index, DType::kI64);
  Floats(op, dev, "logits", logits, "scores", scores, "topk_weight", topk_weight, "bias", bias);
  if (dev == Device::kCPU) {
    cpu::SigmoidForward(scores, logits);
    return cpu::RouterSelect(topk_index, topk_weight, scores, bias, d);
  }
  FATHOM_OPS_ON_CUDA(op, cuda_impl::RouterSelect(topk_index, topk_weight, scores, logits, bias, d));
}

void RouterSelectBackward(const Tensor& dlogits, const Tensor& dweight, const Tensor& dscores,
                          const Tensor& scores, const Tensor& topk_index, const RouterDims& d) {
  const char* op = "router_select_backward";
  const Device dev =
      OneDevice(op, "dlogits", dlogits, "dweight", dweight, "scores", scores, "topk_index", topk_index);
  Index(op, "topk_index", topk_index, DType::kI64);
  Floats(op, dev, "scores", scores, "dlogits", dlogits, "dweight", dweight);
  if (dscores.defined()) {
    OneDevice(op, "dlogits", dlogits, "dscores", dscores);
    Floats(op, dev, "scores", scores, "dscores", dscores);
  }
  if (dev == Device::kCPU) {
    // The router's composition: the selection gradient accumulates onto dscores (or zeros), then the
    // sigmoid's derivative is applied in place.
    Tensor ds = dlogits;  // a view: Zero and CopyFrom are non-const members
    if (!dscores.defined()) {
      ds.Zero();
    } else if (dscores.raw() != dlogits.raw()) {
      ds.CopyFrom(dscores);
    }
    cpu::RouterSelectBackward(dlogits, dweight, scores, topk_index, d);
    return cpu::SigmoidBackward(dlogits, dlogits, scores);
  }
  FATHOM_OPS_ON_CUDA(op, cuda_impl::RouterSelectBackward(dlogits, dweight, dscores, scores, topk_index, d));
}

Tensor SequenceBalanceLoss(const Tensor& scores, const Tensor& topk_index, int64_t batch, int64_t seq) {
  const char* op = "sequence_balance_loss";
  const Device dev = OneDevice(op, "scores", scores, "topk_index", topk_index);
  Index(op, "topk_index", topk_index, DType::kI64);
  Floats(op, dev, "scores", scores);
  if (dev == Device::kCPU) {
    return Tensor::FromVector({cpu::SequenceBalanceLoss(scores, topk_index, batch, seq)}, {1}, DType::kF64);
  }
#ifdef FATHOM_WITH_CUDA
  return cuda_impl::SequenceBalanceLoss(scores, topk_index, batch, seq);
#else
  checks::NoCudaBackend(op);
#endif
}

void SequenceBalanceLossBackward(const Tensor& dscores, const Tensor& scores, const Tensor& topk_index,
                                 int64_t batch, int64_t seq, double weight) {
  const char* op = "sequence_balance_loss_backward";
  const Device dev = OneDevice(op, "dscores", dscores, "scores", scores, "topk_index", topk_index);
  Index(op, "topk_index", topk_index, DType::kI64);
  Floats(op, dev, "scores", scores, "dscores", dscores);
  if (dev == Device::kCPU)
    return cpu::SequenceBalanceLossBackward(dscores, scores, topk_index, batch, seq, weight);
  FATHOM_OPS_ON_CUDA(op,
                     cuda_impl::SequenceBalanceLossBackward(dscores, scores, topk_index, batch, seq, weight));
}

void ExpertBiasUpdate(const Tensor& bias, const Tensor& load, double gamma) {
  const char* op = "expert_bias_update";
  const Device dev = OneDevice(op, "bias", bias, "load", load);
  Index(op, "load", load, DType::kI64);
  Floats(op, dev, "bias", bias);
  if (dev == Device::kCPU) return cpu::ExpertBiasUpdate(bias, load, gamma);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::ExpertBiasUpdate(bias, load, gamma));
}

// ---- Token permutation and combine -----------------------------------------------------------------------

void MoePermute(const Tensor& x_perm, const Tensor& row_slot, const Tensor& counts, const Tensor& x,
                const Tensor& topk_index) {
  const char* op = "moe_permute";
  const Device dev = OneDevice(op, "x_perm", x_perm, "row_slot", row_slot, "counts", counts, "x", x,
                               "topk_index", topk_index);
  Index(op, "row_slot", row_slot, DType::kI64);
  Index(op, "counts", counts, DType::kI64);
  Index(op, "topk_index", topk_index, DType::kI64);
  Floats(op, dev, "x", x, "x_perm", x_perm);
  FATHOM_CHECK(counts.ndim() == 1, "[", op, "] counts ", counts.shape_str(), ", expected (E)");
  if (dev == Device::kCPU) return cpu::MoePermute(x_perm, row_slot, counts, x, topk_index);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::MoePermute(x_perm, row_slot, counts, x, topk_index));
}

void MoeSortByExpert(const Tensor& row_slot, const Tensor& counts, const Tensor& topk_index) {
  const char* op = "moe_sort_by_expert";
  const Device dev = OneDevice(op, "row_slot", row_slot, "counts", counts, "topk_index", topk_index);
  Index(op, "row_slot", row_slot, DType::kI64);
  Index(op, "counts", counts, DType::kI64);
  Index(op, "topk_index", topk_index, DType::kI64);
  FATHOM_CHECK(counts.ndim() == 1, "[", op, "] counts ", counts.shape_str(), ", expected (E)");
  if (dev == Device::kCPU) return cpu::MoeSortByExpert(row_slot, counts, topk_index);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::MoeSortByExpert(row_slot, counts, topk_index));
}

void MoeGatherRows(const Tensor& x_perm, const Tensor& x, const Tensor& row_slot, int64_t top_k) {
  const char* op = "moe_gather_rows";
  const Device dev = OneDevice(op, "x_perm", x_perm, "x", x, "row_slot", row_slot);
  Index(op, "row_slot", row_slot, DType::kI64);
  if (x.dtype() == DType::kF8E4M3) {  // packed FP8 rows (Fp8Rows::data): moved as bytes
    FATHOM_CHECK(x_perm.dtype() == DType::kF8E4M3, "[", op, "] x holds FP8 rows, x_perm is ",
                 DTypeName(x_perm.dtype()));
  } else {
    Floats(op, dev, "x", x, "x_perm", x_perm);
  }
  if (dev == Device::kCPU) return cpu::MoeGatherRows(x_perm, x, row_slot, top_k);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::MoeGatherRows(x_perm, x, row_slot, top_k));
}

void MoePadLayout(const Tensor& padded, const Tensor& row_slot, const Tensor& counts, int64_t tile, bool budget) {
  const char* op = "moe_pad_layout";
  const Device dev = OneDevice(op, "padded", padded, "row_slot", row_slot, "counts", counts);
  Index(op, "padded", padded, DType::kI64);
  Index(op, "row_slot", row_slot, DType::kI64);
  Index(op, "counts", counts, DType::kI64);
  if (dev == Device::kCPU) {
    if (!budget) return cpu::MoePadLayout(padded, row_slot, counts, tile);
    const int64_t p = cpu::PaddedRows(counts, tile);
    FATHOM_CHECK(padded.ndim() == 1 && padded.dim(0) >= p, "[", op, "] padded ", padded.shape_str(),
                 " is shorter than the layout's ", p, " rows");
    cpu::MoePadLayout(padded.Rows(0, p), row_slot, counts, tile);
    for (int64_t i = p; i < padded.dim(0); ++i) padded.data<int64_t>()[i] = -1;
    return;
  }
  FATHOM_OPS_ON_CUDA(op, cuda_impl::MoePadLayout(padded, row_slot, counts, tile, budget));
}

// ---- The device-count expert layout
// --------------------------------------------------------------------------------

namespace {

constexpr int64_t kLayoutTile = 128;  // cuda::kGroupedTileRows

void TileIndex(const char* op, const char* name, const Tensor& t, int64_t n) {  // n < 0: any length
  FATHOM_CHECK(t.dtype() == DType::kI32 && t.ndim() == 1 && (n < 0 || t.dim(0) == n), "[", op, "] ", name, " ",
               t.shape_str(), " ", DTypeName(t.dtype()), ", expected (", n < 0 ? "T" : std::to_string(n), ") i32");
}

// The CPU twin's view of a tile map: each expert's rows (its tiles x 128) and the used tiles' rows, from
// tile_begin (E + 1).
Tensor CountsOfTiles(const Tensor& tile_begin) {
  const int64_t e = tile_begin.dim(0) - 1;
  Tensor counts = Tensor::Empty({e}, DType::kI64);
  for (int64_t i = 0; i < e; ++i)
    counts.data<int64_t>()[i] = (tile_begin.data<int32_t>()[i + 1] - tile_begin.data<int32_t>()[i]) * kLayoutTile;
  return counts;
}

// The same from tile_expert (T): the used tiles come first, in expert order.
Tensor CountsOfMap(const Tensor& tile_expert, int64_t experts) {
  Tensor counts = Tensor::Zeros({experts}, DType::kI64);
  for (int64_t t = 0; t < tile_expert.dim(0); ++t) {
    const int32_t e = tile_expert.data<int32_t>()[t];
    if (e < 0) break;
    FATHOM_CHECK(e < experts, "[tiled_grouped_matmul] tile ", t, " names expert ", e, " of ", experts);
    counts.data<int64_t>()[e] += kLayoutTile;
  }
  return counts;
}

}  // namespace

void MoeTileExperts(const Tensor& tile_expert, const Tensor& tile_begin, const Tensor& counts) {
  const char* op = "moe_tile_experts";
  const Device dev = OneDevice(op, "tile_expert", tile_expert, "tile_begin", tile_begin, "counts", counts);
  Index(op, "counts", counts, DType::kI64);
  FATHOM_CHECK(counts.ndim() == 1 && counts.dim(0) >= 1, "[", op, "] counts ", counts.shape_str(), ", expected (E)");
  TileIndex(op, "tile_expert", tile_expert, -1);
  TileIndex(op, "tile_begin", tile_begin, counts.dim(0) + 1);
  if (dev == Device::kCPU) {
    int32_t* begin = tile_begin.data<int32_t>();
    begin[0] = 0;
    for (int64_t e = 0; e < counts.dim(0); ++e)
      begin[e + 1] = begin[e] + static_cast<int32_t>((counts.data<int64_t>()[e] + kLayoutTile - 1) / kLayoutTile);
    FATHOM_CHECK(begin[counts.dim(0)] <= tile_expert.dim(0), "[", op, "] the layout needs ", begin[counts.dim(0)],
                 " tiles, the budget is ", tile_expert.dim(0));
    int64_t e = 0;
    for (int64_t t = 0; t < tile_expert.dim(0); ++t) {
      while (e < counts.dim(0) && t >= begin[e + 1]) ++e;
      tile_expert.data<int32_t>()[t] = e < counts.dim(0) ? static_cast<int32_t>(e) : -1;
    }
    return;
  }
  FATHOM_OPS_ON_CUDA(op, cuda_impl::MoeTileExperts(tile_expert, tile_begin, counts));
}

namespace {

// The row-tile forms' checks; true when the CPU twin ran (cpu_form over the used tiles' rows).
using CpuGroupedForm = void (*)(const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool);
bool TiledRowsOnCpu(const char* op, const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                    bool accumulate, CpuGroupedForm cpu_form) {
  const Device dev = OneDevice(op, "out", out, "x", x, "w", w, "tile_expert", tile_expert);
  Floats(op, dev, "out", out, "x", x, "w", w);
  TileIndex(op, "tile_expert", tile_expert, -1);
  if (dev != Device::kCPU) return false;
  const Tensor counts = CountsOfMap(tile_expert, w.dim(0));
  const int64_t rows = cpu::PaddedRows(counts, kLayoutTile);  // whole tiles: their sum
  cpu_form(out.Rows(0, rows), x.Rows(0, rows), w, counts, accumulate);
  return true;
}

}  // namespace

void TiledGroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert) {
  const char* op = "tiled_grouped_matmul_nt";
  if (TiledRowsOnCpu(op, out, x, w, tile_expert, false, cpu::GroupedMatmulNT)) return;
  FATHOM_OPS_ON_CUDA(op, cuda_impl::TiledGroupedMatmulNT(out, x, w, tile_expert));
}

void TiledGroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                          bool accumulate) {
  const char* op = "tiled_grouped_matmul_nn";
  if (TiledRowsOnCpu(op, out, x, w, tile_expert, accumulate, cpu::GroupedMatmulNN)) return;
  FATHOM_OPS_ON_CUDA(op, cuda_impl::TiledGroupedMatmulNN(out, x, w, tile_expert, accumulate));
}

void TiledGroupedMatmulTN(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& tile_begin,
                          bool accumulate) {
  const char* op = "tiled_grouped_matmul_tn";
  const Device dev = OneDevice(op, "out", out, "a", a, "b", b, "tile_begin", tile_begin);
  Floats(op, dev, "out", out, "a", a, "b", b);
  TileIndex(op, "tile_begin", tile_begin, -1);
  if (dev == Device::kCPU) {
    const Tensor counts = CountsOfTiles(tile_begin);
    const int64_t rows = cpu::PaddedRows(counts, kLayoutTile);  // whole tiles: their sum
    return cpu::GroupedMatmulTN(out, a.Rows(0, rows), b.Rows(0, rows), counts, accumulate);
  }
  FATHOM_OPS_ON_CUDA(op, cuda_impl::TiledGroupedMatmulTN(out, a, b, tile_begin, accumulate));
}

void MoePermuteBackward(const Tensor& dx, const Tensor& dx_perm, const Tensor& row_slot, bool accumulate,
                        int64_t top_k) {
  const char* op = "moe_permute_backward";
  const Device dev = OneDevice(op, "dx", dx, "dx_perm", dx_perm, "row_slot", row_slot);
  Index(op, "row_slot", row_slot, DType::kI64);
  Floats(op, dev, "dx_perm", dx_perm, "dx", dx);
  if (dev == Device::kCPU) return cpu::MoePermuteBackward(dx, dx_perm, row_slot, accumulate, top_k);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::MoePermuteBackward(dx, dx_perm, row_slot, accumulate, top_k));
}

void MoeCombine(const Tensor& out, const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight) {
  const char* op = "moe_combine";
  const Device dev =
      OneDevice(op, "out", out, "y_perm", y_perm, "row_slot", row_slot, "topk_weight", topk_weight);
  Index(op, "row_slot", row_slot, DType::kI64);
  Floats(op, dev, "y_perm", y_perm, "out", out, "topk_weight", topk_weight);
  if (dev == Device::kCPU) return cpu::MoeCombine(out, y_perm, row_slot, topk_weight);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::MoeCombine(out, y_perm, row_slot, topk_weight));
}

void MoeCombineBackward(const Tensor& dy_perm, const Tensor& dweight, const Tensor& dout,
                        const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight) {
  const char* op = "moe_combine_backward";
  const Device dev = OneDevice(op, "dy_perm", dy_perm, "dweight", dweight, "dout", dout, "y_perm", y_perm,
                               "row_slot", row_slot, "topk_weight", topk_weight);
  Index(op, "row_slot", row_slot, DType::kI64);
  Floats(op, dev, "dout", dout, "y_perm", y_perm, "dy_perm", dy_perm, "dweight", dweight, "topk_weight",
         topk_weight);
  if (dev == Device::kCPU)
    return cpu::MoeCombineBackward(dy_perm, dweight, dout, y_perm, row_slot, topk_weight);
  FATHOM_OPS_ON_CUDA(op,
                     cuda_impl::MoeCombineBackward(dy_perm, dweight, dout, y_perm, row_slot, topk_weight));
}

Fp8Rows MoeCombineBackwardQuantized(const Tensor& dweight, const Tensor& dout, const Tensor& y_perm,
                                    const Tensor& row_slot, const Tensor& topk_weight) {
  const Device dev = y_perm.device();
#ifdef FATHOM_WITH_CUDA
  if (dev == Device::kCUDA && cuda_impl::MoeCombineBackwardFp8Supported(dout, y_perm)) {
    Fp8Rows q = Fp8Rows::Empty(y_perm.dim(0), y_perm.dim(1), dev);
    cuda_impl::MoeCombineBackwardFp8(q.data, dweight, dout, y_perm, row_slot, topk_weight);
    return q;
  }
#endif
  const Tensor dy_perm = Tensor::Empty(y_perm.shape(), dout.dtype(), dev);
  MoeCombineBackward(dy_perm, dweight, dout, y_perm, row_slot, topk_weight);
  return QuantizeRows(dy_perm);
}

}  // namespace fathom::ops
