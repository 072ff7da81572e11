#include "framework/kernels/cpu/norm.h"

#include <cmath>

namespace fathom::cpu {

void RmsNormForward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w, double eps) {
  const int64_t n = x.dim(0), c = x.dim(1);
  FATHOM_CHECK(out.shape() == x.shape() && w.numel() == c && rstd.numel() == n, "[rms_norm] x ",
               x.shape_str(), " w ", w.shape_str(), " out ", out.shape_str(), " rstd ", rstd.shape_str());
  DispatchFloat(x.dtype(), "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    const T* wp = w.data<T>();
    T* op = out.data<T>();
    T* rp = rstd.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      const T* xi = xp + i * c;
      T ss = 0;
      for (int64_t j = 0; j < c; ++j) ss += xi[j] * xi[j];
      T r = T(1) / std::sqrt(ss / static_cast<T>(c) + static_cast<T>(eps));
      rp[i] = r;
      for (int64_t j = 0; j < c; ++j) op[i * c + j] = wp[j] * (xi[j] * r);
    }
  });
}

// With xhat = x * r and g = dy * w: dx = r * (g - xhat * mean(g * xhat)).
void RmsNormBackwardInput(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& w,
                          const Tensor& rstd, const Tensor& residual) {
  const int64_t n = x.dim(0), c = x.dim(1);
  FATHOM_CHECK(dx.shape() == x.shape() && dy.shape() == x.shape(), "[rms_norm backward] dy ", dy.shape_str(),
               " x ", x.shape_str());
  FATHOM_CHECK(!residual.defined() || (residual.shape() == x.shape() && residual.dtype() == x.dtype()),
               "[rms_norm backward] residual ", residual.shape_str(), " for x ", x.shape_str());
  DispatchFloat(x.dtype(), "rms_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    const T* wp = w.data<T>();
    const T* gp = dy.data<T>();
    const T* rp = rstd.data<T>();
    const T* res = residual.defined() ? residual.data<T>() : nullptr;
    T* dp = dx.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      const T r = rp[i];
      T dot = 0;
      for (int64_t j = 0; j < c; ++j) dot += gp[i * c + j] * wp[j] * xp[i * c + j] * r;
      dot /= static_cast<T>(c);
      for (int64_t j = 0; j < c; ++j) {
        const T g = r * (gp[i * c + j] * wp[j] - xp[i * c + j] * r * dot);
        dp[i * c + j] = res != nullptr ? res[i * c + j] + g : g;
      }
    }
  });
}

void RmsNormBackwardWeight(const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& rstd) {
  const int64_t n = x.dim(0), c = x.dim(1);
  DispatchFloat(x.dtype(), "rms_norm_backward_weight", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    const T* gp = dy.data<T>();
    const T* rp = rstd.data<T>();
    T* dwp = dw.data<T>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j) dwp[j] += gp[i * c + j] * xp[i * c + j] * rp[i];
  });
}

}  // namespace fathom::cpu
