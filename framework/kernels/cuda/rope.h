// Rotary position embedding on the GPU, HF DeepseekV3 semantics, both layouts. CPU twin and the exact math
// (interleaved = DeepSeek's checkpoint layout, de-interleaved on output; half = rotate_half):
// framework/kernels/cpu/rope.h.
//
// The rotation acts on the trailing d = 2 * cos.dim(1) columns of every row of x (B, T, H, W), W >= d, with
// the row's position t = its index along dim 1; the leading W - d columns are copied (nothing to do in
// place). Tables: cos, sin (T', d/2) f32 with T' >= T, row t = cos/sin(t * inv_freq) * attention_factor,
// built once on the host by layers/rope.h (RopeTable::cos()/sin(), f32) and uploaded; for bf16 activations
// the tables stay f32, as HF's `.to(x.dtype)` of an f32 table is what the CPU f32 path computes.
//
// dtypes: x and out share f32 or bf16 (bf16: f32 arithmetic, one rounding of each output); anything else
// fails loudly. `out` may alias `x` (in place): each row's rope part is staged through shared memory by one
// warp. REQUIRES: d/2 <= 512. Work is queued on `stream`; no host synchronisation, no allocation.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_ROPE_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_ROPE_H_

#include "framework/cuda/stream.h"
#include "framework/tensor.h"

namespace fathom::cuda {

// out (B, T, H, W) = rope(x (B, T, H, W)); cos, sin (T', d/2) f32, T' >= T, d <= W.
void RopeForward(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved,
                 Stream stream);

// dx (B, T, H, W) = d loss / d x from dout (B, T, H, W); same tables and layout as the forward; dx may alias
// dout.
void RopeBackward(const Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin,
                  bool interleaved, Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_ROPE_H_
