// The watchdog's deadline (parallel/communicator.h): one cell per family of communicators, shared by the
// groups split off it, raised for a scope by ScopedTimeout; a new world starts with the default. The
// expiry itself is tested by tests/mpi/watchdog_probe.cc (jobs that must end).
#include <memory>

#include "gtest/gtest.h"
#include "parallel/local_communicator.h"
#include "parallel/mpi_communicator.h"

namespace fathom {
namespace {

TEST(Deadline, SharedBySplitGroupsAndRestoredByScope) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  EXPECT_EQ(world->timeout_seconds(), Communicator::kDefaultTimeoutSeconds);
  world->set_timeout_seconds(7.5);
  std::unique_ptr<Communicator> half = world->Split(world->rank() % 2, world->rank(), "half");
  std::unique_ptr<Communicator> quarter = half->Split(0, half->rank(), "quarter");
  EXPECT_EQ(half->timeout_seconds(), 7.5);
  EXPECT_EQ(quarter->timeout_seconds(), 7.5);
  quarter->set_timeout_seconds(9);  // any member of the family sets it for all
  EXPECT_EQ(world->timeout_seconds(), 9);
  {
    ScopedTimeout first_step(*world, 600);
    EXPECT_EQ(quarter->timeout_seconds(), 600);
    {
      ScopedTimeout save(*half, 1200);
      EXPECT_EQ(world->timeout_seconds(), 1200);
    }
    EXPECT_EQ(half->timeout_seconds(), 600);
  }
  EXPECT_EQ(half->timeout_seconds(), 9);
  // Another family keeps its own.
  std::unique_ptr<MpiCommunicator> other = MpiCommunicator::World();
  EXPECT_EQ(other->timeout_seconds(), Communicator::kDefaultTimeoutSeconds);
  world->Barrier();  // the deadline changes nothing about completing operations
  quarter->Barrier();
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
