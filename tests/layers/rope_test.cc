// RoPE: HF's default and YaRN frequency tables against a straightforward double evaluation of HF's
// formulas, the interleaved layout against HF's de-interleave-then-rotate_half formulation, and the
// backward against central differences.
#include "layers/rope.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "framework/kernels/cpu/rope.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::GradCheck;
using testing::RandomTensor;
using testing::TestSeed;

// HF _compute_yarn_parameters / the default init, written out in double from the formulas.
struct ReferenceRope {
  std::vector<double> inv_freq;
  double attention_factor;
};

double RefMscale(double s, double m) { return s <= 1 ? 1.0 : 0.1 * m * std::log(s) + 1.0; }

ReferenceRope ReferenceFrequencies(const ModelConfig& cfg) {
  const double d = static_cast<double>(cfg.qk_rope_head_dim), base = cfg.rope_theta;
  const int64_t half = cfg.qk_rope_head_dim / 2;
  ReferenceRope r;
  r.attention_factor = 1.0;
  for (int64_t j = 0; j < half; ++j) r.inv_freq.push_back(1.0 / std::pow(base, 2.0 * j / d));
  if (cfg.rope_scaling.type != "yarn") return r;
  const RopeScalingConfig& rs = cfg.rope_scaling;
  const double f = rs.factor;
  r.attention_factor = (rs.mscale != 0 && rs.mscale_all_dim != 0)
                           ? RefMscale(f, rs.mscale) / RefMscale(f, rs.mscale_all_dim)
                           : RefMscale(f, 1.0);
  auto corr = [&](double rot) {
    return d * std::log(rs.original_max_position_embeddings / (rot * 2 * std::numbers::pi)) /
           (2 * std::log(base));
  };
  double low = std::max(std::floor(corr(rs.beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(rs.beta_slow)), d - 1);
  if (low == high) high += 0.001;
  for (int64_t j = 0; j < half; ++j) {
    const double ramp = std::clamp((j - low) / (high - low), 0.0, 1.0);
    const double extra = 1.0 - ramp;  // weight of extrapolation
    const double pos = std::pow(base, 2.0 * j / d);
    r.inv_freq[j] = (1.0 / (f * pos)) * (1.0 - extra) + (1.0 / pos) * extra;
  }
  return r;
}

ModelConfig YarnConfig(int64_t rope_dim, double mscale, double mscale_all_dim) {
  ModelConfig cfg;
  cfg.qk_rope_head_dim = rope_dim;
  cfg.rope_theta = 10000.0;
  cfg.rope_scaling.type = "yarn";
  cfg.rope_scaling.factor = 40.0;
  cfg.rope_scaling.original_max_position_embeddings = 4096;
  cfg.rope_scaling.beta_fast = 32.0;
  cfg.rope_scaling.beta_slow = 1.0;
  cfg.rope_scaling.mscale = mscale;
  cfg.rope_scaling.mscale_all_dim = mscale_all_dim;
  return cfg;
}

void ExpectTablesMatchReference(const ModelConfig& cfg, int64_t seq_len) {
  const ReferenceRope ref = ReferenceFrequencies(cfg);
  const RopeTable table(cfg, seq_len);
  ASSERT_EQ(table.inv_freq().size(), ref.inv_freq.size());
  EXPECT_NEAR(table.attention_factor(), ref.attention_factor, 1e-12 * ref.attention_factor);
  for (size_t j = 0; j < ref.inv_freq.size(); ++j)
    EXPECT_NEAR(table.inv_freq()[j], ref.inv_freq[j], 1e-6 * ref.inv_freq[j]) << "inv_freq[" << j << "]";
  // The f32 angle t * inv_freq carries at most half an ulp of |angle| < seq_len.
  const int64_t half = cfg.qk_rope_head_dim / 2;
  const double tol = 4e-7 * static_cast<double>(seq_len) * ref.attention_factor + 1e-6;
  for (int64_t t = 0; t < seq_len; ++t) {
    for (int64_t j = 0; j < half; ++j) {
      const double angle = static_cast<double>(t) * ref.inv_freq[j];
      EXPECT_NEAR(table.cos().Item(t * half + j), std::cos(angle) * ref.attention_factor, tol);
      EXPECT_NEAR(table.sin().Item(t * half + j), std::sin(angle) * ref.attention_factor, tol);
      EXPECT_EQ(table.cos(DType::kF64).Item(t * half + j), table.cos().Item(t * half + j));
      EXPECT_EQ(table.sin(DType::kF64).Item(t * half + j), table.sin().Item(t * half + j));
    }
  }
}

TEST(RopeTableTest, DefaultFrequenciesMatchHfFormula) {
  ModelConfig cfg;
  cfg.qk_rope_head_dim = 64;
  cfg.rope_theta = 10000.0;
  ExpectTablesMatchReference(cfg, 16);
  EXPECT_EQ(RopeTable(cfg, 3).attention_factor(), 1.0);
}

TEST(RopeTableTest, YarnDeepSeekV3MatchesHfFormula) {
  // DeepSeek-V3's rope_scaling: factor 40, original 4096, beta 32/1, mscale = mscale_all_dim = 1, so
  // attention_factor is exactly 1 and the ramp spans dims [10, 23] of 64.
  ModelConfig cfg = YarnConfig(64, 1.0, 1.0);
  ExpectTablesMatchReference(cfg, 16);
  const RopeTable table(cfg, 2);
  EXPECT_EQ(table.attention_factor(), 1.0);
  // Below the ramp: pure extrapolation (the base frequency); above: interpolated by 1/factor.
  EXPECT_NEAR(table.inv_freq()[0], 1.0, 1e-7);
  const double last_base = 1.0 / std::pow(10000.0, 62.0 / 64.0);
  EXPECT_NEAR(table.inv_freq()[31], last_base / 40.0, 1e-6 * last_base / 40.0);
  // The test model's rope dim 4 puts the ramp over [0, 2].
  ExpectTablesMatchReference(YarnConfig(4, 1.0, 1.0), 7);
}

TEST(RopeTableTest, YarnMscaleRatioMatchesHfFormula) {
  ModelConfig cfg = YarnConfig(64, 0.707, 1.0);
  ExpectTablesMatchReference(cfg, 16);
  const double expected = (0.1 * 0.707 * std::log(40.0) + 1) / (0.1 * std::log(40.0) + 1);
  EXPECT_NEAR(RopeTable(cfg, 1).attention_factor(), expected, 1e-15);
  // mscale_all_dim 0 (absent): attention_factor = mscale(factor, 1).
  ModelConfig plain = YarnConfig(16, 0.707, 0.0);
  ExpectTablesMatchReference(plain, 9);
  EXPECT_NEAR(RopeTable(plain, 1).attention_factor(), 0.1 * std::log(40.0) + 1, 1e-15);
  // A factor below 1 needs no magnitude correction.
  EXPECT_EQ(YarnGetMscale(0.5, 3.0), 1.0);
}

// HF apply_rotary_pos_emb on one row r (length d) with full tables cat(c, c), cat(s, s).
std::vector<double> RotateHalfReference(const std::vector<double>& r, const double* c, const double* s) {
  const size_t d = r.size(), half = d / 2;
  std::vector<double> out(d);
  for (size_t j = 0; j < d; ++j) {
    const double rotated = j < half ? -r[j + half] : r[j - half];  // rotate_half(r)[j]
    out[j] = r[j] * c[j % half] + rotated * s[j % half];
  }
  return out;
}

class RopeKernelTest : public ::testing::TestWithParam<bool> {};

TEST_P(RopeKernelTest, MatchesHfFormulation) {
  const bool interleaved = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ModelConfig cfg = YarnConfig(8, 0.707, 1.0);
  cfg.rope_interleave = interleaved;
  const int64_t b = 2, t = 6, h = 3, lead = 5, d = 8, w = lead + d;
  const RopeTable table(cfg, t);
  Tensor x = RandomTensor({b, t, h, w}, DType::kF64, rng);
  Tensor out = Tensor::Empty(x.shape(), DType::kF64);
  table.Apply(out, x);
  const double* xp = x.data<double>();
  const double* op = out.data<double>();
  const double* cp = table.cos(DType::kF64).data<double>();
  const double* sp = table.sin(DType::kF64).data<double>();
  for (int64_t row = 0; row < b * t * h; ++row) {
    const int64_t pos = (row / h) % t;
    for (int64_t j = 0; j < lead; ++j) EXPECT_EQ(op[row * w + j], xp[row * w + j]);
    // HF: the interleaved rotation is bit-identical to de-interleaving, then rotate_half.
    std::vector<double> r(d);
    for (int64_t j = 0; j < d; ++j) {
      const int64_t src = interleaved ? (j < d / 2 ? 2 * j : 2 * (j - d / 2) + 1) : j;
      r[j] = xp[row * w + lead + src];
    }
    const std::vector<double> ref = RotateHalfReference(r, cp + pos * d / 2, sp + pos * d / 2);
    for (int64_t j = 0; j < d; ++j)
      EXPECT_NEAR(op[row * w + lead + j], ref[j], 1e-12) << "row " << row << " j " << j;
  }
  // In place gives the same result; position 0 is the identity on the rope part (times attention_factor).
  Tensor y = x.Clone();
  table.Apply(y, y);
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(y.Item(i), out.Item(i));
  // The backward of a rotation is its inverse: ApplyBackward(Apply(x)) = (c^2 + s^2) x on each pair, i.e.
  // af^2 x up to the f32 rounding of the tables.
  Tensor back = Tensor::Empty(x.shape(), DType::kF64);
  table.ApplyBackward(back, out);
  for (int64_t row = 0; row < b * t * h; ++row) {
    const int64_t pos = (row / h) % t;
    for (int64_t j = 0; j < w; ++j) {
      double gain = 1.0;
      if (j >= lead) {
        const int64_t pair = interleaved ? (j - lead) / 2 : (j - lead) % (d / 2);
        const double c = cp[pos * d / 2 + pair], s = sp[pos * d / 2 + pair];
        gain = c * c + s * s;
        EXPECT_NEAR(gain, table.attention_factor() * table.attention_factor(), 1e-6);
      }
      EXPECT_NEAR(back.Item(row * w + j), gain * xp[row * w + j], 1e-12);
    }
  }
}

TEST_P(RopeKernelTest, GradientMatchesCentralDifferences) {
  const bool interleaved = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ModelConfig cfg = YarnConfig(4, 1.0, 0.0);  // attention_factor != 1
  cfg.rope_interleave = interleaved;
  const int64_t b = 2, t = 5, h = 2, w = 7;
  const RopeTable table(cfg, t);
  Tensor x = RandomTensor({b, t, h, w}, DType::kF64, rng);
  Tensor weights = RandomTensor(x.shape(), DType::kF64, rng);
  Tensor dx = Tensor::Empty(x.shape(), DType::kF64);
  auto loss = [&] {
    Tensor y = Tensor::Empty(x.shape(), DType::kF64);
    table.Apply(y, x);
    return testing::Dot(y, weights);
  };
  auto grad = [&] { table.ApplyBackward(dx, weights); };
  for (const auto& r : GradCheck({{"x", x, dx}}, loss, grad, rng, 70)) {
    EXPECT_LE(r.rel_error, 1e-6) << r.name;
    EXPECT_GT(r.numeric_norm, 0) << r.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, RopeKernelTest, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return std::string(i.param ? "Interleaved" : "RotateHalf");
                         });

}  // namespace
}  // namespace fathom
