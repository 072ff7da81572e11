#include "framework/kernels/cpu/activation.h"

#include <cmath>

namespace fathom::cpu {
namespace {

void CheckSame(const char* op, const Tensor& a, const Tensor& b) {
  FATHOM_CHECK(a.shape() == b.shape() && a.dtype() == b.dtype(), "[", op, "] ", a.shape_str(), " ",
               DTypeName(a.dtype()), " vs ", b.shape_str(), " ", DTypeName(b.dtype()));
}

// exp(-|x|) never overflows, so both branches stay finite for any input.
template <class T>
T Sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  T e = std::exp(x);
  return e / (T(1) + e);
}

}  // namespace

void SigmoidForward(const Tensor& out, const Tensor& x) {
  CheckSame("sigmoid", out, x);
  DispatchFloat(x.dtype(), "sigmoid", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    T* op = out.data<T>();
    for (int64_t i = 0; i < x.numel(); ++i) op[i] = Sigmoid(xp[i]);
  });
}

void SigmoidBackward(const Tensor& dx, const Tensor& dy, const Tensor& y) {
  CheckSame("sigmoid_backward", dx, dy);
  CheckSame("sigmoid_backward", dy, y);
  DispatchFloat(y.dtype(), "sigmoid_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = dy.data<T>();
    const T* yp = y.data<T>();
    T* dp = dx.data<T>();
    for (int64_t i = 0; i < y.numel(); ++i) dp[i] = gp[i] * yp[i] * (T(1) - yp[i]);
  });
}

void SwiGluForward(const Tensor& out, const Tensor& gate, const Tensor& up) {
  CheckSame("swiglu", out, gate);
  CheckSame("swiglu", gate, up);
  DispatchFloat(gate.dtype(), "swiglu", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = gate.data<T>();
    const T* up_p = up.data<T>();
    T* op = out.data<T>();
    for (int64_t i = 0; i < gate.numel(); ++i) op[i] = gp[i] * Sigmoid(gp[i]) * up_p[i];
  });
}

// silu'(g) = s + g s (1 - s) = s (1 + g (1 - s)) with s = sigmoid(g).
void SwiGluBackward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                    const Tensor& up) {
  CheckSame("swiglu_backward", dgate, gate);
  CheckSame("swiglu_backward", dup, gate);
  CheckSame("swiglu_backward", dout, gate);
  CheckSame("swiglu_backward", up, gate);
  DispatchFloat(gate.dtype(), "swiglu_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = gate.data<T>();
    const T* up_p = up.data<T>();
    const T* dop = dout.data<T>();
    T* dgp = dgate.data<T>();
    T* dup_p = dup.data<T>();
    for (int64_t i = 0; i < gate.numel(); ++i) {
      const T g = gp[i], s = Sigmoid(g), d = dop[i];
      dgp[i] = d * up_p[i] * s * (T(1) + g * (T(1) - s));
      dup_p[i] = d * g * s;
    }
  });
}

}  // namespace fathom::cpu
