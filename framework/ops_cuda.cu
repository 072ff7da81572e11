// The CUDA half of framework/ops.h: each op queues its kernel on the current OpContext's stream and takes
// what the kernel needs beyond its CPU twin's arguments (workspaces, slot_row, the loss sums) from the
// current DevicePool, and host staging from the OpContext. Temporaries are released when they go out of
// scope, while their kernels may still be queued: the pool hands a released block only to later work on the
// same stream (device_pool.h), and Empty() below checks that the pool's stream is the context's.
#include <cuda_runtime.h>

#include <cstring>

#include "framework/cuda/check.h"
#include "framework/cuda/device_pool.h"
#include "framework/cuda/host_staging.h"
#include "framework/kernels/cuda/activation.h"
#include "framework/kernels/cuda/attention.h"
#include "framework/kernels/cuda/columns.h"
#include "framework/kernels/cuda/cross_entropy.h"
#include "framework/kernels/cuda/elementwise.h"
#include "framework/kernels/cuda/embedding.h"
#include "framework/kernels/cuda/gemm.h"
#include "framework/kernels/cuda/grouped_gemm.h"
#include "framework/kernels/cuda/moe.h"
#include "framework/kernels/cuda/norm.h"
#include "framework/kernels/cuda/rope.h"
#include "framework/ops.h"
#include "framework/ops_cuda.h"

namespace fathom::ops {

cuda::GemmContext& OpContext::gemm() {
  if (!gemm_) gemm_ = std::make_shared<cuda::GemmContext>(gemm_workspace_bytes_);
  return *gemm_;
}

cuda::HostStaging& OpContext::staging() {
  if (!staging_) staging_ = std::make_shared<cuda::HostStaging>();
  return *staging_;
}

// A leased staging slot and what its bytes are. Destroyed unwaited (the PendingHostCopy dropped), it waits
// for the copy before freeing the slot, which may then be reused.
struct StagingLease {
  cuda::HostStaging* staging = nullptr;
  int slot = -1;
  Shape shape;
  DType dtype = DType::kF32;
  ~StagingLease() {
    if (slot < 0) return;
    staging->Wait(slot);
    staging->Release(slot);
  }
};

namespace cuda_impl {
namespace {

OpContext& Context(const char* op) {
  OpContext* c = CurrentOpContext();
  FATHOM_CHECK(c != nullptr, "[", op,
               "] CUDA tensors but no ops::OpContext on this thread: install one with "
               "ops::OpContextScope (framework/ops.h)");
  return *c;
}

cudaStream_t Raw(cuda::Stream s) { return reinterpret_cast<cudaStream_t>(s); }

// Waits for everything queued on the context's stream: the SYNC POINTs of ops.h.
void Wait(const OpContext& ctx) { FATHOM_CUDA_CHECK(cudaStreamSynchronize(Raw(ctx.stream()))); }

// slot_row[row_slot[r]] = r: the inverse permutation the gather kernels of the backward and combine read
// (-1 rows, the pad rows of a padded layout, hold no slot). A slot outside [0, rows) is a broken row_slot
// (the CPU twin checks it): trap, which the next checked CUDA call reports.
__global__ void InvertRowSlotKernel(int64_t* slot_row, const int64_t* row_slot, int64_t rows) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const int64_t s = row_slot[r];
  if (s == -1) return;
  if (s < 0 || s >= rows) {
    printf("[moe] row_slot[%lld] = %lld outside [0, %lld)\n", static_cast<long long>(r),
           static_cast<long long>(s), static_cast<long long>(rows));
    __trap();
  }
  slot_row[s] = r;
}

Tensor SlotRow(const char* op, const OpContext& ctx, const Tensor& row_slot) {
  FATHOM_CHECK(row_slot.ndim() == 1, "[", op, "] row_slot ", row_slot.shape_str(), ", expected (R)");
  const int64_t rows = row_slot.dim(0);
  Tensor slot_row = Empty(op, {rows}, DType::kI64);
  if (rows > 0) {
    constexpr int kThreads = 256;
    InvertRowSlotKernel<<<static_cast<unsigned>((rows + kThreads - 1) / kThreads), kThreads, 0,
                          Raw(ctx.stream())>>>(slot_row.data<int64_t>(), row_slot.data<int64_t>(), rows);
    FATHOM_CUDA_CHECK_LAUNCH();
  }
  return slot_row;
}

}  // namespace

Tensor Empty(const char* op, const Shape& shape, DType dtype) {
  const OpContext& ctx = Context(op);
  cuda::DevicePool& pool = cuda::RequireCurrentPool(op);
  FATHOM_CHECK(pool.stream() == ctx.stream(), "[", op, "] the device pool '", pool.name(),
               "' serves another stream than the op context's: the pool reuses released blocks in the order "
               "of its one stream");
  return pool.Empty(shape, dtype);
}

void Matmul(Form form, const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate) {
  OpContext& ctx = Context(form == Form::kNT ? "matmul_nt" : form == Form::kNN ? "matmul_nn" : "matmul_tn");
  cuda::GemmContext& g = ctx.gemm();
  if (form == Form::kNT) return g.MatmulNT(out, x, w, accumulate, ctx.stream());
  if (form == Form::kNN) return g.MatmulNN(out, x, w, accumulate, ctx.stream());
  g.MatmulTN(out, x, w, accumulate, ctx.stream());
}

void GroupedMatmul(Form form, const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                   bool accumulate) {
  OpContext& ctx = Context(form == Form::kNT   ? "grouped_matmul_nt"
                           : form == Form::kNN ? "grouped_matmul_nn"
                                               : "grouped_matmul_tn");
  cuda::GemmContext& g = ctx.gemm();
  if (form == Form::kNT) return g.GroupedMatmulNT(out, x, w, counts, accumulate, ctx.stream());
  if (form == Form::kNN) return g.GroupedMatmulNN(out, x, w, counts, accumulate, ctx.stream());
  g.GroupedMatmulTN(out, x, w, counts, accumulate, ctx.stream());
}

void RmsNormForward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w, double eps) {
  cuda::RmsNormForward(out, rstd, x, w, eps, Context("rms_norm").stream());
}

void RmsNormBackwardInput(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& w,
                          const Tensor& rstd, const Tensor& residual) {
  cuda::RmsNormBackwardInput(dx, dy, x, w, rstd, Context("rms_norm_backward_input").stream(), residual);
}

void RmsNormBackwardWeight(const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& rstd) {
  const char* op = "rms_norm_backward_weight";
  const OpContext& ctx = Context(op);
  FATHOM_CHECK(x.ndim() == 2, "[", op, "] x ", x.shape_str(), ", expected (N, C)");
  const Tensor workspace =
      Empty(op, cuda::RmsNormBackwardWeightWorkspaceShape(x.dim(0), x.dim(1)), DType::kF32);
  cuda::RmsNormBackwardWeight(dw, dy, x, rstd, workspace, ctx.stream());
}

void Rope(bool backward, const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin,
          bool interleaved) {
  const cuda::Stream s = Context(backward ? "rope_backward" : "rope").stream();
  if (backward) return cuda::RopeBackward(out, x, cos, sin, interleaved, s);
  cuda::RopeForward(out, x, cos, sin, interleaved, s);
}

void CausalAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, double scale) {
  cuda::CausalAttentionForward(out, lse, q, k, v, scale, Context("causal_attention").stream());
}

void CausalAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                             const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, double scale) {
  cuda::CausalAttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, scale,
                                Context("causal_attention_backward").stream());
}

void SigmoidForward(const Tensor& out, const Tensor& x) {
  cuda::SigmoidForward(out, x, Context("sigmoid").stream());
}

void SigmoidBackward(const Tensor& dx, const Tensor& dy, const Tensor& y) {
  cuda::SigmoidBackward(dx, dy, y, Context("sigmoid_backward").stream());
}

void SwiGluForward(const Tensor& out, const Tensor& gate, const Tensor& up) {
  cuda::SwiGluForward(out, gate, up, Context("swiglu").stream());
}

void SwiGluBackward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                    const Tensor& up) {
  cuda::SwiGluBackward(dgate, dup, dout, gate, up, Context("swiglu_backward").stream());
}

void EmbeddingForward(const Tensor& out, const Tensor& ids, const Tensor& table) {
  cuda::EmbeddingForward(out, ids, table, Context("embedding").stream());
}

void EmbeddingBackward(const Tensor& dtable, const Tensor& ids, const Tensor& dy) {
  const char* op = "embedding_backward";
  const OpContext& ctx = Context(op);
  FATHOM_CHECK(dtable.ndim() == 2, "[", op, "] dtable ", dtable.shape_str(), ", expected (V, C)");
  // i32 elements only to size the bytes; pool blocks are 512-byte aligned from a 256-aligned base, which
  // covers the kernel's 256-byte requirement.
  const size_t bytes = cuda::EmbeddingBackwardWorkspaceBytes(ids.numel(), dtable.dim(0));
  const Tensor workspace = Empty(op, {static_cast<int64_t>((bytes + 3) / 4)}, DType::kI32);
  cuda::EmbeddingBackward(dtable, ids, dy, workspace, ctx.stream());
}

Tensor CrossEntropyForward(const Tensor& lse, const Tensor& logits, const Tensor& labels,
                           int64_t ignore_index) {
  const char* op = "cross_entropy";
  const OpContext& ctx = Context(op);
  FATHOM_CHECK(logits.ndim() == 2, "[", op, "] logits ", logits.shape_str(), ", expected (N, V)");
  const Tensor loss_sum = Empty(op, {1}, DType::kF32);
  const Tensor row_loss = Empty(op, {logits.dim(0)}, DType::kF32);
  cuda::CrossEntropyForward(loss_sum, row_loss, lse, logits, labels, ignore_index, ctx.stream());
  return loss_sum;
}

void CrossEntropyBackward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                          const Tensor& labels, int64_t ignore_index, double scale) {
  cuda::CrossEntropyBackward(dlogits, logits, lse, labels, ignore_index, scale,
                             Context("cross_entropy_backward").stream());
}

Tensor Add(const Tensor& a, const Tensor& b) {
  const Tensor out = Empty("add", a.shape(), a.dtype());
  cuda::Add(out, a, b, Context("add").stream());
  return out;
}

void AddInPlace(const Tensor& a, const Tensor& b) {
  cuda::AddInPlace(a, b, Context("add_in_place").stream());
}

Tensor ConcatLastDim(const Tensor& a, const Tensor& b) {
  const char* op = "concat_last_dim";
  FATHOM_CHECK(a.ndim() >= 1 && b.ndim() >= 1, "[", op, "] ", a.shape_str(), " and ", b.shape_str());
  Shape shape = a.shape();
  shape.back() += b.shape().back();
  const Tensor out = Empty(op, shape, a.dtype());
  cuda::ConcatLastDim(out, a, b, Context(op).stream());
  return out;
}

void SplitLastDim(const Tensor& x, const Tensor& a, const Tensor& b) {
  cuda::SplitLastDim(a, b, x, Context("split_last_dim").stream());
}

void Fill(const Tensor& t, double value) { cuda::Fill(t, value, Context("fill").stream()); }

void Zero(const Tensor& t) { cuda::Zero(t, Context("zero").stream()); }

void CopyColumns(const Tensor& dst, int64_t d0, const Tensor& src, int64_t s0, int64_t w) {
  cuda::CopyColumns(dst, d0, src, s0, w, Context("copy_columns").stream());
}

void BroadcastColumnsToHeads(const Tensor& k, int64_t off, const Tensor& src, int64_t s0) {
  cuda::BroadcastColumnsToHeads(k, off, src, s0, Context("broadcast_columns_to_heads").stream());
}

void SumHeadsToColumns(const Tensor& dst, int64_t d0, const Tensor& dk, int64_t off) {
  cuda::SumHeadsToColumns(dst, d0, dk, off, Context("sum_heads_to_columns").stream());
}

void RouterSelect(const Tensor& topk_index, const Tensor& topk_weight, const Tensor& scores,
                  const Tensor& logits, const Tensor& bias, const RouterDims& d) {
  cuda::RouterSelect(topk_index, topk_weight, scores, logits, bias, d, Context("router_select").stream());
}

void RouterSelectBackward(const Tensor& dlogits, const Tensor& dweight, const Tensor& dscores,
                          const Tensor& scores, const Tensor& topk_index, const RouterDims& d) {
  cuda::RouterSelectBackward(dlogits, dweight, dscores, scores, topk_index, d,
                             Context("router_select_backward").stream());
}

namespace {

// The per-sequence expert counts the balance loss's backward reads: the forward kernel produces them
// (with the loss) into temporaries.
struct BalanceForward {
  Tensor loss, balance, seq_counts;
};

BalanceForward RunBalanceForward(const char* op, const OpContext& ctx, const Tensor& scores,
                                 const Tensor& topk_index, int64_t batch, int64_t seq) {
  FATHOM_CHECK(scores.ndim() == 2 && batch >= 1, "[", op, "] scores ", scores.shape_str(), " batch ", batch);
  BalanceForward f{Empty(op, {1}, DType::kF32), Empty(op, {batch}, DType::kF32),
                   Empty(op, {batch, scores.dim(1)}, DType::kI32)};
  const Tensor partials = Empty(op, {cuda::SequenceBalanceScratchElements(batch, seq)}, DType::kF64);
  cuda::SequenceBalanceLoss(f.loss, f.balance, f.seq_counts, partials, scores, topk_index, batch, seq,
                            /*accumulate=*/false, ctx.stream());
  return f;
}

}  // namespace

Tensor SequenceBalanceLoss(const Tensor& scores, const Tensor& topk_index, int64_t batch, int64_t seq) {
  const char* op = "sequence_balance_loss";
  return RunBalanceForward(op, Context(op), scores, topk_index, batch, seq).loss;
}

void SequenceBalanceLossBackward(const Tensor& dscores, const Tensor& scores, const Tensor& topk_index,
                                 int64_t batch, int64_t seq, double weight) {
  const char* op = "sequence_balance_loss_backward";
  const OpContext& ctx = Context(op);
  const BalanceForward f = RunBalanceForward(op, ctx, scores, topk_index, batch, seq);
  cuda::SequenceBalanceLossBackward(dscores, scores, topk_index, f.seq_counts, batch, seq, weight,
                                    ctx.stream());
}

// The counts stay on the device; the caller brings them to the host (CopyToHostAsync) when it must.
void MoePermute(const Tensor& x_perm, const Tensor& row_slot, const Tensor& counts, const Tensor& x,
                const Tensor& topk_index) {
  FATHOM_CHECK(topk_index.ndim() == 2 && x.ndim() == 2 && topk_index.dim(0) == x.dim(0), "[moe_permute] x ",
               x.shape_str(), " topk_index ", topk_index.shape_str());
  MoeSortByExpert(row_slot, counts, topk_index);
  MoeGatherRows(x_perm, x, row_slot, topk_index.dim(1));
}

void MoeSortByExpert(const Tensor& row_slot, const Tensor& counts, const Tensor& topk_index) {
  const char* op = "moe_sort_by_expert";
  const OpContext& ctx = Context(op);
  const int64_t e = counts.dim(0), rows = topk_index.numel();
  FATHOM_CHECK(e >= 1, "[", op, "] counts ", counts.shape_str(), ": at least one expert");
  const Tensor slot_row = Empty(op, {rows}, DType::kI64);
  const Tensor offsets = Empty(op, {e + 1}, DType::kI64);
  const Tensor workspace = Empty(op, {cuda::MoeSortWorkspaceElements(rows, e)}, DType::kI32);
  cuda::MoeSortByExpert(row_slot, slot_row, counts, offsets, /*counts_host=*/Tensor(), topk_index, workspace,
                        ctx.stream());
}

void MoeGatherRows(const Tensor& x_perm, const Tensor& x, const Tensor& row_slot, int64_t top_k) {
  cuda::MoePermuteRows(x_perm, x, row_slot, top_k, Context("moe_gather_rows").stream());
}

void MoePadLayout(const Tensor& padded, const Tensor& row_slot, const Tensor& counts, int64_t tile, bool budget) {
  cuda::MoePadLayout(padded, row_slot, counts, tile, Context("moe_pad_layout").stream(), budget);
}

void MoeTileExperts(const Tensor& tile_expert, const Tensor& tile_begin, const Tensor& counts) {
  cuda::MoeTileExperts(tile_expert, counts, Context("moe_tile_experts").stream(), tile_begin);
}

void TiledGroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert) {
  cuda::TiledGroupedMatmulNT(out, x, w, tile_expert, Context("tiled_grouped_matmul_nt").stream());
}

void TiledGroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                          bool accumulate) {
  cuda::TiledGroupedMatmulNN(out, x, w, tile_expert, accumulate, Context("tiled_grouped_matmul_nn").stream());
}

void TiledGroupedMatmulTN(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& tile_begin,
                          bool accumulate) {
  cuda::TiledGroupedMatmulTN(out, a, b, tile_begin, accumulate, Context("tiled_grouped_matmul_tn").stream());
}

void MoePermuteBackward(const Tensor& dx, const Tensor& dx_perm, const Tensor& row_slot, bool accumulate,
                        int64_t top_k) {
  const char* op = "moe_permute_backward";
  const OpContext& ctx = Context(op);
  const Tensor slot_row = SlotRow(op, ctx, row_slot);
  cuda::MoePermuteBackward(dx, dx_perm, slot_row, accumulate, ctx.stream(), top_k);
}

void MoeCombine(const Tensor& out, const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight) {
  const char* op = "moe_combine";
  const OpContext& ctx = Context(op);
  const Tensor slot_row = SlotRow(op, ctx, row_slot);
  cuda::MoeCombine(out, y_perm, slot_row, topk_weight, ctx.stream());
}

void MoeCombineBackward(const Tensor& dy_perm, const Tensor& dweight, const Tensor& dout,
                        const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight) {
  cuda::MoeCombineBackward(dy_perm, dweight, dout, y_perm, row_slot, topk_weight,
                           Context("moe_combine_backward").stream());
}

bool MoeCombineBackwardFp8Supported(const Tensor& dout, const Tensor& y_perm) {
  return cuda::MoeCombineBackwardFp8Supported(dout, y_perm);
}

void MoeCombineBackwardFp8(const Tensor& dyq, const Tensor& dweight, const Tensor& dout, const Tensor& y_perm,
                           const Tensor& row_slot, const Tensor& topk_weight) {
  cuda::MoeCombineBackwardFp8(dyq, dweight, dout, y_perm, row_slot, topk_weight,
                              Context("moe_combine_backward_fp8").stream());
}

void ExpertBiasUpdate(const Tensor& bias, const Tensor& load, double gamma) {
  cuda::ExpertBiasUpdate(bias, load, gamma, Context("expert_bias_update").stream());
}

void AccumulateF64(const Tensor& sums, const std::vector<AccumulationTerm>& terms) {
  cuda::AccumulateF64(sums, terms, Context("accumulate_f64").stream());
}

Tensor ToDeviceAsync(const Tensor& src) {
  const char* op = "to_device_async";
  OpContext& ctx = Context(op);
  Tensor dev = Empty(op, src.shape(), src.dtype());
  ctx.staging().Upload(dev.raw(), src.raw(), src.nbytes(), ctx.stream());
  return dev;
}

std::shared_ptr<StagingLease> StartHostCopy(const Tensor& src) {
  OpContext& ctx = Context("copy_to_host_async");
  auto lease = std::make_shared<StagingLease>();
  lease->staging = &ctx.staging();
  lease->shape = src.shape();
  lease->dtype = src.dtype();
  lease->slot = lease->staging->Copy(src.raw(), src.nbytes(), ctx.stream());
  return lease;
}

Tensor FinishHostCopy(StagingLease& lease) {
  Tensor host = Tensor::Empty(lease.shape, lease.dtype);
  const void* staged = lease.staging->Wait(lease.slot);
  if (host.nbytes() > 0) std::memcpy(host.raw(), staged, host.nbytes());
  lease.staging->Release(lease.slot);
  lease.slot = -1;  // nothing left for the destructor
  return host;
}

void Copy(const Tensor& dst, const Tensor& src) {
  const OpContext& ctx = Context("copy");
  if (dst.nbytes() == 0) return;
  const bool to_host = dst.device() == Device::kCPU, from_host = src.device() == Device::kCPU;
  const cudaMemcpyKind kind = from_host ? cudaMemcpyHostToDevice
                              : to_host ? cudaMemcpyDeviceToHost
                                        : cudaMemcpyDeviceToDevice;
  FATHOM_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(), kind, Raw(ctx.stream())));
  // Host memory may be pageable, freed or read right after the call: wait when the host is involved.
  if (to_host || from_host) Wait(ctx);
}

void Convert(const Tensor& dst, const Tensor& src) { cuda::Convert(dst, src, Context("convert").stream()); }

}  // namespace cuda_impl
}  // namespace fathom::ops
