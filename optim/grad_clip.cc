#include "optim/grad_clip.h"

#include <algorithm>
#include <cmath>

namespace fathom {

double GradNormSquared(const ParamTable& t, int64_t begin, int64_t end) {
  FATHOM_CHECK(t.finalized(), "[grad_norm] the parameter table must be finalized first");
  if (end < 0) end = t.numel();
  FATHOM_CHECK(0 <= begin && begin <= end && end <= t.numel(), "[grad_norm] range [", begin, ", ", end,
               ") outside the table's ", t.numel(), " elements");
  return DispatchFloat(t.dtype(), "grad_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* g = t.grads().data<T>();
    double sum = 0.0;
    // Specs are laid out in increasing offset order (ParamTable::Finalize), so this walks the range in
    // increasing index order.
    for (const ParamSpec& s : t.specs()) {
      if (!s.trainable) continue;
      int64_t b = std::max(begin, s.offset);
      int64_t e = std::min(end, s.offset + NumElements(s.shape));
      for (int64_t i = b; i < e; ++i) {
        double x = static_cast<double>(g[i]);
        sum += x * x;
      }
    }
    return sum;
  });
}

double ClipScale(double max_norm, double total_norm) {
  FATHOM_CHECK(max_norm >= 0, "[clip_grad] max_norm ", max_norm);
  FATHOM_CHECK(std::isfinite(total_norm) && total_norm >= 0, "[clip_grad] total_norm ", total_norm,
               " (a non-finite norm must be handled by the caller before clipping)");
  if (max_norm == 0.0) return 1.0;
  return std::min(1.0, max_norm / (total_norm + 1e-6));
}

double ClipGradients(ParamTable& t, double max_norm, double total_norm) {
  FATHOM_CHECK(t.finalized(), "[clip_grad] the parameter table must be finalized first");
  const double scale = ClipScale(max_norm, total_norm);
  if (scale == 1.0) return scale;
  DispatchFloat(t.dtype(), "clip_grad", [&](auto tag) {
    using T = decltype(tag);
    T* g = t.grads().data<T>();
    const T s = static_cast<T>(scale);
    for (const ParamSpec& spec : t.specs()) {
      if (!spec.trainable) continue;
      int64_t n = NumElements(spec.shape);
      for (int64_t i = spec.offset; i < spec.offset + n; ++i) g[i] *= s;
    }
  });
  return scale;
}

}  // namespace fathom
