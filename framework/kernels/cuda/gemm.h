// CUDA GEMMs through cuBLASLt: the three Linear forms of framework/kernels/cpu/gemm.h and the grouped
// routed-expert forms of framework/kernels/cpu/moe.h, on device tensors.
//
// dtypes (every call; anything else fails a FATHOM_CHECK naming the op):
//   inputs f32, output f32    -- the f32 path: CUBLAS_COMPUTE_32F, never TF32, so results equal the CPU
//                                twin up to f32 round-off (different summation order only)
//   inputs bf16, output bf16  -- the speed path: f32 accumulation, one rounding of the result to bf16
//   inputs bf16, output f32   -- gradients: f32 accumulation, f32 result (weight grads accumulate in f32)
// Both inputs of one call share a dtype. `accumulate` adds into `out` (beta = 1, read in out's dtype);
// without it `out` is overwritten and never read (NaN-safe, like the CPU twin's beta = 0).
//
// Row-major <-> column-major, done once in GemmContext::Gemm: a row-major (r, c) matrix with leading
// dimension ld is the column-major (c, r) matrix with the same ld. So the row-major product
// C (M, N) = op(A) (M, K) . op(B) (K, N) is issued to cuBLASLt as the column-major product
// C^T (N, M) = op(B)^T (N, K) . op(A)^T (K, M): operands swapped, transpose flags kept, m and n swapped.
//
// Grouped GEMMs (routed experts, rows sorted by expert into contiguous blocks as cpu::MoePermute makes
// them): this first version is the correctness-first one. It takes the per-expert row counts on the HOST
// (a CPU i64 tensor: the caller copies the device counts to the host once per layer per micro-batch,
// which is one small synchronisation) and issues one cuBLASLt matmul per non-empty expert on the stream.
// The fast version keeps the counts on the device so nothing waits on the host: each expert's row block is
// padded to a multiple of the 128-row M tile (the permutation writes padded offsets), a device array maps
// every M tile to its expert, and one persistent grouped kernel (DeepGEMM's "contiguous" layout, or
// cuBLASLt's grouped matmul with device-side problem sizes where the toolkit offers it) covers all experts
// in a single launch whose grid is bounded by R / 128 + E tiles, known on the host without a sync.
//
// Plans: each distinct problem (shape, transposes, dtypes, pointer alignments) gets its matmul
// descriptor, matrix layouts and the heuristic's algorithm once; later calls with the same problem do no
// heuristic query. Dense Linear shapes are fixed, so the steady state queries nothing; the per-expert
// calls of the grouped forms see a new row count per expert and micro-batch and query the heuristic for
// each new count (a cost of the correctness-first version; the cache is bounded, see gemm.cu).
//
// Streams and threads: all work is queued on the `stream` argument; nothing synchronises with the host.
// Every call shares the context's one workspace, so calls through one context must be ordered with each
// other (one stream, or streams joined by events): use one context per concurrently running stream.
// Not thread safe. The context must outlive the work queued through it.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_GEMM_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_GEMM_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "framework/cuda/stream.h"
#include "framework/tensor.h"

namespace fathom::cuda {

class GemmContext {
 public:
  // Start-up code: creates the cuBLASLt handle and cudaMallocs the workspace on the current device.
  explicit GemmContext(size_t workspace_bytes = size_t{32} << 20);
  ~GemmContext();
  GemmContext(const GemmContext&) = delete;
  GemmContext& operator=(const GemmContext&) = delete;

  // Row-major device GEMM, the twin of cpu::Gemm with alpha = 1:
  //   c (M, N) (=, or += when accumulate) op(a) (M, K) . op(b) (K, N), leading dimensions in elements.
  // a and b are `in` (f32 or bf16), c is `out` (see the dtype table above). K = 0 gives zeros (or leaves c
  // untouched when accumulating); M = 0 or N = 0 does nothing.
  void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a, int64_t lda,
            const void* b, int64_t ldb, DType in, bool accumulate, void* c, int64_t ldc, DType out,
            Stream stream);

  // Tensor forms over 2-D device tensors, shapes checked (the cpu::Matmul* contracts):
  //   MatmulNT: out (M, N) (=/+=) x (M, K) . w (N, K)^T   -- Linear forward
  //   MatmulNN: out (M, N) (=/+=) x (M, K) . w (K, N)     -- Linear dgrad
  //   MatmulTN: out (M, N) (=/+=) x (K, M)^T . y (K, N)   -- Linear wgrad (out f32 for gradients)
  void MatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate, Stream stream);
  void MatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate, Stream stream);
  void MatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, bool accumulate, Stream stream);

  // Grouped forms over the contiguous row blocks given by counts (E_local) i64 on the HOST, sum = R (the
  // cpu::GroupedMatmul* contracts). An expert with zero rows is skipped: no output rows, its weight
  // gradient untouched.
  //   GroupedMatmulNT: out (R, N) (=/+=) block_e of x (R, K) . w[e]^T, w (E_local, N, K)     -- forward
  //   GroupedMatmulNN: out (R, N) (=/+=) block_e of x (R, K) . w[e],   w (E_local, K, N)     -- dgrad
  //   GroupedMatmulTN: out[e] (E_local, M, N) += block_e of x (R, M)^T . block_e of y (R, N) -- wgrad
  void GroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                       bool accumulate, Stream stream);
  void GroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                       bool accumulate, Stream stream);
  void GroupedMatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, const Tensor& counts,
                       Stream stream);

  // Number of cached plans (distinct problems seen) and of heuristic queries made so far; tests use them
  // to show that repeated shapes reuse their plan.
  size_t plan_count() const;
  int64_t heuristic_queries() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_GEMM_H_
