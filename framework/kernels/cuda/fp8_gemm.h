// FP8 block-scaled GEMMs on the GPU through cuBLASLt's Hopper block-scaling modes (cuBLAS 12.9+; CUDA 13
// here): e4m3 operands, one f32 scale per 1x128 tile (CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F) or per 128x128
// block (CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F), f32 accumulation (no fast accumulation: cuBLASLt
// promotes each 128-deep block's partial sum to f32 and applies its scales). The twin of
// framework/kernels/cpu/fp8_gemm.h; operand layouts are framework/fp8_operands.h's.
//
// cuBLASLt's FP8 kernels on Hopper take only the "TN" form (A transposed, B not: both operands K-major), so
// every product is issued as the column-major C^T (N, M) = A (K, N)^T . B (K, M) of a row-major
// C (M, N) = X (M, K) . Y (N, K)^T:
//   forward  y (R, N)  = x (R, K) . w (N, K)^T       A = w's codes (128x128), B = x's packed rows (1x128)
//   dgrad    dx (R, K) = dy (R, N) . (w^T)^T          A = the transposed weight copy wt (K, N), B = dy's rows
//   wgrad    dW (N, K) += dy^T . x                    A = x's columns (K, T) (1x128), B = dy's columns (N, T)
// Scale layouts (cuBLASLt's): VEC128 on an operand with outer dimension O and reduction K is
// (ceil(K/128), O) with O contiguous; BLK128x128 is (ceil(O/128), RoundUp(ceil(K/128), 4)) with K contiguous.
// The weights' and the columns' scales are stored that way; the packed rows keep their scales per row (the
// all-to-all moves them with the codes), so the forward and dgrad first gather them into one block per group
// (a small kernel into `scratch`, TileScaleElements floats), each block starting at a multiple of 16 bytes.
// cuBLASLt 13.1 on an H200 refuses a B operand whose column count (rows_g) is not a multiple of 16, so a
// group runs as a main product over its first rows_g / 16 * 16 rows (scales (ceil(K/128), main)) and, when
// rows remain, a tail product over 16 rows copied into a zero-padded buffer (scales (ceil(K/128), 16)), the
// tail's output copied back: one extra small matmul per group whose rows are not a multiple of 16.
//
// Groups (routed experts): NT counts that are all multiples of 128 (the padded layout of layers/moe.h) go to
// fathom's own tiled kernel (TiledFp8GroupedMatmulNT, grouped_gemm.h) when set_tiled_kernel is on, grouped
// TN to TiledFp8GroupedMatmulTN when set_tiled_wgrad is on (both default off, train.fp8_expert_gemm); by
// default and otherwise one cuBLASLt matmul per non-empty group, spread (longest first) over 4 internal
// streams forked from and joined back to the caller's stream with events (as the bf16 grouped GEMMs of
// gemm.h do); plans are keyed by the problem with the ragged dimension (rows of NT, tokens of TN) rounded up
// to a bucket, the heuristic asked once per bucket and each exact size checked once with
// cublasLtMatmulAlgoCheck (an exact query where the check fails), so the steady state queries nothing.
//
// Requirements on the GPU (FATHOM_CHECK naming the op): the non-reduction dimensions of every operand (N and
// K of a weight) multiples of 16 (cuBLASLt's FP8 alignment; the reduction axis is padded to 128 by the
// layout, so it may be anything); at most kMaxFp8Groups groups; out bf16 or f32 for NT (f32 accumulates in
// place with beta = 1), f32 for TN. Rows per group: any (including zero).
//
// Streams and threads: work is queued on `stream`; nothing synchronises with the host. One workspace serves
// every call, so calls through one context must be stream-ordered with each other. Not thread safe. The
// context must outlive the work queued through it.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_FP8_GEMM_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_FP8_GEMM_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "framework/cuda/stream.h"
#include "framework/fp8_operands.h"
#include "framework/tensor.h"

namespace fathom::cuda {

class Fp8GemmContext {
 public:
  // Start-up code: creates the cuBLASLt handle, the internal streams and events, and cudaMallocs the
  // workspace on the current device.
  explicit Fp8GemmContext(size_t workspace_bytes = size_t{32} << 20);
  ~Fp8GemmContext();
  Fp8GemmContext(const Fp8GemmContext&) = delete;
  Fp8GemmContext& operator=(const Fp8GemmContext&) = delete;

  // f32 elements of the `scratch` GroupedMatmulNT needs for x (cols wide) grouped by counts (HOST i64).
  static int64_t TileScaleElements(const Tensor& counts, int64_t cols);

  // out (R, N) (=, or += when accumulate) row block g of x . w[g]^T (see kernels/cpu/fp8_gemm.h).
  // scratch: a CUDA f32 tensor of at least TileScaleElements(counts, x.cols) elements, free for this call
  // (written before the GEMMs read it, in stream order).
  void GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w, const Tensor& counts,
                       bool accumulate, const Tensor& scratch, Stream stream);
  // out[g] (G, M, N) (or (M, N)) f32 (+= when accumulate, else =) a_g . b_g^T over each group's padded
  // tokens; overwriting zeroes the groups without tokens.
  void GroupedMatmulTN(const Tensor& out, const Fp8Cols& a, const Fp8Cols& b, bool accumulate, Stream stream);

  // Tests and benchmarks: plans made and heuristic queries so far; whether groups are spread over the
  // internal streams (default) or run on the caller's stream.
  size_t plan_count() const;
  int64_t heuristic_queries() const;
  void set_multi_stream(bool on);
  // Whether routed experts go to fathom's own tiled kernel (grouped_gemm.h, one launch per call, an sm_90
  // device): GroupedMatmulNT's padded layout (several groups, every count a multiple of 128, N a multiple of
  // 16; 536-606 TFLOP/s on an H200 in gemm_bench's BM_OwnTiledFp8NT at the recipe's widths, ~550 in a
  // training step, both measured while its wgmma were serialised, see grouped_gemm.h). Default off: a
  // recipes/small.yaml fp8 step was 98.0 ms with it against 95.0 with the per-expert cuBLASLt matmuls
  // (2026-12-04, one call); on with train.fp8_expert_gemm own.
  void set_tiled_kernel(bool on);
  bool tiled_kernel() const;
  // Whether GroupedMatmulTN's weight gradients (several groups, N a multiple of 16) go to the own tiled
  // kernel. Default off: on an H200 at recipes/small.yaml's widths it ran 207-228 TFLOP/s with serialised
  // wgmma; the step with it (and the own forward/dgrad) was 94.3 ms against 95.0 with cuBLASLt, inside the run
  // to run spread (train.fp8_expert_gemm own_all, 2026-12-04).
  void set_tiled_wgrad(bool on);
  bool tiled_wgrad() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_FP8_GEMM_H_
