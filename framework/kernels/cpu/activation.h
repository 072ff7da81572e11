// Elementwise activations of the DeepSeek-V3 MLPs and router, CPU reference (f32/f64, any shape; all
// tensors of one call share shape and dtype). Outputs are overwritten.
//
//   sigmoid(x) = 1 / (1 + exp(-x))                                 -- router scores
//   swiglu(gate, up) = silu(gate) * up, silu(g) = g * sigmoid(g)   -- MLP and expert hidden layer
#ifndef FATHOM_FRAMEWORK_KERNELS_CPU_ACTIVATION_H_
#define FATHOM_FRAMEWORK_KERNELS_CPU_ACTIVATION_H_

#include "framework/tensor.h"

namespace fathom::cpu {

// out = sigmoid(x). `out` may alias `x`.
void SigmoidForward(const Tensor& out, const Tensor& x);
// dx = dy * y * (1 - y), with y = sigmoid(x) saved from the forward. `dx` may alias `dy`.
void SigmoidBackward(const Tensor& dx, const Tensor& dy, const Tensor& y);

// out (N, I) = silu(gate) * up; gate (N, I), up (N, I).
void SwiGluForward(const Tensor& out, const Tensor& gate, const Tensor& up);
// dgate (N, I) = dout * up * silu'(gate), dup (N, I) = dout * silu(gate); dout, gate, up (N, I).
void SwiGluBackward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                    const Tensor& up);

}  // namespace fathom::cpu

#endif  // FATHOM_FRAMEWORK_KERNELS_CPU_ACTIVATION_H_
