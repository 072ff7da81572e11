#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "data/demo_corpus.h"
#include "data/tokenizer.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

uint64_t Fnv1a64(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

TEST(DemoCorpusTest, SizeContentAndBytesArePinned) {
  const std::string& corpus = DemoCorpus();
  EXPECT_EQ(&corpus, &DemoCorpus());  // cached, generated once
  ASSERT_EQ(static_cast<int64_t>(corpus.size()), kDemoCorpusBytes);
  EXPECT_GT(corpus.size(), 100u * 1024);
  // The generator is platform-independent; this pins its bytes across runs, compilers and machines.
  // Changing the generator on purpose means updating this value (and checkpoints trained on the corpus).
  EXPECT_EQ(Fnv1a64(corpus), 0x4e83944d13d82795ull);
  EXPECT_EQ(corpus.rfind("Chapter 1: The ", 0), 0u);
  for (size_t i = 0; i < corpus.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(corpus[i]);
    ASSERT_TRUE(c == '\n' || (c >= 0x20 && c < 0x7F)) << "byte " << int{c} << " at " << i;
  }
}

// Learnable structure: the next byte is far more predictable from the previous ones than from nothing,
// and even a unigram model is far below ln(256).
TEST(DemoCorpusTest, HasLearnableStructure) {
  const std::string& corpus = DemoCorpus();
  std::map<unsigned char, double> uni;
  std::map<std::pair<unsigned char, unsigned char>, double> bi;
  std::map<unsigned char, double> prev;
  for (size_t i = 0; i + 1 < corpus.size(); ++i) {
    unsigned char a = static_cast<unsigned char>(corpus[i]), b = static_cast<unsigned char>(corpus[i + 1]);
    uni[b] += 1;
    bi[{a, b}] += 1;
    prev[a] += 1;
  }
  const double n = static_cast<double>(corpus.size() - 1);
  double h1 = 0, h2 = 0;
  for (const auto& [b, c] : uni) h1 -= c / n * std::log(c / n);
  for (const auto& [ab, c] : bi) h2 -= c / n * std::log(c / prev[ab.first]);
  EXPECT_LT(h1, 3.5);  // nats; ln(256) = 5.55
  EXPECT_LT(h2, 2.6);
  EXPECT_LT(uni.size(), 100u);
  EXPECT_GT(uni.size(), 40u);
}

TEST(ByteTokenizerTest, RoundTripsTheCorpusAndEveryByte) {
  uint64_t seed = testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const std::string& corpus = DemoCorpus();
  std::vector<int32_t> ids = EncodeBytes(corpus);
  ASSERT_EQ(ids.size(), corpus.size());
  for (size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(ids[i], static_cast<unsigned char>(corpus[i]));
  EXPECT_EQ(DecodeBytes(ids), corpus);

  // Random bytes, high ones included (read as unsigned: 0xFF -> 255, never negative).
  std::mt19937_64 rng(seed);
  std::string bytes(4096, '\0');
  for (char& c : bytes) c = static_cast<char>(rng() & 0xFF);
  bytes[0] = '\xFF';
  bytes[1] = '\0';
  std::vector<int32_t> bids = EncodeBytes(bytes);
  EXPECT_EQ(bids[0], 255);
  EXPECT_EQ(bids[1], 0);
  for (int32_t id : bids) {
    ASSERT_GE(id, 0);
    ASSERT_LT(id, kByteVocab);
  }
  EXPECT_EQ(DecodeBytes(bids), bytes);
  EXPECT_EQ(DecodeBytes(EncodeBytes("")), "");
}

}  // namespace
}  // namespace fathom
