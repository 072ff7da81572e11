#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <utility>

#include "framework/cuda/check.h"
#include "framework/kernels/cuda/moe.h"
#include "framework/kernels/cuda/moe_common.cuh"

// The router's top-k selection and the sequence-wise balance loss (framework/kernels/cuda/moe.h); the
// sort by expert, permutation and combine are in moe_permute.cu.
namespace fathom::cuda {
namespace {

using moe_internal::CheckActivationDType;
using moe_internal::CheckDevice;
using moe_internal::CheckRows;
using moe_internal::DispatchActivation;
using moe_internal::FromFloat;
using moe_internal::GridFor;
using moe_internal::kFullMask;
using moe_internal::Raw;
using moe_internal::Sigmoid;
using moe_internal::Tag;
using moe_internal::ToFloat;
using moe_internal::WarpSum;

constexpr int kMaxRouterExperts = 1024;  // a lane's taken-mask covers 32 elements of stride 32
constexpr int kMaxGroups = 32;           // kept groups travel as one warp ballot
constexpr int kMaxTopK = 32;             // lane j holds the j-th choice

// ---- router
// ------------------------------------------------------------------------------------------------

constexpr int kRouterWarps = 4;

// One warp per token. Per-warp shared memory: choice = s + bias (E), s (E), group scores (32).
// Selection is K rounds of a warp argmax under the total order (higher value, then lower index), so every
// lane agrees on the winner and the result is the CPU's partial_sort order.
__global__ void RouterSelectKernel(int64_t* __restrict__ topk_index, float* __restrict__ topk_weight,
                                   float* scores, const float* logits, const float* __restrict__ bias, int n,
                                   int e, int k, int n_group, int topk_group, bool norm, float scaling) {
  extern __shared__ float router_smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * kRouterWarps + warp;
  if (t >= n) return;  // whole warps leave; no block-wide barrier below
  float* choice = router_smem + warp * (2 * e + kMaxGroups);
  float* s_sh = choice + e;
  float* group_score = s_sh + e;
  const float* lg = logits + static_cast<int64_t>(t) * e;
  float* sc = scores + static_cast<int64_t>(t) * e;
  for (int i = lane; i < e; i += 32) {
    const float s = Sigmoid(lg[i]);  // read before the write: scores may alias logits
    sc[i] = s;
    s_sh[i] = s;
    choice[i] = s + bias[i];
  }
  __syncwarp();

  const int group_size = e / n_group;
  unsigned kept = kFullMask;  // bit g: group g is kept (all groups when topk_group == n_group)
  if (topk_group < n_group) {
    if (lane < n_group) {
      // The CPU's scan: strict comparisons, so equal values fill first and second alike.
      float first = -INFINITY, second = -INFINITY;
      for (int i = lane * group_size; i < (lane + 1) * group_size; ++i) {
        const float v = choice[i];
        if (v > first) {
          second = first;
          first = v;
        } else if (v > second) {
          second = v;
        }
      }
      group_score[lane] = first + second;
    }
    __syncwarp();
    bool keep = false;
    if (lane < n_group) {
      const float mine = group_score[lane];
      int rank = 0;
      for (int g = 0; g < n_group; ++g) {
        const float v = group_score[g];
        rank += (v > mine || (v == mine && g < lane)) ? 1 : 0;
      }
      keep = rank < topk_group;
    }
    kept = __ballot_sync(kFullMask, keep);
  }

  unsigned taken = 0;  // bit m: element lane + 32 m already chosen
  int my_index = 0;
  float my_s = 0.0f;
  for (int j = 0; j < k; ++j) {
    float best = 0.0f;
    int best_i = -1;
    for (int m = 0, i = lane; i < e; ++m, i += 32) {
      if ((taken >> m) & 1u) continue;
      if (!((kept >> (i / group_size)) & 1u)) continue;
      const float v = choice[i];
      if (best_i < 0 || v > best) {  // increasing i: the first of equal values (lower index) stays
        best = v;
        best_i = i;
      }
    }
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_xor_sync(kFullMask, best, off);
      const int oi = __shfl_xor_sync(kFullMask, best_i, off);
      if (oi >= 0 && (best_i < 0 || ov > best || (ov == best && oi < best_i))) {
        best = ov;
        best_i = oi;
      }
    }
    if (lane == (best_i & 31)) taken |= 1u << (best_i >> 5);
    if (lane == j) {
      my_index = best_i;
      my_s = s_sh[best_i];
    }
  }
  // The CPU's order: sum the chosen s for j = 0..K-1, then w = s / denom * scaling.
  float sum = 0.0f;
  for (int j = 0; j < k; ++j) sum += __shfl_sync(kFullMask, my_s, j);
  if (lane < k) {
    const float denom = norm ? sum + 1e-20f : 1.0f;
    topk_index[static_cast<int64_t>(t) * k + lane] = my_index;
    topk_weight[static_cast<int64_t>(t) * k + lane] = my_s / denom * scaling;
  }
}

// One warp per token: the K chosen experts' gradient terms are built by lanes 0..K-1 and broadcast through
// shared memory, then every lane finishes its elements with the sigmoid derivative.
__global__ void RouterSelectBackwardKernel(float* dlogits, const float* __restrict__ dweight,
                                           const float* dscores, const float* __restrict__ scores,
                                           const int64_t* __restrict__ topk_index, int n, int e, int k,
                                           bool norm, float scaling) {
  __shared__ int chosen[kRouterWarps][kMaxTopK];
  __shared__ float term[kRouterWarps][kMaxTopK];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * kRouterWarps + warp;
  if (t >= n) return;
  const int64_t row = static_cast<int64_t>(t) * e;
  int my_index = -1;
  float my_g = 0.0f, my_s = 0.0f;
  if (lane < k) {
    my_index = static_cast<int>(topk_index[static_cast<int64_t>(t) * k + lane]);
    my_g = dweight[static_cast<int64_t>(t) * k + lane];
    my_s = scores[row + my_index];
  }
  // w_j = c s_j / D, D = sum_k s_k + 1e-20: dL/ds_j = c (dw_j / D - sum_k dw_k s_k / D^2).
  float my_term = scaling * my_g;
  if (norm) {
    float denom = 0.0f, dot = 0.0f;
    for (int j = 0; j < k; ++j) {
      const float s = __shfl_sync(kFullMask, my_s, j);
      denom += s;
      dot += __shfl_sync(kFullMask, my_g, j) * s;
    }
    denom += 1e-20f;
    my_term = scaling * (my_g / denom - dot / (denom * denom));
  }
  if (lane < k) {
    chosen[warp][lane] = my_index;
    term[warp][lane] = my_term;
  }
  __syncwarp();
  for (int i = lane; i < e; i += 32) {
    float v = dscores != nullptr ? dscores[row + i] : 0.0f;  // read before the write: may alias dlogits
    for (int j = 0; j < k; ++j) {
      if (chosen[warp][j] == i) v += term[warp][j];
    }
    const float s = scores[row + i];
    dlogits[row + i] = v * s * (1.0f - s);
  }
}

// ---- balance loss
// ------------------------------------------------------------------------------------------

constexpr int kBalanceThreads = 256;
constexpr int kBalanceWarps = kBalanceThreads / 32;

constexpr int kBalanceTokensPerBlock = 64;  // tokens of one sequence per block of the per-token pass
constexpr int kBalanceCountSlots = kBalanceThreads * 16;

int64_t BalanceBlocksPerSequence(int64_t seq) {
  return (seq + kBalanceTokensPerBlock - 1) / kBalanceTokensPerBlock;
}

// seq_counts (zeroed first) += the histogram of a slice of sequence blockIdx.y's K*T choices: a
// shared-memory histogram, then one global integer atomic per expert the slice chose (integer sums do not
// depend on their order).
__global__ void BalanceCountKernel(int32_t* __restrict__ seq_counts, const int64_t* __restrict__ topk_index,
                                   int seq, int e, int k) {
  extern __shared__ int balance_counts[];
  const int b = blockIdx.y;
  for (int i = threadIdx.x; i < e; i += blockDim.x) balance_counts[i] = 0;
  __syncthreads();
  const int64_t* idx = topk_index + static_cast<int64_t>(b) * seq * k;
  const int begin = blockIdx.x * kBalanceCountSlots, end = min(begin + kBalanceCountSlots, seq * k);
  for (int j = begin + threadIdx.x; j < end; j += blockDim.x) {
    const int64_t v = idx[j];
    if (v < 0 || v >= e) __trap();
    atomicAdd(&balance_counts[v], 1);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < e; i += blockDim.x)
    if (balance_counts[i] != 0) atomicAdd(&seq_counts[static_cast<int64_t>(b) * e + i], balance_counts[i]);
}

// Block (x, b) sums (sum_i f_i s_it) / (sum_i s_it) over its kBalanceTokensPerBlock tokens of sequence b
// into partials[b * gridDim.x + x]: each warp sums its tokens in order (the per-token sums in f64, one row
// of E), then the warps' sums are added in warp order.
__global__ void BalanceTokensKernel(double* __restrict__ partials, const int32_t* __restrict__ seq_counts,
                                    const float* __restrict__ scores, int seq, int e, int k) {
  __shared__ double partial[kBalanceWarps];
  const int b = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t* counts = seq_counts + static_cast<int64_t>(b) * e;
  const double f_scale = static_cast<double>(e) / (static_cast<double>(k) * seq);
  const int first = blockIdx.x * kBalanceTokensPerBlock, last = min(first + kBalanceTokensPerBlock, seq);
  double acc = 0.0;
  for (int t = first + warp; t < last; t += kBalanceWarps) {
    const float* s = scores + (static_cast<int64_t>(b) * seq + t) * e;
    double sum = 0.0, dot = 0.0;
    for (int i = lane; i < e; i += 32) {
      const double v = s[i];
      sum += v;
      dot += counts[i] * v;
    }
    sum = WarpSum(sum);
    dot = WarpSum(dot);
    acc += dot * f_scale / sum;
  }
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kBalanceWarps; ++w) total += partial[w];
    partials[static_cast<int64_t>(b) * gridDim.x + blockIdx.x] = total;
  }
}

// One warp per sequence: Bal_b = (sum of its blocks' partials, lane-strided then lane-xor: a fixed order)
// / T.
__global__ void BalanceSequenceKernel(float* __restrict__ balance, const double* __restrict__ partials,
                                      int blocks, int seq) {
  const int b = blockIdx.x;
  double sum = 0.0;
  for (int i = threadIdx.x; i < blocks; i += 32) sum += partials[static_cast<int64_t>(b) * blocks + i];
  sum = WarpSum(sum);
  if (threadIdx.x == 0) balance[b] = static_cast<float>(sum / seq);
}

__global__ void BalanceMeanKernel(float* loss, const float* __restrict__ balance, int batch,
                                  bool accumulate) {
  double total = 0.0;
  for (int b = 0; b < batch; ++b) total += balance[b];
  const float mean = static_cast<float>(total / batch);
  loss[0] = accumulate ? loss[0] + mean : mean;
}

// One warp per token: with g_i = coef * count_i (= weight f_i / (B T)) and S = sum_j s_j,
// dL/ds_i = (g_i - g . s / S) / S.
__global__ void BalanceBackwardKernel(float* __restrict__ dscores, const float* __restrict__ scores,
                                      const int32_t* __restrict__ seq_counts, int n, int seq, int e,
                                      double coef) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * kBalanceWarps + warp;
  if (t >= n) return;
  const int32_t* cnt = seq_counts + static_cast<int64_t>(t / seq) * e;
  const float* s = scores + static_cast<int64_t>(t) * e;
  float* ds = dscores + static_cast<int64_t>(t) * e;
  double sum = 0.0, dot = 0.0;
  for (int i = lane; i < e; i += 32) {
    const double v = s[i];
    sum += v;
    dot += coef * cnt[i] * v;
  }
  sum = WarpSum(sum);
  dot = WarpSum(dot) / sum;
  for (int i = lane; i < e; i += 32) ds[i] += static_cast<float>((coef * cnt[i] - dot) / sum);
}

__global__ void AccumulateLoadKernel(int64_t* __restrict__ load, const int64_t* __restrict__ counts, int e) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < e) load[i] += counts[i];
}

constexpr int kBiasThreads = 1024;  // one block covers every expert (E <= kMaxRouterExperts)

// cpu::ExpertBiasUpdate in one block: the integer load sum by a fixed tree, then one expert per thread.
__global__ void ExpertBiasUpdateKernel(float* __restrict__ bias, const int64_t* __restrict__ load, int e,
                                       double gamma) {
  __shared__ int64_t partial[kBiasThreads];
  const int i = threadIdx.x;
  const int64_t mine = i < e ? load[i] : 0;
  if (mine < 0) {
    printf("[expert_bias_cuda] negative expert load %lld at expert %d\n", static_cast<long long>(mine), i);
    __trap();
  }
  partial[i] = mine;
  __syncthreads();
  for (int stride = kBiasThreads / 2; stride > 0; stride /= 2) {
    if (i < stride) partial[i] += partial[i + stride];
    __syncthreads();
  }
  if (i >= e) return;
  const int64_t sum = partial[0], scaled = static_cast<int64_t>(e) * mine;
  const double sign = sum > scaled ? 1.0 : (sum < scaled ? -1.0 : 0.0);
  bias[i] = static_cast<float>(static_cast<double>(bias[i]) + gamma * sign);
}

void CheckRouterDims(const char* op, const RouterDims& d) {
  FATHOM_CHECK(d.n_group >= 1 && d.num_experts % d.n_group == 0 && d.num_experts / d.n_group >= 2 &&
                   d.topk_group >= 1 && d.topk_group <= d.n_group && d.top_k >= 1 &&
                   d.top_k <= d.topk_group * (d.num_experts / d.n_group),
               "[", op, "] E ", d.num_experts, " K ", d.top_k, " n_group ", d.n_group, " topk_group ",
               d.topk_group);
  FATHOM_CHECK(d.num_experts <= kMaxRouterExperts && d.n_group <= kMaxGroups && d.top_k <= kMaxTopK, "[", op,
               "] E ", d.num_experts, " n_group ", d.n_group, " K ", d.top_k,
               " beyond the CUDA router's limits (", kMaxRouterExperts, ", ", kMaxGroups, ", ", kMaxTopK,
               ")");
}

}  // namespace

// ---- launchers
// ---------------------------------------------------------------------------------------------

void RouterSelect(const Tensor& topk_index, const Tensor& topk_weight, const Tensor& scores,
                  const Tensor& logits, const Tensor& bias, const RouterDims& d, Stream stream) {
  const char* op = "router_select_cuda";
  CheckRouterDims(op, d);
  FATHOM_CHECK(logits.ndim() == 2, "[", op, "] logits ", logits.shape_str(), ", expected (N, E)");
  const int64_t n = logits.dim(0), e = d.num_experts, k = d.top_k;
  CheckRows(op, n);
  CheckDevice(op, "logits", logits, DType::kF32, {n, e});
  CheckDevice(op, "scores", scores, DType::kF32, {n, e});
  CheckDevice(op, "bias", bias, DType::kF32, {e});
  CheckDevice(op, "topk_index", topk_index, DType::kI64, {n, k});
  CheckDevice(op, "topk_weight", topk_weight, DType::kF32, {n, k});
  if (n == 0) return;
  const size_t smem = kRouterWarps * (2 * static_cast<size_t>(e) + kMaxGroups) * sizeof(float);
  RouterSelectKernel<<<static_cast<unsigned>((n + kRouterWarps - 1) / kRouterWarps), kRouterWarps * 32, smem,
                       Raw(stream)>>>(topk_index.data<int64_t>(), topk_weight.data<float>(),
                                      scores.data<float>(), logits.data<float>(), bias.data<float>(),
                                      static_cast<int>(n), static_cast<int>(e), static_cast<int>(k),
                                      static_cast<int>(d.n_group), static_cast<int>(d.topk_group),
                                      d.norm_topk_prob, static_cast<float>(d.routed_scaling_factor));
  FATHOM_CUDA_CHECK_LAUNCH();
}

void RouterSelectBackward(const Tensor& dlogits, const Tensor& dweight, const Tensor& dscores,
                          const Tensor& scores, const Tensor& topk_index, const RouterDims& d,
                          Stream stream) {
  const char* op = "router_select_backward_cuda";
  CheckRouterDims(op, d);
  FATHOM_CHECK(scores.ndim() == 2, "[", op, "] scores ", scores.shape_str(), ", expected (N, E)");
  const int64_t n = scores.dim(0), e = d.num_experts, k = d.top_k;
  CheckRows(op, n);
  CheckDevice(op, "scores", scores, DType::kF32, {n, e});
  CheckDevice(op, "dlogits", dlogits, DType::kF32, {n, e});
  CheckDevice(op, "dweight", dweight, DType::kF32, {n, k});
  CheckDevice(op, "topk_index", topk_index, DType::kI64, {n, k});
  if (dscores.defined()) CheckDevice(op, "dscores", dscores, DType::kF32, {n, e});
  if (n == 0) return;
  RouterSelectBackwardKernel<<<static_cast<unsigned>((n + kRouterWarps - 1) / kRouterWarps),
                               kRouterWarps * 32, 0, Raw(stream)>>>(
      dlogits.data<float>(), dweight.data<float>(), dscores.defined() ? dscores.data<float>() : nullptr,
      scores.data<float>(), topk_index.data<int64_t>(), static_cast<int>(n), static_cast<int>(e),
      static_cast<int>(k), d.norm_topk_prob, static_cast<float>(d.routed_scaling_factor));
  FATHOM_CUDA_CHECK_LAUNCH();
}

int64_t SequenceBalanceScratchElements(int64_t batch, int64_t seq) {
  return batch * BalanceBlocksPerSequence(seq);
}

void SequenceBalanceLoss(const Tensor& loss, const Tensor& balance, const Tensor& seq_counts,
                         const Tensor& partials, const Tensor& scores, const Tensor& topk_index,
                         int64_t batch, int64_t seq, bool accumulate, Stream stream) {
  const char* op = "sequence_balance_loss_cuda";
  FATHOM_CHECK(batch >= 1 && seq >= 1 && scores.ndim() == 2 && topk_index.ndim() == 2, "[", op, "] batch ",
               batch, " seq ", seq, " scores ", scores.shape_str(), " topk_index ", topk_index.shape_str());
  const int64_t e = scores.dim(1), k = topk_index.dim(1);
  CheckRows(op, batch * seq * k);
  CheckDevice(op, "scores", scores, DType::kF32, {batch * seq, e});
  CheckDevice(op, "topk_index", topk_index, DType::kI64, {batch * seq, k});
  CheckDevice(op, "seq_counts", seq_counts, DType::kI32, {batch, e});
  CheckDevice(op, "balance", balance, DType::kF32, {batch});
  CheckDevice(op, "loss", loss, DType::kF32, {1});
  const int64_t blocks = BalanceBlocksPerSequence(seq);
  CheckDevice(op, "partials", partials, DType::kF64, {SequenceBalanceScratchElements(batch, seq)});
  FATHOM_CHECK(batch <= 65535, "[", op, "] ", batch, " sequences: at most 65535 per call");
  FATHOM_CUDA_CHECK(cudaMemsetAsync(seq_counts.raw(), 0, seq_counts.nbytes(), Raw(stream)));
  const unsigned count_blocks =
      static_cast<unsigned>((seq * k + kBalanceCountSlots - 1) / kBalanceCountSlots);
  BalanceCountKernel<<<dim3(count_blocks, static_cast<unsigned>(batch)), kBalanceThreads,
                       static_cast<size_t>(e) * sizeof(int), Raw(stream)>>>(
      seq_counts.data<int32_t>(), topk_index.data<int64_t>(), static_cast<int>(seq), static_cast<int>(e),
      static_cast<int>(k));
  FATHOM_CUDA_CHECK_LAUNCH();
  BalanceTokensKernel<<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(batch)), kBalanceThreads, 0,
                        Raw(stream)>>>(partials.data<double>(), seq_counts.data<int32_t>(),
                                       scores.data<float>(), static_cast<int>(seq), static_cast<int>(e),
                                       static_cast<int>(k));
  FATHOM_CUDA_CHECK_LAUNCH();
  BalanceSequenceKernel<<<static_cast<unsigned>(batch), 32, 0, Raw(stream)>>>(
      balance.data<float>(), partials.data<double>(), static_cast<int>(blocks), static_cast<int>(seq));
  FATHOM_CUDA_CHECK_LAUNCH();
  BalanceMeanKernel<<<1, 1, 0, Raw(stream)>>>(loss.data<float>(), balance.data<float>(),
                                              static_cast<int>(batch), accumulate);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void SequenceBalanceLossBackward(const Tensor& dscores, const Tensor& scores, const Tensor& topk_index,
                                 const Tensor& seq_counts, int64_t batch, int64_t seq, double weight,
                                 Stream stream) {
  const char* op = "sequence_balance_loss_backward_cuda";
  FATHOM_CHECK(batch >= 1 && seq >= 1 && scores.ndim() == 2 && topk_index.ndim() == 2, "[", op, "] batch ",
               batch, " seq ", seq, " scores ", scores.shape_str(), " topk_index ", topk_index.shape_str());
  const int64_t e = scores.dim(1), k = topk_index.dim(1), n = batch * seq;
  CheckRows(op, n * k);
  CheckDevice(op, "scores", scores, DType::kF32, {n, e});
  CheckDevice(op, "dscores", dscores, DType::kF32, {n, e});
  CheckDevice(op, "topk_index", topk_index, DType::kI64, {n, k});
  CheckDevice(op, "seq_counts", seq_counts, DType::kI32, {batch, e});
  // g_i = weight * f_i / (B T) with f_i = count_i * E / (K T).
  const double coef = weight * static_cast<double>(e) / (static_cast<double>(k) * static_cast<double>(seq)) /
                      static_cast<double>(n);
  BalanceBackwardKernel<<<static_cast<unsigned>((n + kBalanceWarps - 1) / kBalanceWarps), kBalanceThreads, 0,
                          Raw(stream)>>>(dscores.data<float>(), scores.data<float>(),
                                         seq_counts.data<int32_t>(), static_cast<int>(n),
                                         static_cast<int>(seq), static_cast<int>(e), coef);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void AccumulateExpertLoad(const Tensor& load, const Tensor& counts, Stream stream) {
  const char* op = "accumulate_expert_load_cuda";
  FATHOM_CHECK(counts.ndim() == 1, "[", op, "] counts ", counts.shape_str());
  const int64_t e = counts.dim(0);
  CheckDevice(op, "counts", counts, DType::kI64, {e});
  CheckDevice(op, "load", load, DType::kI64, {e});
  if (e == 0) return;
  AccumulateLoadKernel<<<static_cast<unsigned>((e + 255) / 256), 256, 0, Raw(stream)>>>(
      load.data<int64_t>(), counts.data<int64_t>(), static_cast<int>(e));
  FATHOM_CUDA_CHECK_LAUNCH();
}

void ExpertBiasUpdate(const Tensor& bias, const Tensor& load, double gamma, Stream stream) {
  const char* op = "expert_bias_update_cuda";
  FATHOM_CHECK(bias.ndim() == 1 && bias.dim(0) >= 1 && bias.dim(0) <= kBiasThreads, "[", op, "] bias ",
               bias.shape_str(), ": 1 to ", kBiasThreads, " experts");
  const int64_t e = bias.dim(0);
  CheckDevice(op, "bias", bias, DType::kF32, {e});
  CheckDevice(op, "load", load, DType::kI64, {e});
  if (gamma == 0.0) return;  // the CPU twin checks the loads even then; here a no-op launches nothing
  ExpertBiasUpdateKernel<<<1, kBiasThreads, 0, Raw(stream)>>>(bias.data<float>(), load.data<int64_t>(),
                                                              static_cast<int>(e), gamma);
  FATHOM_CUDA_CHECK_LAUNCH();
}

}  // namespace fathom::cuda
