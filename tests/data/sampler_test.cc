#include "data/sampler.h"

#include <gtest/gtest.h>

#include <random>
#include <set>
#include <string>
#include <vector>

#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::TestSeed;

TEST(SequenceSamplerTest, CreateRejectsBadInput) {
  std::vector<int32_t> tokens(10, 7);
  EXPECT_EQ(SequenceSampler::Create(nullptr, 4, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SequenceSampler::Create(&tokens, 0, 1).status().code(), absl::StatusCode::kInvalidArgument);
  // seq_len + 1 = 11 tokens needed, 10 given.
  absl::StatusOr<SequenceSampler> too_short = SequenceSampler::Create(&tokens, 10, 1);
  ASSERT_FALSE(too_short.ok());
  EXPECT_EQ(too_short.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(too_short.status().message()).find("11"), std::string::npos)
      << too_short.status().message();
  // Exactly seq_len + 1 tokens: one window, always at offset 0.
  absl::StatusOr<SequenceSampler> exact = SequenceSampler::Create(&tokens, 9, 1);
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_EQ(exact->num_windows(), 1);
  EXPECT_EQ(exact->Offset(123, 45), 0);
}

TEST(SequenceSamplerTest, WindowsAreInRangeAndLabelsAreInputsShiftedByOne) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t seq_len = 16;
  // Small stream with distinct tokens (token k at position k), so a window identifies its offset.
  std::vector<int32_t> tokens(seq_len + 6);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i);
  absl::StatusOr<SequenceSampler> s = SequenceSampler::Create(&tokens, seq_len, rng());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->num_windows(), 6);
  std::set<int64_t> seen;
  std::vector<int32_t> in(seq_len), lab(seq_len);
  for (int64_t step = 0; step < 50; ++step) {
    for (int64_t index = 0; index < 8; ++index) {
      int64_t o = s->Offset(step, index);
      ASSERT_GE(o, 0);
      ASSERT_LT(o, 6);
      seen.insert(o);
      s->Sample(step, index, in.data(), lab.data());
      for (int64_t t = 0; t < seq_len; ++t) {
        ASSERT_EQ(in[static_cast<size_t>(t)], tokens[static_cast<size_t>(o + t)]);
        ASSERT_EQ(lab[static_cast<size_t>(t)], tokens[static_cast<size_t>(o + t + 1)]);
        if (t + 1 < seq_len) {
          ASSERT_EQ(lab[static_cast<size_t>(t)], in[static_cast<size_t>(t + 1)]);
        }
      }
    }
  }
  EXPECT_EQ(seen.size(), 6u);  // the last window (ending at the stream's last token) is reachable too
}

TEST(SequenceSamplerTest, DeterministicAndSensitiveToSeedStepAndIndex) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::vector<int32_t> tokens = SyntheticTokens(1 << 20, 50000, seed);
  auto a = SequenceSampler::Create(&tokens, 64, seed);
  auto b = SequenceSampler::Create(&tokens, 64, seed);  // a "resumed run": a fresh sampler
  auto c = SequenceSampler::Create(&tokens, 64, seed + 1);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  std::set<int64_t> offsets;
  int64_t same_as_other_seed = 0;
  for (int64_t step = 0; step < 40; ++step) {
    for (int64_t index = 0; index < 25; ++index) {
      int64_t o = a->Offset(step, index);
      ASSERT_EQ(o, b->Offset(step, index));
      ASSERT_EQ(o, a->Offset(step, index));
      offsets.insert(o);
      same_as_other_seed += o == c->Offset(step, index);
    }
  }
  // 1000 draws from ~1e6 windows: different (step, index) pairs land on different windows.
  EXPECT_GE(offsets.size(), 995u);
  EXPECT_LE(same_as_other_seed, 5);
  // Swapping step and index is a different draw.
  EXPECT_NE(a->Offset(3, 7), a->Offset(7, 3));

  std::vector<int32_t> in1(64), lab1(64), in2(64), lab2(64);
  a->Sample(17, 5, in1.data(), lab1.data());
  b->Sample(17, 5, in2.data(), lab2.data());
  EXPECT_EQ(in1, in2);
  EXPECT_EQ(lab1, lab2);
  a->Sample(18, 5, in2.data(), lab2.data());
  EXPECT_NE(in1, in2);
}

TEST(SequenceSamplerTest, RanksTakingDisjointIndicesRebuildTheGlobalBatch) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::vector<int32_t> tokens = SyntheticTokens(5000, 256, seed);
  auto s = SequenceSampler::Create(&tokens, 12, seed ^ 0xABCD);
  ASSERT_TRUE(s.ok());
  const int64_t ranks = 3, per_rank = 4, T = 12, step = 9;
  std::vector<int32_t> global_in(ranks * per_rank * T), global_lab(global_in.size());
  s->SampleBatch(step, 0, ranks * per_rank, global_in.data(), global_lab.data());
  for (int64_t r = 0; r < ranks; ++r) {
    std::vector<int32_t> in(per_rank * T), lab(per_rank * T);
    s->SampleBatch(step, r * per_rank, per_rank, in.data(), lab.data());
    for (int64_t i = 0; i < per_rank * T; ++i) {
      ASSERT_EQ(in[static_cast<size_t>(i)], global_in[static_cast<size_t>(r * per_rank * T + i)]);
      ASSERT_EQ(lab[static_cast<size_t>(i)], global_lab[static_cast<size_t>(r * per_rank * T + i)]);
    }
  }
}

TEST(SyntheticTokensTest, UniformDeterministicAndPrefixStable) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t n = 80000, vocab = 8;
  std::vector<int32_t> a = SyntheticTokens(n, vocab, seed);
  ASSERT_EQ(static_cast<int64_t>(a.size()), n);
  EXPECT_EQ(a, SyntheticTokens(n, vocab, seed));
  std::vector<int32_t> prefix = SyntheticTokens(100, vocab, seed);
  EXPECT_TRUE(std::equal(prefix.begin(), prefix.end(), a.begin()));
  std::vector<int64_t> hist(vocab, 0);
  for (int32_t id : a) {
    ASSERT_GE(id, 0);
    ASSERT_LT(id, vocab);
    ++hist[static_cast<size_t>(id)];
  }
  // Binomial(80000, 1/8): sd ~94, so +-1000 is a >10 sigma band.
  for (int64_t h : hist) EXPECT_NEAR(static_cast<double>(h), n / 8.0, 1000.0);
  std::vector<int32_t> other = SyntheticTokens(n, vocab, seed + 1);
  int64_t same = 0;
  for (int64_t i = 0; i < n; ++i) same += a[static_cast<size_t>(i)] == other[static_cast<size_t>(i)];
  EXPECT_NEAR(static_cast<double>(same), n / 8.0, 1000.0);  // independent streams agree 1/8 of the time
}

}  // namespace
}  // namespace fathom
