// Preemption signals on one process: the handler only records the first signal; AgreeToStop over a
// one-rank communicator reports it. (Several ranks: tests/mpi/checkpoint_mpi_test.cc.)
#include "parallel/preemption.h"

#include <gtest/gtest.h>
#include <signal.h>

#include "parallel/local_communicator.h"

namespace fathom {
namespace {

TEST(PreemptionTest, SigtermAndSigusr1AreRecordedNotFatal) {
  ASSERT_TRUE(InstallPreemptionHandlers().ok());
  ASSERT_TRUE(InstallPreemptionHandlers().ok()) << "idempotent";
  LocalCommunicator comm("world");
  for (int signo : {SIGTERM, SIGUSR1}) {
    ResetPreemptionForTesting();
    EXPECT_EQ(PreemptionSignal(), 0);
    EXPECT_FALSE(AgreeToStop(comm).stop());
    ASSERT_EQ(::raise(signo), 0);  // the default action would end this process
    EXPECT_EQ(PreemptionSignal(), signo);
    const StopAgreement agreed = AgreeToStop(comm);
    EXPECT_TRUE(agreed.stop());
    EXPECT_EQ(agreed.signal, signo);
    EXPECT_EQ(agreed.ranks, std::vector<int>{0});
  }
  EXPECT_EQ(DescribeStop({SIGUSR1, {2}}), "signal 10 (SIGUSR1) received on rank 2");
  EXPECT_EQ(DescribeStop({SIGTERM, {0, 1, 2, 3}}), "signal 15 (SIGTERM) received on ranks 0-3");
  // The first signal is the one remembered.
  ResetPreemptionForTesting();
  ::raise(SIGUSR1);
  ::raise(SIGTERM);
  EXPECT_EQ(PreemptionSignal(), SIGUSR1);
  ResetPreemptionForTesting();
}

}  // namespace
}  // namespace fathom
