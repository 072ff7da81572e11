// Elementwise activations of the DeepSeek-V3 MLPs and router on the GPU. CPU twin and the exact math:
// framework/kernels/cpu/activation.h.
//
//   sigmoid(x) = 1 / (1 + exp(-x))  (evaluated as exp(x) / (1 + exp(x)) for x < 0: finite for any x)
//   swiglu(gate, up) = silu(gate) * up, silu(g) = g * sigmoid(g)
//
// Any shape; all tensors of one call share shape and dtype, f32 or bf16 (bf16: f32 arithmetic, one rounding
// per output); anything else fails loudly. Outputs are overwritten. Zero elements (an expert with no tokens)
// is a no-op. Work is queued on `stream`; no host synchronisation, no allocation.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_ACTIVATION_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_ACTIVATION_H_

#include "framework/cuda/stream.h"
#include "framework/tensor.h"

namespace fathom::cuda {

// out = sigmoid(x). `out` may alias `x`.
void SigmoidForward(const Tensor& out, const Tensor& x, Stream stream);
// dx = dy * y * (1 - y), y = sigmoid(x) saved from the forward. `dx` may alias `dy`.
void SigmoidBackward(const Tensor& dx, const Tensor& dy, const Tensor& y, Stream stream);

// out (N, I) = silu(gate) * up; gate, up (N, I). `out` may alias either input.
void SwiGluForward(const Tensor& out, const Tensor& gate, const Tensor& up, Stream stream);
// dgate (N, I) = dout * up * silu'(gate), dup (N, I) = dout * silu(gate); dout, gate, up (N, I).
// dgate may alias gate or dout, dup may alias up or dout (elementwise, read before written), but dgate and
// dup must not alias each other.
void SwiGluBackward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                    const Tensor& up, Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_ACTIVATION_H_
