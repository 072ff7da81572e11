// LocalCommunicator: the single-process communicator. It needs no MPI; it lives with the MPI tests so that
// both implementations of the interface are tested side by side (run on one rank).
#include "parallel/local_communicator.h"

#include <cstring>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "parallel/communicator.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

bool SameBytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

TEST(LocalCommunicator, CollectivesOfOneRankAreCopies) {
  uint64_t seed = testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  absl::StatusOr<std::unique_ptr<Communicator>> made = CreateWorldCommunicator(CommBackend::kLocal);
  ASSERT_TRUE(made.ok()) << made.status();
  Communicator& c = **made;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  EXPECT_EQ(c.name(), "world");

  Tensor x = testing::RandomTensor({5, 7}, DType::kF32, rng);
  Tensor before = x.Clone();
  c.AllReduce(x, ReduceOp::kSum);
  c.IAllReduce(x, ReduceOp::kMax).Wait();
  EXPECT_TRUE(SameBytes(x, before));

  Tensor out = testing::RandomTensor({35}, DType::kF32, rng);
  c.ReduceScatter(x, out, ReduceOp::kSum);
  EXPECT_TRUE(SameBytes(out, before.Reshape({35})));
  Tensor gathered = testing::RandomTensor({35}, DType::kF32, rng);
  c.IAllGather(x, gathered).Wait();
  EXPECT_TRUE(SameBytes(gathered, before.Reshape({35})));

  // All-to-all of the first 20 elements; the rest of recv is left alone.
  Tensor recv = testing::RandomTensor({30}, DType::kF32, rng);
  Tensor recv_before = recv.Clone();
  c.AllToAllV(x, {20}, recv, {20});
  EXPECT_EQ(std::memcmp(recv.raw(), x.raw(), 20 * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(recv.data<float>() + 20, recv_before.data<float>() + 20, 10 * sizeof(float)), 0);

  c.Broadcast(x, 0);
  EXPECT_TRUE(SameBytes(x, before));
  c.Barrier();
  EXPECT_TRUE(c.IBarrier().Test());

  std::unique_ptr<Communicator> part = c.Split(3, 0, "ep");
  EXPECT_EQ(part->size(), 1);
  EXPECT_EQ(part->name(), "ep");
}

TEST(LocalCommunicator, SelfMessagesMatchByTagInSendOrder) {
  uint64_t seed = testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  LocalCommunicator c("pp");
  Tensor a = testing::RandomTensor({4}, DType::kF64, rng);
  Tensor b = testing::RandomTensor({6}, DType::kF64, rng);
  Tensor d = testing::RandomTensor({4}, DType::kF64, rng);
  c.Send(a, 0, 1);
  c.ISend(b, 0, 2).Wait();
  c.Send(d, 0, 1);
  Tensor a_sent = a.Clone();
  a.Fill(0);  // the sends copied their data: changing it now must not change what arrives
  EXPECT_EQ(c.unreceived(), 3);

  Tensor r1 = Tensor::Empty({4}, DType::kF64), r2 = Tensor::Empty({4}, DType::kF64);
  Tensor r3 = Tensor::Empty({6}, DType::kF64);
  c.Recv(r1, 0, 1);
  c.Recv(r2, 0, 1);
  c.Recv(r3, 0, 2);
  EXPECT_TRUE(SameBytes(r1, a_sent));
  EXPECT_TRUE(SameBytes(r2, d));
  EXPECT_TRUE(SameBytes(r3, b));
  EXPECT_EQ(c.unreceived(), 0);

  // A receive posted before its send completes when the send arrives.
  Tensor late = Tensor::Empty({6}, DType::kF64);
  Request q = c.IRecv(late, 0, 5);
  EXPECT_FALSE(q.Test());
  c.Send(b, 0, 5);
  EXPECT_TRUE(q.Test());
  EXPECT_TRUE(SameBytes(late, b));
}

TEST(LocalCommunicator, BackendNames) {
  EXPECT_EQ(*ParseCommBackend("local"), CommBackend::kLocal);
  EXPECT_EQ(*ParseCommBackend("mpi"), CommBackend::kMpi);
  absl::StatusOr<CommBackend> bad = ParseCommBackend("nccl2");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("nccl2"), std::string::npos);
}

}  // namespace
}  // namespace fathom
