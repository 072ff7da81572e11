// The record of a run: metrics.jsonl lines and TensorBoard tags carry the same values under the
// documented names, a reopened log appends after a start marker, a resume removes the records past its
// checkpoint (and TensorBoard's with a SessionLog START) while a fresh run removes nothing, bad log
// directories are refused; progress and ETA lines.
#include "framework/run_log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "tests/common/gradcheck.h"
#include "tests/common/tensorboard_decoder.h"
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
  // The run's start marker, then its records.
  ASSERT_EQ(lines.size(), records.size() + 1);
  EXPECT_THAT(lines[0], ::testing::MatchesRegex(
                            R"(\{"event":"start","step":0,"wall_time":[0-9.e+]+,"resumed_from":null\})"));
  lines.erase(lines.begin());
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

  // Reopening (a second fresh run) appends to metrics.jsonl, its own marker first, and starts a new event
  // file.
  {
    absl::StatusOr<std::unique_ptr<RunLog>> log = RunLog::Open(dir);
    ASSERT_TRUE(log.ok()) << log.status();
    ASSERT_TRUE((*log)->Log(RandomRecord(rng, 1)).ok());
  }
  EXPECT_EQ(Lines(dir + "/metrics.jsonl").size(), records.size() + 3);
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

// A log directory of its own for one test.
std::string FreshLogDir(const std::string& name) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("fathom_runlog_" + name + "_" + std::to_string(::getpid())))
          .string();
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The steps of metrics.jsonl's lines: a metric record's step, or "S>" for a start marker at step S
// ("?" for a line that is neither).
std::vector<std::string> StepsOf(const std::string& path) {
  std::vector<std::string> steps;
  for (const std::string& line : Lines(path)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object() || !j.contains("step")) {
      steps.push_back("?");
    } else {
      steps.push_back(std::to_string(j["step"].get<int64_t>()) + (j.contains("event") ? ">" : ""));
    }
  }
  return steps;
}

// Logs steps first..last as records of one run.
void LogSteps(RunLog& log, int64_t first, int64_t last) {
  for (int64_t step = first; step <= last; ++step) {
    StepRecord r;
    r.step = step;
    r.scalars = {{"loss", 1.0 / static_cast<double>(step)}};
    ASSERT_TRUE(log.Log(r).ok());
  }
}

std::vector<std::string> EventFiles(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// A crash after step 10, a resume from the checkpoint of step 5 into the same log_dir: the records of
// steps 6-10 the first run wrote are removed (in the last run only: an earlier fresh run's records stay),
// the steps of the run increase, and the new event file starts with TensorBoard's SessionLog START at
// step 6.
TEST(RunLogTest, ResumeRemovesTheAbandonedContinuationAndStartsTensorBoardThere) {
  const std::string dir = FreshLogDir("resume");
  const std::string metrics = dir + "/metrics.jsonl";
  {
    absl::StatusOr<std::unique_ptr<RunLog>> earlier = RunLog::Open(dir);  // an unrelated earlier run
    ASSERT_TRUE(earlier.ok()) << earlier.status();
    LogSteps(**earlier, 1, 12);
  }
  {
    absl::StatusOr<std::unique_ptr<RunLog>> crashed = RunLog::Open(dir);
    ASSERT_TRUE(crashed.ok()) << crashed.status();
    EXPECT_THAT((*crashed)->notice(), HasSubstr("already holds 12 record(s) of earlier runs"));
    LogSteps(**crashed, 1, 10);
  }
  const std::string before = ReadAll(metrics);
  {
    absl::StatusOr<std::unique_ptr<RunLog>> resumed = RunLog::Open(dir, {5, "ckpt/step_00000005"});
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    EXPECT_EQ((*resumed)->notice(),
              "train.log_dir: resuming after step 5: removed 5 record(s) of steps 6-10 from " + metrics +
                  ", written past that checkpoint by the run that did not finish (TensorBoard drops them "
                  "too)");
    LogSteps(**resumed, 6, 8);
  }
  std::vector<std::string> expected = {"0>"};
  for (int s = 1; s <= 12; ++s) expected.push_back(std::to_string(s));
  for (const char* s : {"0>", "1", "2", "3", "4", "5", "5>", "6", "7", "8"}) expected.push_back(s);
  EXPECT_EQ(StepsOf(metrics), expected);
  // What is kept is kept byte for byte: the file up to the crashed run's step 5.
  const size_t kept = before.find("{\"step\":6,", before.rfind("\"event\":\"start\""));
  ASSERT_NE(kept, std::string::npos);
  EXPECT_EQ(ReadAll(metrics).substr(0, kept), before.substr(0, kept));
  EXPECT_THAT(Lines(metrics)[19], HasSubstr(R"("event":"start","step":5,)"));
  EXPECT_THAT(Lines(metrics)[19], HasSubstr(R"("resumed_from":"ckpt/step_00000005"})"));

  // Resumed again from the same checkpoint: the second continuation and its marker go too.
  {
    absl::StatusOr<std::unique_ptr<RunLog>> again = RunLog::Open(dir, {5, "ckpt/step_00000005"});
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_THAT((*again)->notice(), HasSubstr("removed 3 record(s) of steps 6-8"));
  }
  expected.resize(expected.size() - 4);
  expected.push_back("5>");
  EXPECT_EQ(StepsOf(metrics), expected);

  // The event files: the fresh runs' have no SessionLog, each resumed one starts at step 6.
  const std::vector<std::string> files = EventFiles(dir);
  ASSERT_EQ(files.size(), 4u);
  int starts = 0;
  for (const std::string& file : files) {
    const std::vector<testing::DecodedEvent> events = testing::ReadEventFile(file);
    ASSERT_GE(events.size(), 1u) << file;
    EXPECT_EQ(events[0].file_version, "brain.Event:2") << file;
    if (events.size() >= 2 && events[1].session_status >= 0) {
      ++starts;
      EXPECT_EQ(events[1].session_status, 1) << file;  // START
      EXPECT_EQ(events[1].step, 6) << file;
      for (size_t i = 2; i < events.size(); ++i) EXPECT_GE(events[i].step, 6) << file;
    }
    for (size_t i = 2; i < events.size(); ++i) EXPECT_EQ(events[i].session_status, -1) << file;
  }
  EXPECT_EQ(starts, 2);
  std::filesystem::remove_all(dir);
}

// A fresh run never removes records, whatever steps they have: it says so and starts after a marker. A
// file written before markers existed (two runs appended, no boundary) and a torn last line are handled
// without guessing beyond the last place the steps went back.
TEST(RunLogTest, FreshRunKeepsEarlierRecordsAndOldFilesAreReadAsTheyAre) {
  const std::string dir = FreshLogDir("fresh");
  const std::string metrics = dir + "/metrics.jsonl";
  std::string old;
  for (int s = 1; s <= 8; ++s) old += "{\"step\":" + std::to_string(s) + ",\"loss\":1}\n";
  for (int s = 1; s <= 6; ++s) old += "{\"step\":" + std::to_string(s) + ",\"loss\":2}\n";
  old += "{\"step\":7,\"lo";  // torn by a crash mid-write
  std::ofstream(metrics, std::ios::binary) << old;
  {
    absl::StatusOr<std::unique_ptr<RunLog>> fresh = RunLog::Open(dir);
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    EXPECT_EQ((*fresh)->notice(), "train.log_dir: " + metrics +
                                      " already holds 14 record(s) of earlier runs (the last of step 6); "
                                      "they are kept, and this fresh run's records follow its start marker");
    LogSteps(**fresh, 1, 2);
  }
  const std::string after = ReadAll(metrics);
  EXPECT_EQ(after.substr(0, old.size()), old);  // nothing removed, nothing changed
  EXPECT_EQ(after[old.size()], '\n');           // the torn line ends before the marker
  EXPECT_EQ(Lines(metrics).size(), 14u + 1 + 1 + 2);
  EXPECT_EQ(EventFiles(dir).size(), 1u);
  EXPECT_EQ(testing::ReadEventFile(EventFiles(dir)[0])[1].session_status, -1);  // no START: not a resume
  std::filesystem::remove_all(dir);

  // Without markers, a resume at step 3 looks only at the last run (from where the steps went back).
  const std::string legacy = FreshLogDir("legacy");
  std::ofstream(legacy + "/metrics.jsonl", std::ios::binary) << old.substr(0, old.rfind('\n') + 1);
  {
    absl::StatusOr<std::unique_ptr<RunLog>> resumed = RunLog::Open(legacy, {3, "ckpt/step_00000003"});
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    EXPECT_THAT((*resumed)->notice(), HasSubstr("removed 3 record(s) of steps 4-6"));
  }
  std::vector<std::string> expected;
  for (int s = 1; s <= 8; ++s) expected.push_back(std::to_string(s));
  for (const char* s : {"1", "2", "3", "3>"}) expected.push_back(s);
  EXPECT_EQ(StepsOf(legacy + "/metrics.jsonl"), expected);
  std::filesystem::remove_all(legacy);
}

TEST(RunLogTest, RefusesWhatCannotBeALogDirectory) {
  const std::string base =
      (std::filesystem::temp_directory_path() / ("fathom_runlog_bad_" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(base);
  std::ofstream(base + "/file") << "x";
  absl::StatusOr<std::unique_ptr<RunLog>> on_file = RunLog::Open(base + "/file");
  ASSERT_FALSE(on_file.ok());
  EXPECT_THAT(std::string(on_file.status().message()),
              HasSubstr("train.log_dir " + base + "/file is not a directory"));
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
