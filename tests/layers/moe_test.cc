// MoE: parameter layout, the forward against a naive per-token loop over the chosen experts (routing
// re-derived here from transformers' DeepseekV3TopkRouter), the sequence-wise balance loss and load
// statistics against direct computations, starved experts, the bias receiving no gradient, and f64
// central-difference gradients of x, the router weight, every expert tensor and the shared expert, with and
// without the balance-loss gradient.
#include "layers/moe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "framework/kernels/cpu/moe.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::Dot;
using testing::FillRandom;
using testing::GradCheck;
using testing::GradCheckReport;
using testing::GradTarget;
using testing::RandomTensor;
using testing::TestSeed;

constexpr int64_t kB = 2, kH = 10, kE = 8, kI = 6;
const char kPrefix[] = "model.layers.2.mlp";

struct MoeCase {
  int64_t k, n_group, topk_group;
  bool norm;
  double scaling;
  int64_t seq;
};

const MoeCase kGrouped{3, 4, 2, true, 2.5, 5};
const MoeCase kFlat{2, 1, 1, false, 1.0, 4};

ModelConfig MoeConfig(const MoeCase& mc) {
  ModelConfig cfg;
  cfg.hidden_size = kH;
  cfg.moe_intermediate_size = kI;
  cfg.n_routed_experts = kE;
  cfg.n_shared_experts = 1;
  cfg.num_experts_per_tok = mc.k;
  cfg.n_group = mc.n_group;
  cfg.topk_group = mc.topk_group;
  cfg.norm_topk_prob = mc.norm;
  cfg.routed_scaling_factor = mc.scaling;
  return cfg;
}

// A MoE layer over its own f64 table, parameters ~ N(0, 0.3), bias ~ N(0, 0.1).
struct Harness {
  Harness(const MoeCase& mc, std::mt19937_64& rng) : cfg(MoeConfig(mc)), moe(table, cfg, kPrefix, 2) {
    table.Finalize(DType::kF64);
    FillRandom(table.values(), rng, 0.3);
    FillRandom(bias(), rng, 0.1);
  }
  Tensor value(int id) const { return table.value(id); }
  Tensor bias() const { return table.value(moe.bias_id()); }

  ModelConfig cfg;
  ParamTable table;
  MoE moe;
};

struct RefToken {
  std::vector<double> s;         // (E) sigmoid scores
  std::vector<int64_t> experts;  // chosen
  std::vector<double> weights;
  double margin;  // smallest gap at a selection boundary (groups, then experts)
};

// Routing of one token by full sorts, with the gaps that a perturbation must not cross.
RefToken ReferenceRoute(const Harness& hn, const Tensor& x, int64_t t) {
  const ModelConfig& cfg = hn.cfg;
  const int64_t gs = kE / cfg.n_group, k = cfg.num_experts_per_tok;
  const Tensor w = hn.value(hn.moe.router_weight_id()), bias = hn.bias();
  RefToken r;
  std::vector<double> choice(kE);
  for (int64_t i = 0; i < kE; ++i) {
    double logit = 0;
    for (int64_t c = 0; c < kH; ++c) logit += x.Item(t * kH + c) * w.Item(i * kH + c);
    r.s.push_back(1.0 / (1.0 + std::exp(-logit)));
    choice[i] = r.s[i] + bias.Item(i);
  }
  std::vector<std::pair<double, int64_t>> groups;
  for (int64_t g = 0; g < cfg.n_group; ++g) {
    std::vector<double> m(choice.begin() + g * gs, choice.begin() + (g + 1) * gs);
    std::sort(m.rbegin(), m.rend());
    groups.push_back({-(m[0] + m[1]), g});
  }
  std::sort(groups.begin(), groups.end());
  r.margin = std::numeric_limits<double>::infinity();
  if (cfg.topk_group < cfg.n_group)
    r.margin = groups[cfg.topk_group].first - groups[cfg.topk_group - 1].first;
  std::vector<std::pair<double, int64_t>> cand;
  for (int64_t gi = 0; gi < cfg.topk_group; ++gi)
    for (int64_t i = groups[gi].second * gs; i < (groups[gi].second + 1) * gs; ++i)
      cand.push_back({-choice[i], i});
  std::sort(cand.begin(), cand.end());
  if (static_cast<int64_t>(cand.size()) > k) r.margin = std::min(r.margin, cand[k].first - cand[k - 1].first);
  double sum = 0;
  for (int64_t j = 0; j < k; ++j) {
    r.experts.push_back(cand[j].second);
    r.weights.push_back(r.s[cand[j].second]);
    sum += r.s[cand[j].second];
  }
  for (double& v : r.weights) v = (cfg.norm_topk_prob ? v / (sum + 1e-20) : v) * cfg.routed_scaling_factor;
  return r;
}

// One SwiGLU MLP applied to token t of x: down (H, I) . (silu(gate (I, H) . x) * (up (I, H) . x)).
std::vector<double> NaiveMlp(const double* gate, const double* up, const double* down, int64_t inter,
                             const Tensor& x, int64_t t) {
  std::vector<double> h(static_cast<size_t>(inter)), y(kH, 0.0);
  for (int64_t i = 0; i < inter; ++i) {
    double g = 0, u = 0;
    for (int64_t c = 0; c < kH; ++c) {
      g += gate[i * kH + c] * x.Item(t * kH + c);
      u += up[i * kH + c] * x.Item(t * kH + c);
    }
    h[i] = g / (1.0 + std::exp(-g)) * u;
  }
  for (int64_t c = 0; c < kH; ++c)
    for (int64_t i = 0; i < inter; ++i) y[c] += down[c * inter + i] * h[i];
  return y;
}

// y[t] = sum over chosen experts of weight * expert(x_t) + shared(x_t), token by token.
std::vector<double> NaiveForward(const Harness& hn, const Tensor& x) {
  const MoE& m = hn.moe;
  const double* wg = hn.value(m.gate_proj_id()).data<double>();
  const double* wu = hn.value(m.up_proj_id()).data<double>();
  const double* wd = hn.value(m.down_proj_id()).data<double>();
  const DenseMlp& sh = *m.shared_experts();
  std::vector<double> y;
  for (int64_t t = 0; t < x.numel() / kH; ++t) {
    RefToken r = ReferenceRoute(hn, x, t);
    std::vector<double> acc =
        NaiveMlp(hn.value(sh.gate_id()).data<double>(), hn.value(sh.up_id()).data<double>(),
                 hn.value(sh.down_id()).data<double>(), sh.intermediate(), x, t);
    for (size_t j = 0; j < r.experts.size(); ++j) {
      const int64_t e = r.experts[j];
      std::vector<double> ye = NaiveMlp(wg + e * kI * kH, wu + e * kI * kH, wd + e * kH * kI, kI, x, t);
      for (int64_t c = 0; c < kH; ++c) acc[c] += r.weights[j] * ye[c];
    }
    y.insert(y.end(), acc.begin(), acc.end());
  }
  return y;
}

// Report eq. 17-20 evaluated directly: mean over sequences of sum_i f_i P_i.
double ReferenceBalance(const Harness& hn, const Tensor& x, int64_t seq) {
  const int64_t k = hn.cfg.num_experts_per_tok;
  double total = 0;
  for (int64_t b = 0; b < kB; ++b) {
    std::vector<double> f(kE, 0.0), p(kE, 0.0);
    for (int64_t t = b * seq; t < (b + 1) * seq; ++t) {
      RefToken r = ReferenceRoute(hn, x, t);
      double sum = 0;
      for (double v : r.s) sum += v;
      for (int64_t i = 0; i < kE; ++i) p[i] += r.s[i] / sum / static_cast<double>(seq);
      for (int64_t e : r.experts) f[e] += static_cast<double>(kE) / static_cast<double>(k * seq);
    }
    for (int64_t i = 0; i < kE; ++i) total += f[i] * p[i];
  }
  return total / kB;
}

// Draws x (B, T, H) until every selection boundary is at least 1e-4 away, so that the 1e-6 perturbations of
// the gradient checks cannot flip a choice. Returns an undefined tensor if that never happens.
Tensor DrawWellSeparatedInput(const Harness& hn, int64_t seq, std::mt19937_64& rng) {
  for (int attempt = 0; attempt < 200; ++attempt) {
    Tensor x = RandomTensor({kB, seq, kH}, DType::kF64, rng);
    double margin = std::numeric_limits<double>::infinity();
    for (int64_t t = 0; t < kB * seq; ++t) margin = std::min(margin, ReferenceRoute(hn, x, t).margin);
    if (margin > 1e-4) return x;
  }
  return Tensor();
}

TEST(MoeTest, RegistersStackedExpertsRouterAndSharedExpert) {
  ParamTable table;
  MoE moe(table, MoeConfig(kGrouped), kPrefix, 2);
  struct Expected {
    int id;
    const char* name;
    Shape shape;
  };
  for (const Expected& ex :
       {Expected{moe.gate_proj_id(), "model.layers.2.mlp.experts.{e}.gate_proj.weight", {kE, kI, kH}},
        Expected{moe.up_proj_id(), "model.layers.2.mlp.experts.{e}.up_proj.weight", {kE, kI, kH}},
        Expected{moe.down_proj_id(), "model.layers.2.mlp.experts.{e}.down_proj.weight", {kE, kH, kI}}}) {
    const ParamSpec& s = table.spec(ex.id);
    EXPECT_EQ(s.name, ex.name);
    EXPECT_EQ(s.shape, ex.shape);
    EXPECT_EQ(s.group, ParamGroup::kExpert);
    EXPECT_EQ(s.expert_begin, 0);
    EXPECT_EQ(s.layer, 2);
  }
  EXPECT_EQ(table.spec(moe.router_weight_id()).name, "model.layers.2.mlp.gate.weight");
  EXPECT_EQ(table.spec(moe.bias_id()).name, "model.layers.2.mlp.gate.e_score_correction_bias");
  EXPECT_FALSE(table.spec(moe.bias_id()).trainable);
  ASSERT_NE(moe.shared_experts(), nullptr);
  EXPECT_EQ(table.spec(moe.shared_experts()->gate_id()).name,
            "model.layers.2.mlp.shared_experts.gate_proj.weight");
  EXPECT_EQ(table.spec(moe.shared_experts()->down_id()).shape, (Shape{kH, kI}));
  EXPECT_EQ(moe.num_experts(), kE);
  EXPECT_EQ(table.size(), 2 + 3 + 3);
}

TEST(MoeTest, ForwardMatchesNaivePerTokenReference) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const MoeCase& mc : {kGrouped, kFlat}) {
    SCOPED_TRACE("k " + std::to_string(mc.k) + " n_group " + std::to_string(mc.n_group));
    Harness hn(mc, rng);
    Tensor x = RandomTensor({kB, mc.seq, kH}, DType::kF64, rng);
    Tensor y = hn.moe.Forward(0, x);
    ASSERT_EQ(y.shape(), x.shape());
    std::vector<double> ref = NaiveForward(hn, x);
    for (int64_t i = 0; i < y.numel(); ++i) EXPECT_NEAR(y.Item(i), ref[i], 1e-12) << "element " << i;
  }
}

TEST(MoeTest, BalanceLossAndExpertLoadMatchDirectComputation) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const MoeCase& mc : {kGrouped, kFlat}) {
    Harness hn(mc, rng);
    // The statistics are per micro-batch and returned: the layer keeps nothing between forwards.
    for (int mb = 0; mb < 2; ++mb) {
      Tensor x = RandomTensor({kB, mc.seq, kH}, DType::kF64, rng);
      MoeStats stats;
      hn.moe.Forward(mb, x, /*balance_weight=*/0.0, &stats);
      const double bal = ReferenceBalance(hn, x, mc.seq);
      EXPECT_GT(bal, 0.0);
      std::vector<int64_t> load(kE, 0);
      for (int64_t t = 0; t < kB * mc.seq; ++t)
        for (int64_t e : ReferenceRoute(hn, x, t).experts) ++load[e];
      ASSERT_EQ(stats.balance.numel(), 1);
      EXPECT_NEAR(stats.balance.Item(0), bal, 1e-12);
      EXPECT_EQ(stats.layer, hn.moe.layer());
      ASSERT_EQ(stats.expert_counts.numel(), kE);
      const std::vector<int64_t> counts(stats.expert_counts.data<int64_t>(),
                                        stats.expert_counts.data<int64_t>() + kE);
      EXPECT_EQ(counts, load);
      int64_t total = 0;
      for (int64_t v : counts) total += v;
      EXPECT_EQ(total, kB * mc.seq * mc.k);
    }
  }
}

// A bias of -10 starves expert 0 (and, under group-limited routing, its whole group); the layer still runs
// end to end and the starved experts' gradients stay exactly zero.
TEST(MoeTest, StarvedExpertWorksAndKeepsZeroGradients) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const MoeCase& mc : {kGrouped, kFlat}) {
    Harness hn(mc, rng);
    hn.bias().data<double>()[0] = -10.0;
    Tensor x = RandomTensor({kB, mc.seq, kH}, DType::kF64, rng);
    MoeStats stats;
    Tensor y = hn.moe.Forward(0, x, /*balance_weight=*/0.7, &stats);
    const int64_t* load = stats.expert_counts.data<int64_t>();
    std::vector<double> ref = NaiveForward(hn, x);
    for (int64_t i = 0; i < y.numel(); ++i) ASSERT_NEAR(y.Item(i), ref[i], 1e-12);
    ASSERT_EQ(load[0], 0);
    Tensor dx = hn.moe.BackwardInput(0, RandomTensor(x.shape(), DType::kF64, rng));
    hn.moe.BackwardWeight(0);
    for (int64_t i = 0; i < dx.numel(); ++i) ASSERT_TRUE(std::isfinite(dx.Item(i)));
    for (int id : {hn.moe.gate_proj_id(), hn.moe.up_proj_id(), hn.moe.down_proj_id()}) {
      const Tensor g = hn.table.grad(id);
      const int64_t per_expert = g.numel() / kE;
      for (int64_t e = 0; e < kE; ++e) {
        double norm = 0;
        for (int64_t i = e * per_expert; i < (e + 1) * per_expert; ++i) norm += g.Item(i) * g.Item(i);
        if (load[e] == 0) {
          EXPECT_EQ(norm, 0.0) << hn.table.spec(id).name << " expert " << e;
        } else {
          EXPECT_GT(norm, 0.0) << hn.table.spec(id).name << " expert " << e;
        }
      }
    }
  }
}

// loss = sum(y * r) + w * balance; every input and parameter gradient against central differences.
void CheckGradients(const MoeCase& mc, double balance_weight, bool starve, std::mt19937_64& rng) {
  Harness hn(mc, rng);
  if (starve) hn.bias().data<double>()[kE - 1] = -10.0;
  MoE& moe = hn.moe;
  Tensor x = DrawWellSeparatedInput(hn, mc.seq, rng);
  ASSERT_TRUE(x.defined()) << "no input with selection margins > 1e-4 in 200 draws";
  Tensor r = RandomTensor(x.shape(), DType::kF64, rng);
  Tensor dx = Tensor::Zeros(x.shape(), DType::kF64);
  int mb = 0;
  auto loss = [&] {
    MoeStats stats;  // this forward's balance value
    const double v = Dot(moe.Forward(mb++, x, balance_weight, &stats), r);
    return v + balance_weight * stats.balance.Item(0);
  };
  auto grads = [&] {
    hn.table.ZeroGrads();
    const int id = mb++;
    moe.Forward(id, x, balance_weight);
    dx.CopyFrom(moe.BackwardInput(id, r));
    moe.BackwardWeight(id);
  };
  auto target = [&](const char* name, int id) {
    return GradTarget{name, hn.table.value(id), hn.table.grad(id)};
  };
  const DenseMlp& sh = *moe.shared_experts();
  std::vector<GradTarget> targets = {
      {"x", x, dx},
      target("router weight", moe.router_weight_id()),
      target("experts gate_proj", moe.gate_proj_id()),
      target("experts up_proj", moe.up_proj_id()),
      target("experts down_proj", moe.down_proj_id()),
      target("shared gate_proj", sh.gate_id()),
      target("shared up_proj", sh.up_id()),
      target("shared down_proj", sh.down_id()),
  };
  for (const GradCheckReport& rep : GradCheck(targets, loss, grads, rng, /*samples=*/64)) {
    SCOPED_TRACE(rep.name);
    EXPECT_GT(rep.numeric_norm, 0.0);
    EXPECT_LE(rep.rel_error, 1e-6);
  }
  if (starve) {
    const Tensor g = hn.table.grad(moe.down_proj_id());
    for (int64_t i = (kE - 1) * kH * kI; i < kE * kH * kI; ++i) ASSERT_EQ(g.Item(i), 0.0);
  }
}

TEST(MoeTest, GradientsWithoutBalanceLoss) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const MoeCase& mc : {kGrouped, kFlat}) {
    SCOPED_TRACE("k " + std::to_string(mc.k) + " n_group " + std::to_string(mc.n_group));
    CheckGradients(mc, 0.0, /*starve=*/false, rng);
  }
}

TEST(MoeTest, GradientsWithBalanceLoss) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const MoeCase& mc : {kGrouped, kFlat}) {
    SCOPED_TRACE("k " + std::to_string(mc.k) + " n_group " + std::to_string(mc.n_group));
    CheckGradients(mc, 0.7, /*starve=*/false, rng);
  }
}

TEST(MoeTest, GradientsWithStarvedExpert) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  CheckGradients(kFlat, 0.7, /*starve=*/true, rng);
}

// The balance-loss gradient alone (y-loss weight 0) reaches the router weight and x, and nothing else.
TEST(MoeTest, BalanceGradientFlowsOnlyThroughScores) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  Harness hn(kGrouped, rng);
  Tensor x = RandomTensor({kB, kGrouped.seq, kH}, DType::kF64, rng);
  hn.moe.Forward(0, x, /*balance_weight=*/0.7);
  Tensor dx = hn.moe.BackwardInput(0, Tensor::Zeros(x.shape(), DType::kF64));
  hn.moe.BackwardWeight(0);
  double dx_norm = 0;
  for (int64_t i = 0; i < dx.numel(); ++i) dx_norm += dx.Item(i) * dx.Item(i);
  EXPECT_GT(dx_norm, 0.0);
  for (int id = 0; id < hn.table.size(); ++id) {
    const Tensor g = hn.table.grad(id);
    double norm = 0;
    for (int64_t i = 0; i < g.numel(); ++i) norm += g.Item(i) * g.Item(i);
    if (id == hn.moe.router_weight_id()) {
      EXPECT_GT(norm, 0.0);
    } else {
      EXPECT_EQ(norm, 0.0) << hn.table.spec(id).name;
    }
  }
}

// The correction bias steers selection only: after a full backward with the balance loss on, its gradient is
// exactly zero and its value untouched, while the router weight did receive gradient.
TEST(MoeTest, BiasReceivesNoGradient) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const MoeCase& mc : {kGrouped, kFlat}) {
    Harness hn(mc, rng);
    const Tensor bias_before = hn.bias().Clone();
    for (int mb = 0; mb < 2; ++mb) {
      Tensor x = RandomTensor({kB, mc.seq, kH}, DType::kF64, rng);
      hn.moe.Forward(mb, x, /*balance_weight=*/0.7);
      hn.moe.BackwardInput(mb, RandomTensor(x.shape(), DType::kF64, rng));
      hn.moe.BackwardWeight(mb);
    }
    const Tensor bias_grad = hn.table.grad(hn.moe.bias_id());
    for (int64_t i = 0; i < kE; ++i) {
      EXPECT_EQ(bias_grad.Item(i), 0.0);
      EXPECT_EQ(hn.bias().Item(i), bias_before.Item(i));
    }
    double router_norm = 0;
    const Tensor gw = hn.table.grad(hn.moe.router_weight_id());
    for (int64_t i = 0; i < gw.numel(); ++i) router_norm += gw.Item(i) * gw.Item(i);
    EXPECT_GT(router_norm, 0.0);
  }
}

// Two harnesses' gradients of `ids` are equal element for element (and not all zero).
void ExpectSameGrads(const Harness& want, const Harness& got, const std::vector<int>& ids) {
  for (int id : ids) {
    const Tensor g0 = want.table.grad(id), g1 = got.table.grad(id);
    double norm = 0;
    for (int64_t i = 0; i < g0.numel(); ++i) norm += g0.Item(i) * g0.Item(i);
    ASSERT_GT(norm, 0.0) << want.table.spec(id).name;
    for (int64_t i = 0; i < g0.numel(); ++i)
      ASSERT_EQ(g0.Item(i), g1.Item(i)) << want.table.spec(id).name << " " << i;
  }
}

// The tiled layout: each expert's rows in order, its block rounded up to the tile with -1 pad rows; an
// expert without rows has no block.
TEST(MoeTest, PadLayoutRoundsEachExpertToTheTile) {
  const Tensor counts = Tensor::FromVector({3, 0, 5}, {3}, DType::kI64);
  const Tensor row_slot = Tensor::FromVector({10, 11, 12, 13, 14, 15, 16, 17}, {8}, DType::kI64);
  ASSERT_EQ(cpu::PaddedRows(counts, 4), 12);
  Tensor padded = Tensor::Empty({12}, DType::kI64);
  cpu::MoePadLayout(padded, row_slot, counts, 4);
  const std::vector<int64_t> want = {10, 11, 12, -1, 13, 14, 15, 16, 17, -1, -1, -1};
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(padded.data<int64_t>()[i], want[static_cast<size_t>(i)]) << i;
  EXPECT_EQ(cpu::PaddedRows(counts, 1), 8);
}

// The gather moves packed FP8 rows (Fp8Rows::data) as bytes: each layout row is its token's quantised row,
// and a pad row (-1) is all zero (codes and scales), which reads back as zeros.
TEST(MoeTest, GatherMovesFp8RowsAsBytes) {
  std::mt19937_64 rng(TestSeed());
  constexpr int64_t kTokens = 5, kTopK = 2, kCols = 200;  // 2 tiles of 128, the second partial
  const Tensor x = RandomTensor({kTokens, kCols}, DType::kF32, rng);
  const Fp8Rows xq = ops::QuantizeRows(x);
  const Tensor row_slot =
      Tensor::FromVector({7, -1, 0, 9, 3, -1}, {6}, DType::kI64);  // slots: token = slot / 2
  Fp8Rows out = Fp8Rows::Empty(6, kCols, Device::kCPU);
  std::memset(out.data.raw(), 0xAB, out.data.nbytes());  // every byte must be written
  ops::MoeGatherRows(out.data, xq.data, row_slot, kTopK);
  const int64_t row_bytes = xq.row_bytes();
  const auto* src = static_cast<const uint8_t*>(xq.data.raw());
  const auto* got = static_cast<const uint8_t*>(out.data.raw());
  for (int64_t r = 0; r < 6; ++r) {
    const int64_t slot = row_slot.data<int64_t>()[r];
    for (int64_t b = 0; b < row_bytes; ++b) {
      const uint8_t want = slot < 0 ? uint8_t{0} : src[(slot / kTopK) * row_bytes + b];
      ASSERT_EQ(got[r * row_bytes + b], want) << "row " << r << " byte " << b;
    }
  }
  Tensor back = Tensor::Empty({6, kCols}, DType::kF32);
  ops::DequantizeRows(back, out);
  for (int64_t c = 0; c < kCols; ++c)
    EXPECT_EQ(back.data<float>()[1 * kCols + c], 0.0f) << "pad row column " << c;
  // A float tensor into FP8 rows is refused by name.
  EXPECT_DEATH(ops::MoeGatherRows(out.data, x, row_slot, kTopK), "moe_gather_rows");
}

// The device layout's pieces on the CPU twin: a budget longer than the layout gets -1 past it (and a shorter
// one is refused), and the tile map names each 128-row tile's expert, -1 past the layout, with each expert's
// first tile (an expert without rows owns none).
TEST(MoeTest, DeviceLayoutPiecesOnTheCpu) {
  const Tensor counts = Tensor::FromVector({3, 0, 130}, {3}, DType::kI64);
  Tensor row_slot = Tensor::Empty({133}, DType::kI64);
  for (int64_t i = 0; i < 133; ++i) row_slot.data<int64_t>()[i] = 1000 + i;
  const int64_t budget = cpu::MaxPaddedRows(133, 3, 128);
  ASSERT_EQ(budget, 4 * 128);  // the worst case for 133 rows over 3 experts; these counts need 3 tiles
  Tensor padded = Tensor::Empty({budget + 128}, DType::kI64);
  ops::MoePadLayout(padded, row_slot, counts, 128, /*budget=*/true);
  for (int64_t p = 0; p < budget + 128; ++p) {
    const int64_t want = p < 3 ? 1000 + p : (p >= 128 && p < 258 ? 1003 + (p - 128) : -1);
    ASSERT_EQ(padded.data<int64_t>()[p], want) << "row " << p;
  }
  Tensor short_budget = Tensor::Empty({255}, DType::kI64);
  EXPECT_DEATH(ops::MoePadLayout(short_budget, row_slot, counts, 128, /*budget=*/true), "shorter than the layout");
  Tensor map = Tensor::Empty({5}, DType::kI32), begin = Tensor::Empty({4}, DType::kI32);
  ops::MoeTileExperts(map, begin, counts);
  const std::vector<int32_t> want_map = {0, 2, 2, -1, -1}, want_begin = {0, 1, 1, 3};
  for (int64_t t = 0; t < 5; ++t) EXPECT_EQ(map.data<int32_t>()[t], want_map[static_cast<size_t>(t)]) << t;
  for (int64_t e = 0; e < 4; ++e) EXPECT_EQ(begin.data<int32_t>()[e], want_begin[static_cast<size_t>(e)]) << e;
  Tensor small_map = Tensor::Empty({2}, DType::kI32);
  EXPECT_DEATH(ops::MoeTileExperts(small_map, begin, counts), "the layout needs 3 tiles, the budget is 2");
}

// The padded (tiled) layout, 16-row tiles here (pad rows at the end of most blocks, a starved expert with
// no block, a busy one over several tiles), gives the packed layout's output, input gradient and weight
// gradients exactly: every row's GEMMs are the same sums, and pad rows add exact zeros to the wgrad. Expert
// 0 is made busy (every token chooses it) and expert 7 starved by the bias.
TEST(MoeTest, PaddedLayoutMatchesPacked) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (MoeCase mc : {kGrouped, kFlat}) {
    mc.seq = 40;
    std::mt19937_64 rng(seed), rng2(seed);
    Harness packed(mc, rng), padded(mc, rng2);
    for (Harness* hn : {&packed, &padded}) {
      hn->bias().data<double>()[0] = 1.0;
      hn->bias().data<double>()[kE - 1] = -10.0;
    }
    packed.moe.set_expert_layout(MoE::ExpertLayout::kPacked);
    constexpr int64_t kTile = 16;
    padded.moe.set_expert_layout(MoE::ExpertLayout::kPadded, kTile);
    Tensor x = RandomTensor({kB, mc.seq, kH}, DType::kF64, rng);
    Tensor dy = RandomTensor(x.shape(), DType::kF64, rng);
    MoeStats stats;
    Tensor y0 = packed.moe.Forward(0, x, 0.7, &stats);
    Tensor y1 = padded.moe.Forward(0, x, 0.7);
    // The layout has pad rows, an empty expert and a busy one.
    const Tensor& load = stats.expert_counts;
    ASSERT_EQ(load.data<int64_t>()[kE - 1], 0);
    ASSERT_GT(load.data<int64_t>()[0], kTile);
    ASSERT_GT(cpu::PaddedRows(load, kTile), kB * mc.seq * mc.k);
    for (int64_t i = 0; i < y0.numel(); ++i) ASSERT_EQ(y0.Item(i), y1.Item(i)) << i;
    Tensor dx0 = packed.moe.BackwardInput(0, dy), dx1 = padded.moe.BackwardInput(0, dy);
    packed.moe.BackwardWeight(0);
    padded.moe.BackwardWeight(0);
    for (int64_t i = 0; i < dx0.numel(); ++i) ASSERT_EQ(dx0.Item(i), dx1.Item(i)) << i;
    ExpectSameGrads(packed, padded, {packed.moe.gate_proj_id(), packed.moe.up_proj_id(),
                                     packed.moe.down_proj_id(), packed.moe.router_weight_id()});
  }
}

// The device layout (ExpertLayout::kDevice on the CPU twin: the worst-case tile budget, the tile map from
// the counts, ops::TiledGroupedMatmul*) gives the packed layout's output, input gradient and weight
// gradients exactly, as the padded layout does; here with 128-row tiles, so nearly every row of the budget is
// padding or past the layout. One expert busy, one starved (no tile: its weight gradient is zero).
TEST(MoeTest, DeviceLayoutMatchesPacked) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  MoeCase mc = kGrouped;
  mc.seq = 40;
  std::mt19937_64 rng(seed), rng2(seed);
  Harness packed(mc, rng), device(mc, rng2);
  for (Harness* hn : {&packed, &device}) {
    hn->bias().data<double>()[0] = 1.0;
    hn->bias().data<double>()[kE - 1] = -10.0;
  }
  packed.moe.set_expert_layout(MoE::ExpertLayout::kPacked);
  device.moe.set_expert_layout(MoE::ExpertLayout::kDevice);
  const ExpertLayoutTally before = MoE::layout_tally();
  Tensor x = RandomTensor({kB, mc.seq, kH}, DType::kF64, rng);
  Tensor dy = RandomTensor(x.shape(), DType::kF64, rng);
  MoeStats stats;
  Tensor y0 = packed.moe.Forward(0, x, 0.7, &stats);
  Tensor y1 = device.moe.Forward(0, x, 0.7);
  ASSERT_EQ(stats.expert_counts.data<int64_t>()[kE - 1], 0);
  // The budget's rows: cpu::MaxPaddedRows of the routed rows, whatever the counts.
  const int64_t routed = kB * mc.seq * mc.k;
  EXPECT_EQ(MoE::layout_tally().layout_rows - before.layout_rows, cpu::MaxPaddedRows(routed, kE, 128));
  EXPECT_EQ(MoE::layout_tally().rows - before.rows, routed);
  const int64_t tiled_before = MoE::layout_tally().tiled_wgrad_passes;
  for (int64_t i = 0; i < y0.numel(); ++i) ASSERT_EQ(y0.Item(i), y1.Item(i)) << i;
  Tensor dx0 = packed.moe.BackwardInput(0, dy), dx1 = device.moe.BackwardInput(0, dy);
  packed.moe.BackwardWeight(0);
  device.moe.BackwardWeight(0);
  EXPECT_EQ(MoE::layout_tally().tiled_wgrad_passes - tiled_before, 1);
  for (int64_t i = 0; i < dx0.numel(); ++i) ASSERT_EQ(dx0.Item(i), dx1.Item(i)) << i;
  ExpectSameGrads(packed, device, {packed.moe.gate_proj_id(), packed.moe.up_proj_id(), packed.moe.down_proj_id(),
                                   packed.moe.router_weight_id()});
}

// set_own_wgrad: the padded layout's weight gradients through ops::TiledGroupedMatmulTN (the experts' tile
// ranges made from the counts by ops::MoeTileExperts) equal the packed layout's exactly, over two
// micro-batches (the first overwrites, the second accumulates); 128-row tiles, the kernel's.
TEST(MoeTest, OwnWgradOnThePaddedLayoutMatchesPacked) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  MoeCase mc = kGrouped;
  mc.seq = 40;
  std::mt19937_64 rng(seed), rng2(seed);
  Harness packed(mc, rng), padded(mc, rng2);
  for (Harness* hn : {&packed, &padded}) hn->bias().data<double>()[kE - 1] = -10.0;  // one expert starved
  packed.moe.set_expert_layout(MoE::ExpertLayout::kPacked);
  padded.moe.set_expert_layout(MoE::ExpertLayout::kPadded);
  padded.moe.set_own_wgrad(true);
  const int64_t tiled_before = MoE::layout_tally().tiled_wgrad_passes;
  for (int mb = 0; mb < 2; ++mb) {
    Tensor x = RandomTensor({kB, mc.seq, kH}, DType::kF64, rng);
    Tensor dy = RandomTensor(x.shape(), DType::kF64, rng);
    packed.moe.Forward(mb, x, 0.0);
    padded.moe.Forward(mb, x, 0.0);
    packed.moe.BackwardInput(mb, dy);
    padded.moe.BackwardInput(mb, dy);
    packed.moe.BackwardWeight(mb);
    padded.moe.BackwardWeight(mb);
  }
  EXPECT_EQ(MoE::layout_tally().tiled_wgrad_passes - tiled_before, 2) << "the own TN path ran once per micro-batch";
  ExpectSameGrads(packed, padded, {packed.moe.gate_proj_id(), packed.moe.up_proj_id(), packed.moe.down_proj_id()});
}

// cpu::MaxPaddedRows bounds the padded layout of every count vector, and is reached.
TEST(MoeTest, MaxPaddedRowsBoundsEveryLayout) {
  EXPECT_EQ(cpu::MaxPaddedRows(4 * 129, 4, 128), 8 * 128);  // every expert one row past a whole tile
  EXPECT_EQ(cpu::MaxPaddedRows(3, 8, 4), 3 * 4);            // fewer rows than experts
  EXPECT_EQ(cpu::MaxPaddedRows(0, 8, 4), 0);
  std::mt19937_64 rng(TestSeed());
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t experts = 1 + static_cast<int64_t>(rng() % 40), rows = static_cast<int64_t>(rng() % 3000);
    const int64_t tile = 1 + static_cast<int64_t>(rng() % 130);
    Tensor counts = Tensor::Zeros({experts}, DType::kI64);
    for (int64_t r = 0; r < rows; ++r) counts.data<int64_t>()[rng() % static_cast<uint64_t>(experts)] += 1;
    EXPECT_LE(cpu::PaddedRows(counts, tile), cpu::MaxPaddedRows(rows, experts, tile))
        << "rows " << rows << " experts " << experts << " tile " << tile;
  }
}

}  // namespace
}  // namespace fathom
