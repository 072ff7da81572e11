// Causal softmax attention on the GPU (MLA's attention core), flash-attention style: the T x T score matrix
// never exists in memory. CPU twin and the exact math: framework/kernels/cpu/attention.h.
//
// Layout: q, k (B, T, H, Dk), v, out (B, T, H, Dv) row-major (what the projections produce), lse (B, H, T)
// f32. Dk and Dv are independent (DeepSeek-V3: Dk = 128 nope + 64 rope = 192, Dv = 128), each in [1, 256];
// T, B and H are arbitrary (B * H <= 65535); T need not be a multiple of any tile.
//
// dtypes: q, k, v, out (and dq, dk, dv, dout) share one dtype, either
//   f32  -- the exact twin of the CPU f32 path (f32 products and accumulation), or
//   bf16 -- storage only: the online softmax and every accumulation run in f32 (products of bf16 inputs are
//           exact); outputs are rounded to bf16 once (round to nearest even). On the tensor-core path
//           (below) P and dS are also rounded to bf16 before their second product.
// lse is f32 for both. Any other dtype, a host tensor or a shape mismatch fails a FATHOM_CHECK that names the
// op.
//
// Three implementations. The dispatching overloads (no `path` argument) take the first that applies, and
// SelectAttentionPath / DescribeAttentionPath say which (start-up code prints it, one line per shape):
//
// cuDNN path -- bf16 whenever this build links cuDNN and cuDNN's fused flash-attention engines accept the
//   shape (attention_cudnn.h: plans built once per shape and cached; about 500 / 380 TFLOP/s forward /
//   backward at the model's shape on an H200). dq is not bitwise reproducible there (f32 atomics) unless
//   the deterministic mode (SetCudnnAttentionDeterministic, train.deterministic) asks cuDNN for plans that
//   are; a shape cuDNN then refuses takes the next path.
//   Otherwise, a function of (dtype, Dk, Dv) only:
//
// Tensor-core path -- bf16 with (Dk, Dv) in {(64, 64), (128, 128), (192, 128)} (DeepSeek-V3 is (192, 128)):
//   FlashAttention-2 on mma.sync.m16n8k16 (bf16 x bf16 -> f32) fed by ldmatrix from shared-memory tiles that
//   cp.async double-buffers (kernel bodies: attention_mma.cuh). Scores, the online softmax, lse and every
//   accumulator are f32; the probabilities P and the score gradients dS enter their second product rounded
//   to bf16 (as in FlashAttention), which adds ~1e-3 relative L2 error to out, dq, dk, dv on top of the final
//   bf16 rounding (tests/gpu/attention_test.cc measures it).
//   forward : one block of 8 warps per (128-query tile, b, h), each warp owning 16 query rows (Q fragments
//             in registers); 64-key K/V tiles up to the diagonal (tiles wholly in a warp's future skipped),
//             the causal mask applied on diagonal tiles only; P stays in registers between S = Q K^T and
//             O += P V.
//   backward: two deterministic kernels, no atomics and no scratch:
//               dk/dv: one block of 8 warps per 64-key tile walks the 64-query tiles from the diagonal to T
//                      (S and dP split 4 x 2 over the warps, P and dS staged in shared memory as bf16, then
//                      dv += P^T dout and dk += dS^T q split 4 keys-groups x 2 column halves);
//               dq   : one block of 4 warps per 64-query tile walks 32-key tiles up to the diagonal
//                      (dq += dS k with dS in registers).
//             D_i = dout_i . out_i is recomputed from out and dout where needed (per query tile in dk/dv,
//             once per block in dq), so no (B, H, T) scratch is needed; P is recomputed from lse.
//   Requirements (checked, failing loudly): every data pointer 16-byte aligned (DeviceArena and the device
//   pool give 256), ceil(T / 64) <= 65535. T, B and H are otherwise arbitrary.
//   Measured (H100, B 2, T 4096, H 16, Dk 192, Dv 128, causal FLOPs: forward 2 B H T^2/2 (Dk + Dv), backward
//   2.5x that; tests/gpu_bench/attention_bench.cc): ~260 TFLOP/s forward, ~129 TFLOP/s backward.
//
// SIMT path -- f32 (any Dk, Dv), and bf16 with any other head dims (a documented choice: correct but ~35x
//   slower, 7.4 / 4.3 TFLOP/s at the shape above): tiled shared-memory kernels, f32 CUDA-core FMAs, 128
//   threads per block.
//   forward : one block per (64-query tile, b, h); K/V tiles of 32 keys stream through shared memory up to
//             the diagonal; online softmax (running max and sum per row) rescales the f32 output accumulator
//             held in shared memory; out = acc / l and lse = m + log(l) are written at the end.
//   backward: D_i recomputed per query tile as above; two kernels, both deterministic and free of atomics:
//               dk/dv: one block per 32-key tile walks the query tiles from the diagonal to T, accumulating
//                      dv += P^T dout and dk += dS^T q in shared memory (f32);
//               dq   : one block per 32-query tile walks the key tiles up to the diagonal, accumulating
//                      dq += dS k.
// Both paths compute the scores and dP twice in the backward (once per kernel); that buys run-to-run
// bitwise-identical gradients without float atomics.
//
// Stream semantics: work is queued on `stream`; no host synchronisation, no allocation (except the cuDNN
// path's one-time plan build and workspace for a shape not prepared before).
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_ATTENTION_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_ATTENTION_H_

#include <string>

#include "framework/cuda/stream.h"
#include "framework/kernels/cuda/attention_cudnn.h"
#include "framework/tensor.h"

namespace fathom::cuda {

enum class AttentionPath { kCudnn, kTensorCores, kSimt };
const char* AttentionPathName(AttentionPath path);  // "cuDNN fused SDPA", "own tensor-core kernels", "SIMT"

// The path the dispatching overloads take for (dtype, shape): kCudnn for bf16 when PrepareCudnnAttention
// (attention_cudnn.h) accepts the shape -- so the first call for a shape builds cuDNN's plans and allocates
// their workspace: start-up code should call this (or DescribeAttentionPath) for the shapes it will run --,
// else kTensorCores for bf16 with a listed (Dk, Dv), else kSimt.
AttentionPath SelectAttentionPath(DType dtype, const AttentionShape& shape);
// Whether `path` can run (dtype, shape): kSimt always, kTensorCores for bf16 with a listed (Dk, Dv), kCudnn
// when PrepareCudnnAttention accepts it (bf16 only).
bool AttentionPathSupports(AttentionPath path, DType dtype, const AttentionShape& shape);
// One line for start-up logs, e.g. "attention B2 T4096 H16 Dk192 Dv128 bf16: cuDNN 91900 fused SDPA (...)"
// or "...: own tensor-core kernels (cuDNN not used: <why>)".
std::string DescribeAttentionPath(DType dtype, const AttentionShape& shape);

// out (B, T, H, Dv) and lse (B, H, T) f32 overwritten; q, k (B, T, H, Dk); v (B, T, H, Dv).
// s_ij = scale * q_i . k_j for j <= i.
void CausalAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, double scale, Stream stream);
// The same on an explicit path (tests and benchmarks). REQUIRES AttentionPathSupports(path, ...) (checked).
void CausalAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, double scale, Stream stream, AttentionPath path);

// dq, dk (B, T, H, Dk) and dv (B, T, H, Dv) overwritten; dout (B, T, H, Dv); q, k, v as in the forward;
// out (B, T, H, Dv) and lse (B, H, T) f32 as the forward saved them. The gradients must not alias the inputs.
void CausalAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                             const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, double scale, Stream stream);
void CausalAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                             const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, double scale, Stream stream, AttentionPath path);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_ATTENTION_H_
