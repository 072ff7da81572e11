// The record of a run: metrics.jsonl lines and TensorBoard tags carry the same values under the
// documented names, a reopened log appends, bad log directories are refused; progress and ETA lines.
#include "framework/run_log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "tests/common/gradcheck.h"
#include "tests/launch/run_fathom.h"

namespace fathom {
namespace {

using ::testing::HasSubstr;
using testing::TestSeed;

std::vector<std::string> Lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Flattens a JSON line the way tests/data/check_tensorboard.py does: nested keys joined by '/', step
// and wall_time left out.
void Flatten(const nlohmann::json& j, const std::string& prefix, std::map<std::string, double>* out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "/" + it.key();
    if (prefix.empty() && (it.key() == "step" || it.key() == "wall_time")) continue;
    if (it->is_object()) {
      Flatten(*it, key, out);
    } else {
      (*out)[key] = it->is_null() ? std::nan("") : it->get<double>();
    }
  }
}

StepRecord RandomRecord(std::mt19937_64& rng, int64_t step) {
  std::uniform_real_distribution<double> u(0.0, 10.0);
  StepRecord r;
  r.step = step;
  r.scalars = {
      {"loss", u(rng)}, {"lr", u(rng) * 1e-4}, {"grad_norm", u(rng)}, {"tokens_per_s", u(rng) * 1e5}};
  r.phase_seconds = {{"attention", u(rng)}, {"experts", u(rng)}};
  r.expert_load = {{1, std::round(u(rng) * 100), u(rng) * 10}, {2, std::round(u(rng) * 100), u(rng) * 10}};
  return r;
}

TEST(RunLogTest, JsonLinesAndTensorBoardTagsAgree) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("fathom_runlog_" + std::to_string(rng())) / "nested")
          .string();
  std::vector<StepRecord> records;
  {
    absl::StatusOr<std::unique_ptr<RunLog>> log = RunLog::Open(dir);  // creates the directories
    ASSERT_TRUE(log.ok()) << log.status();
    for (int64_t step = 1; step <= 5; ++step) {
      records.push_back(RandomRecord(rng, step));
      ASSERT_TRUE((*log)->Log(records.back()).ok());
    }
    StepRecord eval;
    eval.step = 5;
    eval.scalars = {{"valid_loss", 2.5}, {"valid_perplexity", std::exp(2.5)}, {"diverged", std::nan("")}};
    records.push_back(eval);
    ASSERT_TRUE((*log)->Log(eval).ok());
    EXPECT_EQ((*log)->metrics_path(), dir + "/metrics.jsonl");
    ASSERT_TRUE((*log)->Close().ok());
  }
  std::vector<std::string> lines = Lines(dir + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), records.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    const nlohmann::json j = nlohmann::json::parse(lines[i]);
    EXPECT_EQ(j["step"], records[i].step);
    EXPECT_GT(j["wall_time"].get<double>(), 1.6e9);
    std::map<std::string, double> flat;
    Flatten(j, "", &flat);
    const std::vector<Scalar> tags = TensorBoardTags(records[i]);
    ASSERT_EQ(flat.size(), tags.size()) << lines[i];
    for (const auto& [tag, value] : tags) {
      ASSERT_TRUE(flat.count(tag)) << tag << " missing from " << lines[i];
      if (std::isnan(value)) {
        EXPECT_TRUE(std::isnan(flat[tag])) << tag;  // JSON null
      } else {
        EXPECT_EQ(flat[tag], value) << tag;  // JSON keeps doubles exactly (shortest round-trip form)
      }
    }
  }
  EXPECT_THAT(lines[0], HasSubstr("\"expert_load\":{\"layer_1\":{\"max\":"));
  EXPECT_EQ(TensorBoardTags(records[0])[4].first, "phase_seconds/attention");
  EXPECT_EQ(TensorBoardTags(records[0])[6].first, "expert_load/layer_1/max");

  // Reopening (a resumed run) appends to metrics.jsonl and starts a new event file.
  {
    absl::StatusOr<std::unique_ptr<RunLog>> log = RunLog::Open(dir);
    ASSERT_TRUE(log.ok()) << log.status();
    ASSERT_TRUE((*log)->Log(RandomRecord(rng, 6)).ok());
  }
  EXPECT_EQ(Lines(dir + "/metrics.jsonl").size(), records.size() + 1);
  int event_files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    event_files += e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  }
  EXPECT_EQ(event_files, 2);  // even when both opened within the same second
  std::filesystem::remove_all(std::filesystem::path(dir).parent_path());
}

// TensorBoard's own reader (tests/data/check_tensorboard.py, EventAccumulator) returns the scalars of
// metrics.jsonl. Runs where python3 has the tensorboard package (the GPU machine).
TEST(RunLogTest, TensorBoardReadsWhatMetricsJsonlSays) {
  if (testing::RunShell("python3 -c 'import tensorboard'").exit_code != 0) {
    GTEST_SKIP() << "python3 cannot import tensorboard here; the GPU machine has it";
  }
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("fathom_tb_check_" + std::to_string(rng()))).string();
  {
    absl::StatusOr<std::unique_ptr<RunLog>> log = RunLog::Open(dir);
    ASSERT_TRUE(log.ok()) << log.status();
    for (int64_t step = 1; step <= 30; ++step) ASSERT_TRUE((*log)->Log(RandomRecord(rng, step)).ok());
  }
  const testing::RunResult r = testing::RunShell("python3 " + std::string(FATHOM_SOURCE_DIR) +
                                                 "/tests/data/check_tensorboard.py " + dir);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("OK: 10 tags, 300 scalars"));
  std::filesystem::remove_all(dir);
}

TEST(RunLogTest, RefusesWhatCannotBeALogDirectory) {
  const std::string base =
      (std::filesystem::temp_directory_path() / ("fathom_runlog_bad_" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(base);
  std::ofstream(base + "/file") << "x";
  absl::StatusOr<std::unique_ptr<RunLog>> on_file = RunLog::Open(base + "/file");
  ASSERT_FALSE(on_file.ok());
  EXPECT_THAT(std::string(on_file.status().message()),
              HasSubstr("train.log_dir '" + base + "/file' is not a directory"));
  std::filesystem::create_directories(base + "/d/metrics.jsonl");  // a directory where the log should be
  absl::StatusOr<std::unique_ptr<RunLog>> shadowed = RunLog::Open(base + "/d");
  ASSERT_FALSE(shadowed.ok());
  EXPECT_THAT(std::string(shadowed.status().message()), HasSubstr("is a directory"));
  std::filesystem::remove_all(base);
}

TEST(RunLogTest, ProgressAndEta) {
  EXPECT_EQ(FormatDuration(45), "45s");
  EXPECT_EQ(FormatDuration(245), "4m05s");
  EXPECT_EQ(FormatDuration(3 * 3600 + 12 * 60 + 7), "3h12m");
  EXPECT_EQ(FormatDuration(2 * 86400 + 4 * 3600 + 59), "2d04h");
  EXPECT_EQ(FormatProgress(0, 10000, 0, 0), "step 0/10000 (0%)");
  // 1200 of 10000 done, the last 200 in 262.5 s: 8800 left at 1.3125 s each is 3h12m30s.
  EXPECT_EQ(FormatProgress(1200, 10000, 200, 262.5), "step 1200/10000 (12%), 3h12m left");
  EXPECT_EQ(FormatProgress(10000, 10000, 50, 10), "step 10000/10000 (100%)");
}

}  // namespace
}  // namespace fathom
