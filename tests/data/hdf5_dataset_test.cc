// HDF5 token files: round trips (uint16, int32 and other integer types written by hand), and every
// malformed file rejected with a message naming the file and what was expected.
#include "data/hdf5_dataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <hdf5.h>

#include <random>

#include "tests/common/gradcheck.h"
#include "tests/data/data_test_support.h"

namespace fathom {
namespace {

using ::testing::AllOf;
using testing::Documents;
using ::testing::HasSubstr;
using testing::ScratchDir;
using testing::TestSeed;

// Writes an HDF5 file holding the given datasets, each (name, file type, dims, int64 values), without
// fathom's writer, so that the reader meets files it did not make.
struct RawDataset {
  std::string name;
  hid_t type;
  std::vector<hsize_t> dims;
  std::vector<int64_t> values;
};
void WriteRaw(const std::string& path, const std::vector<RawDataset>& datasets) {
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  for (const RawDataset& d : datasets) {
    hid_t space = H5Screate_simple(static_cast<int>(d.dims.size()), d.dims.data(), nullptr);
    hid_t ds = H5Dcreate2(f, d.name.c_str(), d.type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(ds, 0) << d.name;
    if (!d.values.empty()) {
      ASSERT_GE(H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, d.values.data()), 0);
    }
    H5Dclose(ds);
    H5Sclose(space);
  }
  H5Fclose(f);
}

std::string OpenError(const std::string& path) {
  absl::StatusOr<std::unique_ptr<Hdf5TokenDataset>> ds = Hdf5TokenDataset::Open(path, 256);
  EXPECT_FALSE(ds.ok()) << path << " opened";
  if (ds.ok()) return "";
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument) << ds.status();
  return std::string(ds.status().message());
}

TEST(Hdf5DatasetTest, RoundTripsUint16AndInt32) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ScratchDir dir;
  for (IndexedDType dtype : {IndexedDType::kUint16, IndexedDType::kInt32}) {
    const int32_t hi = dtype == IndexedDType::kUint16 ? 65535 : 1 << 30;
    Documents docs = testing::RandomDocuments(rng, 30, 1, 40, 0, hi);
    docs[4].clear();  // an empty document
    const std::string path = dir / "t.h5";
    testing::WriteHdf5(path, docs, dtype);
    auto ds = Hdf5TokenDataset::Open(path, int64_t{hi} + 1);
    ASSERT_TRUE(ds.ok()) << ds.status();
    ASSERT_EQ((*ds)->num_documents(), 30);
    EXPECT_EQ((*ds)->path(), path);
    EXPECT_GT((*ds)->file_bytes(), 0);
    for (int64_t d = 0; d < 30; ++d) {
      const std::vector<int32_t>& want = docs[static_cast<size_t>(d)];
      ASSERT_EQ((*ds)->document_length(d), static_cast<int64_t>(want.size()));
      if (want.empty()) continue;
      const int64_t begin = static_cast<int64_t>(rng() % want.size());
      const int64_t count = static_cast<int64_t>(want.size()) - begin;
      std::vector<int32_t> got(static_cast<size_t>(count));
      ASSERT_TRUE((*ds)->ReadTokens(d, begin, count, got.data()).ok());
      EXPECT_EQ(got, std::vector<int32_t>(want.begin() + begin, want.end()));
    }
    EXPECT_TRUE((*ds)->CheckTokenIds(0, 30).ok());
  }
}

TEST(Hdf5DatasetTest, ReadsOtherIntegerTypesWrittenByOthers) {
  ScratchDir dir;
  const std::string path = dir / "u8.h5";
  WriteRaw(path, {{"/tokens", H5T_STD_U8LE, {5}, {1, 2, 3, 4, 5}},
                  {"/document_offsets", H5T_STD_I32BE, {3}, {0, 2, 5}}});
  auto ds = Hdf5TokenDataset::Open(path, 256);
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ((*ds)->num_documents(), 2);
  std::vector<int32_t> got(3);
  ASSERT_TRUE((*ds)->ReadTokens(1, 0, 3, got.data()).ok());
  EXPECT_EQ(got, (std::vector<int32_t>{3, 4, 5}));
}

TEST(Hdf5DatasetTest, MalformedFilesAreRejectedWithWhatWasExpected) {
  ScratchDir dir;
  const std::string path = dir / "bad.h5";
  EXPECT_THAT(OpenError(path), AllOf(HasSubstr(path), HasSubstr("no such file")));
  testing::WriteFileBytes(path, "this is not HDF5");
  EXPECT_THAT(OpenError(path), AllOf(HasSubstr(path), HasSubstr("not an HDF5 file")));

  const RawDataset tokens{"/tokens", H5T_STD_U16LE, {4}, {1, 2, 3, 4}};
  struct Case {
    const char* what;
    std::vector<RawDataset> datasets;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {"no tokens",
       {{"/document_offsets", H5T_STD_I64LE, {2}, {0, 4}}},
       {"no dataset /tokens", "/document_offsets"}},
      {"no offsets", {tokens}, {"no dataset /document_offsets"}},
      {"float tokens",
       {{"/tokens", H5T_IEEE_F32LE, {4}, {1, 2, 3, 4}}, {"/document_offsets", H5T_STD_I64LE, {2}, {0, 4}}},
       {"/tokens must hold integers"}},
      {"2-D tokens",
       {{"/tokens", H5T_STD_U16LE, {2, 2}, {1, 2, 3, 4}}, {"/document_offsets", H5T_STD_I64LE, {2}, {0, 4}}},
       {"/tokens must be one-dimensional"}},
      {"empty offsets",
       {tokens, {"/document_offsets", H5T_STD_I64LE, {0}, {}}},
       {"/document_offsets is empty"}},
      {"offsets not from 0",
       {tokens, {"/document_offsets", H5T_STD_I64LE, {2}, {1, 4}}},
       {"/document_offsets[0] is 1"}},
      {"offsets decreasing",
       {tokens, {"/document_offsets", H5T_STD_I64LE, {3}, {0, 3, 2}}},
       {"/document_offsets[2] is 2", "non-decreasing"}},
      {"offsets past the end",
       {tokens, {"/document_offsets", H5T_STD_I64LE, {2}, {0, 5}}},
       {"/document_offsets[1] is 5"}},
      {"offsets short of the end",
       {tokens, {"/document_offsets", H5T_STD_I64LE, {2}, {0, 3}}},
       {"the last of /document_offsets is 3", "length of /tokens (4)"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    WriteRaw(path, c.datasets);
    const std::string message = OpenError(path);
    EXPECT_THAT(message, HasSubstr(path));
    for (const std::string& e : c.expect) EXPECT_THAT(message, HasSubstr(e));
  }
  // A file cut short: HDF5 cannot read it.
  testing::WriteHdf5(path, {{1, 2, 3}});
  const std::string whole = testing::ReadFileBytes(path);
  testing::WriteFileBytes(path, whole.substr(0, whole.size() / 2));
  EXPECT_THAT(OpenError(path), HasSubstr(path));
}

TEST(Hdf5DatasetTest, TokenIdsOutsideTheVocabularyNameFileDocumentAndPosition) {
  ScratchDir dir;
  const std::string path = dir / "v.h5";
  testing::WriteHdf5(path, {{1, 2}, {}, {3, 4, 300, 5}}, IndexedDType::kInt32);
  auto ds = Hdf5TokenDataset::Open(path, 256);
  ASSERT_TRUE(ds.ok()) << ds.status();
  const auto expected = AllOf(HasSubstr(path), HasSubstr("token id 300 at position 2 of document 2"),
                              HasSubstr("model.vocab_size = 256"));
  EXPECT_THAT(std::string((*ds)->CheckTokenIds(0, 3).message()), expected);
  EXPECT_TRUE((*ds)->CheckTokenIds(0, 2).ok());
  std::vector<int32_t> out(4);
  EXPECT_THAT(std::string((*ds)->ReadTokens(2, 0, 4, out.data()).message()), expected);
  testing::WriteHdf5(path, {{1, -7}}, IndexedDType::kInt32);
  auto neg = Hdf5TokenDataset::Open(path, 256);
  ASSERT_TRUE(neg.ok());
  EXPECT_THAT(std::string((*neg)->CheckTokenIds(0, 1).message()),
              HasSubstr("token id -7 at position 1 of document 0"));
}

TEST(Hdf5DatasetTest, WriterRejectsBadInput) {
  ScratchDir dir;
  const std::vector<int32_t> tokens{1, 70000};
  const std::vector<int64_t> offsets{0, 2};
  EXPECT_THAT(std::string(WriteHdf5TokenFile(dir / "a.h5", tokens, offsets, IndexedDType::kUint16).message()),
              HasSubstr("70000 (position 1) does not fit uint16"));
  const std::vector<int64_t> short_offsets{0, 1};
  EXPECT_EQ(WriteHdf5TokenFile(dir / "a.h5", tokens, short_offsets, IndexedDType::kInt32).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteHdf5TokenFile(dir / "a.h5", tokens, offsets, IndexedDType::kInt64).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace fathom
