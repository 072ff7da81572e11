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
  Floats(op, dev, "x", x, "x_perm", x_perm);
  if (dev == Device::kCPU) return cpu::MoeGatherRows(x_perm, x, row_slot, top_k);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::MoeGatherRows(x_perm, x, row_slot, top_k));
}

void MoePadLayout(const Tensor& padded, const Tensor& row_slot, const Tensor& counts, int64_t tile) {
  const char* op = "moe_pad_layout";
  const Device dev = OneDevice(op, "padded", padded, "row_slot", row_slot, "counts", counts);
  Index(op, "padded", padded, DType::kI64);
  Index(op, "row_slot", row_slot, DType::kI64);
  Index(op, "counts", counts, DType::kI64);
  if (dev == Device::kCPU) return cpu::MoePadLayout(padded, row_slot, counts, tile);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::MoePadLayout(padded, row_slot, counts, tile));
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

}  // namespace fathom::ops
