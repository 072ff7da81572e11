#include "framework/kernels/cpu/columns.h"

#include "framework/check.h"
#include "framework/dtype.h"

namespace fathom::cpu {

void CopyColumns(const Tensor& dst, int64_t d0, const Tensor& src, int64_t s0, int64_t w) {
  FATHOM_CHECK(dst.ndim() == 2 && src.ndim() == 2 && dst.dim(0) == src.dim(0) && d0 >= 0 && s0 >= 0 &&
                   w >= 0 && d0 + w <= dst.dim(1) && s0 + w <= src.dim(1) && dst.dtype() == src.dtype(),
               "[copy_columns] columns [", s0, ", ", s0 + w, ") of ", src.shape_str(), " to [", d0, ", ",
               d0 + w, ") of ", dst.shape_str());
  DispatchFloat(src.dtype(), "copy_columns", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = src.dim(0), ws = src.dim(1), wd = dst.dim(1);
    const T* sp = src.data<T>();
    T* dp = dst.data<T>();
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < w; ++j) dp[r * wd + d0 + j] = sp[r * ws + s0 + j];
  });
}

void BroadcastColumnsToHeads(const Tensor& k, int64_t off, const Tensor& src, int64_t s0) {
  FATHOM_CHECK(k.ndim() == 3 && off >= 0 && off <= k.dim(2), "[broadcast_columns_to_heads] k ", k.shape_str(),
               " offset ", off);
  const int64_t n = k.dim(0), heads = k.dim(1), dk = k.dim(2), d = dk - off;
  FATHOM_CHECK(
      src.ndim() == 2 && src.dim(0) == n && s0 >= 0 && s0 + d <= src.dim(1) && src.dtype() == k.dtype(),
      "[broadcast_columns_to_heads] ", src.shape_str(), " into ", k.shape_str());
  DispatchFloat(k.dtype(), "broadcast_columns_to_heads", [&](auto tag) {
    using T = decltype(tag);
    const int64_t ws = src.dim(1);
    const T* sp = src.data<T>();
    T* kp = k.data<T>();
    for (int64_t r = 0; r < n; ++r)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t j = 0; j < d; ++j) kp[(r * heads + h) * dk + off + j] = sp[r * ws + s0 + j];
  });
}

void SumHeadsToColumns(const Tensor& dst, int64_t d0, const Tensor& dk, int64_t off) {
  FATHOM_CHECK(dk.ndim() == 3 && off >= 0 && off <= dk.dim(2), "[sum_heads_to_columns] dk ", dk.shape_str(),
               " offset ", off);
  const int64_t n = dk.dim(0), heads = dk.dim(1), w = dk.dim(2), d = w - off;
  FATHOM_CHECK(
      dst.ndim() == 2 && dst.dim(0) == n && d0 >= 0 && d0 + d <= dst.dim(1) && dst.dtype() == dk.dtype(),
      "[sum_heads_to_columns] ", dk.shape_str(), " over heads into ", dst.shape_str());
  DispatchFloat(dk.dtype(), "sum_heads_to_columns", [&](auto tag) {
    using T = decltype(tag);
    const int64_t wd = dst.dim(1);
    const T* gp = dk.data<T>();
    T* dp = dst.data<T>();
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t j = 0; j < d; ++j) {
        T s = 0;
        for (int64_t h = 0; h < heads; ++h) s += gp[(r * heads + h) * w + off + j];
        dp[r * wd + d0 + j] = s;
      }
    }
  });
}

}  // namespace fathom::cpu
