// The record of a run from the command line (framework/run_log.h): every mesh records the same keys and
// values as one rank (rank 0 writes the log, holding only its own pipeline stage's layers), and a run
// resumed into the same train.log_dir after a crash continues the curve instead of repeating steps.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/common/tensorboard_decoder.h"
#include "tests/launch/run_fathom.h"

namespace {

using fathom::testing::CountOf;
using fathom::testing::MpiRun;
using fathom::testing::RunFathom;
using fathom::testing::RunResult;
namespace fs = std::filesystem;

const std::string kTiny = std::string(FATHOM_SOURCE_DIR) + "/recipes/tiny.yaml";

std::string FreshDir(const std::string& name) {
  return fathom::testing::FreshTempDir("fathom_run_log_cli_" + name);
}

// The lines of metrics.jsonl, parsed.
std::vector<nlohmann::json> Records(const std::string& log_dir) {
  std::ifstream in(log_dir + "/metrics.jsonl");
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

double RelDiff(double a, double b) { return std::abs(a - b) / std::max({std::abs(a), std::abs(b), 1e-30}); }

TEST(RunLogCli, PipelineStagesRecordEveryLayersExpertLoadAsOneRankDoes) {
  const std::string dir = FreshDir("mesh");
  const std::string args = "train " + kTiny + " --set train.steps=3 --set train.seq_len=32";
  // pp 2 x ep 2 has dp 2: its global batch is one rank's with 2 x 2 micro-batches.
  RunResult mesh =
      MpiRun(4, args + " --set parallel.pp=2 --set parallel.ep=2 --set train.log_dir=" + dir + "/mesh");
  ASSERT_EQ(mesh.exit_code, 0) << mesh.output;
  RunResult one = RunFathom(args + " --set parallel.micro_batches=4 --set train.log_dir=" + dir + "/one");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const std::vector<nlohmann::json> a = Records(dir + "/mesh"), b = Records(dir + "/one");
  ASSERT_EQ(a.size(), 4u) << "a start marker and 3 steps";
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 1; i < a.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i));
    ASSERT_TRUE(a[i].contains("expert_load") && b[i].contains("expert_load"));
    // tiny: MoE layers 1 and 2 (stage 0 holds layer 1) and the MTP module's, layer 3 (the last stage's).
    std::vector<std::string> keys_a, keys_b;
    for (const auto& [key, load] : a[i]["expert_load"].items()) keys_a.push_back(key);
    for (const auto& [key, load] : b[i]["expert_load"].items()) keys_b.push_back(key);
    EXPECT_EQ(keys_b, (std::vector<std::string>{"layer_1", "layer_2", "layer_3"}));
    EXPECT_EQ(keys_a, keys_b);
    for (const std::string& key : keys_b) {
      if (!a[i]["expert_load"].contains(key)) continue;
      // Counts of the same routing: equal exactly.
      EXPECT_EQ(a[i]["expert_load"][key]["max"], b[i]["expert_load"][key]["max"]) << key;
      EXPECT_EQ(a[i]["expert_load"][key]["mean"], b[i]["expert_load"][key]["mean"]) << key;
    }
    EXPECT_LE(RelDiff(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()), 1e-5);
  }
  fs::remove_all(dir);
}

TEST(RunLogCli, ResumeIntoTheSameLogDirContinuesTheCurve) {
  const std::string dir = FreshDir("resume");
  const std::string args = "train " + kTiny +
                           " --set train.steps=12 --set optim.warmup_steps=5 --set train.seq_len=32"
                           " --set checkpoint.save_every=5 --set checkpoint.dir=" +
                           dir + "/ckpt --set train.log_dir=" + dir + "/log";
  // The first run dies at the start of step 11, after logging step 10 and saving step 10's checkpoint;
  // step 10's is removed as a crash before its commit would, so the next run resumes from step 5's.
  RunResult crashed =
      fathom::testing::RunShell("FATHOM_TEST_FAULT=0:11 " + std::string(FATHOM_BINARY) + " " + args);
  ASSERT_EQ(crashed.exit_code, 3) << crashed.output;
  fs::remove_all(dir + "/ckpt/step_00000010");
  const std::vector<std::string> first_files = [&] {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(dir + "/log")) files.push_back(e.path().filename());
    return files;
  }();
  RunResult resumed = RunFathom(args);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(
      CountOf(resumed.output, "train.log_dir: resuming after step 5: removed 5 record(s) of steps 6-10"), 1u)
      << resumed.output;

  // metrics.jsonl: each run's marker, then steps that only increase: 1..5 of the first run, 6..12 of the
  // second.
  std::vector<int64_t> steps;
  int markers = 0;
  for (const nlohmann::json& j : Records(dir + "/log")) {
    if (j.contains("event")) {
      ++markers;
      EXPECT_EQ(j["event"], "start");
      EXPECT_EQ(j["step"], markers == 1 ? 0 : 5);
      continue;
    }
    if (!steps.empty()) {
      EXPECT_GT(j["step"].get<int64_t>(), steps.back()) << "steps must increase";
    }
    steps.push_back(j["step"].get<int64_t>());
  }
  EXPECT_EQ(markers, 2);
  EXPECT_EQ(steps.size(), 12u);
  EXPECT_EQ(steps.front(), 1);
  EXPECT_EQ(steps.back(), 12);

  // The new event file starts with TensorBoard's SessionLog START at step 6, then steps 6..12.
  std::string new_file;
  for (const auto& e : fs::directory_iterator(dir + "/log")) {
    const std::string name = e.path().filename();
    if (name.rfind("events.out.tfevents.", 0) == 0 &&
        std::find(first_files.begin(), first_files.end(), name) == first_files.end()) {
      new_file = e.path();
    }
  }
  ASSERT_FALSE(new_file.empty()) << "no new event file";
  const std::vector<fathom::testing::DecodedEvent> events = fathom::testing::ReadEventFile(new_file);
  ASSERT_EQ(events.size(), 2u + 7);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_EQ(events[1].session_status, 1);  // START
  EXPECT_EQ(events[1].step, 6);
  for (size_t i = 2; i < events.size(); ++i) EXPECT_EQ(events[i].step, static_cast<int64_t>(i) + 4);
  fs::remove_all(dir);
}

}  // namespace
