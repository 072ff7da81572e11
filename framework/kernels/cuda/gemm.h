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
// them). The per-expert row counts come on the HOST (a CPU i64 tensor: the caller copies the device counts
// to the host once per layer per micro-batch, which is one small synchronisation), and each non-empty
// expert is one cuBLASLt matmul; every dtype pair and all three forms take the same path, chosen by
// set_grouped_path (default kBucketedMultiStream). Two layouts skip the per-expert calls (see
// set_batch_uniform): equal counts run as one strided batch, and counts that are all multiples of
// kTileRows (the padded expert layout of layers/moe.h) run NT and NN as one pointer-array batch of tiles.
// The per-expert paths:
//   - Bucketed plans: a plan is keyed by the problem with the expert's row count (the ragged dimension:
//     M of NT/NN, K of TN) rounded up to a bucket (64, 96, 128, 192, 256, ..., two per octave); the
//     heuristic is asked once per bucket, for the bucket's largest size, and each exact row count then gets
//     one cublasLtMatmulAlgoCheck (remembered) of the bucket's algorithm, with an exact heuristic query only
//     where the check rejects it. The plan's layouts are resized per call, so nothing is created per call
//     and the steady state queries nothing (the first version queried once per new exact row count and
//     made a plan for it: ~1.1-1.8 queries per 32-expert call in the benchmark below).
//   - Multi-stream: the experts of one call are spread (longest-first balance by FLOPs) over 4 internal
//     streams forked from and joined back to the caller's stream with events (no host synchronisation),
//     each using a quarter of the workspace, so that several small expert GEMMs (~50 output tiles each at
//     the recipe's ~1000 rows per expert) share the 132 SMs. The streams and events are created with the
//     context, on the device current then; nothing is allocated per call.
//   - kPerExpertExact (the first version, one exact plan per row count, on the caller's stream), kBucketed
//     (bucketed plans on the caller's stream) and kExactMultiStream (the heuristic's algorithm for each
//     exact row count, queried once per count, on the internal streams) stay for tests and
//     tests/gpu_bench/gemm_bench.cc.
// A zero fixed dimension (K = 0 of NT/NN: zeros, or an untouched output when accumulating; N = 0: nothing)
// takes Gemm's empty-problem handling on every path.
// Not used: cublasGemmGroupedBatchedEx (one call for all experts, declared by the cuBLAS 13.1 headers here,
// pointer arrays in device memory) lives in libcublas, which fathom_framework does not link (cuBLASLt only);
// its dtype coverage and speed were therefore not measured. The device-side grouped kernel (DeepGEMM's
// contiguous layout: blocks padded to the 128-row tile, a tile -> expert map, counts kept on the device) is
// grouped_gemm.h's TiledGroupedMatmulNT; its bf16 form measured 422-475 TFLOP/s on an H200 against these
// tiles' 554-591 (it lacks cuBLAS's 2-CTA multicast), so the bf16 experts stay here for now.
//
// Measured (one H100, tests/gpu_bench/gemm_bench.cc: R 32768 rows over 32 experts with skewed random counts
// that change every call, hidden 2048, moe_intermediate 1408, bf16 inputs; wall time per call including host
// overhead; us and TFLOP/s; dense ceiling: one 32768 x 1408 x 2048 NT GEMM, 301 us, 627 TFLOP/s):
//   form (K, N)            first version   bucketed 1 stream   exact 4 streams   bucketed 4 streams (default)
//   NT (2048, 1408) bf16    450 us / 420     461 us / 410        436 us / 433      420 us / 450
//   NT (1408, 2048) bf16    423 us / 446     453 us / 418        405 us / 466      389 us / 485
//   NN (2048, 1408) bf16    448 us / 422     468 us / 404        434 us / 435      420 us / 450
//   NN (1408, 2048) bf16    425 us / 445     453 us / 417        411 us / 460      392 us / 482
//   TN (2048, 1408) f32 +=  631 us / 299     625 us / 302        545 us / 347      545 us / 347
//   TN (1408, 2048) f32 +=  626 us / 302     623 us / 303        541 us / 349      540 us / 350
// So the heuristic queries were not the main cost (bucketing alone loses ~3% to the exact algorithms); the
// gain (7-9% NT/NN, 14% TN) comes from running experts concurrently, which needs the query-free path.
//
// Plans: each distinct problem (shape, transposes, dtypes, pointer alignments) of the dense forms gets its
// matmul descriptor, matrix layouts and the heuristic's algorithm once; later calls with the same problem
// do no heuristic query, so the steady state queries nothing (the caches are bounded, see gemm.cu).
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
  // cpu::GroupedMatmul* contracts). An expert with zero rows is skipped: no output rows; its weight
  // gradient untouched when accumulating, zeroed (cudaMemsetAsync) when overwriting.
  //   GroupedMatmulNT: out (R, N) (=/+=) block_e of x (R, K) . w[e]^T, w (E_local, N, K)     -- forward
  //   GroupedMatmulNN: out (R, N) (=/+=) block_e of x (R, K) . w[e],   w (E_local, K, N)     -- dgrad
  //   GroupedMatmulTN: out[e] (E_local, M, N) (+=/=) block_e of x (R, M)^T . block_e of y (R, N) -- wgrad
  // Overwriting (beta 0) never reads `out`: the f32 wgrad into a gradient known to be zero saves reading
  // 4 bytes per expert weight.
  void GroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                       bool accumulate, Stream stream);
  void GroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                       bool accumulate, Stream stream);
  void GroupedMatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, const Tensor& counts,
                       bool accumulate, Stream stream);

  // Number of cached plans (distinct problems seen) and of heuristic queries made so far; tests use them
  // to show that repeated shapes reuse their plan.
  size_t plan_count() const;
  int64_t heuristic_queries() const;

  // Implementation of the grouped forms (see "Grouped GEMMs" above). Production code keeps the default;
  // tests run every path and tests/gpu_bench/gemm_bench.cc compares them.
  //   kPerExpertExact       -- the first version: one exact plan (heuristic query) per new row count
  //   kBucketed             -- bucketed plans, all experts on the caller's stream
  //   kBucketedMultiStream  -- bucketed plans, experts spread over the internal streams (default, fastest)
  //   kExactMultiStream     -- the heuristic's choice per exact row count (queried once per count),
  //                            experts spread over the internal streams
  enum class GroupedPath { kPerExpertExact, kBucketed, kBucketedMultiStream, kExactMultiStream };
  void set_grouped_path(GroupedPath path);
  GroupedPath grouped_path() const;
  // Uniform blocks (every one of E > 1 experts with the same non-zero row count: the padded expert layout
  // of layers/moe.h) run as one strided-batched cuBLASLt matmul on any path (default on; off only for
  // tests/gpu_bench/gemm_bench.cc's comparison).
  void set_batch_uniform(bool on);
  // Tiled blocks (every expert's row count a multiple of kTileRows: the padded expert layout of
  // layers/moe.h) run NT and NN as ONE cuBLASLt pointer-array batch of kTileRows-row tiles, each reading its
  // expert's weight, and TN as one pointer-array batch per distinct row count (also under
  // set_batch_uniform). The pointer arrays go to the device with each call (an asynchronous copy on the
  // caller's stream from pinned slots, 24 bytes per problem). Measured on an H200 by gemm_bench's
  // BM_Batched (2026-12-04; 32 experts, hidden 2048, moe_intermediate 1408, bf16): the tiled set (the skewed
  // counts rounded up to the tile) NT 562-600 and NN 565-595 TFLOP/s against 471-494 per expert on 4
  // streams, but TN 418-420 against 436 per expert (its per-row-count batches are slower); uniform counts
  // (1024-1152 rows each) 603-661 as one strided batch.
  static constexpr int64_t kTileRows = 128;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_GEMM_H_
