// Causal softmax attention on the GPU (MLA's attention core), flash-attention style: the T x T score matrix
// never exists in memory. CPU twin and the exact math: framework/kernels/cpu/attention.h.
//
// Layout: q, k (B, T, H, Dk), v, out (B, T, H, Dv) row-major (what the projections produce), lse (B, H, T)
// f32. Dk and Dv are independent (DeepSeek-V3: Dk = 128 nope + 64 rope = 192, Dv = 128), each in [1, 256];
// T, B and H are arbitrary (B * H <= 65535); T need not be a multiple of any tile.
//
// dtypes: q, k, v, out (and dq, dk, dv, dout) share one dtype, either
//   f32  -- the exact twin of the CPU f32 path (f32 products and accumulation), or
//   bf16 -- storage only: every product, the online softmax and every accumulation run in f32; outputs are
//           rounded to bf16 once (round to nearest even).
// lse is f32 for both. Any other dtype, a host tensor or a shape mismatch fails a FATHOM_CHECK that names the
// op.
//
// Implementation (this version): tiled shared-memory SIMT kernels, f32 CUDA-core FMAs, 128 threads per block.
//   forward : one block per (64-query tile, b, h); K/V tiles of 32 keys stream through shared memory up to
//             the diagonal; online softmax (running max and sum per row) rescales the f32 output accumulator
//             held in shared memory; out = acc / l and lse = m + log(l) are written at the end.
//   backward: D_i = dout_i . out_i is recomputed per query tile from out and dout (Dv products per row, a few
//             percent of the tile's work), so no (B, H, T) scratch is needed; P is recomputed from lse.
//             Two kernels, both deterministic and free of atomics:
//               dk/dv: one block per 32-key tile walks the query tiles from the diagonal to T, accumulating
//                      dv += P^T dout and dk += dS^T q in shared memory (f32);
//               dq   : one block per 32-query tile walks the key tiles up to the diagonal, accumulating
//                      dq += dS k.
//             The scores and dP are therefore computed twice (once per kernel); that buys run-to-run
//             bitwise-identical gradients without float atomics.
// The fast version replaces the inner products with Hopper tensor cores (wgmma, TMA-fed K/V tiles, 128-row
// tiles per warpgroup, bf16 P) or calls cuDNN's fused SDPA through its graph API; the API stays as it is.
//
// Stream semantics: work is queued on `stream`; no host synchronisation, no allocation.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_ATTENTION_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_ATTENTION_H_

#include "framework/cuda/stream.h"
#include "framework/tensor.h"

namespace fathom::cuda {

// out (B, T, H, Dv) and lse (B, H, T) f32 overwritten; q, k (B, T, H, Dk); v (B, T, H, Dv).
// s_ij = scale * q_i . k_j for j <= i.
void CausalAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, double scale, Stream stream);

// dq, dk (B, T, H, Dk) and dv (B, T, H, Dv) overwritten; dout (B, T, H, Dv); q, k, v as in the forward;
// out (B, T, H, Dv) and lse (B, H, T) f32 as the forward saved them. The gradients must not alias the inputs.
void CausalAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                             const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, double scale, Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_ATTENTION_H_
