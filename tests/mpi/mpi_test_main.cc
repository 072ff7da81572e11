// The main of the suites that run under mpirun: mpi_tests (tests/mpi/CMakeLists.txt) and, with
// FATHOM_TEST_BINARY="gpu_mpi_tests", the NCCL suite (tests/gpu_mpi). Every rank runs the same
// tests; rank 0 prints GoogleTest's usual output, the other ranks print only their failures, prefixed
// "[rank R]". Every rank exits non-zero when any rank failed, so the job's status is the suite's.
//
// Tests must call collectives in the same order on every rank; an ASSERT that fires on some ranks only
// would leave the others waiting in the next collective, so the tests check with EXPECT before any later
// communication. A watchdog ends a hung rank (and so, through mpirun, the job) before ctest's timeout,
// naming the test that hung.
#include <mpi.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/fault.h"
#include "parallel/mpi_communicator.h"

namespace {

#ifndef FATHOM_TEST_BINARY
#define FATHOM_TEST_BINARY "mpi_tests"
#endif
constexpr unsigned kWatchdogSeconds = 100;  // ctest's TIMEOUT for these tests is 120
char g_watchdog_message[512] = "[" FATHOM_TEST_BINARY "] watchdog: no test started\n";

void OnWatchdog(int) {
  // Only async-signal-safe calls here: the message was formatted when the test started.
  ssize_t ignored = write(STDERR_FILENO, g_watchdog_message, std::strlen(g_watchdog_message));
  (void)ignored;
  _exit(124);
}

class RankListener : public ::testing::EmptyTestEventListener {
 public:
  RankListener(int rank, bool print_failures) : rank_(rank), print_failures_(print_failures) {}

  void OnTestStart(const ::testing::TestInfo& info) override {
    std::snprintf(g_watchdog_message, sizeof(g_watchdog_message),
                  "[rank %d] " FATHOM_TEST_BINARY
                  " watchdog: %s.%s still running after %u s; ending the job\n",
                  rank_, info.test_suite_name(), info.name(), kWatchdogSeconds);
  }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!print_failures_ || !result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(), result.message());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (print_failures_ && info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] [  FAILED  ] %s.%s\n", rank_, info.test_suite_name(), info.name());
    }
  }

 private:
  int rank_;
  bool print_failures_;
};

}  // namespace

int main(int argc, char** argv) {
  fathom::MpiInit(&argc, &argv);
  ::testing::InitGoogleMock(&argc, argv);
  int rank = 0, size = 1;
  fathom::MpiCheck(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank", "world");
  fathom::MpiCheck(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size", "world");

  ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new RankListener(rank, /*print_failures=*/rank != 0));
  std::signal(SIGALRM, OnWatchdog);
  alarm(kWatchdogSeconds);

  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  alarm(0);
  int failed_ranks = 0;
  fathom::MpiCheck(MPI_Allreduce(&failed, &failed_ranks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD),
                   "MPI_Allreduce", "world");
  if (rank == 0 && failed_ranks > 0) {
    std::fprintf(stderr,
                 "[" FATHOM_TEST_BINARY
                 "] %d of %d ranks failed (other ranks' failures are printed as [rank R])\n",
                 failed_ranks, size);
  }
  fathom::MpiFinalize();
  return failed_ranks > 0 ? 1 : 0;
}
