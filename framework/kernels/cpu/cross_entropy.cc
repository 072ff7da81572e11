#include "framework/kernels/cpu/cross_entropy.h"

#include <cmath>

namespace fathom::cpu {

int64_t CountValidLabels(const Tensor& labels, int64_t ignore_index) {
  int64_t n = 0;
  const int32_t* l = labels.data<int32_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) n += l[i] != ignore_index;
  return n;
}

double CrossEntropyForward(const Tensor& lse, const Tensor& logits, const Tensor& labels,
                           int64_t ignore_index) {
  const int64_t n = logits.dim(0), v = logits.dim(1);
  FATHOM_CHECK(labels.numel() == n && lse.numel() == n, "[cross_entropy] logits ", logits.shape_str(),
               " labels ", labels.shape_str());
  return DispatchFloat(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();
    const int32_t* l = labels.data<int32_t>();
    T* out = lse.data<T>();
    double total = 0;
    for (int64_t i = 0; i < n; ++i) {
      const T* row = x + i * v;
      T m = row[0];
      for (int64_t j = 1; j < v; ++j) m = row[j] > m ? row[j] : m;
      T s = 0;
      for (int64_t j = 0; j < v; ++j) s += std::exp(row[j] - m);
      out[i] = m + std::log(s);
      if (l[i] == ignore_index) continue;
      FATHOM_CHECK(l[i] >= 0 && l[i] < v, "[cross_entropy] label ", l[i], " at row ", i,
                   " outside the vocabulary [0, ", v, ")");
      total += static_cast<double>(out[i] - row[l[i]]);
    }
    return total;
  });
}

void CrossEntropyBackward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                          const Tensor& labels, int64_t ignore_index, double scale) {
  const int64_t n = logits.dim(0), v = logits.dim(1);
  DispatchFloat(logits.dtype(), "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();
    const T* s = lse.data<T>();
    const int32_t* l = labels.data<int32_t>();
    T* d = dlogits.data<T>();
    const T sc = static_cast<T>(scale);
    for (int64_t i = 0; i < n; ++i) {
      T* di = d + i * v;
      if (l[i] == ignore_index) {
        for (int64_t j = 0; j < v; ++j) di[j] = 0;
        continue;
      }
      for (int64_t j = 0; j < v; ++j) di[j] = sc * std::exp(x[i * v + j] - s[i]);
      di[l[i]] -= sc;
    }
  });
}

}  // namespace fathom::cpu
