// Helpers the data tests share: a scratch directory, datasets written from token lists, recipes.
#ifndef FATHOM_TESTS_DATA_DATA_TEST_SUPPORT_H_
#define FATHOM_TESTS_DATA_DATA_TEST_SUPPORT_H_

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "data/hdf5_dataset.h"
#include "data/indexed_dataset.h"
#include "framework/config.h"

namespace fathom::testing {

// A fresh directory under /tmp, removed with everything in it when the object dies.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "fathom_data_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

using Documents = std::vector<std::vector<int32_t>>;

// Writes PREFIX.bin/.idx with one sequence per document.
inline void WriteMegatron(const std::string& prefix, const Documents& docs,
                          IndexedDType dtype = IndexedDType::kUint16) {
  absl::StatusOr<std::unique_ptr<IndexedDatasetWriter>> w = IndexedDatasetWriter::Create(prefix, dtype);
  ASSERT_TRUE(w.ok()) << w.status();
  for (const std::vector<int32_t>& d : docs) ASSERT_TRUE((*w)->AddDocument(d).ok());
  ASSERT_TRUE((*w)->Finish().ok());
}

inline void WriteHdf5(const std::string& path, const Documents& docs,
                      IndexedDType dtype = IndexedDType::kUint16) {
  std::vector<int32_t> tokens;
  std::vector<int64_t> offsets{0};
  for (const std::vector<int32_t>& d : docs) {
    tokens.insert(tokens.end(), d.begin(), d.end());
    offsets.push_back(static_cast<int64_t>(tokens.size()));
  }
  absl::Status s = WriteHdf5TokenFile(path, tokens, offsets, dtype);
  ASSERT_TRUE(s.ok()) << s;
}

// `n` documents of random lengths in [min_len, max_len] with ids drawn from [lo, hi].
inline Documents RandomDocuments(std::mt19937_64& rng, int n, int min_len, int max_len, int32_t lo,
                                 int32_t hi) {
  std::uniform_int_distribution<int> len(min_len, max_len);
  std::uniform_int_distribution<int32_t> id(lo, hi);
  Documents docs(static_cast<size_t>(n));
  for (std::vector<int32_t>& d : docs) {
    d.resize(static_cast<size_t>(len(rng)));
    for (int32_t& t : d) t = id(rng);
  }
  return docs;
}

inline std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void WriteFileBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A small valid recipe (recipes/tiny.yaml: a recipe must state its model) with `overrides` applied; fails
// the test when it does not parse.
inline Recipe MakeRecipe(const std::vector<std::string>& overrides) {
  absl::StatusOr<Recipe> r = LoadRecipe(FATHOM_SOURCE_DIR "/recipes/tiny.yaml", overrides);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : Recipe{};
}

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_DATA_DATA_TEST_SUPPORT_H_
