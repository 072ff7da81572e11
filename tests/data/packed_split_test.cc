// Packing a split: Megatron's split boundaries, the exact token stream of an epoch, epoch boundaries
// (every document once per epoch, a new order each epoch), windows overlapping by one token, documents
// shorter and longer than a window, empty and one-token documents, EOD insertion on and off.
#include "data/packed_split.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using ::testing::HasSubstr;
using testing::TestSeed;

// Documents in memory whose token (doc, position) is doc * 10000 + position + 1, so every token of the
// stream says where it came from (0 is never a document token).
class FakeDocuments final : public TokenDocuments {
 public:
  explicit FakeDocuments(std::vector<int64_t> lengths) : lengths_(std::move(lengths)) {}
  const std::string& path() const override { return path_; }
  int64_t file_bytes() const override { return 0; }
  int64_t num_documents() const override { return static_cast<int64_t>(lengths_.size()); }
  int64_t document_length(int64_t doc) const override { return lengths_[static_cast<size_t>(doc)]; }
  absl::Status ReadTokens(int64_t doc, int64_t begin, int64_t count, int32_t* out) override {
    EXPECT_LE(begin + count, document_length(doc));
    for (int64_t i = 0; i < count; ++i) out[i] = Token(doc, begin + i);
    ++reads_;
    return absl::OkStatus();
  }
  absl::Status CheckTokenIds(int64_t, int64_t) override { return absl::OkStatus(); }
  static int32_t Token(int64_t doc, int64_t pos) { return static_cast<int32_t>(doc * 10000 + pos + 1); }
  int64_t reads_ = 0;

 private:
  std::vector<int64_t> lengths_;
  std::string path_ = "fake";
};

constexpr int32_t kEod = 0;

std::vector<int64_t> RandomLengths(std::mt19937_64& rng, int n, int64_t min_len, int64_t max_len) {
  std::vector<int64_t> lengths(static_cast<size_t>(n));
  for (int64_t& l : lengths)
    l = min_len + static_cast<int64_t>(rng() % static_cast<uint64_t>(max_len - min_len + 1));
  return lengths;
}

// The epoch's stream as the contract defines it: documents in order, EOD after each non-empty one.
std::vector<int32_t> ExpectedStream(const FakeDocuments& docs, const std::vector<int64_t>& order, bool eod) {
  std::vector<int32_t> s;
  for (int64_t d : order) {
    for (int64_t p = 0; p < docs.document_length(d); ++p) s.push_back(FakeDocuments::Token(d, p));
    if (eod && docs.document_length(d) > 0) s.push_back(kEod);
  }
  return s;
}

TEST(SplitBoundariesTest, FollowsMegatronsRule) {
  // 969/30/1 of the demo corpus' 575 chapters: 557.175 -> 557, 17.25 -> 17, 0.575 -> 1.
  EXPECT_EQ(SplitBoundaries({0.969, 0.030, 0.001}, 575), (std::array<int64_t, 4>{0, 557, 574, 575}));
  // Python rounds half to even: 2.5 -> 2 twice, so the sum is 4 and the shift adds 1 to every boundary.
  EXPECT_EQ(SplitBoundaries({0.5, 0.5, 0.0}, 5), (std::array<int64_t, 4>{0, 3, 5, 5}));
  // 3.5 -> 4 and 3.5 -> 4: 8 > 7, shifted down by one.
  EXPECT_EQ(SplitBoundaries({0.5, 0.5, 0.0}, 7), (std::array<int64_t, 4>{0, 3, 7, 7}));
  EXPECT_EQ(SplitBoundaries({1.0, 0.0, 0.0}, 9), (std::array<int64_t, 4>{0, 9, 9, 9}));
  EXPECT_EQ(SplitBoundaries({0.969, 0.030, 0.001}, 5), (std::array<int64_t, 4>{0, 5, 5, 5}));
  EXPECT_EQ(SplitBoundaries({0.969, 0.030, 0.001}, 0), (std::array<int64_t, 4>{0, 0, 0, 0}));
}

// For several shapes (windows shorter and longer than documents, with and without EOD): the windows of
// one epoch, put in stream order, rebuild the stream of the epoch's document order, which holds every
// document once; every window overlaps the next by one token; epochs differ in order.
TEST(PackedSplitTest, EpochsAreExactPackedStreams) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  struct Shape {
    int docs;
    int64_t min_len, max_len, seq_len;
    bool eod;
  };
  // Short documents and long windows, documents several windows long, one-token documents, no EOD.
  for (const Shape& shape :
       {Shape{20, 1, 5, 16, true}, Shape{7, 20, 300, 16, true}, Shape{50, 1, 40, 8, false},
        Shape{12, 1, 1, 3, true}, Shape{3, 50, 100, 64, false}}) {
    SCOPED_TRACE(absl::StrCat(shape.docs, " docs of ", shape.min_len, "..", shape.max_len,
                              " tokens, seq_len ", shape.seq_len, shape.eod ? ", EOD" : ""));
    std::vector<int64_t> lengths = RandomLengths(rng, shape.docs + 4, shape.min_len, shape.max_len);
    FakeDocuments docs(lengths);
    const int64_t begin = 2, end = shape.docs + 2;  // a split in the middle of the file
    const int64_t L = shape.seq_len;
    auto split = PackedSplit::Create(&docs, begin, end, L, shape.eod ? kEod : -1, rng(), "fake");
    ASSERT_TRUE(split.ok()) << split.status();
    PackedSplit& s = **split;
    int64_t total = 0;
    for (int64_t d = begin; d < end; ++d) total += lengths[static_cast<size_t>(d)] + (shape.eod ? 1 : 0);
    ASSERT_EQ(s.tokens_per_epoch(), total);
    ASSERT_EQ(s.samples_per_epoch(), (total - 1) / L);
    const int64_t S = s.samples_per_epoch();
    std::vector<std::vector<int64_t>> orders;
    for (int64_t epoch = 0; epoch < 3; ++epoch) {
      std::vector<int64_t> order = s.DocumentOrder(epoch);
      std::vector<int64_t> sorted = order;
      std::sort(sorted.begin(), sorted.end());
      std::vector<int64_t> all(static_cast<size_t>(end - begin));
      std::iota(all.begin(), all.end(), begin);
      ASSERT_EQ(sorted, all) << "epoch " << epoch << " does not visit every document once";
      const std::vector<int32_t> stream = ExpectedStream(docs, order, shape.eod);
      // Window k of the epoch is stream[k L, k L + L + 1); sample j is some window, each window once.
      std::map<int64_t, std::vector<int32_t>> by_start;
      for (int64_t j = 0; j < S; ++j) {
        std::vector<int32_t> w(static_cast<size_t>(L + 1));
        ASSERT_TRUE(s.Window(epoch * S + j, w.data()).ok());
        const int64_t start = s.WindowStart(epoch * S + j);
        ASSERT_EQ(start % L, 0);
        ASSERT_TRUE(by_start.emplace(start, w).second) << "window at " << start << " drawn twice in an epoch";
        ASSERT_EQ(w, std::vector<int32_t>(stream.begin() + start, stream.begin() + start + L + 1))
            << "epoch " << epoch << " sample " << j;
      }
      ASSERT_EQ(static_cast<int64_t>(by_start.size()), S);
      EXPECT_EQ(by_start.rbegin()->first, (S - 1) * L);
      orders.push_back(order);
    }
    if (shape.docs >= 12) {  // 12! orders: equal by chance with probability 2e-9
      EXPECT_NE(orders[0], orders[1]);
      EXPECT_NE(orders[1], orders[2]);
    }
  }
}

TEST(PackedSplitTest, EmptyDocumentsAddNoEod) {
  FakeDocuments docs({3, 0, 0, 2, 0});
  auto split = PackedSplit::Create(&docs, 0, 5, 2, kEod, 7, "fake");
  ASSERT_TRUE(split.ok());
  EXPECT_EQ((*split)->tokens_per_epoch(), 3 + 1 + 2 + 1);  // two EODs, none for the empty documents
  for (int64_t j = 0; j < (*split)->samples_per_epoch(); ++j) {
    std::vector<int32_t> w(3);
    ASSERT_TRUE((*split)->Window(j, w.data()).ok());
    for (size_t i = 0; i + 1 < w.size(); ++i) {
      EXPECT_FALSE(w[i] == kEod && w[i + 1] == kEod) << "two EODs in a row";
    }
  }
}

TEST(PackedSplitTest, DeterministicFromTheSeed) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  FakeDocuments docs(RandomLengths(rng, 40, 1, 30));
  const uint64_t split_seed = rng();
  auto a = PackedSplit::Create(&docs, 0, 40, 8, kEod, split_seed, "fake");
  auto b = PackedSplit::Create(&docs, 0, 40, 8, kEod, split_seed, "fake");
  auto c = PackedSplit::Create(&docs, 0, 40, 8, kEod, split_seed + 1, "fake");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  int differ = 0;
  // Random access over several epochs, in a different order for a and b: the same windows.
  std::vector<int64_t> samples;
  for (int i = 0; i < 200; ++i)
    samples.push_back(static_cast<int64_t>(rng() % (5 * (*a)->samples_per_epoch())));
  for (size_t i = 0; i < samples.size(); ++i) {
    std::vector<int32_t> wa(9), wb(9), wc(9);
    ASSERT_TRUE((*a)->Window(samples[i], wa.data()).ok());
    ASSERT_TRUE((*b)->Window(samples[samples.size() - 1 - i], wb.data()).ok());
    ASSERT_TRUE((*b)->Window(samples[i], wb.data()).ok());
    ASSERT_TRUE((*c)->Window(samples[i], wc.data()).ok());
    EXPECT_EQ(wa, wb);
    differ += wa != wc;
  }
  EXPECT_GT(differ, 150);  // another seed, another order
}

TEST(PackedSplitTest, RejectsSplitsWithoutOneWindow) {
  FakeDocuments docs({4, 4});
  auto none = PackedSplit::Create(&docs, 1, 1, 4, kEod, 1, "web (valid split)");
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("web (valid split): no documents"));
  // 4 + 1 tokens; a window of seq_len 8 needs 9.
  auto short_split = PackedSplit::Create(&docs, 0, 1, 8, kEod, 1, "web (test split)");
  ASSERT_FALSE(short_split.ok());
  EXPECT_THAT(std::string(short_split.status().message()),
              HasSubstr("web (test split): 1 documents pack into 5 tokens (EODs included); one sample needs "
                        "train.seq_len + 1 = 9"));
  // Exactly seq_len + 1 tokens: one sample.
  auto exact = PackedSplit::Create(&docs, 0, 1, 4, kEod, 1, "web");
  ASSERT_TRUE(exact.ok());
  EXPECT_EQ((*exact)->samples_per_epoch(), 1);
}

}  // namespace
}  // namespace fathom
