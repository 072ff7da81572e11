// The watchdog (parallel/communicator.h, parallel/mpi_watchdog.h): a rank that stops communicating ends the
// job within the deadline plus a few seconds, and the report names the operation, the group and the rank
// that has not arrived. Waits shorter than the deadline, or raised by ScopedTimeout, pass untouched.
//
// Like fault_probe.cc, one binary with two roles: `watchdog_probe --probe <scenario>` is the MPI program
// (4 ranks, a 2 s deadline); without --probe it is the GoogleTest driver that starts those jobs under
// mpirun and checks how they end.
#include <signal.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/mpi_communicator.h"
#include "tests/mpi/mpi_job.h"

namespace fathom {
namespace {

constexpr int kRanks = 4;
constexpr double kTimeoutSeconds = 2;
// The job must end within the deadline plus "a few seconds" (the answers' 1 s, MPI_Abort's teardown).
// Generous because CI oversubscribes 2 cores with 4 ranks and other builds; a hang hits kDeadlineSeconds.
constexpr double kEndsWithinSeconds = kTimeoutSeconds + 12;
constexpr double kDeadlineSeconds = 60;

// ---- the probe: runs under mpirun -------------------------------------------------------------------------

void Sleep(double seconds) { std::this_thread::sleep_for(std::chrono::duration<double>(seconds)); }

int RunProbe(const std::string& scenario) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  // A second family with a long deadline, for the ranks that are meant to wait elsewhere while the rank
  // under test times out first (so that its report is the one printed).
  std::unique_ptr<MpiCommunicator> elsewhere = MpiCommunicator::World();
  elsewhere->set_timeout_seconds(30);
  world->set_timeout_seconds(kTimeoutSeconds);
  const int r = world->rank();
  Tensor x = Tensor::FromVector({1.0, 2.0, 3.0}, {3}, DType::kF32);
  if (scenario == "sigstop") {
    // Rank 2 stops (as a debugger or an operator's SIGSTOP would) after five steps; the others go on.
    for (int step = 1; step <= 1000; ++step) {
      if (r == 2 && step == 6) raise(SIGSTOP);
      world->AllReduce(x, ReduceOp::kSum);
    }
  } else if (scenario == "leaves_early") {
    // Rank 3 leaves the loop of a split group after five collectives and waits in another family.
    std::unique_ptr<Communicator> loop = world->Split(0, r, "loop");
    for (int step = 1; step <= 1000; ++step) {
      if (r == 3 && step == 6) break;
      loop->AllReduce(x, ReduceOp::kSum);
    }
    elsewhere->Barrier();
  } else if (scenario == "missing_send") {
    // Rank 1 waits for a message rank 0 never sends.
    if (r == 1) {
      Tensor y = Tensor::Empty({3}, DType::kF32);
      world->Recv(y, 0, 5);
    }
    elsewhere->Barrier();
  } else if (scenario == "polled_recv") {
    // Rank 0 polls Test() on a receive nothing matches: polling is waiting too.
    if (r == 0) {
      Tensor y = Tensor::Empty({3}, DType::kF32);
      Request q = world->IRecv(y, 3, 9);
      while (!q.Test()) Sleep(0.01);
    }
    elsewhere->Barrier();
  } else if (scenario == "slow_but_in_time") {
    // Late arrivals within the deadline, and a longer wait under a raised one, pass.
    for (int step = 0; step < 2; ++step) {
      if (r == 1) Sleep(0.5 * kTimeoutSeconds);
      world->AllReduce(x, ReduceOp::kSum);
    }
    {
      ScopedTimeout longer(*world, 4 * kTimeoutSeconds, "parallel.first_step_timeout_s");
      if (r == 3) Sleep(1.5 * kTimeoutSeconds);
      world->Barrier();
    }
    if (world->timeout_seconds() != kTimeoutSeconds) return 65;  // the scope restored the deadline
  } else if (scenario == "stalls_under_raised_deadline") {
    // Rank 3 never reaches a barrier held under a raised deadline (a checkpoint save's): the report must
    // name the setting whose deadline expired, not parallel.timeout_s.
    ScopedTimeout save(*world, 1.5 * kTimeoutSeconds, "parallel.save_timeout_s");
    if (r != 3) world->Barrier();
    elsewhere->Barrier();
  } else {
    std::fprintf(stderr, "unknown probe scenario '%s'\n", scenario.c_str());
    return 64;
  }
  return 0;
}

// ---- the driver: GoogleTest, not under mpirun -----------------------------------------------------------

using ::fathom::testing::JobResult;

JobResult RunJob(const std::string& scenario) {
  return ::fathom::testing::RunMpiJob(kRanks, {}, {::fathom::testing::SelfPath(), "--probe", scenario},
                                      kDeadlineSeconds);
}

bool Has(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

#define EXPECT_ENDED_BY_WATCHDOG(job)                                                                  \
  do {                                                                                                 \
    EXPECT_FALSE((job).hung) << "still running after " << kDeadlineSeconds << " s:\n" << (job).output; \
    EXPECT_NE((job).exit_code, 0) << (job).output;                                                     \
    EXPECT_LT((job).seconds, kEndsWithinSeconds) << (job).output;                                      \
    std::printf("job ended in %.1f s with exit code %d\n", (job).seconds, (job).exit_code);            \
  } while (0)

TEST(Watchdog, StoppedRankEndsTheJobNamingItAndTheCollective) {
  JobResult job = RunJob("sigstop");
  EXPECT_ENDED_BY_WATCHDOG(job);
  EXPECT_TRUE(Has(job.output,
                  "watchdog: all_reduce (MPI_Iallgather) #6 on group world did not complete within 2 s "
                  "(parallel.timeout_s)"))
      << job.output;
  EXPECT_TRUE(Has(job.output, "rank 2: no answer")) << job.output;
  EXPECT_FALSE(Has(job.output, "rank 1: no answer")) << "the running ranks answer:\n" << job.output;
}

TEST(Watchdog, RankLeavingTheLoopEarlyIsNamedWithWhatItDoesInstead) {
  JobResult job = RunJob("leaves_early");
  EXPECT_ENDED_BY_WATCHDOG(job);
  EXPECT_TRUE(Has(job.output, "watchdog: all_reduce (MPI_Iallgather) #6 on group loop")) << job.output;
  EXPECT_TRUE(
      Has(job.output, "rank 3: NOT ARRIVED: it has started 5 collective(s) on group loop; it is waiting"))
      << job.output;
  EXPECT_TRUE(Has(job.output, "in barrier (MPI_Ibarrier) #1 on group world")) << job.output;
  EXPECT_TRUE(Has(job.output, "arrived (started it): rank(s) ")) << job.output;
}

TEST(Watchdog, ReceiveWithoutASendNamesThePeerThatDidNotSend) {
  JobResult job = RunJob("missing_send");
  EXPECT_ENDED_BY_WATCHDOG(job);
  EXPECT_TRUE(Has(job.output, "[rank 1] watchdog: recv (MPI_Irecv) #1 from rank 0 (tag 5) on group world"))
      << job.output;
  EXPECT_TRUE(Has(job.output, "rank 0: NOT POSTED: it has posted 0 send(s) with tag 5 to rank 1"))
      << job.output;
}

TEST(Watchdog, PollingTestPastTheDeadlineIsAWaitToo) {
  JobResult job = RunJob("polled_recv");
  EXPECT_ENDED_BY_WATCHDOG(job);
  EXPECT_TRUE(Has(job.output, "[rank 0] watchdog: recv (MPI_Irecv) #1 from rank 3 (tag 9) on group world"))
      << job.output;
}

TEST(Watchdog, ExpiryUnderARaisedDeadlineNamesItsSetting) {
  JobResult job = RunJob("stalls_under_raised_deadline");
  EXPECT_ENDED_BY_WATCHDOG(job);
  EXPECT_TRUE(Has(job.output,
                  "barrier (MPI_Ibarrier) #1 on group world did not complete within 3 s "
                  "(parallel.save_timeout_s)"))
      << job.output;
  EXPECT_FALSE(Has(job.output, "(parallel.timeout_s)")) << job.output;
}

TEST(Watchdog, WaitsWithinTheDeadlineAndRaisedDeadlinesPass) {
  JobResult job = RunJob("slow_but_in_time");
  EXPECT_FALSE(job.hung) << job.output;
  EXPECT_EQ(job.exit_code, 0) << job.output;
  EXPECT_FALSE(Has(job.output, "watchdog")) << job.output;
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
