// MLA: the causal attention kernel against a naive full-matrix softmax, causality, gradient checks of the
// kernel and of MlaAttention (q LoRA on/off, YaRN on/off), the layer's forward against a naive HF-style
// reference, and micro-batch independence.
#include "layers/mla.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "framework/kernels/cpu/attention.h"
#include "framework/phase_timer.h"
#include "layers/phases.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::GradCheck;
using testing::GradTarget;
using testing::RandomTensor;
using testing::TestSeed;

// ---------------------------------------------------------------------------------------------------------
// Attention kernel.

// Naive reference: per (b, h) the full (T, T) score matrix, masked, softmax with the max subtracted.
void NaiveAttention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, std::vector<double>& out,
                    std::vector<double>& lse) {
  const int64_t b = q.dim(0), t = q.dim(1), h = q.dim(2), dk = q.dim(3), dv = v.dim(3);
  out.assign(b * t * h * dv, 0.0);
  lse.assign(b * h * t, 0.0);
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t hi = 0; hi < h; ++hi) {
      std::vector<double> s(t * t);
      for (int64_t i = 0; i < t; ++i)
        for (int64_t j = 0; j < t; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < dk; ++c)
            dot += q.Item(((bi * t + i) * h + hi) * dk + c) * k.Item(((bi * t + j) * h + hi) * dk + c);
          s[i * t + j] = j <= i ? dot * scale : -std::numeric_limits<double>::infinity();
        }
      for (int64_t i = 0; i < t; ++i) {
        double m = -std::numeric_limits<double>::infinity(), z = 0;
        for (int64_t j = 0; j < t; ++j) m = std::max(m, s[i * t + j]);
        for (int64_t j = 0; j < t; ++j) z += std::exp(s[i * t + j] - m);
        lse[(bi * h + hi) * t + i] = m + std::log(z);
        for (int64_t j = 0; j < t; ++j) {
          const double p = std::exp(s[i * t + j] - m) / z;
          for (int64_t c = 0; c < dv; ++c)
            out[((bi * t + i) * h + hi) * dv + c] += p * v.Item(((bi * t + j) * h + hi) * dv + c);
        }
      }
    }
  }
}

struct AttentionInputs {
  Tensor q, k, v;
};

AttentionInputs RandomAttentionInputs(std::mt19937_64& rng, int64_t b, int64_t t, int64_t h, int64_t dk,
                                      int64_t dv) {
  return {RandomTensor({b, t, h, dk}, DType::kF64, rng), RandomTensor({b, t, h, dk}, DType::kF64, rng),
          RandomTensor({b, t, h, dv}, DType::kF64, rng)};
}

TEST(CausalAttentionKernelTest, ForwardMatchesNaiveSoftmax) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t b = 2, t = 7, h = 3, dk = 5, dv = 4;
  const double scale = 0.9;
  AttentionInputs in = RandomAttentionInputs(rng, b, t, h, dk, dv);
  Tensor out = Tensor::Empty({b, t, h, dv}, DType::kF64);
  Tensor lse = Tensor::Empty({b, h, t}, DType::kF64);
  cpu::CausalAttentionForward(out, lse, in.q, in.k, in.v, scale);
  std::vector<double> ref_out, ref_lse;
  NaiveAttention(in.q, in.k, in.v, scale, ref_out, ref_lse);
  for (int64_t i = 0; i < out.numel(); ++i) EXPECT_NEAR(out.Item(i), ref_out[i], 1e-12);
  for (int64_t i = 0; i < lse.numel(); ++i) EXPECT_NEAR(lse.Item(i), ref_lse[i], 1e-12);
  // The first position attends only to itself.
  for (int64_t c = 0; c < dv; ++c) EXPECT_NEAR(out.Item(c), in.v.Item(c), 1e-15);
  // f32 follows the same math to f32 round-off.
  Tensor out32 = Tensor::Empty(out.shape(), DType::kF32);
  Tensor lse32 = Tensor::Empty(lse.shape(), DType::kF32);
  cpu::CausalAttentionForward(out32, lse32, in.q.To(DType::kF32), in.k.To(DType::kF32), in.v.To(DType::kF32),
                              scale);
  for (int64_t i = 0; i < out.numel(); ++i) EXPECT_NEAR(out32.Item(i), out.Item(i), 1e-5);
}

TEST(CausalAttentionKernelTest, FutureTokensDoNotChangeEarlierOutputs) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t b = 2, t = 6, h = 2, dk = 4, dv = 3, changed = 3;
  AttentionInputs in = RandomAttentionInputs(rng, b, t, h, dk, dv);
  Tensor out = Tensor::Empty({b, t, h, dv}, DType::kF64), lse = Tensor::Empty({b, h, t}, DType::kF64);
  cpu::CausalAttentionForward(out, lse, in.q, in.k, in.v, 0.5);
  // Perturb q, k and v of position `changed` in every batch and head.
  for (Tensor* x : {&in.q, &in.k, &in.v}) {
    const int64_t w = x->dim(3);
    for (int64_t bi = 0; bi < b; ++bi)
      for (int64_t i = 0; i < h * w; ++i) x->data<double>()[(bi * t + changed) * h * w + i] += 1.5;
  }
  Tensor out2 = Tensor::Empty(out.shape(), DType::kF64), lse2 = Tensor::Empty(lse.shape(), DType::kF64);
  cpu::CausalAttentionForward(out2, lse2, in.q, in.k, in.v, 0.5);
  for (int64_t bi = 0; bi < b; ++bi) {
    double later_change = 0;
    for (int64_t i = 0; i < t; ++i)
      for (int64_t c = 0; c < h * dv; ++c) {
        const int64_t idx = (bi * t + i) * h * dv + c;
        if (i < changed) {
          EXPECT_EQ(out.Item(idx), out2.Item(idx)) << "position " << i;
        } else {
          later_change += std::abs(out.Item(idx) - out2.Item(idx));
        }
      }
    EXPECT_GT(later_change, 1e-3) << "batch " << bi;
  }
}

TEST(CausalAttentionKernelTest, GradientMatchesCentralDifferences) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t b = 2, t = 6, h = 2, dk = 5, dv = 3;
  const double scale = 0.7;
  AttentionInputs in = RandomAttentionInputs(rng, b, t, h, dk, dv);
  Tensor weights = RandomTensor({b, t, h, dv}, DType::kF64, rng);
  Tensor dq = Tensor::Empty(in.q.shape(), DType::kF64), dk_t = Tensor::Empty(in.k.shape(), DType::kF64),
         dv_t = Tensor::Empty(in.v.shape(), DType::kF64);
  auto forward = [&](Tensor& out, Tensor& lse) {
    out = Tensor::Empty({b, t, h, dv}, DType::kF64);
    lse = Tensor::Empty({b, h, t}, DType::kF64);
    cpu::CausalAttentionForward(out, lse, in.q, in.k, in.v, scale);
  };
  auto loss = [&] {
    Tensor out, lse;
    forward(out, lse);
    return testing::Dot(out, weights);
  };
  auto grad = [&] {
    Tensor out, lse;
    forward(out, lse);
    cpu::CausalAttentionBackward(dq, dk_t, dv_t, weights, in.q, in.k, in.v, out, lse, scale);
  };
  for (const auto& r :
       GradCheck({{"q", in.q, dq}, {"k", in.k, dk_t}, {"v", in.v, dv_t}}, loss, grad, rng, 60)) {
    EXPECT_LE(r.rel_error, 1e-6) << r.name;
    EXPECT_GT(r.numeric_norm, 0) << r.name;
  }
}

// ---------------------------------------------------------------------------------------------------------
// MlaAttention.

struct MlaCase {
  std::string name;
  int64_t q_lora_rank;
  bool yarn;
  bool interleave;
};

void PrintTo(const MlaCase& c, std::ostream* os) { *os << c.name; }

ModelConfig MlaConfig(const MlaCase& c) {
  ModelConfig cfg;
  cfg.hidden_size = 16;
  cfg.num_attention_heads = 2;
  cfg.qk_nope_head_dim = 4;
  cfg.qk_rope_head_dim = 4;
  cfg.v_head_dim = 3;
  cfg.kv_lora_rank = 6;
  cfg.q_lora_rank = c.q_lora_rank;
  cfg.rms_norm_eps = 1e-6;
  cfg.rope_theta = 10000.0;
  cfg.rope_interleave = c.interleave;
  if (c.yarn) {
    cfg.rope_scaling.type = "yarn";
    cfg.rope_scaling.factor = 40.0;
    cfg.rope_scaling.original_max_position_embeddings = 4096;
    cfg.rope_scaling.mscale = 0.707;  // attention_factor != 1 and softmax scale != Dk^-0.5
    cfg.rope_scaling.mscale_all_dim = 1.0;
  }
  return cfg;
}

// Matrices N(0, 0.3), norm weights 1 + 0.1 N(0, 1).
void RandomizeParams(const ParamTable& table, std::mt19937_64& rng) {
  std::normal_distribution<double> nd(0.0, 1.0);
  for (int id = 0; id < table.size(); ++id) {
    Tensor v = table.value(id);
    const bool norm = v.ndim() == 1;
    for (int64_t i = 0; i < v.numel(); ++i) v.data<double>()[i] = norm ? 1.0 + 0.1 * nd(rng) : 0.3 * nd(rng);
  }
}

// --- A naive HF-style forward, written from modeling_deepseek_v3.py with plain loops. ---
using Mat = std::vector<double>;  // row-major

Mat LinearRef(const Mat& x, int64_t n, int64_t in, const Tensor& w) {
  const int64_t out = w.dim(0);
  Mat y(n * out, 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) y[r * out + o] += x[r * in + i] * w.Item(o * in + i);
  return y;
}

Mat RmsNormRef(const Mat& x, int64_t n, int64_t c, const Tensor& w, double eps) {
  Mat y(x.size());
  for (int64_t r = 0; r < n; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < c; ++j) ss += x[r * c + j] * x[r * c + j];
    const double rs = 1.0 / std::sqrt(ss / static_cast<double>(c) + eps);
    for (int64_t j = 0; j < c; ++j) y[r * c + j] = w.Item(j) * x[r * c + j] * rs;
  }
  return y;
}

// HF: interleaved = de-interleave then rotate_half; cos/sin full width cat(c, c).
std::vector<double> RopeRef(std::vector<double> r, const RopeTable& table, int64_t pos, bool interleave) {
  const int64_t d = static_cast<int64_t>(r.size()), half = d / 2;
  if (interleave) {
    std::vector<double> de(d);
    for (int64_t j = 0; j < half; ++j) de[j] = r[2 * j], de[j + half] = r[2 * j + 1];
    r = de;
  }
  std::vector<double> out(d);
  for (int64_t j = 0; j < d; ++j) {
    const double c = table.cos().Item(pos * half + j % half), s = table.sin().Item(pos * half + j % half);
    out[j] = r[j] * c + (j < half ? -r[j + half] : r[j - half]) * s;
  }
  return out;
}

Mat MlaReference(const ParamTable& table, const ModelConfig& cfg, const std::string& p, const Tensor& x) {
  const int64_t b = x.dim(0), t = x.dim(1), n = b * t, hid = cfg.hidden_size, heads = cfg.num_attention_heads;
  const int64_t nope = cfg.qk_nope_head_dim, rd = cfg.qk_rope_head_dim, dk = nope + rd, dv = cfg.v_head_dim;
  const int64_t kr = cfg.kv_lora_rank;
  auto w = [&](const std::string& name) { return table.value(table.Find(p + "." + name)); };
  Mat xs(x.data<double>(), x.data<double>() + x.numel());
  Mat q = cfg.q_lora_rank > 0
              ? LinearRef(RmsNormRef(LinearRef(xs, n, hid, w("q_a_proj.weight")), n, cfg.q_lora_rank,
                                     w("q_a_layernorm.weight"), cfg.rms_norm_eps),
                          n, cfg.q_lora_rank, w("q_b_proj.weight"))
              : LinearRef(xs, n, hid, w("q_proj.weight"));
  Mat ckv = LinearRef(xs, n, hid, w("kv_a_proj_with_mqa.weight"));
  Mat kv(n * kr);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < kr; ++j) kv[r * kr + j] = ckv[r * (kr + rd) + j];
  Mat kvb = LinearRef(RmsNormRef(kv, n, kr, w("kv_a_layernorm.weight"), cfg.rms_norm_eps), n, kr,
                      w("kv_b_proj.weight"));
  const RopeTable rope(cfg, t);
  double scale = 1.0 / std::sqrt(static_cast<double>(dk));
  if (cfg.rope_scaling.type == "yarn") {
    const double m = 0.1 * cfg.rope_scaling.mscale_all_dim * std::log(cfg.rope_scaling.factor) + 1.0;
    scale *= m * m;
  }
  Mat attn(n * heads * dv, 0.0);
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t h = 0; h < heads; ++h) {
      std::vector<std::vector<double>> qs(t), ks(t), vs(t);
      for (int64_t i = 0; i < t; ++i) {
        const int64_t r = bi * t + i;
        const double* qr = &q[(r * heads + h) * dk];
        const double* kvr = &kvb[(r * heads + h) * (nope + dv)];
        std::vector<double> qrot =
            RopeRef(std::vector<double>(qr + nope, qr + dk), rope, i, cfg.rope_interleave);
        const double* kraw = &ckv[r * (kr + rd) + kr];
        std::vector<double> krot =
            RopeRef(std::vector<double>(kraw, kraw + rd), rope, i, cfg.rope_interleave);
        qs[i].assign(qr, qr + nope);
        qs[i].insert(qs[i].end(), qrot.begin(), qrot.end());
        ks[i].assign(kvr, kvr + nope);
        ks[i].insert(ks[i].end(), krot.begin(), krot.end());
        vs[i].assign(kvr + nope, kvr + nope + dv);
      }
      for (int64_t i = 0; i < t; ++i) {
        std::vector<double> s(i + 1);
        double m = -std::numeric_limits<double>::infinity(), z = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < dk; ++c) dot += qs[i][c] * ks[j][c];
          s[j] = dot * scale;
          m = std::max(m, dot * scale);
        }
        for (double& sj : s) z += (sj = std::exp(sj - m));
        for (int64_t j = 0; j <= i; ++j)
          for (int64_t c = 0; c < dv; ++c) attn[((bi * t + i) * heads + h) * dv + c] += s[j] / z * vs[j][c];
      }
    }
  }
  return LinearRef(attn, n, heads * dv, w("o_proj.weight"));
}

class MlaAttentionTest : public ::testing::TestWithParam<MlaCase> {};

TEST_P(MlaAttentionTest, RegistersHfParameters) {
  const MlaCase c = GetParam();
  ModelConfig cfg = MlaConfig(c);
  ParamTable table;
  MlaAttention mla(table, cfg, "model.layers.3.self_attn", 3);
  const std::string p = "model.layers.3.self_attn.";
  std::vector<std::pair<std::string, Shape>> expected = {{"kv_a_proj_with_mqa.weight", {6 + 4, 16}},
                                                         {"kv_a_layernorm.weight", {6}},
                                                         {"kv_b_proj.weight", {2 * (4 + 3), 6}},
                                                         {"o_proj.weight", {16, 2 * 3}}};
  if (c.q_lora_rank > 0) {
    expected.push_back({"q_a_proj.weight", {5, 16}});
    expected.push_back({"q_a_layernorm.weight", {5}});
    expected.push_back({"q_b_proj.weight", {2 * 8, 5}});
    EXPECT_EQ(table.Find(p + "q_proj.weight"), -1);
  } else {
    expected.push_back({"q_proj.weight", {2 * 8, 16}});
    EXPECT_EQ(table.Find(p + "q_a_proj.weight"), -1);
  }
  EXPECT_EQ(table.size(), static_cast<int>(expected.size()));
  for (const auto& [name, shape] : expected) {
    const int id = table.Find(p + name);
    ASSERT_GE(id, 0) << name;
    EXPECT_EQ(table.spec(id).shape, shape) << name;
    EXPECT_EQ(table.spec(id).layer, 3) << name;
  }
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(mla.softmax_scale(), (c.yarn ? m * m : 1.0) / std::sqrt(8.0), 1e-15);
}

TEST_P(MlaAttentionTest, ForwardMatchesNaiveReference) {
  const MlaCase c = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ModelConfig cfg = MlaConfig(c);
  ParamTable table;
  MlaAttention mla(table, cfg, "attn", 0);
  table.Finalize(DType::kF64);
  RandomizeParams(table, rng);
  Tensor x = RandomTensor({2, 6, 16}, DType::kF64, rng);
  Tensor y = mla.Forward(0, x);
  ASSERT_EQ(y.shape(), Shape({2, 6, 16}));
  const Mat ref = MlaReference(table, cfg, "attn", x);
  double max_ref = 0;
  for (double r : ref) max_ref = std::max(max_ref, std::abs(r));
  ASSERT_GT(max_ref, 0.1);
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_NEAR(y.Item(i), ref[i], 1e-12 * max_ref);
}

TEST_P(MlaAttentionTest, GradientsMatchCentralDifferences) {
  const MlaCase c = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ModelConfig cfg = MlaConfig(c);
  ParamTable table;
  MlaAttention mla(table, cfg, "model.layers.0.self_attn", 0);
  table.Finalize(DType::kF64);
  RandomizeParams(table, rng);
  const int64_t b = 2, t = 6;
  Tensor x = RandomTensor({b, t, 16}, DType::kF64, rng);
  Tensor weights = RandomTensor({b, t, 16}, DType::kF64, rng);
  Tensor dx = Tensor::Empty(x.shape(), DType::kF64);
  int next_mb = 1000;
  auto loss = [&] { return testing::Dot(mla.Forward(next_mb++, x), weights); };
  auto grad = [&] {
    table.ZeroGrads();
    mla.Forward(0, x);
    dx.CopyFrom(mla.BackwardInput(0, weights));
    mla.BackwardWeight(0);
  };
  std::vector<GradTarget> targets = {{"x", x, dx}};
  for (int id = 0; id < table.size(); ++id)
    targets.push_back({table.spec(id).name, table.value(id), table.grad(id)});
  const auto reports = GradCheck(targets, loss, grad, rng);
  ASSERT_EQ(reports.size(), targets.size());
  for (const auto& r : reports) {
    EXPECT_LE(r.rel_error, 1e-6) << r.name;
    EXPECT_GT(r.numeric_norm, 0) << r.name;
  }
}

TEST_P(MlaAttentionTest, MicroBatchesInFlightAreIndependent) {
  const MlaCase c = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ModelConfig cfg = MlaConfig(c);
  ParamTable table;
  MlaAttention mla(table, cfg, "attn", 0);
  table.Finalize(DType::kF64);
  RandomizeParams(table, rng);
  // Different lengths also exercise the per-length RoPE cache.
  Tensor x0 = RandomTensor({2, 5, 16}, DType::kF64, rng), x1 = RandomTensor({2, 7, 16}, DType::kF64, rng);
  Tensor g0 = RandomTensor({2, 5, 16}, DType::kF64, rng), g1 = RandomTensor({2, 7, 16}, DType::kF64, rng);

  // One after the other.
  Tensor y0 = mla.Forward(0, x0);
  Tensor dx0 = mla.BackwardInput(0, g0);
  mla.BackwardWeight(0);
  Tensor y1 = mla.Forward(1, x1);
  Tensor dx1 = mla.BackwardInput(1, g1);
  mla.BackwardWeight(1);
  Tensor grads = table.grads().Clone();

  // Both in flight, backward in the other order (as a pipeline schedule does).
  table.ZeroGrads();
  Tensor z0 = mla.Forward(7, x0);
  Tensor z1 = mla.Forward(8, x1);
  Tensor ex1 = mla.BackwardInput(8, g1);
  Tensor ex0 = mla.BackwardInput(7, g0);
  mla.BackwardWeight(7);
  mla.BackwardWeight(8);

  auto expect_equal = [](const Tensor& a, const Tensor& b, const char* what) {
    ASSERT_EQ(a.shape(), b.shape()) << what;
    double norm = 0;
    for (int64_t i = 0; i < a.numel(); ++i) norm = std::max(norm, std::abs(a.Item(i)));
    ASSERT_GT(norm, 0) << what;
    for (int64_t i = 0; i < a.numel(); ++i)
      EXPECT_NEAR(a.Item(i), b.Item(i), 1e-13 * norm) << what << " " << i;
  };
  expect_equal(y0, z0, "y0");
  expect_equal(y1, z1, "y1");
  expect_equal(dx0, ex0, "dx0");
  expect_equal(dx1, ex1, "dx1");
  expect_equal(grads, table.grads(), "parameter grads");
}

// fathom bench's phases: the causal core is timed as "attention core", the projections, norms and RoPE
// around it as "attention" (exclusive accounting, framework/phase_timer.h): both get time, forward and
// backward, and the core's is not also counted in the block's.
TEST_P(MlaAttentionTest, TimesItsCoreAsItsOwnPhase) {
  const MlaCase c = GetParam();
  std::mt19937_64 rng(TestSeed());
  ModelConfig cfg = MlaConfig(c);
  ParamTable table;
  MlaAttention mla(table, cfg, "attn", 0);
  table.Finalize(DType::kF64);
  RandomizeParams(table, rng);
  const Tensor x = RandomTensor({2, 64, 16}, DType::kF64, rng);
  const Tensor dy = RandomTensor({2, 64, 16}, DType::kF64, rng);
  PhaseTimer::Enable(true);
  PhaseTimer::Reset();
  mla.Forward(0, x);
  const PhaseMillis forward = PhaseTimer::Collect();
  mla.BackwardInput(0, dy);
  mla.BackwardWeight(0);
  const PhaseMillis both = PhaseTimer::Collect();
  PhaseTimer::Enable(false);
  PhaseTimer::Reset();
  for (const PhaseMillis& ms : {forward, both}) {
    EXPECT_GT(ms[static_cast<size_t>(phases::kAttentionCore)], 0.0);
    EXPECT_GT(ms[static_cast<size_t>(phases::kAttention)], 0.0);
  }
  EXPECT_GT(both[static_cast<size_t>(phases::kAttentionCore)],
            forward[static_cast<size_t>(phases::kAttentionCore)])
      << "the backward's core is timed too";
}

INSTANTIATE_TEST_SUITE_P(Configs, MlaAttentionTest,
                         ::testing::Values(MlaCase{"NoQLora", 0, false, true},
                                           MlaCase{"QLora", 5, false, true},
                                           MlaCase{"NoQLoraYarn", 0, true, true},
                                           MlaCase{"QLoraYarn", 5, true, true},
                                           MlaCase{"QLoraYarnRotateHalf", 5, true, false}),
                         [](const ::testing::TestParamInfo<MlaCase>& i) { return i.param.name; });

}  // namespace
}  // namespace fathom
