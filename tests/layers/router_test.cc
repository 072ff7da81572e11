// Router: DeepSeek-V3 group-limited, bias-corrected top-k selection against a sort-based reference written
// from transformers' DeepseekV3TopkRouter, for several configurations; the bias steers selection only, the
// weights use the plain sigmoid scores.
#include "layers/router.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::FillRandom;
using testing::RandomTensor;
using testing::TestSeed;

struct RefRoute {
  std::vector<int64_t> experts;  // by descending choice, ties to the lower id
  std::vector<double> weights;
};

// Sorts whole score lists (no partial selection) so it shares no logic with cpu::RouterSelect.
std::vector<RefRoute> ReferenceRoute(const Tensor& x, const Tensor& w, const Tensor& bias,
                                     const ModelConfig& cfg) {
  const int64_t n = x.dim(0), h = x.dim(1), e = cfg.n_routed_experts, gs = e / cfg.n_group;
  std::vector<RefRoute> out;
  for (int64_t t = 0; t < n; ++t) {
    std::vector<double> s(static_cast<size_t>(e)), choice(static_cast<size_t>(e));
    for (int64_t i = 0; i < e; ++i) {
      double logit = 0;
      for (int64_t c = 0; c < h; ++c) logit += x.Item(t * h + c) * w.Item(i * h + c);
      s[i] = 1.0 / (1.0 + std::exp(-logit));
      choice[i] = s[i] + bias.Item(i);
    }
    std::vector<std::pair<double, int64_t>> groups;  // (-score, id): ascending sort = best first
    for (int64_t g = 0; g < cfg.n_group; ++g) {
      std::vector<double> members(choice.begin() + g * gs, choice.begin() + (g + 1) * gs);
      std::sort(members.rbegin(), members.rend());
      groups.push_back({-(members[0] + members[1]), g});
    }
    std::sort(groups.begin(), groups.end());
    std::vector<std::pair<double, int64_t>> candidates;
    for (int64_t gi = 0; gi < cfg.topk_group; ++gi)
      for (int64_t i = groups[gi].second * gs; i < (groups[gi].second + 1) * gs; ++i)
        candidates.push_back({-choice[i], i});
    std::sort(candidates.begin(), candidates.end());
    RefRoute r;
    double sum = 0;
    for (int64_t j = 0; j < cfg.num_experts_per_tok; ++j) {
      r.experts.push_back(candidates[j].second);
      r.weights.push_back(s[candidates[j].second]);
      sum += s[candidates[j].second];
    }
    for (double& v : r.weights) v = (cfg.norm_topk_prob ? v / (sum + 1e-20) : v) * cfg.routed_scaling_factor;
    out.push_back(std::move(r));
  }
  return out;
}

ModelConfig RouterConfig(int64_t k, int64_t n_group, int64_t topk_group, bool norm, double scaling) {
  ModelConfig cfg;
  cfg.hidden_size = 10;
  cfg.n_routed_experts = 8;
  cfg.num_experts_per_tok = k;
  cfg.n_group = n_group;
  cfg.topk_group = topk_group;
  cfg.norm_topk_prob = norm;
  cfg.routed_scaling_factor = scaling;
  return cfg;
}

TEST(RouterTest, RegistersWeightAndNonTrainableBias) {
  ParamTable table;
  Router router(table, RouterConfig(2, 1, 1, true, 1.0), "model.layers.3.mlp", 3);
  const ParamSpec& w = table.spec(router.weight_id());
  EXPECT_EQ(w.name, "model.layers.3.mlp.gate.weight");
  EXPECT_EQ(w.shape, (Shape{8, 10}));
  EXPECT_TRUE(w.trainable);
  EXPECT_EQ(w.group, ParamGroup::kReplicated);
  EXPECT_EQ(w.layer, 3);
  const ParamSpec& b = table.spec(router.bias_id());
  EXPECT_EQ(b.name, "model.layers.3.mlp.gate.e_score_correction_bias");
  EXPECT_EQ(b.shape, (Shape{8}));
  EXPECT_FALSE(b.trainable);
  EXPECT_FALSE(b.weight_decay);
  EXPECT_EQ(b.init, ParamInit::kZeros);
}

struct RouterCase {
  int64_t k, n_group, topk_group;
  bool norm;
  double scaling;
};

TEST(RouterTest, MatchesSortBasedReference) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::vector<RouterCase> cases = {{2, 1, 1, true, 1.0},
                                         {3, 1, 1, false, 1.0},
                                         {3, 4, 2, true, 2.5},
                                         {2, 4, 2, false, 2.5},
                                         {2, 4, 1, true, 2.5}};
  for (const RouterCase& rc : cases) {
    SCOPED_TRACE("k " + std::to_string(rc.k) + " n_group " + std::to_string(rc.n_group) + " topk_group " +
                 std::to_string(rc.topk_group) + " norm " + std::to_string(rc.norm));
    const ModelConfig cfg = RouterConfig(rc.k, rc.n_group, rc.topk_group, rc.norm, rc.scaling);
    ParamTable table;
    Router router(table, cfg, "model.layers.1.mlp", 1);
    table.Finalize(DType::kF64);
    FillRandom(table.value(router.weight_id()), rng, 0.3);
    FillRandom(table.value(router.bias_id()), rng, 0.1);
    Tensor x = RandomTensor({12, 10}, DType::kF64, rng);
    RouterOutput out = router.Forward(0, x);
    std::vector<RefRoute> ref =
        ReferenceRoute(x, table.value(router.weight_id()), table.value(router.bias_id()), cfg);
    ASSERT_EQ(out.topk_index.shape(), (Shape{12, rc.k}));
    ASSERT_EQ(out.topk_weight.shape(), (Shape{12, rc.k}));
    ASSERT_EQ(out.scores.shape(), (Shape{12, 8}));
    for (int64_t t = 0; t < 12; ++t) {
      for (int64_t j = 0; j < rc.k; ++j) {
        EXPECT_EQ(out.topk_index.Item(t * rc.k + j), ref[t].experts[j]) << "token " << t << " choice " << j;
        EXPECT_NEAR(out.topk_weight.Item(t * rc.k + j), ref[t].weights[j], 1e-12) << "token " << t;
      }
      if (rc.norm) {  // normalised weights sum to the scaling factor
        double sum = 0;
        for (int64_t j = 0; j < rc.k; ++j) sum += out.topk_weight.Item(t * rc.k + j);
        EXPECT_NEAR(sum, rc.scaling, 1e-12);
      }
    }
  }
}

// A large bias on an expert that token 0 would not pick without it forces it into every selection; its weight
// must still be its sigmoid score, not score + bias.
TEST(RouterTest, BiasChangesSelectionButNotWeights) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (bool norm : {true, false}) {
    const ModelConfig cfg = RouterConfig(2, 4, 2, norm, 2.5);
    ParamTable table;
    Router router(table, cfg, "model.layers.1.mlp", 1);
    table.Finalize(DType::kF64);
    Tensor w = table.value(router.weight_id()), bias = table.value(router.bias_id());
    FillRandom(w, rng, 0.3);
    FillRandom(bias, rng, 0.05);
    Tensor x = RandomTensor({8, 10}, DType::kF64, rng);
    Tensor zero_bias = Tensor::Zeros({8}, DType::kF64);
    std::vector<RefRoute> unbiased = ReferenceRoute(x, w, zero_bias, cfg);
    int64_t boosted = 0;
    while (std::count(unbiased[0].experts.begin(), unbiased[0].experts.end(), boosted)) ++boosted;
    bias.data<double>()[boosted] = 3.0;

    RouterOutput out = router.Forward(0, x);
    std::vector<RefRoute> ref = ReferenceRoute(x, w, bias, cfg);
    for (int64_t t = 0; t < 8; ++t) {
      // Score + 3 beats every other expert's score + bias, so the boosted expert comes first.
      ASSERT_EQ(out.topk_index.Item(t * 2), boosted) << "token " << t;
      EXPECT_EQ(out.topk_index.Item(t * 2 + 1), ref[t].experts[1]);
      const double s_boosted = out.scores.Item(t * 8 + boosted);
      const double s_other = out.scores.Item(t * 8 + ref[t].experts[1]);
      const double denom = norm ? s_boosted + s_other + 1e-20 : 1.0;
      EXPECT_NEAR(out.topk_weight.Item(t * 2), 2.5 * s_boosted / denom, 1e-12);
      EXPECT_NEAR(out.topk_weight.Item(t * 2 + 1), 2.5 * s_other / denom, 1e-12);
      // What the weight would be had it been taken from score + bias.
      const double wrong_denom = norm ? s_boosted + 3.0 + s_other + bias.Item(ref[t].experts[1]) : 1.0;
      EXPECT_GT(std::abs(out.topk_weight.Item(t * 2) - 2.5 * (s_boosted + 3.0) / wrong_denom), 1e-3);
    }
    // Token 0's selection changed because of the bias.
    EXPECT_NE(ref[0].experts, unbiased[0].experts);
  }
}

}  // namespace
}  // namespace fathom
