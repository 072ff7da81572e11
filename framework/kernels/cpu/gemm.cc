#include "framework/kernels/cpu/gemm.h"

#include <algorithm>
#include <vector>

namespace fathom::cpu {
namespace {

// Rows of C are independent; every C element sums over k in increasing order, so results do not depend
// on blocking. op(B) is packed into a contiguous (K, N) panel so the inner loop streams over N.
template <class T>
void GemmPacked(bool trans_a, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* bp,
                T beta, T* c, int64_t ldc) {
  std::vector<T> row(static_cast<size_t>(n));
  for (int64_t i = 0; i < m; ++i) {
    std::fill(row.begin(), row.end(), T(0));
    T* r = row.data();
    for (int64_t p = 0; p < k; ++p) {
      T av = trans_a ? a[p * lda + i] : a[i * lda + p];
      if (av == T(0)) continue;
      const T* bk = bp + p * n;
      for (int64_t j = 0; j < n; ++j) r[j] += av * bk[j];
    }
    T* ci = c + i * ldc;
    if (beta == T(0)) {
      for (int64_t j = 0; j < n; ++j) ci[j] = alpha * r[j];
    } else {
      for (int64_t j = 0; j < n; ++j) ci[j] = alpha * r[j] + beta * ci[j];
    }
  }
}

}  // namespace

template <class T>
void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (!trans_b && ldb == n) {
    GemmPacked(trans_a, m, n, k, alpha, a, lda, b, beta, c, ldc);
    return;
  }
  std::vector<T> bp(static_cast<size_t>(k * n));
  for (int64_t p = 0; p < k; ++p)
    for (int64_t j = 0; j < n; ++j) bp[p * n + j] = trans_b ? b[j * ldb + p] : b[p * ldb + j];
  GemmPacked(trans_a, m, n, k, alpha, a, lda, bp.data(), beta, c, ldc);
}

template void Gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                          int64_t, float, float*, int64_t);
template void Gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);

namespace {

void CheckMatmul(const char* op, const Tensor& out, const Tensor& a, const Tensor& b, int64_t m, int64_t n,
                 int64_t ka, int64_t kb) {
  FATHOM_CHECK(out.ndim() == 2 && a.ndim() == 2 && b.ndim() == 2, "[", op, "] 2-D tensors expected, got ",
               out.shape_str(), " ", a.shape_str(), " ", b.shape_str());
  FATHOM_CHECK(ka == kb && out.dim(0) == m && out.dim(1) == n, "[", op, "] out ", out.shape_str(), " a ",
               a.shape_str(), " b ", b.shape_str());
  FATHOM_CHECK(out.dtype() == a.dtype() && a.dtype() == b.dtype(), "[", op, "] mixed dtypes");
}

}  // namespace

void MatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate) {
  CheckMatmul("matmul_nt", out, x, w, x.dim(0), w.dim(0), x.dim(1), w.dim(1));
  DispatchFloat(x.dtype(), "matmul_nt", [&](auto tag) {
    using T = decltype(tag);
    Gemm<T>(false, true, x.dim(0), w.dim(0), x.dim(1), T(1), x.data<T>(), x.dim(1), w.data<T>(), w.dim(1),
            accumulate ? T(1) : T(0), out.data<T>(), out.dim(1));
  });
}

void MatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate) {
  CheckMatmul("matmul_nn", out, x, w, x.dim(0), w.dim(1), x.dim(1), w.dim(0));
  DispatchFloat(x.dtype(), "matmul_nn", [&](auto tag) {
    using T = decltype(tag);
    Gemm<T>(false, false, x.dim(0), w.dim(1), x.dim(1), T(1), x.data<T>(), x.dim(1), w.data<T>(), w.dim(1),
            accumulate ? T(1) : T(0), out.data<T>(), out.dim(1));
  });
}

void MatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, bool accumulate) {
  CheckMatmul("matmul_tn", out, x, y, x.dim(1), y.dim(1), x.dim(0), y.dim(0));
  DispatchFloat(x.dtype(), "matmul_tn", [&](auto tag) {
    using T = decltype(tag);
    Gemm<T>(true, false, x.dim(1), y.dim(1), x.dim(0), T(1), x.data<T>(), x.dim(1), y.data<T>(), y.dim(1),
            accumulate ? T(1) : T(0), out.data<T>(), out.dim(1));
  });
}

}  // namespace fathom::cpu
