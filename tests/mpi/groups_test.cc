// Communicator groups under mpirun: Split, and the device mesh's groups against MeshLayout's arithmetic.
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/mesh.h"
#include "parallel/mpi_communicator.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

// The world ranks of a group's members, in group-rank order, learnt by communicating over the group.
std::vector<int> Members(Communicator& group, int world_rank) {
  Tensor mine = Tensor::FromVector({static_cast<double>(world_rank)}, {1}, DType::kI32);
  Tensor all = Tensor::Empty({group.size()}, DType::kI32);
  group.AllGather(mine, all);
  return std::vector<int>(all.data<int32_t>(), all.data<int32_t>() + group.size());
}

uint64_t SharedSeed(Communicator& comm) {
  Tensor s = Tensor::Empty({1}, DType::kI64);
  // The seed travels as its bit pattern; it is printed as drawn, so FATHOM_TEST_SEED replays it.
  s.data<int64_t>()[0] = comm.rank() == 0 ? static_cast<int64_t>(testing::TestSeed()) : 0;
  comm.Broadcast(s, 0);
  return static_cast<uint64_t>(s.data<int64_t>()[0]);
}

TEST(Groups, SplitByParityWithReversedKeys) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  const int p = world->size(), r = world->rank();
  uint64_t seed = SharedSeed(*world);
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::unique_ptr<Communicator> g = world->Split(r % 2, -r, "parity");
  std::vector<int> want;
  for (int j = p - 1; j >= 0; --j) {
    if (j % 2 == r % 2) want.push_back(j);
  }
  EXPECT_EQ(g->name(), "parity");
  EXPECT_EQ(g->size(), static_cast<int>(want.size()));
  EXPECT_EQ(Members(*g, r), want);
  // A reduction over the group sums exactly the members' values, in group-rank order.
  std::mt19937_64 rng(seed);
  std::vector<Tensor> inputs;
  for (int j = 0; j < p; ++j) inputs.push_back(testing::RandomTensor({64}, DType::kF32, rng));
  Tensor t = inputs[static_cast<size_t>(r)].Clone();
  g->AllReduce(t, ReduceOp::kSum);
  for (int64_t i = 0; i < 64; ++i) {
    float acc = inputs[static_cast<size_t>(want[0])].data<float>()[i];
    for (size_t k = 1; k < want.size(); ++k) acc += inputs[static_cast<size_t>(want[k])].data<float>()[i];
    EXPECT_EQ(t.data<float>()[i], acc) << "element " << i;
  }
}

TEST(Groups, NestedAndSingletonSplits) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  const int p = world->size(), r = world->rank();
  std::unique_ptr<Communicator> self = world->Split(r, 0, "self");
  EXPECT_EQ(self->size(), 1);
  EXPECT_EQ(self->rank(), 0);
  // Halves, then the halves split by parity of the rank inside the half.
  std::unique_ptr<Communicator> half = world->Split(r < p / 2 ? 0 : 1, r, "half");
  std::unique_ptr<Communicator> quarter = half->Split(half->rank() % 2, half->rank(), "quarter");
  std::vector<int> want;
  const int lo = r < p / 2 ? 0 : p / 2, hi = r < p / 2 ? p / 2 : p;
  for (int j = lo; j < hi; ++j) {
    if ((j - lo) % 2 == (r - lo) % 2) want.push_back(j);
  }
  EXPECT_EQ(Members(*quarter, r), want);
}

TEST(Groups, MeshGroupsMatchTheLayoutForEveryShape) {
  const int p = [] {
    std::unique_ptr<MpiCommunicator> w = MpiCommunicator::World();
    return w->size();
  }();
  int shapes = 0;
  for (int pp = 1; pp <= p; ++pp) {
    for (int ep = 1; ep <= p; ++ep) {
      if (p % pp != 0 || (p / pp) % ep != 0) continue;
      ++shapes;
      SCOPED_TRACE("pp " + std::to_string(pp) + " ep " + std::to_string(ep));
      absl::StatusOr<std::unique_ptr<DeviceMesh>> made = DeviceMesh::Create(MpiCommunicator::World(), pp, ep);
      ASSERT_TRUE(made.ok()) << made.status();  // pure validation: identical on every rank
      DeviceMesh& mesh = **made;
      const MeshLayout& l = mesh.layout();
      const int r = mesh.world().rank();
      EXPECT_EQ(l.world(), p);
      EXPECT_EQ(mesh.coord().rank, r);
      EXPECT_EQ(mesh.pp().rank(), mesh.coord().pp_rank);
      EXPECT_EQ(mesh.ep().rank(), mesh.coord().ep_rank);
      EXPECT_EQ(mesh.edp().rank(), mesh.coord().edp_rank);
      EXPECT_EQ(mesh.dp().rank(), mesh.coord().dp_rank);
      EXPECT_EQ(Members(mesh.pp(), r), l.PpGroup(r));
      EXPECT_EQ(Members(mesh.ep(), r), l.EpGroup(r));
      EXPECT_EQ(Members(mesh.edp(), r), l.EdpGroup(r));
      EXPECT_EQ(Members(mesh.dp(), r), l.DpGroup(r));
      EXPECT_EQ(mesh.ep().name(), "ep");
      EXPECT_NE(mesh.Describe().find("rank " + std::to_string(r) + " = stage"), std::string::npos)
          << mesh.Describe();
    }
  }
  EXPECT_GE(shapes, 1);
}

TEST(Groups, InvalidMeshIsRejectedIdenticallyOnEveryRank) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  const int p = world->size();
  absl::StatusOr<std::unique_ptr<DeviceMesh>> bad = DeviceMesh::Create(MpiCommunicator::World(), p + 1, 1);
  ASSERT_FALSE(bad.ok());
  const std::string msg(bad.status().message());
  EXPECT_NE(msg.find("parallel.pp = " + std::to_string(p + 1)), std::string::npos) << msg;
  EXPECT_NE(msg.find("world size " + std::to_string(p)), std::string::npos) << msg;
  // Every rank got the same message (compare lengths and a checksum over the group).
  Tensor mine = Tensor::FromVector(
      {static_cast<double>(msg.size()), static_cast<double>(std::hash<std::string>{}(msg) % 1000003)}, {2},
      DType::kI64);
  Tensor high = mine.Clone();
  world->AllReduce(high, ReduceOp::kMax);
  EXPECT_EQ(high.Item(0), mine.Item(0));
  EXPECT_EQ(high.Item(1), mine.Item(1));
  absl::StatusOr<std::unique_ptr<DeviceMesh>> bad_ep = DeviceMesh::Create(MpiCommunicator::World(), 1, 2 * p);
  ASSERT_FALSE(bad_ep.ok());
  EXPECT_NE(std::string(bad_ep.status().message()).find("parallel.ep = " + std::to_string(2 * p)),
            std::string::npos);
}

}  // namespace
}  // namespace fathom
