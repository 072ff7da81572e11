// A rank killed in the middle of a save (FATHOM_TEST_FAULT="rank:step:save") leaves the previous
// checkpoint complete and loadable, and the next run resumes from it and cleans the leftover up.
//
// One binary, two roles (like fault_probe.cc). `checkpoint_probe --probe DIR LAST [async]` is an MPI
// program: it resumes from the newest complete checkpoint in DIR if there is one (checking that every value
// is the one saved), then saves steps up to LAST, every step's state a function of the step. Run without
// --probe it is a GoogleTest binary (not under mpirun) whose tests start such jobs with a fault, inspect
// the directory, check the surviving checkpoint's contents, and run the job again.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpoint_writer.h"
#include "checkpoint/model_config_json.h"
#include "parallel/fault.h"
#include "parallel/mpi_communicator.h"
#include "tests/checkpoint/checkpoint_test_support.h"
#include "tests/launch/run_fathom.h"

namespace fathom {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int kProbeRanks = 3;

// Elements of the whole test model's values that differ from the state of `step` (0 when all match).
absl::StatusOr<int64_t> ValueMismatches(const std::string& checkpoint, int64_t step) {
  Model model(testing::CheckpointTestModel(), LossConfig{});
  model.Finalize(DType::kF32, 1);
  const ParamTable& t = model.params();
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(checkpoint);
  if (!reader.ok()) return reader.status();
  std::vector<TensorPiece> pieces = TablePieces(t, 0, t.numel());
  Tensor values = Tensor::Zeros({t.numel()}, DType::kF32);
  if (absl::Status s = (*reader)->ReadPieces(kKindValue, pieces, values, 0); !s.ok()) return s;
  return testing::CountStateMismatches(values, 0, pieces, static_cast<uint64_t>(step), kKindValue,
                                       DType::kF32);
}

// ---- the probe: runs under mpirun -----------------------------------------------------------------------

int RunProbe(const std::string& dir, int64_t last_step, bool async) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  const int r = world->rank(), n = world->size();
  CheckpointConfig cfg;
  cfg.dir = dir;
  absl::StatusOr<std::optional<std::string>> resume = ResolveResumeOnAllRanks(cfg, *world);
  if (!resume.ok()) {
    std::fprintf(stderr, "[rank %d] resume: %s\n", r, resume.status().ToString().c_str());
    return 1;
  }
  int64_t first = 1;
  if (resume->has_value()) {
    absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(**resume);
    if (!reader.ok()) return 1;
    const int64_t step = (*reader)->step();
    absl::StatusOr<int64_t> bad = ValueMismatches(**resume, step);
    if (!bad.ok() || *bad != 0) {
      std::fprintf(stderr, "[rank %d] the checkpoint of step %lld does not hold its values\n", r,
                   static_cast<long long>(step));
      return 1;
    }
    if (r == 0)
      std::printf("resumed from %s (step %lld), every value as saved\n", resume->value().c_str(),
                  static_cast<long long>(step));
    first = step + 1;
  }
  // Data parallelism over every rank: each writes an equal flat shard of the whole table.
  Model model(testing::CheckpointTestModel(), LossConfig{});
  model.Finalize(DType::kF32, 1);
  const ParamTable& t = model.params();
  const int64_t chunk = (t.numel() + n - 1) / n;
  const int64_t b = std::min(t.numel(), r * chunk), e = std::min(t.numel(), b + chunk);
  CheckpointWriter writer(*world, dir, /*keep_last=*/0);
  for (int64_t step = first; step <= last_step; ++step) {
    std::vector<ShardSource> sources = testing::MakeSources(t, b, e, static_cast<uint64_t>(step));
    CheckpointMetadata meta;
    meta.step = step;
    meta.model = ModelConfigToJson(testing::CheckpointTestModel());
    absl::Status s;
    if (async) {
      s = writer.StartAsync(sources, meta);
      if (s.ok()) s = writer.Finish().status();
    } else {
      s = writer.Save(sources, meta).status();
    }
    if (!s.ok()) {
      std::fprintf(stderr, "[rank %d] save of step %lld: %s\n", r, static_cast<long long>(step),
                   s.ToString().c_str());
      return 1;
    }
    if (r == 0) std::printf("saved step %lld\n", static_cast<long long>(step));
  }
  return 0;
}

// ---- the driver: GoogleTest, not under mpirun ------------------------------------------------------------

std::string SelfPath() {
  char buf[4096];
  ssize_t len = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return len > 0 ? std::string(buf, static_cast<size_t>(len)) : std::string();
}

// The probe job on kProbeRanks ranks; `fault` (may be empty) becomes FATHOM_TEST_FAULT. A job still
// running after 90 s (a hang: a healthy one takes a few seconds) is killed and reads as exit code 124.
testing::RunResult RunJob(const std::string& dir, int64_t last, bool async, const std::string& fault) {
  std::ostringstream cmd;
  cmd << "timeout --kill-after=5 90 " << FATHOM_MPIRUN << " --oversubscribe --allow-run-as-root -np "
      << kProbeRanks;
  if (!fault.empty()) cmd << " -x FATHOM_TEST_FAULT=" << fault;
  cmd << " " << SelfPath() << " --probe " << dir << " " << last << (async ? " async" : "");
  return testing::RunShell(cmd.str());
}

class CheckpointKillTest : public testing::TempDirTest,
                           public ::testing::WithParamInterface<std::tuple<bool, int>> {};

TEST_P(CheckpointKillTest, KillMidSaveKeepsThePreviousCheckpointAndTheNextRunResumesFromIt) {
  const auto [async, victim] = GetParam();
  const std::string dir = Path("ckpt");
  // Step 1 commits; rank `victim` dies while writing step 2.
  testing::RunResult killed = RunJob(dir, 3, async, std::to_string(victim) + ":2:save");
  std::printf("killed job: exit %d after %.1f s\n", killed.exit_code, killed.seconds);
  EXPECT_NE(killed.exit_code, 0) << killed.output;
  EXPECT_NE(killed.exit_code, 124) << "the job hung:\n" << killed.output;
  EXPECT_THAT(killed.output, HasSubstr("[rank " + std::to_string(victim) +
                                       "] FATHOM_TEST_FAULT: injected failure at step 2"));
  EXPECT_THAT(killed.output, HasSubstr("saved step 1"));
  EXPECT_THAT(killed.output, ::testing::Not(HasSubstr("saved step 2")));
  EXPECT_TRUE(fs::exists(dir + "/step_00000001/index.json"));
  EXPECT_FALSE(fs::exists(dir + "/step_00000002"));
  EXPECT_TRUE(fs::exists(dir + "/step_00000002.tmp")) << "the crashed save's leftover";
  absl::StatusOr<std::optional<std::string>> latest = FindLatestCheckpoint(dir);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->value_or(""), dir + "/step_00000001");
  absl::StatusOr<int64_t> bad = ValueMismatches(dir + "/step_00000001", 1);
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(*bad, 0);

  // The next run resumes from step 1, saves 2 and 3, and removes the leftover.
  testing::RunResult resumed = RunJob(dir, 3, async, "");
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_THAT(resumed.output,
              HasSubstr("resumed from " + dir + "/step_00000001 (step 1), every value as saved"));
  EXPECT_THAT(resumed.output, HasSubstr("saved step 3"));
  EXPECT_FALSE(fs::exists(dir + "/step_00000002.tmp"));
  for (int64_t step : {1, 2, 3}) {
    absl::StatusOr<int64_t> ok = ValueMismatches(CheckpointPath(dir, step), step);
    ASSERT_TRUE(ok.ok()) << ok.status();
    EXPECT_EQ(*ok, 0) << "step " << step;
  }
}

// (sync, a writing rank), (sync, the committing rank 0), (async: the writer thread dies, rank 2).
INSTANTIATE_TEST_SUITE_P(Saves, CheckpointKillTest,
                         ::testing::Values(std::make_tuple(false, 1), std::make_tuple(false, 0),
                                           std::make_tuple(true, 2)));

TEST(CheckpointFaultFlag, SaveSuffixParses) {
  absl::StatusOr<std::optional<FaultSpec>> save = ParseTestFault("2:17:save");
  ASSERT_TRUE(save.ok() && save->has_value());
  EXPECT_EQ((*save)->rank, 2);
  EXPECT_EQ((*save)->step, 17);
  EXPECT_TRUE((*save)->in_save);
  absl::StatusOr<std::optional<FaultSpec>> step = ParseTestFault("2:17");
  ASSERT_TRUE(step.ok() && step->has_value());
  EXPECT_FALSE((*step)->in_save);
  for (const char* bad : {"2:save", ":save", "2:17:load", "2:17:save:save", "2:-1:save"}) {
    EXPECT_FALSE(ParseTestFault(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace fathom

int main(int argc, char** argv) {
  if (argc >= 4 && std::string(argv[1]) == "--probe") {
    fathom::MpiInit(&argc, &argv);
    int code = fathom::RunProbe(argv[2], std::atoll(argv[3]), argc >= 5 && std::string(argv[4]) == "async");
    fathom::MpiFinalize();
    return code;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
