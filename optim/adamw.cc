#include "optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "framework/numeric.h"

namespace fathom {
namespace {

// Per-step coefficients, computed once in double and narrowed to the arithmetic type T.
template <class T>
struct Coeffs {
  T beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  T decay_factor;  // 1 - lr * weight_decay
  T step_size;     // lr / (1 - beta1^t)
  T inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
};

template <class T>
T LoadMoment(float m) {
  return static_cast<T>(m);
}
template <class T>
T LoadMoment(Bf16 m) {
  return static_cast<T>(Bf16ToFloat(m));
}
template <class T>
void StoreMoment(T x, float* out) {
  *out = static_cast<float>(x);
}
template <class T>
void StoreMoment(T x, Bf16* out) {
  *out = FloatToBf16(static_cast<float>(x));
}

// One contiguous run of a parameter: p, g are flat-buffer pointers, m, v the matching moment pointers.
template <class T, class M>
void UpdateRun(T* p, const T* g, M* m, M* v, int64_t n, const Coeffs<T>& c, bool weight_decay) {
  for (int64_t i = 0; i < n; ++i) {
    T gi = g[i];
    T mi = c.beta1 * LoadMoment<T>(m[i]) + c.one_minus_beta1 * gi;
    T vi = c.beta2 * LoadMoment<T>(v[i]) + c.one_minus_beta2 * gi * gi;
    // The unrounded moments drive this step's update; only storage is narrowed (header contract).
    StoreMoment(mi, &m[i]);
    StoreMoment(vi, &v[i]);
    T pi = p[i];
    if (weight_decay) pi *= c.decay_factor;
    T denom = std::sqrt(vi) * c.inv_sqrt_bc2 + c.eps;
    p[i] = pi - c.step_size * (mi / denom);
  }
}

}  // namespace

AdamW::AdamW(ParamTable& table, const OptimConfig& cfg, int64_t begin, int64_t end)
    : table_(&table),
      beta1_(cfg.beta1),
      beta2_(cfg.beta2),
      eps_(cfg.eps),
      weight_decay_(cfg.weight_decay),
      begin_(begin),
      end_(end < 0 ? table.numel() : end) {
  FATHOM_CHECK(table.finalized(), "[adamw] the parameter table must be finalized first");
  FATHOM_CHECK(0 <= begin_ && begin_ <= end_ && end_ <= table.numel(), "[adamw] range [", begin_, ", ", end_,
               ") outside the table's ", table.numel(), " elements");
  FATHOM_CHECK(cfg.moment_dtype == "f32" || cfg.moment_dtype == "bf16", "[adamw] moment_dtype '",
               cfg.moment_dtype, "' (expected f32 or bf16; OptimConfig::Validate should have caught it)");
  for (const ParamSpec& s : table.specs()) {
    if (!s.trainable) continue;
    // Only the parameter's own elements: the alignment padding after it is never part of a segment.
    int64_t b = std::max(begin_, s.offset);
    int64_t e = std::min(end_, s.offset + NumElements(s.shape));
    if (b < e) segments_.push_back({b, e, s.weight_decay});
  }
  DType md = cfg.moment_dtype == "bf16" ? DType::kBF16 : DType::kF32;
  exp_avg_ = Tensor::Zeros({end_ - begin_}, md);
  exp_avg_sq_ = Tensor::Zeros({end_ - begin_}, md);
}

void AdamW::set_step(int64_t step) {
  FATHOM_CHECK(step >= 0, "[adamw] negative step ", step);
  step_ = step;
}

void AdamW::Step(double lr) {
  ++step_;
  const double t = static_cast<double>(step_);
  const double bc1 = 1.0 - std::pow(beta1_, t);
  const double bc2 = 1.0 - std::pow(beta2_, t);
  DispatchFloat(table_->dtype(), "adamw", [&](auto tag) {
    using T = decltype(tag);
    Coeffs<T> c{static_cast<T>(beta1_),   static_cast<T>(1.0 - beta1_),
                static_cast<T>(beta2_),   static_cast<T>(1.0 - beta2_),
                static_cast<T>(eps_),     static_cast<T>(1.0 - lr * weight_decay_),
                static_cast<T>(lr / bc1), static_cast<T>(1.0 / std::sqrt(bc2))};
    T* values = table_->values().data<T>();
    const T* grads = table_->grads().data<T>();
    auto run_all = [&](auto* m, auto* v) {
      for (const Segment& s : segments_) {
        int64_t local = s.begin - begin_;
        UpdateRun(values + s.begin, grads + s.begin, m + local, v + local, s.end - s.begin, c,
                  s.weight_decay);
      }
    };
    if (exp_avg_.dtype() == DType::kBF16) {
      run_all(exp_avg_.data<Bf16>(), exp_avg_sq_.data<Bf16>());
    } else {
      run_all(exp_avg_.data<float>(), exp_avg_sq_.data<float>());
    }
  });
}

}  // namespace fathom
