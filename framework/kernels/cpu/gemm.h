// CPU GEMM, the reference twin of the cuBLASLt path.
//
// C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C, all row-major with leading dimensions
// lda/ldb/ldc in elements. op(X) is X or X^T. beta == 0 overwrites C without reading it (NaN-safe).
// Deterministic: the summation order depends only on the shapes, never on threads.
#ifndef FATHOM_FRAMEWORK_KERNELS_CPU_GEMM_H_
#define FATHOM_FRAMEWORK_KERNELS_CPU_GEMM_H_

#include <cstdint>

#include "framework/tensor.h"

namespace fathom::cpu {

template <class T>
void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// Tensor forms over 2-D tensors (f32 or f64), shapes checked:
//   MatmulNT: out (M, N) (=, or += when accumulate) x (M, K) . w (N, K)^T   -- Linear forward
//   MatmulNN: out (M, N) (=/+=) x (M, K) . w (K, N)                         -- Linear dgrad
//   MatmulTN: out (M, N) (=/+=) x (K, M)^T . y (K, N)                       -- Linear wgrad
void MatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate = false);
void MatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate = false);
void MatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, bool accumulate = false);

}  // namespace fathom::cpu

#endif  // FATHOM_FRAMEWORK_KERNELS_CPU_GEMM_H_
