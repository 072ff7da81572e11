// The device-dispatching op layer: one function per op the layers use, each a thin public op that validates
// its arguments (naming the op in every error: "[rms_norm] ...") over per-backend implementations:
//   CPU  -- calls the framework/kernels/cpu twin exactly, so every CPU result is bit-identical to calling
//           the kernel directly (signatures mirror the twins: converting a layer is a rename);
//   CUDA -- framework/ops_cuda.cu, over framework/kernels/cuda (declared in the private ops_cuda.h);
//           compiled only with the CUDA backend. In a build without it a CUDA tensor reaching an op fails:
//           "[op] CUDA tensor but this build has no CUDA backend". Where a CUDA kernel needs more than its
//           twin (a workspace, a pinned count buffer, the slot -> row inverse of row_slot), the op supplies
//           it from the current cuda::DevicePool.
//
// Devices: every tensor of one call lives on one device (checked, naming the op), except where a comment
// says HOST: the grouped GEMMs take their expert counts as host i64 tensors on both backends, because they
// size their per-expert problems on the host (CopyToHostAsync brings MoePermute's device counts there). An
// op allocates its outputs only when it returns a Tensor (Add, ConcatLastDim, To, Clone, the loss sums);
// those and every CUDA temporary come from the inputs' device: the CPU heap or the current
// cuda::DevicePool (installed with cuda::PoolScope).
//
// dtypes ("float" below):
//   CPU  -- f32 or f64, one dtype for every float tensor of a call (the twins' contract), including saved
//           statistics, rope tables and router tensors.
//   CUDA -- activations f32 or bf16 (bf16: storage only, f32 arithmetic, one rounding per output); saved
//           statistics (rstd, lse), rope tables, router scores / weights / bias and the balance-loss
//           gradient are f32; gradient accumulators (RmsNorm dw, Embedding dtable) are f32; GEMM outputs
//           follow framework/kernels/cuda/gemm.h (bf16 in -> bf16 or f32 out). Each kernel header lists
//           its dtypes; anything else fails loudly. StatsDType() names the statistics dtype for both.
//   Index tensors: token ids and labels i32; topk_index, row_slot and counts i64.
//
// Streams and sync points: CUDA work is queued on the current OpContext's stream, which must be the
// current pool's stream whenever the op allocates (checked): the pool's reuse of released blocks is safe
// only in that stream's order. Ops return without waiting for the device except those marked SYNC POINT:
// Copy and To when the host is involved, and PendingHostCopy::Wait (which waits for its copy only, not
// for work queued after it). Losses and statistics stay on the device as (1) tensors until their owner
// copies them to the host.
// Thread safety: the current pool and OpContext are per thread; an OpContext is not thread safe.
#ifndef FATHOM_FRAMEWORK_OPS_H_
#define FATHOM_FRAMEWORK_OPS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "framework/cuda/stream.h"
#include "framework/fp8_operands.h"
#include "framework/kernels/cpu/elementwise.h"
#include "framework/kernels/cpu/moe.h"
#include "framework/tensor.h"

namespace fathom::cuda {
class GemmContext;
class Fp8GemmContext;
class HostStaging;
}  // namespace fathom::cuda

namespace fathom::ops {

using cpu::AccumulationTerm;
using cpu::RouterDims;

// What CUDA ops need beyond their tensors: the stream work is queued on, a cuBLASLt GemmContext (created
// on the first GPU GEMM: it cudaMallocs its workspace, so run one GEMM at start-up) and the page-locked
// staging slots of CopyToHostAsync (created on first use, then reused: the first step allocates them).
// CPU ops need nothing and run without a context. Not thread safe; one context per thread (and stream).
class OpContext {
 public:
  explicit OpContext(cuda::Stream stream = nullptr, size_t gemm_workspace_bytes = size_t{32} << 20);
  ~OpContext();
  OpContext(const OpContext&) = delete;
  OpContext& operator=(const OpContext&) = delete;

  cuda::Stream stream() const { return stream_; }
  // CUDA builds only (otherwise a FATHOM_CHECK): the context's GEMM context, created on first use.
  cuda::GemmContext& gemm();
  // CUDA builds only: the page-locked staging slots of CopyToHostAsync, created on first use.
  cuda::HostStaging& staging();
  // CUDA builds only: the block-scaled FP8 GEMM context (its own cuBLASLt workspace of the same size),
  // created on first use.
  cuda::Fp8GemmContext& fp8_gemm();

 private:
  cuda::Stream stream_;
  size_t gemm_workspace_bytes_;
  // shared_ptr: destructible where the CUDA types are incomplete (CPU builds, users of this header).
  std::shared_ptr<cuda::GemmContext> gemm_;
  std::shared_ptr<cuda::HostStaging> staging_;
  std::shared_ptr<cuda::Fp8GemmContext> fp8_gemm_;
};

// Makes `context` the calling thread's current OpContext for its lifetime (nestable; the previous one
// comes back on destruction). CUDA ops without a current context fail a FATHOM_CHECK naming the op.
class OpContextScope {
 public:
  explicit OpContextScope(OpContext& context);
  ~OpContextScope();
  OpContextScope(const OpContextScope&) = delete;
  OpContextScope& operator=(const OpContextScope&) = delete;

 private:
  OpContext* previous_;
};

OpContext* CurrentOpContext();  // nullptr outside every OpContextScope

// The dtype of saved statistics (rstd, lse) and rope tables for an activation dtype, on both backends:
// f64 -> f64, f32 -> f32, bf16 -> f32.
DType StatsDType(DType activation);

// ---- GEMMs (cpu/gemm.h, cuda/gemm.h) ------------------------------------------------------------------
// out (M, N) (=, or += when accumulate):
//   MatmulNT: x (M, K) . w (N, K)^T     MatmulNN: x (M, K) . w (K, N)     MatmulTN: x (K, M)^T . y (K, N)
void MatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate = false);
void MatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate = false);
void MatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, bool accumulate = false);
// Row blocks by counts (E_local) i64 HOST, sum = R (cpu/moe.h):
//   GroupedMatmulNT: out (R, N) (=/+=) block_e of x (R, K) . w[e]^T, w (E_local, N, K)
//   GroupedMatmulNN: out (R, N) (=/+=) block_e of x (R, K) . w[e],   w (E_local, K, N)
//   GroupedMatmulTN: out[e] (E_local, M, N) (+=/=) block_e of x (R, M)^T . block_e of y (R, N); overwriting
//                    sets the experts without rows to zero. Accumulates by default (weight gradients).
void GroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                     bool accumulate = false);
void GroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                     bool accumulate = false);
void GroupedMatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, const Tensor& counts,
                     bool accumulate = true);

// ---- FP8 block-scaled GEMMs (framework/fp8_operands.h; cpu/fp8_gemm.h, cuda/fp8_gemm.h) --------------
// train.precision fp8. Float inputs: CPU f32 or f64 (quantised from f32), CUDA f32 or bf16. Outputs: CPU f32
// or f64 (one dtype for out), CUDA bf16 or f32 (NT), f32 (TN). counts: HOST i64 (G) as above; an undefined
// counts tensor means one group of every row (a dense Linear). The quantising ops allocate their result on
// the input's device (CUDA: the current pool).
//   QuantizeRows: x (R, K) -> packed 1x128 rows      QuantizeCols: x (R, C) -> (C, Tp) 1x128 along tokens
Fp8Rows QuantizeRows(const Tensor& x);
Fp8Cols QuantizeCols(const Tensor& x, const Tensor& counts = Tensor());
Fp8Cols QuantizeCols(const Fp8Rows& x, const Tensor& counts = Tensor());  // from the rows' values
// out (R, K) = the values q stands for.
void DequantizeRows(const Tensor& out, const Fp8Rows& q);
// q (preallocated, Fp8Weight::Empty) <- w (..., N, K) in 128x128 blocks, forward and transposed copies.
void QuantizeWeight128x128(const Fp8Weight& q, const Tensor& w);
// out (R, N) (=/+=) row block g of x . w[g]^T, w (G, N, K) or (N, K). Forward: w = Fp8Weight::w; dgrad:
// x = dy's rows and w = Fp8Weight::wt.
void Fp8GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w, const Tensor& counts,
                        bool accumulate = false);
// out[g] (G, M, N) (or (M, N)) (+=/=) a_g . b_g^T over group g's tokens: dW += dy^T x with a = dy's columns
// and b = x's (both grouped alike). Overwriting (a gradient's first writer, ParamTable::GradForWrite) sets
// the groups without tokens to zero, as GroupedMatmulTN does.
void Fp8GroupedMatmulTN(const Tensor& out, const Fp8Cols& a, const Fp8Cols& b, bool accumulate = true);

// ---- RMSNorm (cpu/norm.h) -------------------------------------------------------------------------------
// out (N, C), rstd (N) StatsDType; x (N, C); w (C).
void RmsNormForward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w, double eps);
// dx (N, C) overwritten; dy (N, C); x, w, rstd as in the forward. With `residual` (N, C), dx's dtype:
// dx = residual + the input gradient in one pass (CUDA: the sum in f32, rounded once).
void RmsNormBackwardInput(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& w,
                          const Tensor& rstd, const Tensor& residual = Tensor());
// dw (C) += sum over rows of dy * x * rstd (CUDA: dw f32; its workspace comes from the pool).
void RmsNormBackwardWeight(const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& rstd);

// ---- RoPE (cpu/rope.h) ------------------------------------------------------------------------------------
// out (B, T, H, W) = rope(x); cos, sin (T', d/2) StatsDType, T' >= T, d <= W. out may alias x.
void RopeForward(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved);
// dx (B, T, H, W) from dout; same tables and layout. dx may alias dout.
void RopeBackward(const Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin,
                  bool interleaved);

// ---- Causal attention (cpu/attention.h) ---------------------------------------------------------------
// out (B, T, H, Dv), lse (B, H, T) StatsDType; q, k (B, T, H, Dk); v (B, T, H, Dv).
void CausalAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, double scale);
// dq, dk (B, T, H, Dk), dv (B, T, H, Dv) overwritten; dout (B, T, H, Dv); out, lse from the forward.
void CausalAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                             const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, double scale);

// ---- Activations (cpu/activation.h) ----------------------------------------------------------------------
void SigmoidForward(const Tensor& out, const Tensor& x);                    // out may alias x
void SigmoidBackward(const Tensor& dx, const Tensor& dy, const Tensor& y);  // y = sigmoid(x); dx may alias dy
void SwiGluForward(const Tensor& out, const Tensor& gate, const Tensor& up);  // (N, I) each
void SwiGluBackward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                    const Tensor& up);

// ---- Embedding (cpu/embedding.h) --------------------------------------------------------------------------
// out (N, C) (any shape of N * C elements) = table (V, C) rows at ids (N) i32.
void EmbeddingForward(const Tensor& out, const Tensor& ids, const Tensor& table);
// dtable (V, C) += dy (N, C) rows scattered to ids (CUDA: dtable f32; its sort workspace from the pool).
void EmbeddingBackward(const Tensor& dtable, const Tensor& ids, const Tensor& dy);

// ---- Cross-entropy (cpu/cross_entropy.h) ----------------------------------------------------------------
// Returns the sum over rows whose label is not ignore_index of (logsumexp(row) - row[label]) as a fresh
// (1) tensor on the logits' device, left there (no sync): f64 on the CPU (the twin's double), f32 on CUDA.
// lse (N) StatsDType saved; logits (N, V); labels (N) i32. CUDA: a label outside [0, V) gives NaN (the CPU
// checks it).
Tensor CrossEntropyForward(const Tensor& lse, const Tensor& logits, const Tensor& labels,
                           int64_t ignore_index);
// dlogits (N, V) = scale * (softmax(row) - onehot(label)), 0 for ignored rows.
void CrossEntropyBackward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                          const Tensor& labels, int64_t ignore_index, double scale);

// ---- Element-wise (cpu/elementwise.h) ---------------------------------------------------------------------
Tensor Add(const Tensor& a, const Tensor& b);       // fresh a + b, a's shape
void AddInPlace(const Tensor& a, const Tensor& b);  // a += b (CUDA also: a f32, b bf16; a bf16, b f32)
// (N, Ca + Cb) from a (N, Ca) and b (N, Cb) along the last dim (leading dims flattened); Split inverts it.
Tensor ConcatLastDim(const Tensor& a, const Tensor& b);
void SplitLastDim(const Tensor& x, const Tensor& a, const Tensor& b);
void Fill(const Tensor& t, double value);  // CPU: f32/f64/i32/i64; CUDA: f32/bf16
void Zero(const Tensor& t);                // any dtype

// ---- Column blocks (cpu/columns.h, cuda/columns.h): MLA's key/value layout ---------------------------
// dst (N, Wd)[:, d0 : d0 + w] = src (N, Ws)[:, s0 : s0 + w]; the other columns of dst are kept.
void CopyColumns(const Tensor& dst, int64_t d0, const Tensor& src, int64_t s0, int64_t w);
// k (N, H, Dk)[:, h, off:] = src (N, Ws)[:, s0 : s0 + Dk - off] for every head h.
void BroadcastColumnsToHeads(const Tensor& k, int64_t off, const Tensor& src, int64_t s0);
// The transpose: dst (N, Wd)[:, d0 : d0 + W - off] = sum over h of dk (N, H, W)[:, h, off:]
// (CUDA: summed in f32, one rounding).
void SumHeadsToColumns(const Tensor& dst, int64_t d0, const Tensor& dk, int64_t off);

// ---- Router and balance loss (cpu/moe.h, cuda/moe.h) ------------------------------------------------
// The router's selection fused with its sigmoid, as the CUDA kernel computes it (a GPU twin of the
// unfused cpu::RouterSelect would need logits it cannot recover from scores):
//   scores (N, E) = sigmoid(logits (N, E)), then cpu::RouterSelect(topk_index (N, K) i64, topk_weight (N, K),
//   scores, bias (E), d). scores may alias logits (the router writes them in place). CPU: exactly
//   cpu::SigmoidForward(scores, logits) then cpu::RouterSelect. CUDA: f32 only.
void RouterSelect(const Tensor& topk_index, const Tensor& topk_weight, const Tensor& scores,
                  const Tensor& logits, const Tensor& bias, const RouterDims& d);
// dlogits (N, E) overwritten = s (1 - s) * (dscores + d(topk_weight)/d(scores)^T . dweight). dweight (N, K);
// dscores (N, E) an extra score gradient (the balance loss) or an undefined Tensor for none, may alias
// dlogits; scores and topk_index from RouterSelect. CPU: exactly the router's composition (dlogits = copy
// of dscores or zeros; cpu::RouterSelectBackward; cpu::SigmoidBackward in place).
void RouterSelectBackward(const Tensor& dlogits, const Tensor& dweight, const Tensor& dscores,
                          const Tensor& scores, const Tensor& topk_index, const RouterDims& d);
// Sequence-wise balance loss of tokens laid out as (batch, seq); scores (B*T, E); topk_index (B*T, K) i64.
// Returns the loss as a fresh (1) tensor on the scores' device, left there (no sync): f64 on the CPU (the
// twin's double), f32 on CUDA.
Tensor SequenceBalanceLoss(const Tensor& scores, const Tensor& topk_index, int64_t batch, int64_t seq);
// dscores (B*T, E) += weight * d(SequenceBalanceLoss)/d(scores). CUDA: recomputes the per-sequence expert
// counts (one pass over topk_index) into pool temporaries; no sync.
void SequenceBalanceLossBackward(const Tensor& dscores, const Tensor& scores, const Tensor& topk_index,
                                 int64_t batch, int64_t seq, double weight);

// ---- Token permutation and combine (cpu/moe.h) -------------------------------------------------------
// x_perm (R, H) rows of x (N, H) sorted stably by expert; row_slot (R) i64; counts (E) i64 on x's device
// (E = counts.dim(0)); topk_index (N, K) i64. No sync: the grouped GEMMs need the counts on the host, which
// CopyToHostAsync(counts) starts and PendingHostCopy::Wait finishes, as late as the caller can.
void MoePermute(const Tensor& x_perm, const Tensor& row_slot, const Tensor& counts, const Tensor& x,
                const Tensor& topk_index);
// MoePermute in parts (cpu/moe.h): the sort alone (row_slot (R), counts (E) on topk_index's device, no
// sync); the gather, also of padded layouts (x_perm (P, H), row_slot (P), -1 rows zero; also of packed FP8
// rows, Fp8Rows::data, whose bytes it moves: a zero row is codes and scales 0); and the padded
// expert layout, each expert's rows padded to a multiple of `tile` (padded (P) with P = cpu::PaddedRows of
// the host counts; counts on the device of row_slot).
void MoeSortByExpert(const Tensor& row_slot, const Tensor& counts, const Tensor& topk_index);
void MoeGatherRows(const Tensor& x_perm, const Tensor& x, const Tensor& row_slot, int64_t top_k);
void MoePadLayout(const Tensor& padded, const Tensor& row_slot, const Tensor& counts, int64_t tile,
                  bool budget = false);
// With budget = true, padded (P) may be longer than the layout (P >= cpu::PaddedRows, e.g. the worst case
// cuda::MaxExpertTiles * 128 when the counts stay on the device): the rows past it are -1 as well.

// ---- The device-count expert layout (layers/moe.h, MoE::ExpertLayout::kDevice) ---------------------
// The padded layout of 128-row tiles (kGroupedTileRows) laid out over a worst-case tile budget T from counts
// that stay on the device: tile_expert (T) i32 = each tile's expert, -1 past the layout; tile_begin (E + 1)
// i32 = each expert's first tile, the total last; counts (E) i64. No sync (CUDA: cuda::MoeTileExperts).
void MoeTileExperts(const Tensor& tile_expert, const Tensor& tile_begin, const Tensor& counts);
// The routed experts' GEMMs over that layout, reading only tile_expert / tile_begin (CUDA: fathom's own
// tiled kernels, grouped_gemm.h; the CPU runs cpu::GroupedMatmul* over the tiles' counts, its twin):
//   TiledGroupedMatmulNT: out (T*128, N) rows of tile t with e = tile_expert[t] >= 0 = x tile . w[e]^T,
//                         w (E, N, K)  -- forward; rows of tiles past the layout are not written
//   TiledGroupedMatmulNN: the same (=/+=) x tile . w[e], w (E, K, N)  -- input gradient
//   TiledGroupedMatmulTN: out[e] (E, M, N) f32 (=/+=) a_e^T . b_e over expert e's tiles, a (T*128, M),
//                         b (T*128, N); overwriting zeroes the experts without tokens  -- weight gradient
void TiledGroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert);
void TiledGroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                          bool accumulate = false);
void TiledGroupedMatmulTN(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& tile_begin,
                          bool accumulate);
// dx (N, H) (=/+=) row t = sum over k of dx_perm row of slot t*K+k; dx_perm (P, H); row_slot (P), P = R or a
// padded layout's rows (then top_k = K is required; 0 means K = P / N).
void MoePermuteBackward(const Tensor& dx, const Tensor& dx_perm, const Tensor& row_slot, bool accumulate,
                        int64_t top_k = 0);
// out (N, H) row t = sum over k of topk_weight[t, k] * y_perm row of slot t*K+k.
void MoeCombine(const Tensor& out, const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight);
// dy_perm (P, H) (-1 rows of a padded layout: zeros), dweight (N, K) overwritten; dout (N, H); y_perm,
// row_slot, topk_weight as in MoeCombine (y_perm (P, H), row_slot (P): P = R or a padded layout's rows).
void MoeCombineBackward(const Tensor& dy_perm, const Tensor& dweight, const Tensor& dout,
                        const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight);
// MoeCombineBackward with dy_perm returned as FP8 rows, the bits of QuantizeRows(dy_perm): on CUDA in one
// pass that never stores dy_perm (bf16 with H a multiple of 128), elsewhere the two ops.
Fp8Rows MoeCombineBackwardQuantized(const Tensor& dweight, const Tensor& dout, const Tensor& y_perm,
                                    const Tensor& row_slot, const Tensor& topk_weight);

// The auxiliary-loss-free bias rule of the DeepSeek-V3 report on the bias's device (cpu::ExpertBiasUpdate):
// bias (E) float += gamma * sign(mean(load) - load_i), compared exactly in integers; load (E) i64 on the
// bias's device, each >= 0 (CUDA: a negative load traps). CUDA: bias f32.
void ExpertBiasUpdate(const Tensor& bias, const Tensor& load, double gamma);

// ---- Step statistics (cpu/elementwise.h, cuda/elementwise.h) -----------------------------------------
// sums (n) f64 += each term's values (f32, f64 or i64) at the term's offset, in list order; every tensor on
// one device. Bitwise the same on both backends (the same f64 additions in the same order), and no sync:
// the statistics of a step are summed where they were made and copied to the host once.
void AccumulateF64(const Tensor& sums, const std::vector<AccumulationTerm>& terms);

// ---- Copies -------------------------------------------------------------------------------------------
// dst = src (same shape and dtype; any pair of devices). A copy that involves the host is a SYNC POINT
// (queued on the stream after earlier work, then waited for, so host memory may be reused or read at once);
// device -> device is queued only.
void Copy(const Tensor& dst, const Tensor& src);
// dst = src converted (same shape and device): f32 <-> bf16 (bf16 rounds to nearest even, NaN -> 0x7FC0,
// numeric.h's FloatToBf16 on both backends), f32 <-> f64 on the CPU. Any other pair fails loudly.
void Convert(const Tensor& dst, const Tensor& src);
Tensor To(const Tensor& x, Device device);  // a fresh copy on `device` (the same device: a clone)
Tensor Clone(const Tensor& x);              // a fresh copy on x's device

struct StagingLease;  // ops_cuda.cu: a page-locked slot of the OpContext's cuda::HostStaging

// A device tensor's copy to the host that was queued but not yet waited for (CopyToHostAsync). Move-only.
// The copy lands in a page-locked staging slot of the OpContext that queued it; Wait() (once) waits for
// that copy alone and returns the values in a fresh HOST tensor. Destroying an unwaited copy waits for it
// first, so a slot is never reused while its copy may still run. REQUIRES: the OpContext outlives it.
class PendingHostCopy {
 public:
  PendingHostCopy() = default;
  ~PendingHostCopy();
  PendingHostCopy(PendingHostCopy&&) noexcept;
  PendingHostCopy& operator=(PendingHostCopy&&) noexcept;
  PendingHostCopy(const PendingHostCopy&) = delete;
  PendingHostCopy& operator=(const PendingHostCopy&) = delete;

  bool pending() const { return ready_.defined() || lease_ != nullptr; }
  // CUDA: SYNC POINT, on the copy's event only (work the host queued after the copy keeps running).
  // REQUIRES: pending() (checked); afterwards the object is empty.
  Tensor Wait();

 private:
  friend PendingHostCopy CopyToHostAsync(const Tensor& src);
  Tensor ready_;                         // a CPU source: the values, ready at once
  std::shared_ptr<StagingLease> lease_;  // a CUDA source: the slot its copy lands in
};

// Starts the copy of `src` (any dtype, contiguous) to the host. CUDA: queued on the current OpContext's
// stream into a page-locked slot (an event is recorded after it); the host does not wait here. CPU: `src`
// itself is the result (no copy).
PendingHostCopy CopyToHostAsync(const Tensor& src);

// How many times this process's host has waited for the GPU at the ops' SYNC POINTs so far: Copy and To
// between the host and a device, and PendingHostCopy::Wait of a device copy (work on the CPU counts
// nothing). `fathom bench` prints the count per step; the step's own syncs are the statistics and gradient
// norm copies, plus, with train.expert_gemm cublaslt, the MoE layers' count copies (layers/moe.h). Waits
// outside the ops (NCCL's watchdog polls, the bench's phase timer, a grouped GEMM's rare pointer-array
// growth) are not counted.
int64_t HostWaits();

// A fresh copy of HOST tensor `src` on the GPU (from the current pool), queued on the current OpContext's
// stream through a page-locked staging slot of the context: unlike To(src, kCUDA), the host does not wait
// (src may be changed or freed at once). For the step's small inputs (token ids, labels, expert loads).
Tensor ToDeviceAsync(const Tensor& src);

}  // namespace fathom::ops

#endif  // FATHOM_FRAMEWORK_OPS_H_
