// Megatron .bin/.idx: the exact bytes of the format, round trips for every integer dtype (documents of
// several sequences, one-token and empty documents), and every malformed file rejected with a message
// naming the file and what was expected.
#include "data/indexed_dataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "tests/common/gradcheck.h"
#include "tests/data/data_test_support.h"

namespace fathom {
namespace {

using ::testing::AllOf;
using testing::Documents;
using ::testing::HasSubstr;
using testing::ReadFileBytes;
using testing::ScratchDir;
using testing::TestSeed;
using testing::WriteFileBytes;
using testing::WriteMegatron;

template <class T>
void Put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// The .idx bytes Megatron's MMapIndexedDataset.Index.writer produces, built field by field.
std::string ExpectedIndex(uint8_t code, const std::vector<int32_t>& lengths,
                          const std::vector<int64_t>& pointers, const std::vector<int64_t>& doc_idx) {
  std::string s("MMIDIDX\0\0", 9);
  Put<uint64_t>(s, 1);
  Put<uint8_t>(s, code);
  Put<uint64_t>(s, lengths.size());
  Put<uint64_t>(s, doc_idx.size());
  for (int32_t v : lengths) Put(s, v);
  for (int64_t v : pointers) Put(s, v);
  for (int64_t v : doc_idx) Put(s, v);
  return s;
}

std::string OpenError(const std::string& prefix, int64_t vocab = 256) {
  absl::StatusOr<std::unique_ptr<IndexedDataset>> ds = IndexedDataset::Open(prefix, vocab);
  EXPECT_FALSE(ds.ok()) << prefix << " opened";
  if (ds.ok()) return "";
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument) << ds.status();
  return std::string(ds.status().message());
}

TEST(IndexedDatasetTest, WritesMegatronsExactBytes) {
  ScratchDir dir;
  const std::string prefix = dir / "golden";
  WriteMegatron(prefix, {{1, 2, 3}, {4}});
  EXPECT_EQ(ReadFileBytes(prefix + ".idx"), ExpectedIndex(8, {3, 1}, {0, 6}, {0, 1, 2}));
  EXPECT_EQ(ReadFileBytes(prefix + ".bin"), std::string("\1\0\2\0\3\0\4\0", 8));

  // int32, a document of two sequences (Megatron's --split-sentences shape) and an empty document.
  auto w = IndexedDatasetWriter::Create(prefix, IndexedDType::kInt32);
  ASSERT_TRUE(w.ok()) << w.status();
  const std::vector<int32_t> a{70000, 5}, b{9};
  ASSERT_TRUE((*w)->AddSequence(a).ok());
  ASSERT_TRUE((*w)->AddSequence(b).ok());
  (*w)->EndDocument();
  (*w)->EndDocument();
  ASSERT_TRUE((*w)->Finish().ok());
  EXPECT_EQ(ReadFileBytes(prefix + ".idx"), ExpectedIndex(4, {2, 1}, {0, 8}, {0, 2, 2}));
  std::string bin;
  for (int32_t v : {70000, 5, 9}) Put(bin, v);
  EXPECT_EQ(ReadFileBytes(prefix + ".bin"), bin);
}

TEST(IndexedDatasetTest, RoundTripsEveryIntegerDtype) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ScratchDir dir;
  for (IndexedDType dtype : {IndexedDType::kUint8, IndexedDType::kInt8, IndexedDType::kInt16,
                             IndexedDType::kInt32, IndexedDType::kInt64, IndexedDType::kUint16}) {
    SCOPED_TRACE(IndexedDTypeName(dtype));
    const int32_t hi = dtype == IndexedDType::kInt8 ? 127 : dtype == IndexedDType::kUint8 ? 255 : 30000;
    // Documents of 1..3 sequences, some of one token; every 7th document is empty.
    std::vector<Documents> docs(40);
    const std::string prefix = dir / IndexedDTypeName(dtype);
    auto w = IndexedDatasetWriter::Create(prefix, dtype);
    ASSERT_TRUE(w.ok()) << w.status();
    for (size_t d = 0; d < docs.size(); ++d) {
      if (d % 7 != 3) docs[d] = testing::RandomDocuments(rng, 1 + static_cast<int>(rng() % 3), 1, 50, 0, hi);
      for (const std::vector<int32_t>& seq : docs[d]) ASSERT_TRUE((*w)->AddSequence(seq).ok());
      (*w)->EndDocument();
    }
    ASSERT_TRUE((*w)->Finish().ok());
    auto ds = IndexedDataset::Open(prefix, hi + 1);
    ASSERT_TRUE(ds.ok()) << ds.status();
    EXPECT_EQ((*ds)->dtype(), dtype);
    ASSERT_EQ((*ds)->num_documents(), 40);
    EXPECT_EQ((*ds)->path(), prefix + ".bin");
    for (int64_t d = 0; d < 40; ++d) {
      std::vector<int32_t> flat;
      for (const std::vector<int32_t>& seq : docs[static_cast<size_t>(d)])
        flat.insert(flat.end(), seq.begin(), seq.end());
      ASSERT_EQ((*ds)->document_length(d), static_cast<int64_t>(flat.size()));
      if (flat.empty()) continue;
      // A random range, crossing sequence boundaries where the document has several.
      const int64_t begin = static_cast<int64_t>(rng() % flat.size());
      const int64_t count = 1 + static_cast<int64_t>(rng() % (flat.size() - static_cast<size_t>(begin)));
      std::vector<int32_t> got(static_cast<size_t>(count));
      ASSERT_TRUE((*ds)->ReadTokens(d, begin, count, got.data()).ok());
      EXPECT_EQ(got, std::vector<int32_t>(flat.begin() + begin, flat.begin() + begin + count))
          << "document " << d;
    }
    EXPECT_TRUE((*ds)->CheckTokenIds(0, 40).ok());
  }
}

TEST(IndexedDatasetTest, WriterRejectsTokensThatDoNotFitTheDtype) {
  ScratchDir dir;
  auto w = IndexedDatasetWriter::Create(dir / "w", IndexedDType::kUint16);
  ASSERT_TRUE(w.ok());
  const std::vector<int32_t> big{65536}, negative{-1};
  EXPECT_THAT(std::string((*w)->AddDocument(big).message()), HasSubstr("65536 does not fit uint16"));
  EXPECT_THAT(std::string((*w)->AddDocument(negative).message()), HasSubstr("-1 does not fit uint16"));
  EXPECT_EQ(IndexedDatasetWriter::Create(dir / "f", IndexedDType::kFloat32).status().code(),
            absl::StatusCode::kInvalidArgument);
  // An unfinished writer leaves nothing behind.
  w->reset();
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(IndexedDatasetTest, MissingFilesAreNamed) {
  ScratchDir dir;
  const std::string prefix = dir / "d";
  EXPECT_THAT(OpenError(prefix), AllOf(HasSubstr(prefix + ".idx"), HasSubstr("no such file")));
  WriteMegatron(prefix, {{1, 2}});
  std::filesystem::remove(prefix + ".bin");
  EXPECT_THAT(OpenError(prefix), AllOf(HasSubstr(prefix + ".bin"), HasSubstr("no such file")));
}

TEST(IndexedDatasetTest, MalformedIndexesAreRejectedWithWhatWasExpected) {
  ScratchDir dir;
  const std::string prefix = dir / "d";
  WriteMegatron(prefix, {{1, 2, 3}, {4, 5}});
  const std::string good = ReadFileBytes(prefix + ".idx");
  const std::string idx = prefix + ".idx";
  struct Case {
    const char* what;
    std::string bytes;
    std::vector<std::string> expect;
  };
  auto patched = [&good](size_t offset, std::string bytes) {
    std::string s = good;
    s.replace(offset, bytes.size(), bytes);
    return s;
  };
  auto u64 = [](uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); };
  auto i64 = u64;
  const size_t pointers = 34 + 4 * 2, doc_idx = pointers + 8 * 2;
  const std::vector<Case> cases = {
      {"empty", "", {"truncated", "header alone needs 34"}},
      {"short header", good.substr(0, 20), {"truncated", "20 bytes"}},
      {"magic", patched(0, "MMIDIDY"), {"wrong magic", "MMIDIDX"}},
      {"version", patched(9, u64(2)), {"version 2, expected 1"}},
      {"float dtype", patched(17, "\6"), {"dtype code 6", "floating-point", "integer code"}},
      {"unknown dtype", patched(17, "\11"), {"dtype code 9 is unknown"}},
      {"truncated arrays",
       good.substr(0, good.size() - 8),
       {"truncated", "expected exactly 82", "2 sequences"}},
      {"trailing bytes", good + "x", {"83 bytes, expected exactly 82"}},
      {"huge counts", patched(18, u64(uint64_t{1} << 62)), {"implausible counts"}},
      {"negative length", patched(34, std::string("\xff\xff\xff\xff", 4)), {"sequence 0 has length -1"}},
      {"pointer past the end",
       patched(pointers + 8, i64(7)),
       {".bin", "sequence 1", "past the end of the file (10 bytes)"}},
      {"doc index not from 0", patched(doc_idx, i64(1)), {"document index 0 is 1"}},
      {"doc index decreasing", patched(doc_idx + 8, i64(3)), {"document index 1 is 3"}},
      {"doc index short of S",
       patched(doc_idx + 16, i64(1)),
       {"the last document index is 1; expected the sequence count 2"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    WriteFileBytes(idx, c.bytes);
    const std::string message = OpenError(prefix);
    for (const std::string& e : c.expect) EXPECT_THAT(message, HasSubstr(e));
    EXPECT_THAT(message, HasSubstr(prefix));  // every message names the file
  }
  // A .bin cut short: the last sequence now ends past its end.
  WriteFileBytes(idx, good);
  WriteFileBytes(prefix + ".bin", ReadFileBytes(prefix + ".bin").substr(0, 9));
  EXPECT_THAT(OpenError(prefix),
              AllOf(HasSubstr(prefix + ".bin"), HasSubstr("sequence 1 (2 uint16 tokens at byte 6)"),
                    HasSubstr("do not match")));
}

TEST(IndexedDatasetTest, TokenIdsOutsideTheVocabularyNameFileDocumentAndPosition) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ScratchDir dir;
  const std::string prefix = dir / "d";
  // Three documents; the middle one is long enough (2.5M tokens, 5 MB) that the scan reads it in two 4 MiB
  // pieces, and its bad token sits in the second piece.
  Documents docs = testing::RandomDocuments(rng, 3, 10, 20, 0, 255);
  docs[1] = testing::RandomDocuments(rng, 1, 2500000, 2500000, 0, 255)[0];
  const int64_t bad_at = 2200000 + static_cast<int64_t>(rng() % 1000);
  docs[1][static_cast<size_t>(bad_at)] = 256;
  WriteMegatron(prefix, docs);
  auto ds = IndexedDataset::Open(prefix, 256);  // structure only: opens
  ASSERT_TRUE(ds.ok()) << ds.status();
  const std::string expected = absl::StrCat("token id 256 at position ", bad_at, " of document 1");
  absl::Status scan = (*ds)->CheckTokenIds(0, 3);
  EXPECT_EQ(scan.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(scan.message()),
              AllOf(HasSubstr(prefix + ".bin"), HasSubstr(expected), HasSubstr("model.vocab_size = 256")));
  EXPECT_TRUE((*ds)->CheckTokenIds(0, 1).ok());  // the scan covers only the documents asked for
  EXPECT_TRUE((*ds)->CheckTokenIds(2, 3).ok());
  std::vector<int32_t> out(10);
  absl::Status read = (*ds)->ReadTokens(1, bad_at - 3, 10, out.data());
  EXPECT_THAT(std::string(read.message()), HasSubstr(expected));
  // The same file is fine for a larger vocabulary.
  auto wide = IndexedDataset::Open(prefix, 257);
  ASSERT_TRUE(wide.ok());
  EXPECT_TRUE((*wide)->CheckTokenIds(0, 3).ok());

  // Negative ids of a signed dtype.
  WriteMegatron(prefix, {{3, -2, 4}}, IndexedDType::kInt16);
  auto neg = IndexedDataset::Open(prefix, 256);
  ASSERT_TRUE(neg.ok());
  EXPECT_THAT(std::string((*neg)->CheckTokenIds(0, 1).message()),
              HasSubstr("token id -2 at position 1 of document 0"));
}

TEST(IndexedDatasetTest, DtypeForVocabFollowsMegatron) {
  EXPECT_EQ(IndexedDTypeForVocab(256), IndexedDType::kUint16);
  EXPECT_EQ(IndexedDTypeForVocab(65499), IndexedDType::kUint16);
  EXPECT_EQ(IndexedDTypeForVocab(65500), IndexedDType::kInt32);
  EXPECT_EQ(IndexedDTypeForVocab(129280), IndexedDType::kInt32);  // DeepSeek-V3's vocabulary
}

}  // namespace
}  // namespace fathom
