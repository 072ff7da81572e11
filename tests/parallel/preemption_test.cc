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
    EXPECT_FALSE(AgreeToStop(comm));
    ASSERT_EQ(::raise(signo), 0);  // the default action would end this process
    EXPECT_EQ(PreemptionSignal(), signo);
    EXPECT_TRUE(AgreeToStop(comm));
  }
  // The first signal is the one remembered.
  ResetPreemptionForTesting();
  ::raise(SIGUSR1);
  ::raise(SIGTERM);
  EXPECT_EQ(PreemptionSignal(), SIGUSR1);
  ResetPreemptionForTesting();
}

}  // namespace
}  // namespace fathom
