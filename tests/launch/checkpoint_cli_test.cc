// Checkpoints from the command line (issue 10), as a user meets them under mpirun: a rank killed in the
// middle of a save leaves the previous checkpoint, which the next run resumes from; SIGUSR1 to one rank
// ends the job after the current step with a checkpoint and exit 0, reported with that rank's signal; a
// corrupt, truncated or mismatched checkpoint is refused with one message and exit 2, and nothing in
// checkpoint.dir changes. On one process: a damaged step directory is named by resume: auto and never
// replaced; a checkpoint.dir that is itself a checkpoint, and resume: none among another run's checkpoints,
// are refused; a resume names every schedule or data-order key that changed.
#include <gmock/gmock.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "gtest/gtest.h"
#include "tests/launch/run_fathom.h"

namespace {

using fathom::testing::CountOf;
using fathom::testing::MpiRun;
using fathom::testing::RunFathom;
using fathom::testing::RunResult;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

const std::string kTiny = std::string(FATHOM_SOURCE_DIR) + "/recipes/tiny.yaml";

// A fresh directory for one test's checkpoints.
std::string FreshDir(const std::string& name) {
  return fathom::testing::FreshTempDir("fathom_ckpt_cli_" + name);
}

// The 4-rank (pp 2, ep 2) tiny job with checkpoints in `dir`.
std::string TinyArgs(const std::string& dir, int steps, int save_every) {
  return "train " + kTiny + " --set parallel.pp=2 --set parallel.ep=2 --set train.seq_len=32" +
         " --set train.steps=" + std::to_string(steps) + " --set checkpoint.dir=" + dir +
         " --set checkpoint.save_every=" + std::to_string(save_every);
}

// The tiny job on one process, saving every 2 steps into `dir`.
std::string TinyOneRank(const std::string& dir, int steps, const std::string& extra = "") {
  return "train " + kTiny + " --set train.seq_len=32 --set train.steps=" + std::to_string(steps) +
         " --set checkpoint.dir=" + dir + " --set checkpoint.save_every=2" + extra;
}

// Every regular file under `dir` with its size and last byte-level content hash (names and sizes suffice
// to see a change, plus the content of index files).
std::map<std::string, std::string> Snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    files[e.path().string()] = bytes;
  }
  return files;
}

TEST(CheckpointCli, RankKilledMidSaveLeavesThePreviousOneWhichTheNextRunResumes) {
  const std::string dir = FreshDir("killed");
  // Rank 1 dies while writing the checkpoint of step 4: step 2's stays complete.
  RunResult killed = MpiRun(4, TinyArgs(dir, 6, 2), "FATHOM_TEST_FAULT=1:4:save");
  EXPECT_NE(killed.exit_code, 0) << killed.output;
  EXPECT_NE(killed.exit_code, 124) << "hung:\n" << killed.output;
  EXPECT_NE(killed.output.find("injected failure at step 4"), std::string::npos) << killed.output;
  EXPECT_TRUE(fs::exists(dir + "/step_00000002/index.json"));
  EXPECT_FALSE(fs::exists(dir + "/step_00000004"));
  RunResult resumed = MpiRun(4, TinyArgs(dir, 6, 2));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from " + dir + "/step_00000002: step 2"), std::string::npos)
      << resumed.output;
  EXPECT_EQ(CountOf(resumed.output, "step     3/6"), 1u) << resumed.output;  // continues at step 3
  EXPECT_TRUE(fs::exists(dir + "/step_00000006/index.json"));
  fs::remove_all(dir);
}

TEST(CheckpointCli, SignalToOneRankSavesAndExitsZeroAfterTheCurrentStep) {
  const std::string dir = FreshDir("sigusr1"), log = dir + "/job.log";
  // The job runs in the background; once it has logged step 3, rank 2 alone (the fathom process whose
  // OMPI_COMM_WORLD_RANK is 2) gets SIGUSR1; the job must end by itself with exit 0, and rank 0 must
  // report the signal rank 2 received, not its own (none).
  const std::string job =
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 60 mpirun "
      "--oversubscribe -np 4 " +
      std::string(FATHOM_BINARY) + " " + TinyArgs(dir, 100000, 0) + " > " + log + " 2>&1";
  RunResult r = fathom::testing::RunShell(
      "(" + job + "; echo \"exit $?\" >> " + log + ") & " +
      "for i in $(seq 1 600); do grep -q 'step     3/' " + log + " 2>/dev/null && break; sleep 0.1; done; " +
      "for p in $(pgrep -f 'fathom_ckpt_cli_sigusr1'); do [ \"$(ps -o comm= -p $p)\" = fathom ] && "
      "tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=2 && kill -USR1 $p; "
      "done; wait; cat " +
      log);
  EXPECT_NE(r.output.find("exit 0"), std::string::npos) << r.output;
  EXPECT_EQ(CountOf(r.output, "preempted: signal 10 (SIGUSR1) received on rank 2; stopping after step"), 1u)
      << r.output;
  EXPECT_NE(r.output.find("checkpoint step "), std::string::npos) << r.output;
  int checkpoints = 0;
  for (const auto& e : fs::directory_iterator(dir))
    checkpoints += e.path().filename().string().rfind("step_", 0) == 0;
  EXPECT_EQ(checkpoints, 1) << r.output;
  fs::remove_all(dir);
}

// A preemption saves at whatever step the signal lands on, which no start-up check can know: a save that
// meets a damaged step directory there is refused (the directory untouched) and the job ends with exit 2,
// bad input, like the same refusal of a scheduled save before step 1.
TEST(CheckpointCli, PreemptionSaveOntoADamagedStepDirectoryExitsTwo) {
  const std::string dir = FreshDir("preempt_damaged"), log = dir + "/../fathom_ckpt_cli_preempt_damaged.log";
  for (int step = 1; step <= 2000; ++step) {  // wherever the signal lands
    char name[32];
    std::snprintf(name, sizeof name, "/step_%08d", step);
    fs::create_directories(dir + name);
    std::ofstream(dir + name + "/notes.txt") << "not a checkpoint " << step << "\n";
  }
  const auto before = Snapshot(dir);
  const std::string job = "timeout 120 " + std::string(FATHOM_BINARY) + " train " + kTiny +
                          " --set train.seq_len=32 --set train.steps=100000 --set train.log_every=1" +
                          " --set checkpoint.dir=" + dir + " --set checkpoint.resume=none > " + log + " 2>&1";
  RunResult r = fathom::testing::RunShell(
      "(" + job + "; echo \"exit $?\" >> " + log + ") & " +
      "for i in $(seq 1 600); do grep -q 'step     3/' " + log + " 2>/dev/null && break; sleep 0.1; done; " +
      "for p in $(pgrep -f fathom_ckpt_cli_preempt_damaged); do [ \"$(ps -o comm= -p $p)\" = fathom ] && "
      "kill -USR1 $p; done; wait; cat " +
      log + "; rm -f " + log);
  EXPECT_NE(r.output.find("exit 2"), std::string::npos) << r.output;
  EXPECT_THAT(r.output, HasSubstr("preempted (signal 10 (SIGUSR1) received on rank 0) after step "));
  EXPECT_THAT(r.output, HasSubstr("; its checkpoint: a save must replace " + dir + "/step_"));
  EXPECT_TRUE(Snapshot(dir) == before) << "a damaged step directory changed";
  fs::remove_all(dir);
}

// Entries named like fathom's leftovers (step_N.tmp, .pruned, .replaced) that fathom did not make are
// named at start-up and never removed; one where a scheduled save would write its temporary is refused
// before step 1.
TEST(CheckpointCli, ForeignLeftoversAreNamedAndNeverRemoved) {
  const std::string dir = FreshDir("foreign");
  fs::create_directories(dir + "/step_00000002.tmp");
  std::ofstream(dir + "/step_00000002.tmp/mine.txt") << "mine\n";
  fs::create_directories(dir + "/step_00000009.pruned");
  std::ofstream(dir + "/step_00000009.pruned/mine.txt") << "mine too\n";
  const auto before = Snapshot(dir);
  RunResult r = RunFathom(TinyOneRank(dir, 4));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("this run saves step 2 through " + dir +
                                  "/step_00000002.tmp, which exists and fathom did not make it"));
  EXPECT_EQ(CountOf(r.output, "warning: checkpoint.dir holds " + dir + "/step_00000009.pruned: named like a "
                              "leftover of fathom's saves, but fathom did not make it"),
            1u)
      << r.output;
  EXPECT_TRUE(Snapshot(dir) == before) << "a foreign leftover changed";

  fs::remove_all(dir + "/step_00000002.tmp");
  r = RunFathom(TinyOneRank(dir, 4));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(CountOf(r.output, "warning: checkpoint.dir holds " + dir + "/step_00000009.pruned"), 1u)
      << r.output;
  EXPECT_TRUE(fs::exists(dir + "/step_00000004/index.json"));
  EXPECT_TRUE(fs::exists(dir + "/step_00000009.pruned/mine.txt")) << "a save's cleaning removed it";
  fs::remove_all(dir);
}

TEST(CheckpointCli, BadCheckpointsAreRefusedWithOneMessageAndNothingChanges) {
  const std::string dir = FreshDir("bad");
  ASSERT_EQ(MpiRun(4, TinyArgs(dir, 2, 2)).exit_code, 0);
  const std::string ckpt = dir + "/step_00000002", file = ckpt + "/rank_00001.h5";
  auto resume_fails = [&](const std::string& what, const std::string& extra, const std::string& needle) {
    const auto before = Snapshot(dir);
    RunResult r = MpiRun(4, TinyArgs(dir, 4, 2) + extra);
    EXPECT_EQ(r.exit_code, 2) << what << ":\n" << r.output;
    EXPECT_EQ(CountOf(r.output, needle), 1u) << what << ": one message naming it expected:\n" << r.output;
    EXPECT_EQ(Snapshot(dir), before) << what << ": checkpoint.dir changed";
  };
  // Another model's shapes.
  resume_fails("another model", " --set model.hidden_size=48", "hidden_size: checkpoint 64, recipe 48");
  // A corrupt slice: flip bytes in the middle of a rank file.
  {
    const auto size = fs::file_size(file);
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size / 2));
    const char junk[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    f.write(junk, sizeof junk);
  }
  resume_fails("corrupt", "", "rank_00001.h5");
  // Truncated.
  fs::resize_file(file, fs::file_size(file) / 3);
  resume_fails("truncated", "", "rank_00001.h5");
  fs::remove_all(dir);
}

// A step directory without index.json (a damaged checkpoint) is skipped with a warning naming it and why,
// and never replaced: a run whose saves would meet it is refused before training (exit 2); a run that
// resumes from an older good one and does not save that step leaves it alone.
TEST(CheckpointCli, DamagedStepDirectoriesAreNamedAndNeverReplaced) {
  const std::string good = FreshDir("good"), damaged = FreshDir("damaged");
  ASSERT_EQ(RunFathom(TinyOneRank(good, 4)).exit_code, 0);
  fs::copy(good + "/step_00000004", damaged + "/step_00000004", fs::copy_options::recursive);
  fs::remove(damaged + "/step_00000004/index.json");
  const std::string warning = "warning: checkpoint.resume auto skipped " + damaged +
                              "/step_00000004: no index.json (an incomplete save";
  const auto before = Snapshot(damaged);
  RunResult r = RunFathom(TinyOneRank(damaged, 4));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(CountOf(r.output, warning), 1u) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("this run saves step 4, but " + damaged + "/step_00000004 is not a complete"));
  EXPECT_EQ(Snapshot(damaged), before) << "the damaged directory changed";

  fs::copy(good + "/step_00000002", damaged + "/step_00000002", fs::copy_options::recursive);
  r = RunFathom(TinyOneRank(damaged, 3));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(CountOf(r.output, warning), 1u) << r.output;
  EXPECT_THAT(r.output, HasSubstr("resumed from " + damaged + "/step_00000002"));
  EXPECT_TRUE(fs::exists(damaged + "/step_00000003/index.json"));
  for (const auto& [path, bytes] : before) {
    EXPECT_TRUE(fs::exists(path) && Snapshot(damaged).at(path) == bytes) << path << " changed";
  }
  fs::remove_all(good);
  fs::remove_all(damaged);
}

// checkpoint.dir set to a checkpoint, and resume: none into a directory of another run's checkpoints (whose
// newest a later resume: auto would continue), are refused naming the path and the options; nothing changes.
TEST(CheckpointCli, ACheckpointAsCheckpointDirAndAFreshRunAmongCheckpointsAreRefused) {
  const std::string dir = FreshDir("ambiguous");
  ASSERT_EQ(RunFathom(TinyOneRank(dir, 4)).exit_code, 0);
  const auto before = Snapshot(dir);
  const std::string step4 = dir + "/step_00000004";
  RunResult r = RunFathom(TinyOneRank(step4, 4));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(CountOf(r.output, "checkpoint.dir " + step4 +
                                  " is itself a checkpoint (it holds index.json); set checkpoint.dir to its "
                                  "parent, or checkpoint.resume: " +
                                  step4),
            1u)
      << r.output;
  r = RunFathom(TinyOneRank(dir, 4, " --set checkpoint.resume=none"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("already holds 2 checkpoint(s), the newest " + step4));
  EXPECT_THAT(r.output, HasSubstr("use an empty checkpoint.dir for a fresh run, or checkpoint.resume: auto"));
  EXPECT_EQ(Snapshot(dir), before);
  fs::remove_all(dir);
}

// A resume that changes what defines the LR schedule or the data order says so, one notice per key, old ->
// new; an unchanged resume says nothing.
TEST(CheckpointCli, AResumeNamesEveryChangedScheduleKey) {
  const std::string dir = FreshDir("schedule");
  ASSERT_EQ(RunFathom(TinyOneRank(dir, 2)).exit_code, 0);
  RunResult same = RunFathom(TinyOneRank(dir, 2, " --set checkpoint.save_every=0"));
  EXPECT_EQ(same.exit_code, 0) << same.output;
  EXPECT_EQ(CountOf(same.output, "notice:"), 0u) << same.output;
  RunResult r = RunFathom(TinyOneRank(dir, 4, " --set optim.warmup_steps=10 --set train.micro_batch_size=2"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(CountOf(r.output, "notice:"), 4u) << r.output;
  for (const char* line :
       {"notice: train.steps 2 -> 4 since the checkpoint was saved",
        "notice: optim.warmup_steps 30 -> 10 since", "notice: train.micro_batch_size 4 -> 2 since",
        "notice: global batch (sequences per step) 8 -> 4 since"}) {
    EXPECT_EQ(CountOf(r.output, line), 1u) << line << "\n" << r.output;
  }
  fs::remove_all(dir);
}

}  // namespace
