// A benchmark, not a test (DISABLED_, so ctest skips it): writes a multi-GB Megatron dataset under /tmp,
// opens it and prints how long opening takes and how much the process' memory grows, then the cost of
// the token scan (data.verify_tokens) and of an epoch's first window, and deletes the files.
//
//   FATHOM_OPEN_BENCH_GB=4 ./build-cpu/data_tests --gtest_also_run_disabled_tests
//       --gtest_filter='*OpenMultiGigabyteDataset*'     (one command line)
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "data/indexed_dataset.h"
#include "data/token_loader.h"
#include "tests/data/data_test_support.h"

namespace fathom {
namespace {

// VmRSS, RssAnon and RssFile of this process, in MiB.
struct Rss {
  double total = 0, anon = 0, file = 0;
};
Rss ReadRss() {
  Rss r;
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    auto value = [&line] { return std::strtod(line.c_str() + line.find(':') + 1, nullptr) / 1024.0; };
    if (line.rfind("VmRSS:", 0) == 0) r.total = value();
    if (line.rfind("RssAnon:", 0) == 0) r.anon = value();
    if (line.rfind("RssFile:", 0) == 0) r.file = value();
  }
  return r;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

TEST(OpenBench, DISABLED_OpenMultiGigabyteDataset) {
  const char* gb_env = std::getenv("FATHOM_OPEN_BENCH_GB");
  const double gb = gb_env != nullptr ? std::atof(gb_env) : 4.0;
  const int64_t total_tokens = static_cast<int64_t>(gb * (1 << 30) / 2);  // uint16
  const std::string dir = "/tmp/fathom_open_bench_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string prefix = dir + "/web";

  // Documents of 1..8192 tokens (mean ~4K, web-document sized), tokens from a reused random buffer.
  std::mt19937_64 rng(42);
  std::vector<int32_t> pool(1 << 16);
  for (int32_t& t : pool) t = static_cast<int32_t>(rng() % 50000);
  auto start = std::chrono::steady_clock::now();
  {
    auto w = IndexedDatasetWriter::Create(prefix, IndexedDType::kUint16);
    ASSERT_TRUE(w.ok()) << w.status();
    for (int64_t written = 0; written < total_tokens;) {
      const int64_t n = std::min<int64_t>(1 + static_cast<int64_t>(rng() % 8192), total_tokens - written);
      const size_t at = rng() % (pool.size() - 8192);
      ASSERT_TRUE((*w)->AddDocument(std::span<const int32_t>(pool.data() + at, static_cast<size_t>(n))).ok());
      written += n;
    }
    ASSERT_TRUE((*w)->Finish().ok());
  }
  const double write_s = Seconds(start);
  const double bin_gib = static_cast<double>(std::filesystem::file_size(prefix + ".bin")) / (1 << 30);
  const double idx_mib = static_cast<double>(std::filesystem::file_size(prefix + ".idx")) / (1 << 20);

  const Rss before = ReadRss();
  start = std::chrono::steady_clock::now();
  auto ds = IndexedDataset::Open(prefix, 50000);
  const double open_s = Seconds(start);
  ASSERT_TRUE(ds.ok()) << ds.status();
  const Rss after_open = ReadRss();
  const int64_t docs = (*ds)->num_documents();

  Recipe recipe =
      testing::MakeRecipe({"data.source=megatron", "data.path=" + prefix, "model.vocab_size=50000",
                           "train.seq_len=4096", "data.verify_tokens=false"});
  start = std::chrono::steady_clock::now();
  auto loader = OpenTokenLoader(recipe, DataSplit::kTrain, 64);
  const double loader_s = Seconds(start);
  ASSERT_TRUE(loader.ok()) << loader.status();
  const Rss after_loader = ReadRss();
  std::vector<int32_t> in(64 * 4096), labels(64 * 4096);
  start = std::chrono::steady_clock::now();
  ASSERT_TRUE((*loader)->Fill(0, 0, 64, in.data(), labels.data()).ok());
  const double first_fill_s = Seconds(start);
  start = std::chrono::steady_clock::now();
  ASSERT_TRUE((*loader)->Fill(1, 0, 64, in.data(), labels.data()).ok());
  const double next_fill_s = Seconds(start);
  const Rss after_fill = ReadRss();
  start = std::chrono::steady_clock::now();
  ASSERT_TRUE((*ds)->CheckTokenIds(0, docs).ok());
  const double scan_s = Seconds(start);
  const Rss after_scan = ReadRss();

  std::printf("\n%.2f GiB .bin (%ld documents, %.1f MiB .idx), written in %.1f s\n", bin_gib,
              static_cast<long>(docs), idx_mib, write_s);
  std::printf("%-44s %10s %12s %12s %12s\n", "step", "seconds", "RSS MiB", "anon MiB", "file MiB");
  auto row = [](const char* what, double s, const Rss& r, const Rss& base) {
    std::printf("%-44s %10.4f %+12.1f %+12.1f %+12.1f\n", what, s, r.total - base.total, r.anon - base.anon,
                r.file - base.file);
  };
  row("IndexedDataset::Open (mmap + structure)", open_s, after_open, before);
  row("OpenTokenLoader, verify_tokens false", loader_s, after_loader, before);
  row("first Fill (64 x 4096: epoch orders built)", first_fill_s, after_fill, before);
  row("next Fill (64 x 4096)", next_fill_s, after_fill, before);
  row("CheckTokenIds, every token (pread)", scan_s, after_scan, before);
  std::printf("token scan: %.2f GB/s (page cache warm after writing)\n", bin_gib * (1 << 30) / 1e9 / scan_s);
  ds->reset();
  loader->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fathom
