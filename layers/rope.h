// Rotary position embedding tables, HF DeepseekV3 semantics (transformers' DeepseekV3RotaryEmbedding with
// the "default" or "yarn" rope init of modeling_rope_utils.py).
//
// The rope dim is d = cfg.qk_rope_head_dim. Everything HF computes in f32 is computed in f32 here:
//   default: inv_freq[j] = 1 / theta^((2j) / d),                         j < d/2
//   yarn:    the same base frequencies blended between extrapolation (1/pos_freq) and interpolation
//            (1/(factor*pos_freq)) by a linear ramp over [low, high] = floor/ceil of the correction
//            dims of beta_fast/beta_slow at original_max_position_embeddings, clamped to [0, d-1];
//            attention_factor = mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both are
//            non-zero, else mscale(factor, 1), with mscale(s, m) = s <= 1 ? 1 : 0.1 * m * ln(s) + 1.
//   freqs[t][j] = t * inv_freq[j] (t = 0 .. T-1, f32);  cos = cos(freqs) * af, sin = sin(freqs) * af.
// The tables hold the d/2 distinct columns; HF's (T, d) tables are cat(cos, cos) / cat(sin, sin).
#ifndef FATHOM_LAYERS_ROPE_H_
#define FATHOM_LAYERS_ROPE_H_

#include <cstdint>
#include <vector>

#include "framework/config.h"
#include "framework/tensor.h"

namespace fathom {

// HF's rope init for `cfg`: inv_freq (d/2) f32 and the attention factor (1 for the default rope).
// REQUIRES: cfg.qk_rope_head_dim even and > 0, rope_scaling.type "none" or "yarn" (ModelConfig::Validate).
struct RopeFrequencies {
  std::vector<float> inv_freq;
  double attention_factor = 1.0;
};
RopeFrequencies ComputeRopeFrequencies(const ModelConfig& cfg);

// cos/sin tables for positions 0 .. seq_len-1, built once per sequence length (cheap: T * d/2 entries).
// Immutable after construction; safe to share between threads.
class RopeTable {
 public:
  RopeTable(const ModelConfig& cfg, int64_t seq_len);

  int64_t seq_len() const { return seq_len_; }
  int64_t dim() const { return dim_; }  // d = qk_rope_head_dim
  bool interleaved() const { return interleaved_; }
  const std::vector<float>& inv_freq() const { return freqs_.inv_freq; }
  double attention_factor() const { return freqs_.attention_factor; }

  // (T, d/2) f32, scaled by attention_factor.
  const Tensor& cos() const { return cos_f32_; }
  const Tensor& sin() const { return sin_f32_; }
  // The same tables converted to a compute dtype (f32 or f64), as HF's `.to(x.dtype)`.
  const Tensor& cos(DType dtype) const;
  const Tensor& sin(DType dtype) const;

  // Rotates the trailing d columns of every row of x (B, T, H, W) into out (same shape; leading columns
  // copied; out may alias x), in the config's layout (interleaved or rotate_half), through ops::RopeForward
  // on x's device. REQUIRES: x.dim(1) <= seq_len(). The tables live on the host; for a CUDA x an f32 copy
  // is made once, on the first CUDA call, from the current cuda::DevicePool, and kept for the table's
  // lifetime (so that pool must outlive this table).
  void Apply(const Tensor& out, const Tensor& x) const;
  // dx (B, T, H, W) from dout (same shape), the transpose of Apply; dx may alias dout.
  void ApplyBackward(const Tensor& dx, const Tensor& dout) const;

 private:
  int64_t seq_len_, dim_;
  bool interleaved_;
  RopeFrequencies freqs_;
  Tensor cos_f32_, sin_f32_;            // (T, d/2) f32
  Tensor cos_f64_, sin_f64_;            // (T, d/2) f64, converted from the f32 tables
  mutable Tensor cos_cuda_, sin_cuda_;  // (T, d/2) f32 on CUDA, copied on first use

  // The tables for x's device, in ops::StatsDType(x.dtype()).
  const Tensor& CosFor(const Tensor& x) const;
  const Tensor& SinFor(const Tensor& x) const;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_ROPE_H_
