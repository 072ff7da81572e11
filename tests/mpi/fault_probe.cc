// Fault tests: a failing rank must end the whole job, with a message naming it, never hang it.
//
// One binary, two roles. Run as `fault_probe --probe <scenario>` it is an MPI program in which one rank
// fails while the others wait in a collective. Run without --probe it is a GoogleTest binary (not under
// mpirun) whose tests start `mpirun -np 3 fault_probe --probe <scenario>` in a fresh process group, read
// its output, kill the group if it outlives a deadline, and check the exit code and the message.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/fault.h"
#include "parallel/mpi_communicator.h"
#include "tests/mpi/mpi_job.h"

namespace fathom {
namespace {

constexpr int kProbeRanks = 3;
constexpr int kFailingRank = 1;
constexpr double kDeadlineSeconds = 30;  // far beyond a healthy teardown (a few seconds); a hang hits it

// ---- the probe: runs under mpirun -----------------------------------------------------------------------

int RunProbe(const std::string& scenario) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  const int r = world->rank();
  Tensor x = Tensor::FromVector({1.0, 2.0, 3.0}, {3}, DType::kF32);
  if (scenario == "fail_job") {
    if (r == kFailingRank) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the others are blocked by now
      FailJob(kExitFailure, "probe: this rank failed");
    }
    world->AllReduce(x, ReduceOp::kSum);  // never completes: rank 1 is gone
  } else if (scenario == "inject") {
    for (int64_t step = 1; step <= 1000; ++step) {  // 1-based, as the log counts
      if (ShouldInjectFault(r, step)) InjectFault(r, step);
      world->AllReduce(x, ReduceOp::kMax);
    }
  } else if (scenario == "short_message") {
    if (r == 0) world->Send(x, kFailingRank, 7);  // 3 elements
    if (r == kFailingRank) {
      Tensor y = Tensor::Empty({4}, DType::kF32);
      world->Recv(y, 0, 7);
    }
    world->Barrier();
  } else if (scenario == "mpi_error") {
    if (r == kFailingRank) {
      int v = 0;  // rank 99 does not exist: MPI returns an error (MPI_ERRORS_RETURN), MpiCheck ends the job
      MpiCheck(MPI_Send(&v, 1, MPI_INT, 99, 0, MPI_COMM_WORLD), "MPI_Send", "world");
    }
    world->Barrier();
  } else if (scenario == "exit_all") {
    ExitAllRanks(kExitInvalidInput, "probe: parallel.ep = 3 is invalid");
  } else if (scenario == "exit_partial") {
    if (r != kFailingRank) ExitAllRanks(kExitInvalidInput, "probe: only some ranks saw this", 1.0);
    world->Barrier();  // rank 1 waits here for ranks that are leaving
  } else {
    std::fprintf(stderr, "unknown probe scenario '%s'\n", scenario.c_str());
    return 64;
  }
  return 0;  // reaching here means the fault did not end the job: the driver test fails on exit code 0
}

// ---- the driver: GoogleTest, not under mpirun ------------------------------------------------------------

using ::fathom::testing::JobResult;

JobResult RunJob(const std::string& scenario, const std::vector<std::string>& extra_mpirun_args = {}) {
  return ::fathom::testing::RunMpiJob(kProbeRanks, extra_mpirun_args,
                                      {::fathom::testing::SelfPath(), "--probe", scenario}, kDeadlineSeconds);
}

size_t Count(const std::string& haystack, const std::string& needle) {
  return ::fathom::testing::CountOccurrences(haystack, needle);
}

#define EXPECT_JOB_ENDED(job)                                                                              \
  do {                                                                                                     \
    EXPECT_FALSE((job).hung) << "the job still ran after " << kDeadlineSeconds << " s:\n" << (job).output; \
    EXPECT_NE((job).exit_code, 0) << (job).output;                                                         \
    std::printf("job ended in %.1f s with exit code %d\n", (job).seconds, (job).exit_code);                \
  } while (0)

TEST(FaultJob, FailJobOnOneRankEndsTheJobNamingTheRank) {
  JobResult job = RunJob("fail_job");
  EXPECT_JOB_ENDED(job);
  EXPECT_EQ(job.exit_code, kExitFailure) << job.output;
  EXPECT_EQ(Count(job.output, "[rank 1] probe: this rank failed"), 1u) << job.output;
}

TEST(FaultJob, InjectedFaultKillsOneRankAndTheJobEnds) {
  JobResult job = RunJob("inject", {"-x", "FATHOM_TEST_FAULT=2:5"});
  EXPECT_JOB_ENDED(job);
  EXPECT_NE(job.output.find("[rank 2] FATHOM_TEST_FAULT: injected failure at step 5"), std::string::npos)
      << job.output;
}

TEST(FaultJob, MalformedFaultFlagIsAnErrorNotASilentRun) {
  JobResult job = RunJob("inject", {"-x", "FATHOM_TEST_FAULT=two"});
  EXPECT_JOB_ENDED(job);
  EXPECT_EQ(job.exit_code, kExitInvalidInput) << job.output;
  EXPECT_NE(job.output.find("FATHOM_TEST_FAULT='two' is not 'rank:step'"), std::string::npos) << job.output;
}

TEST(FaultJob, ShortMessageEndsTheJobNamingTheReceiver) {
  JobResult job = RunJob("short_message");
  EXPECT_JOB_ENDED(job);
  EXPECT_NE(
      job.output.find("[rank 1] [recv] group world: expected 4 elements from rank 0 with tag 7, received 3"),
      std::string::npos)
      << job.output;
}

TEST(FaultJob, MpiErrorIsReturnedCheckedAndEndsTheJob) {
  JobResult job = RunJob("mpi_error");
  EXPECT_JOB_ENDED(job);
  EXPECT_NE(job.output.find("[rank 1] MPI_Send on group world failed: "), std::string::npos) << job.output;
}

TEST(FaultJob, ExitAllRanksPrintsOnceAndExitsWithTheCode) {
  JobResult job = RunJob("exit_all");
  EXPECT_JOB_ENDED(job);
  EXPECT_EQ(job.exit_code, kExitInvalidInput) << job.output;
  EXPECT_EQ(Count(job.output, "probe: parallel.ep = 3 is invalid"), 1u) << job.output;
  EXPECT_EQ(Count(job.output, "MPI_ABORT"), 0u) << "a clean exit, not an abort:\n" << job.output;
}

TEST(FaultJob, ExitAllRanksAbortsWhenARankNeverArrives) {
  JobResult job = RunJob("exit_partial");
  EXPECT_JOB_ENDED(job);
  EXPECT_EQ(job.exit_code, kExitInvalidInput) << job.output;
  EXPECT_NE(job.output.find("not every rank reached the exit within 1 s"), std::string::npos) << job.output;
}

TEST(FaultJob, ParseTestFault) {
  absl::StatusOr<std::optional<FaultSpec>> none = ParseTestFault("");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  absl::StatusOr<std::optional<FaultSpec>> spec = ParseTestFault("3:17");
  ASSERT_TRUE(spec.ok() && spec->has_value());
  EXPECT_EQ((*spec)->rank, 3);
  EXPECT_EQ((*spec)->step, 17);
  for (const char* bad : {"3", "3:", ":4", "-1:2", "1:x", "1:2:3", "1:0"}) {
    EXPECT_FALSE(ParseTestFault(bad).ok()) << bad;
  }
}

TEST(FaultJob, TestFaultOutsideTheWorldIsRefused) {
  EXPECT_TRUE(CheckTestFaultValue("", 4).ok());
  EXPECT_TRUE(CheckTestFaultValue("3:1", 4).ok());
  const absl::Status s = CheckTestFaultValue("7:1", 4);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message())
                .find("FATHOM_TEST_FAULT='7:1' names rank 7, but the world has 4 rank(s) (0-3)"),
            std::string::npos)
      << s;
  EXPECT_NE(std::string(CheckTestFaultValue("0:0", 4).message()).find("steps count from 1"),
            std::string::npos);
}

}  // namespace
}  // namespace fathom

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--probe") {
    fathom::MpiInit(&argc, &argv);
    int code = fathom::RunProbe(argv[2]);
    fathom::MpiFinalize();
    return code;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
