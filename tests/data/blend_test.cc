// Blending: Megatron's rule, checked against a direct transcription of it, under sequential and random
// access (the schedule's checkpoints and cursor must not change any answer), and its shares.
#include "data/blend.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::TestSeed;

// build_blending_indices of Megatron's helpers.cpp, as a loop over every sample: (dataset, index) of
// samples 0..n-1.
std::vector<std::pair<int, int64_t>> MegatronBlend(const std::vector<double>& weights, int64_t n) {
  std::vector<int64_t> current(weights.size(), 0);
  std::vector<std::pair<int, int64_t>> out;
  for (int64_t s = 0; s < n; ++s) {
    const double sd = std::max(static_cast<double>(s), 1.0);
    int best = 0;
    double best_error = weights[0] * sd - static_cast<double>(current[0]);
    for (size_t d = 1; d < weights.size(); ++d) {
      const double e = weights[d] * sd - static_cast<double>(current[d]);
      if (e > best_error) {
        best_error = e;
        best = static_cast<int>(d);
      }
    }
    out.push_back({best, current[static_cast<size_t>(best)]});
    ++current[static_cast<size_t>(best)];
  }
  return out;
}

std::vector<double> RandomWeights(std::mt19937_64& rng, int k) {
  std::uniform_real_distribution<double> u(0.01, 1.0);
  std::vector<double> w(static_cast<size_t>(k));
  double sum = 0;
  for (double& x : w) sum += (x = u(rng));
  for (double& x : w) x /= sum;
  return w;
}

TEST(BlendScheduleTest, MatchesMegatronSequentiallyAndAtRandom) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int k : {2, 3, 5}) {
    const std::vector<double> w = RandomWeights(rng, k);
    const int64_t n = 4 * BlendSchedule::kBlock + 123;
    const auto want = MegatronBlend(w, n);
    BlendSchedule sequential(w);
    for (int64_t g = 0; g < n; ++g)
      ASSERT_EQ(sequential.Lookup(g), want[static_cast<size_t>(g)]) << "g " << g;
    // Random jumps back and forth, and short forward runs (what data-parallel ranks' Fill calls do).
    BlendSchedule jumping(w);
    for (int i = 0; i < 300; ++i) {
      const int64_t g = static_cast<int64_t>(rng() % static_cast<uint64_t>(n - 20));
      for (int64_t r = 0; r < 20; ++r)
        ASSERT_EQ(jumping.Lookup(g + r), want[static_cast<size_t>(g + r)]) << g + r;
    }
  }
}

TEST(BlendScheduleTest, SharesFollowTheWeights) {
  const std::vector<double> w{0.7, 0.2, 0.1};
  BlendSchedule blend(w);
  std::vector<int64_t> counts(3, 0);
  const int64_t n = 100000;
  for (int64_t g = 0; g < n; ++g) {
    const auto [d, index] = blend.Lookup(g);
    ASSERT_EQ(index, counts[static_cast<size_t>(d)]);  // each dataset's samples are taken in order
    ++counts[static_cast<size_t>(d)];
    if (g >= 10) {
      // The rule keeps every realised count within one sample of its share.
      for (size_t i = 0; i < 3; ++i)
        ASSERT_LE(std::abs(counts[i] - w[i] * static_cast<double>(g + 1)), 1.0 + 1e-9);
    }
  }
}

TEST(BlendScheduleTest, OneDatasetIsTheIdentity) {
  BlendSchedule blend({1.0});
  EXPECT_EQ(blend.Lookup(0), (std::pair<int, int64_t>{0, 0}));
  EXPECT_EQ(blend.Lookup(123456789), (std::pair<int, int64_t>{0, 123456789}));
}

}  // namespace
}  // namespace fathom
