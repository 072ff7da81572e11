// Rotary position embedding (RoPE) on the CPU, HF DeepseekV3 semantics, both layouts.
//
// Tables: cos, sin (T, d/2), in the dtype of x, row t holding cos/sin(t * inv_freq[j]) * attention_factor
// (HF's full-width tables are cat(cos, cos) / cat(sin, sin), so the half table carries everything).
//
// The rotation acts on the trailing d = 2 * cos.dim(1) columns of every row of x (B, T, H, W), W >= d, with
// the row's position t taken from dim 1; the leading W - d columns pass through unchanged. For the rope
// part r = x[..., W-d:], with c = cos[t], s = sin[t]:
//   interleaved (DeepSeek's checkpoint layout, HF apply_rotary_pos_emb_interleave):
//     x1 = r[0::2], x2 = r[1::2];  out = concat(x1 * c - x2 * s, x2 * c + x1 * s)   (de-interleaved out)
//   half (HF apply_rotary_pos_emb with rotate_half):
//     x1 = r[:d/2], x2 = r[d/2:];  out = concat(x1 * c - x2 * s, x2 * c + x1 * s)
// The backward of a rotation is the inverse rotation (and, for the interleaved layout, re-interleaving).
//
// `out` may alias `x` (in place); dtypes f32 or f64, all tensors of one dtype.
#ifndef FATHOM_FRAMEWORK_KERNELS_CPU_ROPE_H_
#define FATHOM_FRAMEWORK_KERNELS_CPU_ROPE_H_

#include "framework/tensor.h"

namespace fathom::cpu {

// out (B, T, H, W) = rope(x (B, T, H, W)); cos, sin (T, d/2), 2 * (d/2) <= W.
void RopeForward(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved);

// dx (B, T, H, W) = d loss / d x given dout (B, T, H, W) = d loss / d out; same tables and layout as the
// forward. dx may alias dout.
void RopeBackward(const Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin,
                  bool interleaved);

}  // namespace fathom::cpu

#endif  // FATHOM_FRAMEWORK_KERNELS_CPU_ROPE_H_
