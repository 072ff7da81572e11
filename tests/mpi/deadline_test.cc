// The watchdog's deadline (parallel/communicator.h): one cell per family of communicators, shared by the
// groups split off it, raised for a scope by ScopedTimeout; a new world starts with the default. The
// expiry itself is tested by tests/mpi/watchdog_probe.cc (jobs that must end).
#include <memory>

#include "gtest/gtest.h"
#include "parallel/local_communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_watchdog.h"

namespace fathom {
namespace {

TEST(Deadline, SharedBySplitGroupsAndRestoredByScope) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  EXPECT_EQ(world->timeout_seconds(), Communicator::kDefaultTimeoutSeconds);
  EXPECT_EQ(world->timeout_setting(), "the default deadline");
  world->set_timeout_seconds(7.5);
  std::unique_ptr<Communicator> half = world->Split(world->rank() % 2, world->rank(), "half");
  std::unique_ptr<Communicator> quarter = half->Split(0, half->rank(), "quarter");
  EXPECT_EQ(half->timeout_seconds(), 7.5);
  EXPECT_EQ(quarter->timeout_seconds(), 7.5);
  quarter->set_timeout_seconds(9);  // any member of the family sets it for all
  EXPECT_EQ(world->timeout_seconds(), 9);
  EXPECT_EQ(quarter->timeout_setting(), "parallel.timeout_s");
  {
    ScopedTimeout first_step(*world, 600, "parallel.first_step_timeout_s");
    EXPECT_EQ(quarter->timeout_seconds(), 600);
    EXPECT_EQ(quarter->timeout_setting(), "parallel.first_step_timeout_s");
    {
      ScopedTimeout save(*half, 1200, "parallel.save_timeout_s");
      EXPECT_EQ(world->timeout_seconds(), 1200);
      EXPECT_EQ(world->timeout_setting(), "parallel.save_timeout_s");
    }
    EXPECT_EQ(half->timeout_seconds(), 600);
    EXPECT_EQ(half->timeout_setting(), "parallel.first_step_timeout_s");
  }
  EXPECT_EQ(half->timeout_seconds(), 9);
  EXPECT_EQ(half->timeout_setting(), "parallel.timeout_s");
  // Another family keeps its own.
  std::unique_ptr<MpiCommunicator> other = MpiCommunicator::World();
  EXPECT_EQ(other->timeout_seconds(), Communicator::kDefaultTimeoutSeconds);
  world->Barrier();  // the deadline changes nothing about completing operations
  quarter->Barrier();
}

// The report's first line names the setting whose deadline applied (a stall in a checkpoint save is the
// save deadline's, parallel.save_timeout_s), not always parallel.timeout_s.
TEST(Deadline, ExpiryReportNamesTheSettingThatApplied) {
  GroupRecord group("dp", {0, 1}, GroupKey(0, 0, "deadline test", {0, 1}));
  WaitSite site{"all_reduce", "MPI_Iallgather", &group};
  site.collective = 6;
  EXPECT_EQ(DescribeExpiry(site, Deadline{9, "parallel.save_timeout_s"}),
            "watchdog: all_reduce (MPI_Iallgather) #6 on group dp did not complete within 9 s "
            "(parallel.save_timeout_s); group dp has 2 rank(s): 0-1");
  EXPECT_EQ(DescribeExpiry(site, Deadline{}),
            "watchdog: all_reduce (MPI_Iallgather) #6 on group dp did not complete within 300 s "
            "(the default deadline); group dp has 2 rank(s): 0-1");
}

TEST(Deadline, LocalCommunicatorFamiliesShareItToo) {
  LocalCommunicator local("world");
  local.set_timeout_seconds(3);
  std::unique_ptr<Communicator> child = local.Split(0, 0, "dp");
  EXPECT_EQ(child->timeout_seconds(), 3);
  child->set_timeout_seconds(4);
  EXPECT_EQ(local.timeout_seconds(), 4);
}

}  // namespace
}  // namespace fathom
