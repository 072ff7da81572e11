// Mixture-of-experts kernels on CUDA: DeepSeek-V3 routing (fused sigmoid, bias-corrected, group-limited
// top-k), the sequence-wise balance loss, the deterministic counting sort of token copies by expert, the
// permute / unpermute (combine) of token rows and their backwards, and the expert-load statistic.
// CPU twin: framework/kernels/cpu/moe.h, whose notation, index conventions and tie rules hold here
// unchanged: N tokens, H hidden, E experts, K experts per token, R = N * K rows, slot = t * K + k, rows
// of expert e form the block [offsets[e], offsets[e + 1]) and keep increasing slot order inside it.
//
// dtypes: router math is f32 always (as transformers computes router logits and scores in f32 even for
// bf16 activations): logits, scores, bias, topk_weight, dweight, dscores and the balance loss are f32.
// Token rows (x, x_perm, y_perm, out, dx, dx_perm, dout, dy_perm) are f32 or bf16, one dtype per call,
// accumulated in f32 and rounded once on store. Index and count tensors are i64 (seq_counts: i32). Any
// other dtype fails a FATHOM_CHECK naming the op.
//
// Every launcher queues its work on `stream` and returns without waiting for the device; none allocates
// memory. Every reduction has a fixed order (no float atomics; the sort's shared-memory integer counters
// cannot depend on timing), so two runs on the same inputs give bitwise equal outputs. Expert ids out of
// [0, E) in topk_index are a bug upstream: the kernels that read them trap (the stream reports an error).
// Limits (FATHOM_CHECK): E <= 1024, n_group <= 32, K <= 32 in the router; R < 2^31 rows everywhere.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_MOE_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_MOE_H_

#include <cstdint>

#include "framework/cuda/stream.h"
#include "framework/kernels/cpu/moe.h"
#include "framework/tensor.h"

namespace fathom::cuda {

using cpu::RouterDims;

// ---- Router ---------------------------------------------------------------------------------------------

// scores (N, E) f32 = sigmoid(logits), then cpu::RouterSelect on those scores: topk_index (N, K) i64 by
// descending s + bias (ties: lower group / expert id), topk_weight (N, K) f32 = s at the chosen experts,
// normalised if d.norm_topk_prob, times d.routed_scaling_factor. All outputs overwritten.
// logits (N, E) f32 (the router GEMM's output); `scores` may alias `logits`. bias (E) f32.
// REQUIRES: finite logits; d satisfies the CPU twin's checks and the limits above.
// One warp per token; the f32 results equal the CPU f32 path's except for expf's last-bit rounding.
void RouterSelect(const Tensor& topk_index, const Tensor& topk_weight, const Tensor& scores,
                  const Tensor& logits, const Tensor& bias, const RouterDims& d, Stream stream);

// dlogits (N, E) f32 overwritten = s (1 - s) * (dscores + d(topk_weight)/d(scores)^T . dweight), i.e.
// cpu::RouterSelectBackward into a copy of dscores followed by cpu::SigmoidBackward. Only chosen experts
// receive the selection gradient. dweight (N, K) f32; dscores (N, E) f32 is an extra gradient on the
// scores (the balance loss), or an undefined Tensor for none, and may alias dlogits; scores (N, E) f32 and
// topk_index (N, K) i64 from RouterSelect.
void RouterSelectBackward(const Tensor& dlogits, const Tensor& dweight, const Tensor& dscores,
                          const Tensor& scores, const Tensor& topk_index, const RouterDims& d, Stream stream);

// ---- Sequence-wise balance loss (DeepSeek-V3 report eq. 17-20; cpu::SequenceBalanceLoss) ------------

// Tokens laid out as (batch, seq). seq_counts (B, E) i32 overwritten: #{t in sequence b : e chosen for t}
// (the f_i numerators; saved for the backward). balance (B) f32 overwritten: Bal_b. loss (1) f32 = (or +=
// when accumulate) the mean over b of Bal_b. scores (B*T, E) f32; topk_index (B*T, K) i64.
// partials: SequenceBalanceScratchElements(B, T) f64 of scratch. Per-token sums in f64 (cheap: one row of
// E), blocks of 64 tokens per sequence (a sequence per block kept only 2 of 132 SMs busy at micro-batch 2),
// a fixed reduction order.
int64_t SequenceBalanceScratchElements(int64_t batch, int64_t seq);
void SequenceBalanceLoss(const Tensor& loss, const Tensor& balance, const Tensor& seq_counts,
                         const Tensor& partials, const Tensor& scores, const Tensor& topk_index,
                         int64_t batch, int64_t seq, bool accumulate, Stream stream);
// dscores (B*T, E) f32 += weight * d(loss)/d(scores), f_i held constant. scores, topk_index as above (the
// index only supplies K and shapes); seq_counts (B, E) i32 from SequenceBalanceLoss on the same routing.
void SequenceBalanceLossBackward(const Tensor& dscores, const Tensor& scores, const Tensor& topk_index,
                                 const Tensor& seq_counts, int64_t batch, int64_t seq, double weight,
                                 Stream stream);

// load (E) i64 += counts (E) i64: tokens routed to each expert, for the auxiliary-loss-free bias update.
void AccumulateExpertLoad(const Tensor& load, const Tensor& counts, Stream stream);

// cpu::ExpertBiasUpdate on the device: bias (E) f32 += gamma * sign(mean(load) - load_i), bitwise the CPU
// twin's f32 result; load (E) i64, each >= 0 (a negative load traps). E <= 1024; gamma = 0 queues nothing.
void ExpertBiasUpdate(const Tensor& bias, const Tensor& load, double gamma, Stream stream);

// ---- Token permutation -----------------------------------------------------------------------------------

// i32 elements of the workspace MoeSortByExpert needs for R rows over E experts (E * ceil(R / 512)).
int64_t MoeSortWorkspaceElements(int64_t rows, int64_t num_experts);

// A (E) i64 CPU tensor in page-locked host memory (cudaMallocHost; freed with the last tensor sharing
// it), the destination of MoeSortByExpert's asynchronous count copy. Allocate once at start-up.
Tensor PinnedExpertCounts(int64_t num_experts);

// The stable counting sort of cpu::MoePermute, on the device: a per-chunk histogram (chunk = 512 slots,
// ranks inside a chunk from warp vote in lane order), an exclusive scan over (expert, chunk), a scatter.
// Outputs (overwritten): row_slot (R) i64 = slot held by permuted row r; slot_row (R) i64 = its inverse
// (the row holding slot s); counts (E) i64; offsets (E + 1) i64 = exclusive prefix of counts, offsets[E] = R.
// counts_host: an undefined Tensor, or a PinnedExpertCounts(E) tensor that receives a copy of counts
// through cudaMemcpyAsync queued on `stream` after the sort.
//   SYNC POINT: counts_host holds the counts only once `stream` has passed this call (record an event
//   after it and cudaEventSynchronize, or synchronise the stream) -- the host-side grouped GEMM launcher,
//   which needs the counts to size its per-expert problems, is where the MoE forward waits for it. Do not
//   queue another sort into the same counts_host before that read.
// topk_index (N, K) i64 with ids in [0, E); workspace >= MoeSortWorkspaceElements(R, E) i32 on the device.
void MoeSortByExpert(const Tensor& row_slot, const Tensor& slot_row, const Tensor& counts,
                     const Tensor& offsets, const Tensor& counts_host, const Tensor& topk_index,
                     const Tensor& workspace, Stream stream);
// x_perm (P, H) row r = x row (row_slot[r] / top_k), or zeros where row_slot[r] = -1 (the pad rows of
// MoePadLayout), overwritten. x (N, H); row_slot (P) i64, P = N * top_k or a padded layout's rows. x may also
// be packed FP8 rows (Fp8Rows::data, kF8E4M3, H = the row's bytes): moved as bytes, pad rows all zero.
void MoePermuteRows(const Tensor& x_perm, const Tensor& x, const Tensor& row_slot, int64_t top_k,
                    Stream stream);
// cpu::MoePermute: MoeSortByExpert then MoePermuteRows (K = topk_index.dim(1)).
void MoePermute(const Tensor& x_perm, const Tensor& row_slot, const Tensor& slot_row, const Tensor& counts,
                const Tensor& offsets, const Tensor& counts_host, const Tensor& x, const Tensor& topk_index,
                const Tensor& workspace, Stream stream);
// cpu::MoePadLayout on the device: padded (P) i64 from row_slot (R) and the device counts (E <= 1024) of
// MoeSortByExpert; P comes from the host counts (cpu::PaddedRows), and a device total that disagrees traps.
// With budget, P is a worst-case bound instead (the counts never reach the host): the rows past the layout
// are -1 too, and only a layout longer than P traps.
void MoePadLayout(const Tensor& padded, const Tensor& row_slot, const Tensor& counts, int64_t tile,
                  Stream stream, bool budget = false);
// dx (N, H) (=, or += when accumulate) row t = sum over k = 0..K-1, in k order, of the dx_perm row of slot
// t*K+k (a gather per token: no atomics). dx_perm (P, H); slot_row (>= N*K) i64 from MoeSortByExpert or the
// inverse of a padded layout; top_k = K, or 0 when P = N * K (then K = P / N).
void MoePermuteBackward(const Tensor& dx, const Tensor& dx_perm, const Tensor& slot_row, bool accumulate,
                        Stream stream, int64_t top_k = 0);

// out (N, H) overwritten, row t = sum over k, in k order, of topk_weight[t, k] * the y_perm row of slot
// t*K+k. y_perm (P >= R, H); slot_row (>= R) i64; topk_weight (N, K) f32.
void MoeCombine(const Tensor& out, const Tensor& y_perm, const Tensor& slot_row, const Tensor& topk_weight,
                Stream stream);
// dy_perm (R, H) row r = topk_weight[slot] * dout row (slot / K); dweight (N, K) f32 at slot = dout row
// (slot / K) . y_perm row r (f32, fixed-order block reduction), with slot = row_slot[r]; both overwritten.
// dout (N, H); y_perm (P, H); row_slot (P) i64, P >= R (-1 rows: zero dy_perm rows); topk_weight (N, K) f32.
void MoeCombineBackward(const Tensor& dy_perm, const Tensor& dweight, const Tensor& dout,
                        const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight,
                        Stream stream);
// MoeCombineBackward with dy_perm quantised as packed FP8 rows (QuantizeRows' bits) in the same pass, never
// stored in bf16: dyq (P, Fp8RowBytes(H)) kF8E4M3 (Fp8Rows::data), pad rows a zero row's. Supported (else it
// fails): bf16 dout / y_perm with H a multiple of 128, 16-byte aligned.
bool MoeCombineBackwardFp8Supported(const Tensor& dout, const Tensor& y_perm);
void MoeCombineBackwardFp8(const Tensor& dyq, const Tensor& dweight, const Tensor& dout, const Tensor& y_perm,
                           const Tensor& row_slot, const Tensor& topk_weight, Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_MOE_H_
