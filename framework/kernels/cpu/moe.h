// Mixture-of-experts kernels, CPU reference: DeepSeek-V3 routing (sigmoid scores, bias-corrected,
// group-limited top-k), the sequence-wise balance loss, token permutation by expert, grouped GEMMs over
// per-expert row blocks, and the weighted combine. Every kernel is deterministic: summation orders depend
// only on the shapes and the routing, never on threads.
//
// Notation: N tokens, H hidden, E experts (E_local in the grouped GEMMs: the experts whose weights are
// stacked in the tensor at hand), K experts per token, R = N * K routed token copies ("rows"). A *slot*
// is t * K + k, the k-th choice of token t. Float tensors are f32 or f64 and share one dtype per call;
// index and count tensors are i64.
#ifndef FATHOM_FRAMEWORK_KERNELS_CPU_MOE_H_
#define FATHOM_FRAMEWORK_KERNELS_CPU_MOE_H_

#include <cstdint>

#include "framework/tensor.h"

namespace fathom::cpu {

struct RouterDims {
  int64_t num_experts = 0;     // E
  int64_t top_k = 0;           // K (num_experts_per_tok)
  int64_t n_group = 1;         // E / n_group contiguous experts per group, at least 2 (top-2 group score)
  int64_t topk_group = 1;      // groups kept per token
  bool norm_topk_prob = true;  // weights /= (sum of the K chosen scores + 1e-20)
  double routed_scaling_factor = 1.0;
};

// Routing of transformers' DeepseekV3TopkRouter, given the sigmoid scores s:
//   choice = s + bias; group score = sum of the top-2 `choice` of each group; the `topk_group` best groups
//   are kept; the K best experts by `choice` inside kept groups are chosen; weight = s at the chosen expert
//   (not choice), normalised if norm_topk_prob, times routed_scaling_factor.
// Ties go to the lower group / expert index. Each row of topk_index lists experts by descending choice.
// topk_index (N, K) i64 and topk_weight (N, K) overwritten; scores (N, E); bias (E).
// The smallest decision margin of a routing (tests: a perturbation below it cannot change the selection):
// over tokens, min of (topk_group-th minus next group score) and (k-th minus (k+1)-th choice score among
// the kept groups' experts). +inf where nothing was left out.
double RouterSelectionMargin(const Tensor& scores, const Tensor& bias, const RouterDims& d);

void RouterSelect(const Tensor& topk_index, const Tensor& topk_weight, const Tensor& scores,
                  const Tensor& bias, const RouterDims& d);
// dscores (N, E) += d(topk_weight)/d(scores)^T . dweight; only chosen experts receive gradient (the
// selection itself is discrete). dweight (N, K); scores, topk_index as in RouterSelect.
void RouterSelectBackward(const Tensor& dscores, const Tensor& dweight, const Tensor& scores,
                          const Tensor& topk_index, const RouterDims& d);

// Sequence-wise balance loss (DeepSeek-V3 report, eq. 17-20) of tokens laid out as (batch, seq):
//   s'_{i,t} = s_{i,t} / sum_j s_{j,t},  P_i = (1/T) sum_t s'_{i,t},
//   f_i = E / (K T) * #{t : i chosen for t},  Bal_b = sum_i f_i P_i;  returns the mean over b of Bal_b.
// scores (B*T, E); topk_index (B*T, K).
double SequenceBalanceLoss(const Tensor& scores, const Tensor& topk_index, int64_t batch, int64_t seq);
// dscores (B*T, E) += weight * d(SequenceBalanceLoss)/d(scores), f_i held constant.
void SequenceBalanceLossBackward(const Tensor& dscores, const Tensor& scores, const Tensor& topk_index,
                                 int64_t batch, int64_t seq, double weight);

// The auxiliary-loss-free bias rule (DeepSeek-V3 report, section 2.1.2): bias (E) += gamma * sign(mean
// load - load_i), sign(0) = 0, compared exactly in integers (sum - E * load_i). bias (E) f32 or f64; load
// (E) i64, each >= 0 (checked). gamma = 0 leaves the bias untouched.
void ExpertBiasUpdate(const Tensor& bias, const Tensor& load, double gamma);

// Stable counting sort of the N*K slots by expert: rows of expert e form the contiguous block
// [offset_e, offset_e + counts_e) with offset_e = counts_0 + ... + counts_{e-1}, and inside a block the
// slots keep increasing order. x_perm (R, H) row r = x row (row_slot[r] / K); row_slot (R) i64;
// counts (E) i64 (all overwritten); x (N, H); topk_index (N, K) with ids in [0, E).
void MoePermute(const Tensor& x_perm, const Tensor& row_slot, const Tensor& counts, const Tensor& x,
                const Tensor& topk_index);
// MoePermute in two parts: the sort (row_slot, counts) and the row gather. The gather also takes padded
// layouts (MoePadLayout): x_perm (P, H) row p = x row (row_slot[p] / top_k), or zeros where row_slot[p] is
// -1; row_slot (P) i64. x may also be packed FP8 rows (Fp8Rows::data, kF8E4M3): moved as bytes, pad rows 0.
void MoeSortByExpert(const Tensor& row_slot, const Tensor& counts, const Tensor& topk_index);
void MoeGatherRows(const Tensor& x_perm, const Tensor& x, const Tensor& row_slot, int64_t top_k);
// The tiled expert layout (layers/moe.h): expert e's rows keep their order in a block of its count rounded
// up to a multiple of `tile` rows, blocks in expert order, the rows past the count -1 (pad rows).
// padded (P) i64 overwritten, P = PaddedRows(counts, tile); row_slot (R) and counts (E) as MoeSortByExpert
// makes them; tile >= 1.
void MoePadLayout(const Tensor& padded, const Tensor& row_slot, const Tensor& counts, int64_t tile);
// The rows of that layout, sum over e of counts_e rounded up to a multiple of `tile`, from host counts.
int64_t PaddedRows(const Tensor& counts, int64_t tile);
// The most rows that layout can have for R rows over E experts, whatever the counts (the budget of the
// device layout, which never sees them): whole tiles of floor((R + (tile - 1) * min(E, R)) / tile).
int64_t MaxPaddedRows(int64_t rows, int64_t experts, int64_t tile);
// dx (N, H) (=, or += when accumulate) row t = sum over k = 0..K-1 of the dx_perm row of slot t*K+k.
// dx_perm (P, H); row_slot (P) from MoePermute (P = R) or MoePadLayout (-1 rows are not read); top_k = K,
// or 0 when P = R (then K = P / N).
void MoePermuteBackward(const Tensor& dx, const Tensor& dx_perm, const Tensor& row_slot, bool accumulate,
                        int64_t top_k = 0);

// out (N, H) overwritten, row t = sum over k = 0..K-1 of topk_weight[t, k] * the y_perm row of slot t*K+k.
// y_perm (P, H) expert outputs in permuted order; row_slot (P), P >= R as in MoePermuteBackward;
// topk_weight (N, K).
void MoeCombine(const Tensor& out, const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight);
// dy_perm (P, H) row r = topk_weight[slot] * dout row (slot / K) (zeros where row_slot[r] = -1); dweight
// (N, K) at slot = dout row (slot / K) . y_perm row r, with slot = row_slot[r] (both overwritten). dout (N,
// H); y_perm, row_slot, topk_weight as in MoeCombine.
void MoeCombineBackward(const Tensor& dy_perm, const Tensor& dweight, const Tensor& dout,
                        const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight);

// Grouped GEMMs over the contiguous row blocks given by counts (E_local) i64, sum(counts) = R. An expert
// with zero rows is skipped: it has no output rows and, when accumulating, its weight gradient is left
// untouched (overwriting, TN sets it to zero: the empty sum).
//   GroupedMatmulNT: out (R, N) (=/+=) block_e of x (R, K) . w[e]^T, w (E_local, N, K)     -- expert forward
//   GroupedMatmulNN: out (R, N) (=/+=) block_e of x (R, K) . w[e],   w (E_local, K, N)     -- expert dgrad
//   GroupedMatmulTN: out[e] (E_local, M, N) (+=/=) block_e of x (R, M)^T . block_e of y (R, N) -- wgrad
// TN's overwrite is computed as zeros followed by the accumulation, so it is bitwise the accumulation into
// a zeroed `out`.
void GroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                     bool accumulate = false);
void GroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                     bool accumulate = false);
void GroupedMatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, const Tensor& counts,
                     bool accumulate = true);

}  // namespace fathom::cpu

#endif  // FATHOM_FRAMEWORK_KERNELS_CPU_MOE_H_
