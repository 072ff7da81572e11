// Test support: fresh random tensors and f64 central-difference gradient checks.
//
// Random inputs are drawn from a seed taken from std::random_device for every test run (fresh inputs,
// never zeros); the seed is printed through SCOPED_TRACE-able strings so a failure can be replayed with
// FATHOM_TEST_SEED=<seed>.
#ifndef FATHOM_TESTS_COMMON_GRADCHECK_H_
#define FATHOM_TESTS_COMMON_GRADCHECK_H_

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "framework/tensor.h"
#include "layers/model.h"

namespace fathom::testing {

inline uint64_t TestSeed() {
  if (const char* s = std::getenv("FATHOM_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  return (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
}

// Normal(0, scale) entries.
inline void FillRandom(const Tensor& t, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> nd(0.0, scale);
  DispatchFloat(t.dtype(), "FillRandom", [&](auto tag) {
    using T = decltype(tag);
    T* p = t.data<T>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<T>(nd(rng));
  });
}

inline Tensor RandomTensor(const Shape& shape, DType dtype, std::mt19937_64& rng, double scale = 1.0) {
  Tensor t = Tensor::Empty(shape, dtype);
  FillRandom(t, rng, scale);
  return t;
}

// sum(a * b) in f64 over tensors of equal numel (f32 or f64).
inline double Dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a.Item(i) * b.Item(i);
  return s;
}

struct GradTarget {
  std::string name;
  Tensor value;  // perturbed in place (f64)
  Tensor grad;   // analytic gradient of the loss w.r.t. `value`, filled by grad_fn
};

struct GradCheckReport {
  std::string name;
  double rel_error;  // ||analytic - numeric||_2 / ||numeric||_2 over the sampled coordinates
  double numeric_norm;
};

// loss_fn(): one forward pass, returns the scalar loss. grad_fn(): zeroes and fills every target's grad.
// Checks up to `samples` coordinates per target (all when the tensor is smaller) with central
// differences of step h (f64: truncation ~h^2, rounding ~1e-16/h, both far below 1e-6). With
// `five_point`, the fourth-order stencil (f(-2h) - 8f(-h) + 8f(h) - f(2h)) / 12h: truncation ~h^4, so a
// larger h keeps the rounding error small when the loss sums many terms (whole-model checks).
inline std::vector<GradCheckReport> GradCheck(const std::vector<GradTarget>& targets,
                                              const std::function<double()>& loss_fn,
                                              const std::function<void()>& grad_fn, std::mt19937_64& rng,
                                              int samples = 48, double h = 1e-6, bool five_point = false) {
  grad_fn();
  std::vector<GradCheckReport> out;
  for (const GradTarget& t : targets) {
    FATHOM_CHECK(t.value.dtype() == DType::kF64, "gradient checks run in f64: ", t.name);
    std::vector<int64_t> idx(static_cast<size_t>(t.value.numel()));
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int64_t>(i);
    std::shuffle(idx.begin(), idx.end(), rng);
    if (static_cast<int>(idx.size()) > samples) idx.resize(static_cast<size_t>(samples));
    double diff2 = 0, num2 = 0;
    double* v = t.value.data<double>();
    for (int64_t i : idx) {
      double saved = v[i];
      auto at = [&](double delta) {
        v[i] = saved + delta;
        double l = loss_fn();
        v[i] = saved;
        return l;
      };
      double numeric = five_point ? (at(-2 * h) - 8 * at(-h) + 8 * at(h) - at(2 * h)) / (12 * h)
                                  : (at(h) - at(-h)) / (2 * h);
      double analytic = t.grad.Item(i);
      diff2 += (analytic - numeric) * (analytic - numeric);
      num2 += numeric * numeric;
    }
    double denom = std::sqrt(num2);
    out.push_back({t.name, denom > 0 ? std::sqrt(diff2) / denom : std::sqrt(diff2), denom});
  }
  return out;
}

// A micro-batch of b sequences of t uniform random token ids in [0, vocab); labels are the next token, the
// last position of each sequence ignored (-100).
inline MicroBatch RandomBatch(std::mt19937_64& rng, int64_t b, int64_t t, int64_t vocab) {
  MicroBatch mb{Tensor::Empty({b, t}, DType::kI32), Tensor::Empty({b, t}, DType::kI32)};
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab) - 1);
  for (int64_t i = 0; i < b * t; ++i) mb.input_ids.data<int32_t>()[i] = tok(rng);
  for (int64_t s = 0; s < b; ++s)
    for (int64_t i = 0; i < t; ++i)
      mb.labels.data<int32_t>()[s * t + i] = i + 1 < t ? mb.input_ids.data<int32_t>()[s * t + i + 1] : -100;
  return mb;
}

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_COMMON_GRADCHECK_H_
