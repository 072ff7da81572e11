// `fathom train` with the two-chunk schedules and the trace of the real run, the way a user runs them
// (issue 15): under mpirun, dualpipe and dualpipev log the same losses as 1f1b on the same mesh; the trace
// of chosen steps has each rank's lanes, the instructions of its validated list in order, and the
// all-to-alls of an FB pair inside the pair's compute span; a trace path that cannot be written is refused
// before training, with exit code 2.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "parallel/schedule.h"
#include "tests/launch/run_fathom.h"

namespace {

using fathom::testing::RunResult;

// `timeout` bounds a hang: a job that does not end by itself in 90 s fails the test (exit 124).
RunResult MpiRun(int np, const std::string& args) {
  return fathom::testing::RunShell(
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 90 mpirun --oversubscribe -np " +
      std::to_string(np) + " " + FATHOM_BINARY + " " + args);
}

const std::string kTiny = std::string(FATHOM_SOURCE_DIR) + "/recipes/tiny.yaml";
// The issue's mesh: pp 2 x ep 2 on four ranks, four micro-batches, four layers.
const std::string kMesh =
    "train " + kTiny +
    " --set parallel.pp=2 --set parallel.ep=2 --set parallel.micro_batches=4 --set model.num_hidden_layers=4"
    " --set train.steps=4";

struct LoggedStep {
  double lm, mtp, bal, loss, gnorm;
};

// The step lines of a run: "step     1/4 | lm 5.5509 | mtp 5.5521 | bal 1.0245 | loss 7.2169 | ... | gnorm".
std::vector<LoggedStep> LoggedSteps(const std::string& output) {
  static const std::regex line(
      R"(step +\d+/\d+ \| lm ([0-9.]+) \| mtp ([0-9.]+) \| bal ([0-9.]+) \| loss ([0-9.]+) \| lr [^|]+\| gnorm ([0-9.]+))");
  std::vector<LoggedStep> steps;
  for (auto it = std::sregex_iterator(output.begin(), output.end(), line); it != std::sregex_iterator();
       ++it) {
    steps.push_back({std::stod((*it)[1]), std::stod((*it)[2]), std::stod((*it)[3]), std::stod((*it)[4]),
                     std::stod((*it)[5])});
  }
  return steps;
}

TEST(OverlapCli, DualPipeAndDualPipeVLogTheLossesOf1F1B) {
  RunResult reference = MpiRun(4, kMesh + " --set parallel.schedule=1f1b");
  ASSERT_EQ(reference.exit_code, 0) << reference.output;
  const std::vector<LoggedStep> want = LoggedSteps(reference.output);
  ASSERT_EQ(want.size(), 4u) << reference.output;
  for (const char* schedule : {"dualpipe", "dualpipev"}) {
    RunResult r = MpiRun(4, kMesh + " --set parallel.schedule=" + schedule);
    ASSERT_EQ(r.exit_code, 0) << schedule << ":\n" << r.output;
    const std::vector<LoggedStep> got = LoggedSteps(r.output);
    ASSERT_EQ(got.size(), want.size()) << r.output;
    // The log prints 4 decimals. The equivalence tolerance (1e-5 relative on values of ~1 to ~7, i.e.
    // < 1e-4 absolute) can flip the last printed digit, never more: one unit of it, plus the print's own
    // rounding.
    const double tol = 1.01e-4;
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i].lm, want[i].lm, tol) << schedule << " step " << i + 1;
      EXPECT_NEAR(got[i].mtp, want[i].mtp, tol) << schedule << " step " << i + 1;
      EXPECT_NEAR(got[i].bal, want[i].bal, tol) << schedule << " step " << i + 1;
      EXPECT_NEAR(got[i].loss, want[i].loss, tol) << schedule << " step " << i + 1;
      EXPECT_NEAR(got[i].gnorm, want[i].gnorm, tol) << schedule << " step " << i + 1;
    }
    // Training moved the model (the comparison is not between two untrained runs).
    EXPECT_NE(got.front().lm, got.back().lm) << r.output;
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(OverlapCli, TraceOfDualPipeStepsHasLanesProgramAndOverlappedAllToAlls) {
  const std::string dir = ::testing::TempDir() + "/overlap_cli_trace";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/dualpipe.json";
  std::filesystem::remove(path);
  RunResult r = MpiRun(4, kMesh + " --set parallel.schedule=dualpipe --set train.trace=" + path +
                              " --set 'train.trace_steps=[2, 3]'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  nlohmann::json doc = nlohmann::json::parse(ReadFile(path));
  ASSERT_TRUE(doc.contains("traceEvents")) << doc.dump().substr(0, 500);
  EXPECT_EQ(doc["otherData"]["schedule"], "dualpipe");
  EXPECT_EQ(doc["otherData"]["steps"], nlohmann::json({2, 3}));

  const fathom::Schedule schedule = fathom::ScheduleDualPipe(2, 4);
  std::map<int, std::map<int, std::string>> lanes;                    // pid -> tid -> name
  std::map<int, std::map<int, std::vector<nlohmann::json>>> compute;  // pid -> step -> instruction spans
  std::map<int, std::vector<nlohmann::json>> all_to_all;              // pid -> spans
  for (const nlohmann::json& e : doc["traceEvents"]) {
    const int pid = e["pid"];
    if (e["ph"] == "M" && e["name"] == "thread_name") lanes[pid][e["tid"]] = e["args"]["name"];
    if (e["ph"] != "X") continue;
    EXPECT_GE(e["dur"].get<double>(), 0.0);
    if (e["tid"] == 0 && e["args"].contains("micro_batch")) compute[pid][e["args"]["step"]].push_back(e);
    if (e["tid"] == 1) all_to_all[pid].push_back(e);
  }
  ASSERT_EQ(lanes.size(), 4u) << "one process per rank";
  for (int pid = 0; pid < 4; ++pid) {
    EXPECT_EQ(lanes[pid][0], "compute");
    EXPECT_EQ(lanes[pid][1], "all-to-all");
    EXPECT_EQ(lanes[pid][2], "data parallel");
    EXPECT_EQ(lanes[pid][3], "pipeline");
    // Ranks 0, 1 are pipeline rank 0 (ep 0, 1); ranks 2, 3 pipeline rank 1. Each traced step's
    // instruction spans, in time order, are the validated list of the rank's pipeline position.
    const std::vector<fathom::Instruction>& program = schedule.ranks[pid / 2];
    for (int step : {2, 3}) {
      std::vector<nlohmann::json>& spans = compute[pid][step];
      std::sort(spans.begin(), spans.end(),
                [](const nlohmann::json& a, const nlohmann::json& b) { return a["ts"] < b["ts"]; });
      ASSERT_EQ(spans.size(), program.size()) << "rank " << pid << " step " << step;
      for (size_t i = 0; i < program.size(); ++i) {
        EXPECT_EQ(spans[i]["name"], fathom::TraceName(program[i])) << "rank " << pid << " step " << step;
      }
    }
    // Every FB pair's all-to-alls (both halves': the pass names both micro-batches) start and end inside
    // the pair's compute span; and the pair has some.
    int fb_pairs = 0;
    for (int step : {2, 3}) {
      for (const nlohmann::json& span : compute[pid][step]) {
        const std::string name = span["name"];
        if (name.rfind("FB ", 0) != 0) continue;
        ++fb_pairs;
        const double begin = span["ts"], end = begin + span["dur"].get<double>();
        std::map<std::string, int> halves;
        for (const nlohmann::json& a : all_to_all[pid]) {
          if (a["args"]["instruction"] != name || a["args"]["step"] != step) continue;
          ++halves[a["args"]["pass"]];
          EXPECT_GE(a["ts"].get<double>(), begin) << a.dump() << " outside " << span.dump();
          EXPECT_LE(a["ts"].get<double>() + a["dur"].get<double>(), end)
              << a.dump() << " outside " << span.dump();
        }
        // tiny.yaml's layers 1-3 and the MTP layer are MoE: each half moves rows both ways.
        EXPECT_EQ(halves.size(), 2u) << "rank " << pid << " " << name;
        for (const auto& [pass, n] : halves) EXPECT_GE(n, 2) << pass;
      }
    }
    EXPECT_GT(fb_pairs, 0) << "rank " << pid;
  }
}

TEST(OverlapCli, TracePathInAMissingDirectoryIsRefusedBeforeTraining) {
  RunResult r = MpiRun(2, "train " + kTiny + " --set parallel.pp=2 --set train.steps=2 --set train.trace=" +
                              ::testing::TempDir() + "/no/such/dir/trace.json");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.trace"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("step     1/2"), std::string::npos) << "nothing may train:\n" << r.output;
}

TEST(OverlapCli, TwoMicroBatchOverlapNeedsOneStage) {
  RunResult r = MpiRun(2, "train " + kTiny + " --set parallel.pp=2 --set parallel.overlap=two_micro_batch");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("parallel.overlap two_micro_batch"), std::string::npos) << r.output;
}

}  // namespace
