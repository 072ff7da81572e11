#include "layers/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "framework/ops.h"

namespace fathom {

namespace {

// HF: base ** (arange(0, d, 2).float() / d), every step in f32.
std::vector<float> BasePositionFrequencies(double theta, int64_t d) {
  std::vector<float> pos(static_cast<size_t>(d / 2));
  const float base = static_cast<float>(theta);
  for (int64_t j = 0; j < d / 2; ++j) {
    const float exponent = static_cast<float>(2 * j) / static_cast<float>(d);
    pos[static_cast<size_t>(j)] = std::pow(base, exponent);
  }
  return pos;
}

// HF find_correction_dim (Python floats, hence double).
double CorrectionDim(double num_rotations, int64_t d, double base, double max_position) {
  return (static_cast<double>(d) * std::log(max_position / (num_rotations * 2 * std::numbers::pi))) /
         (2 * std::log(base));
}

RopeFrequencies YarnFrequencies(const ModelConfig& cfg) {
  const RopeScalingConfig& rs = cfg.rope_scaling;
  const int64_t d = cfg.qk_rope_head_dim;
  const double factor = rs.factor;
  FATHOM_CHECK(factor > 0 && rs.original_max_position_embeddings > 0, "[rope] yarn needs factor > 0 and ",
               "original_max_position_embeddings > 0, got ", factor, " and ",
               rs.original_max_position_embeddings);
  RopeFrequencies out;
  // Python truthiness: a zero mscale or mscale_all_dim counts as absent.
  if (rs.mscale != 0 && rs.mscale_all_dim != 0) {
    out.attention_factor = YarnGetMscale(factor, rs.mscale) / YarnGetMscale(factor, rs.mscale_all_dim);
  } else {
    out.attention_factor = YarnGetMscale(factor);
  }
  const double beta_fast = rs.beta_fast != 0 ? rs.beta_fast : 32.0;
  const double beta_slow = rs.beta_slow != 0 ? rs.beta_slow : 1.0;
  const double max_pos = static_cast<double>(rs.original_max_position_embeddings);

  // Correction range, truncated (HF's default truncate=True) and clamped; Python ints from here on.
  const int64_t low = std::max<int64_t>(
      static_cast<int64_t>(std::floor(CorrectionDim(beta_fast, d, cfg.rope_theta, max_pos))), 0);
  const int64_t high = std::min<int64_t>(
      static_cast<int64_t>(std::ceil(CorrectionDim(beta_slow, d, cfg.rope_theta, max_pos))), d - 1);
  // linear_ramp_factor: (arange(d/2) f32 - low) / (high - low), with a 0.001 nudge for a degenerate range.
  const double span = low == high ? static_cast<double>(high) + 0.001 - static_cast<double>(low)
                                  : static_cast<double>(high - low);
  const float span_f = static_cast<float>(span);
  const float low_f = static_cast<float>(low);
  const float factor_f = static_cast<float>(factor);

  const std::vector<float> pos = BasePositionFrequencies(cfg.rope_theta, d);
  out.inv_freq.resize(pos.size());
  for (size_t j = 0; j < pos.size(); ++j) {
    const float extrapolation = 1.0f / pos[j];
    const float interpolation = 1.0f / (factor_f * pos[j]);
    const float ramp = std::clamp((static_cast<float>(j) - low_f) / span_f, 0.0f, 1.0f);
    const float extrapolation_factor = 1.0f - ramp;
    out.inv_freq[j] = interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  return out;
}

}  // namespace

RopeFrequencies ComputeRopeFrequencies(const ModelConfig& cfg) {
  const int64_t d = cfg.qk_rope_head_dim;
  FATHOM_CHECK(d > 0 && d % 2 == 0, "[rope] qk_rope_head_dim must be even and positive, got ", d);
  const std::string& type = cfg.rope_scaling.type;
  if (type == "yarn") return YarnFrequencies(cfg);
  FATHOM_CHECK(type == "none", "[rope] rope_scaling.type must be \"none\" or \"yarn\", got \"", type, "\"");
  RopeFrequencies out;
  const std::vector<float> pos = BasePositionFrequencies(cfg.rope_theta, d);
  out.inv_freq.resize(pos.size());
  for (size_t j = 0; j < pos.size(); ++j) out.inv_freq[j] = 1.0f / pos[j];
  return out;
}

RopeTable::RopeTable(const ModelConfig& cfg, int64_t seq_len)
    : seq_len_(seq_len),
      dim_(cfg.qk_rope_head_dim),
      interleaved_(cfg.rope_interleave),
      freqs_(ComputeRopeFrequencies(cfg)) {
  FATHOM_CHECK(seq_len >= 0, "[rope] negative sequence length ", seq_len);
  const int64_t half = dim_ / 2;
  cos_f32_ = Tensor::Empty({seq_len, half}, DType::kF32);
  sin_f32_ = Tensor::Empty({seq_len, half}, DType::kF32);
  float* c = cos_f32_.data<float>();
  float* s = sin_f32_.data<float>();
  // HF multiplies the f32 tables by the Python-float factor, which PyTorch applies as an f32 scalar.
  const float af = static_cast<float>(freqs_.attention_factor);
  for (int64_t t = 0; t < seq_len; ++t) {
    for (int64_t j = 0; j < half; ++j) {
      const float angle = static_cast<float>(t) * freqs_.inv_freq[static_cast<size_t>(j)];
      c[t * half + j] = std::cos(angle) * af;
      s[t * half + j] = std::sin(angle) * af;
    }
  }
  cos_f64_ = cos_f32_.To(DType::kF64);
  sin_f64_ = sin_f32_.To(DType::kF64);
}

const Tensor& RopeTable::cos(DType dtype) const {
  if (dtype == DType::kF64) return cos_f64_;
  FATHOM_CHECK(dtype == DType::kF32, "[rope] tables exist in f32 and f64, asked for ", DTypeName(dtype));
  return cos_f32_;
}

const Tensor& RopeTable::sin(DType dtype) const {
  if (dtype == DType::kF64) return sin_f64_;
  FATHOM_CHECK(dtype == DType::kF32, "[rope] tables exist in f32 and f64, asked for ", DTypeName(dtype));
  return sin_f32_;
}

// CUDA rope tables are f32 (ops.h); the host f32 tables are copied once and kept, since every call of a
// layer with this sequence length needs the same ones.
const Tensor& RopeTable::CosFor(const Tensor& x) const {
  if (x.device() == Device::kCPU) return cos(ops::StatsDType(x.dtype()));
  if (!cos_cuda_.defined()) cos_cuda_ = ops::To(cos_f32_, x.device());
  return cos_cuda_;
}

const Tensor& RopeTable::SinFor(const Tensor& x) const {
  if (x.device() == Device::kCPU) return sin(ops::StatsDType(x.dtype()));
  if (!sin_cuda_.defined()) sin_cuda_ = ops::To(sin_f32_, x.device());
  return sin_cuda_;
}

void RopeTable::Apply(const Tensor& out, const Tensor& x) const {
  FATHOM_CHECK(x.ndim() == 4 && x.dim(1) <= seq_len_, "[rope] x ", x.shape_str(), " for a table of ",
               seq_len_, " positions");
  ops::RopeForward(out, x, CosFor(x), SinFor(x), interleaved_);
}

void RopeTable::ApplyBackward(const Tensor& dx, const Tensor& dout) const {
  FATHOM_CHECK(dout.ndim() == 4 && dout.dim(1) <= seq_len_, "[rope] dout ", dout.shape_str(),
               " for a table of ", seq_len_, " positions");
  ops::RopeBackward(dx, dout, CosFor(dout), SinFor(dout), interleaved_);
}

}  // namespace fathom
