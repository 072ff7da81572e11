// MpiCommunicator under mpirun: every collective and its non-blocking form against values computed
// locally. Each rank's input is drawn from (shared seed, rank), so every rank can recompute every other
// rank's input and the expected result, including the exact rank-order reduction.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/mpi_communicator.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

uint64_t SharedSeed(Communicator& comm) {
  Tensor s = Tensor::Empty({1}, DType::kI64);
  // The seed travels as its bit pattern; it is printed as drawn, so FATHOM_TEST_SEED replays it.
  s.data<int64_t>()[0] = comm.rank() == 0 ? static_cast<int64_t>(testing::TestSeed()) : 0;
  comm.Broadcast(s, 0);
  return static_cast<uint64_t>(s.data<int64_t>()[0]);
}

// Rank r's input for a test: f32/f64 normal with magnitudes spread over a few decades (so that the order
// of a sum matters), i32/i64 in [-1000, 1000], bf16 from f32.
Tensor RankData(uint64_t seed, int r, int64_t n, DType dtype, int salt = 0) {
  std::mt19937_64 rng(seed * 1000003ull + static_cast<uint64_t>(r) * 7919ull + static_cast<uint64_t>(salt));
  if (dtype == DType::kBF16) return RankData(seed, r, n, DType::kF32, salt).To(DType::kBF16);
  Tensor t = Tensor::Empty({n}, dtype);
  if (dtype == DType::kF32 || dtype == DType::kF64) {
    std::uniform_real_distribution<double> decade(-3.0, 3.0);
    testing::FillRandom(t, rng);
    DispatchFloat(dtype, "RankData", [&](auto tag) {
      using T = decltype(tag);
      T* p = t.data<T>();
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(p[i] * std::pow(10.0, decade(rng)));
    });
  } else {
    std::uniform_int_distribution<int> u(-1000, 1000);
    for (int64_t i = 0; i < n; ++i) {
      if (dtype == DType::kI32) t.data<int32_t>()[i] = u(rng);
      if (dtype == DType::kI64) t.data<int64_t>()[i] = u(rng);
    }
  }
  return t;
}

template <class T>
T CombineExpected(ReduceOp op, T acc, T x) {
  if (op == ReduceOp::kSum) return acc + x;
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(acc) || std::isnan(x)) return std::numeric_limits<T>::quiet_NaN();
  }
  return std::max(acc, x);
}

// The reduction over ranks 0 .. size-1 in that order, of inputs RankData(seed, r, n, dtype, salt).
Tensor ExpectedReduce(uint64_t seed, int size, int64_t n, DType dtype, ReduceOp op, int salt = 0) {
  Tensor acc = RankData(seed, 0, n, dtype, salt);
  for (int r = 1; r < size; ++r) {
    Tensor x = RankData(seed, r, n, dtype, salt);
    auto run = [&](auto tag) {
      using T = decltype(tag);
      for (int64_t i = 0; i < n; ++i)
        acc.data<T>()[i] = CombineExpected(op, acc.data<T>()[i], x.data<T>()[i]);
    };
    switch (dtype) {
      case DType::kF32:
        run(float{});
        break;
      case DType::kF64:
        run(double{});
        break;
      case DType::kI32:
        run(int32_t{});
        break;
      case DType::kI64:
        run(int64_t{});
        break;
      default:
        ADD_FAILURE() << "no reduction for " << DTypeName(dtype);
    }
  }
  return acc;
}

// Bitwise equality (NaN equals NaN of the same bits); reports the first differing element.
::testing::AssertionResult SameBits(const Tensor& got, const Tensor& want, int64_t want_offset = 0) {
  if (got.dtype() != want.dtype()) return ::testing::AssertionFailure() << "dtype differs";
  const size_t es = DTypeSize(got.dtype());
  const char* g = static_cast<const char*>(got.raw());
  const char* w = static_cast<const char*>(want.raw()) + static_cast<size_t>(want_offset) * es;
  for (int64_t i = 0; i < got.numel(); ++i) {
    if (std::memcmp(g + i * es, w + i * es, es) != 0) {
      return ::testing::AssertionFailure()
             << "element " << i << " of " << got.numel() << " (" << DTypeName(got.dtype()) << "): got "
             << got.Item(i) << ", want " << want.Item(want_offset + i);
    }
  }
  return ::testing::AssertionSuccess();
}

const std::vector<DType> kReducible = {DType::kF32, DType::kF64, DType::kI32, DType::kI64};

class Collectives : public ::testing::Test {
 protected:
  std::unique_ptr<MpiCommunicator> world_ = MpiCommunicator::World();
  uint64_t seed_ = SharedSeed(*world_);
};

TEST_F(Collectives, AllReduceSumIsTheRankOrderSumOnEveryRank) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int p = world_->size(), r = world_->rank();
  for (DType dtype : kReducible) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{p + 1}, int64_t{37}, int64_t{4099}}) {
      SCOPED_TRACE(std::string(DTypeName(dtype)) + " n " + std::to_string(n));
      Tensor t = RankData(seed_, r, n, dtype);
      world_->AllReduce(t, ReduceOp::kSum);
      EXPECT_TRUE(SameBits(t, ExpectedReduce(seed_, p, n, dtype, ReduceOp::kSum)));
    }
  }
}

TEST_F(Collectives, AllReduceMaxPropagatesNaN) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int p = world_->size(), r = world_->rank();
  for (DType dtype : kReducible) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    Tensor t = RankData(seed_, r, 301, dtype);
    world_->AllReduce(t, ReduceOp::kMax);
    Tensor want = ExpectedReduce(seed_, p, 301, dtype, ReduceOp::kMax);
    EXPECT_TRUE(SameBits(t, want));
  }
  // A NaN on the last rank wins against every number; elsewhere the maximum is taken.
  Tensor t = RankData(seed_, r, 50, DType::kF32);
  if (r == p - 1) t.data<float>()[7] = std::numeric_limits<float>::quiet_NaN();
  world_->AllReduce(t, ReduceOp::kMax);
  EXPECT_TRUE(std::isnan(t.data<float>()[7]));
  EXPECT_FALSE(std::isnan(t.data<float>()[8]));
}

TEST_F(Collectives, AllReduceResultsAreBitwiseEqualAcrossRanks) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int p = world_->size(), r = world_->rank();
  for (DType dtype : {DType::kF32, DType::kF64}) {
    const int64_t n = 10007;
    Tensor t = RankData(seed_, r, n, dtype, /*salt=*/5);
    world_->AllReduce(t, ReduceOp::kSum);
    Tensor all = Tensor::Empty({p * n}, dtype);
    world_->AllGather(t, all);
    for (int j = 0; j < p; ++j) EXPECT_TRUE(SameBits(t, all, j * n)) << "rank " << j << " differs";
  }
}

// Several all-reduces in flight, with another collective among them, waited in an order that differs
// between ranks, some completed by polling.
TEST_F(Collectives, NonBlockingAllReducesCompleteInAnyWaitOrder) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int p = world_->size(), r = world_->rank();
  const std::vector<int64_t> sizes = {513, 3, 2000, 64, 0, 129};
  std::vector<Tensor> tensors;
  std::vector<Request> requests;
  for (size_t k = 0; k < sizes.size(); ++k) {
    DType dtype = kReducible[k % kReducible.size()];
    tensors.push_back(RankData(seed_, r, sizes[k], dtype, static_cast<int>(k)));
    requests.push_back(world_->IAllReduce(tensors.back(), k % 3 == 2 ? ReduceOp::kMax : ReduceOp::kSum));
  }
  // Another collective started in between must not be confused with the all-reduces' phases.
  Tensor gathered = Tensor::Empty({p * 5}, DType::kI64);
  Tensor mine = RankData(seed_, r, 5, DType::kI64, 99);
  Request gather = world_->IAllGather(mine, gathered);
  if (r % 2 == 1) {
    for (size_t k = requests.size(); k-- > 0;) requests[k].Wait();
  } else {
    while (!requests[2].Test()) {
    }
    for (Request& q : requests) q.Wait();
  }
  gather.Wait();
  for (size_t k = 0; k < sizes.size(); ++k) {
    DType dtype = kReducible[k % kReducible.size()];
    Tensor want = ExpectedReduce(seed_, p, sizes[k], dtype, k % 3 == 2 ? ReduceOp::kMax : ReduceOp::kSum,
                                 static_cast<int>(k));
    EXPECT_TRUE(SameBits(tensors[k], want)) << "all-reduce " << k;
  }
  for (int j = 0; j < p; ++j)
    EXPECT_TRUE(SameBits(gathered.Rows(j * 5, j * 5 + 5), RankData(seed_, j, 5, DType::kI64, 99)));
  EXPECT_EQ(world_->pending_requests(), 0);
}

// MPI's non-blocking semantics: rank 0 waits for the all-reduce before it receives, while rank 1 sends
// (a message large enough to need the receiver) before it waits. The all-reduce must complete from
// rank 1's blocking send alone; an all-reduce that needs a second step from each rank's Wait would hang.
TEST_F(Collectives, NonBlockingAllReduceCompletesWhileAPeerBlocks) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int p = world_->size(), r = world_->rank();
  if (p == 1) GTEST_SKIP() << "needs a peer";
  Tensor t = RankData(seed_, r, 1001, DType::kF32);
  const int64_t big = 1 << 20;  // 4 MiB: far above Open MPI's eager limits
  Request q = world_->IAllReduce(t, ReduceOp::kSum);
  if (r == 0) {
    q.Wait();
    Tensor in = Tensor::Empty({big}, DType::kF32);
    world_->Recv(in, 1, 11);
    EXPECT_TRUE(SameBits(in, RankData(seed_, 1, big, DType::kF32, 11)));
  } else if (r == 1) {
    world_->Send(RankData(seed_, 1, big, DType::kF32, 11), 0, 11);
    q.Wait();
  } else {
    q.Wait();
  }
  EXPECT_TRUE(SameBits(t, ExpectedReduce(seed_, p, 1001, DType::kF32, ReduceOp::kSum)));
}

TEST_F(Collectives, ReduceScatterMatchesTheAllReduceSliceBitwise) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int p = world_->size(), r = world_->rank();
  for (DType dtype : kReducible) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
      for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{33}, int64_t{1000}}) {
        SCOPED_TRACE(std::string(DTypeName(dtype)) + " " + ReduceOpName(op) + " n " + std::to_string(n));
        Tensor send = RankData(seed_, r, p * n, dtype);
        Tensor recv = Tensor::Empty({n}, dtype);
        Tensor recv_nb = Tensor::Empty({n}, dtype);
        world_->ReduceScatter(send, recv, op);
        Request q = world_->IReduceScatter(send, recv_nb, op);
        q.Wait();
        Tensor want = ExpectedReduce(seed_, p, p * n, dtype, op);
        EXPECT_TRUE(SameBits(recv, want, r * n));
        EXPECT_TRUE(SameBits(recv_nb, want, r * n));
        Tensor all = send.Clone();
        world_->AllReduce(all, op);
        EXPECT_TRUE(SameBits(recv, all, r * n));
      }
    }
  }
}

TEST_F(Collectives, AllGatherPlacesRankJAtChunkJ) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int p = world_->size(), r = world_->rank();
  for (DType dtype : {DType::kF32, DType::kF64, DType::kI32, DType::kI64, DType::kBF16}) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{257}}) {
      SCOPED_TRACE(std::string(DTypeName(dtype)) + " n " + std::to_string(n));
      Tensor send = RankData(seed_, r, n, dtype);
      Tensor recv = Tensor::Empty({p * n}, dtype);
      Tensor recv_nb = Tensor::Empty({p * n}, dtype);
      world_->AllGather(send, recv);
      world_->IAllGather(send, recv_nb).Wait();
      for (int j = 0; j < p; ++j) {
        Tensor want = RankData(seed_, j, n, dtype);
        EXPECT_TRUE(SameBits(want, recv, j * n)) << "chunk " << j;
        EXPECT_TRUE(SameBits(want, recv_nb, j * n)) << "chunk " << j << " (non-blocking)";
      }
    }
  }
}

TEST_F(Collectives, BroadcastFromEveryRoot) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int p = world_->size(), r = world_->rank();
  for (int root = 0; root < p; ++root) {
    for (DType dtype : {DType::kF64, DType::kI32, DType::kBF16}) {
      SCOPED_TRACE(std::string(DTypeName(dtype)) + " root " + std::to_string(root));
      Tensor t = RankData(seed_, r, 123, dtype, root);
      Tensor t_nb = RankData(seed_, r, 123, dtype, root + 1000);
      world_->Broadcast(t, root);
      Request q = world_->IBroadcast(t_nb, root);
      q.Wait();
      EXPECT_TRUE(SameBits(t, RankData(seed_, root, 123, dtype, root)));
      EXPECT_TRUE(SameBits(t_nb, RankData(seed_, root, 123, dtype, root + 1000)));
    }
  }
}

// counts[i][j]: elements rank i sends rank j; zeros on purpose (a third of the pairs, and every pair
// involving rank 0 in one round).
int64_t PairCount(uint64_t seed, int round, int i, int j) {
  if (round == 1 && (i == 0 || j == 0)) return 0;
  if (round == 2) return 0;
  std::mt19937_64 rng(seed ^ (static_cast<uint64_t>(round) << 40) ^ (static_cast<uint64_t>(i) << 20) ^
                      static_cast<uint64_t>(j));
  int64_t c = static_cast<int64_t>(rng() % 3) * static_cast<int64_t>(1 + rng() % 40);
  return c;
}

TEST_F(Collectives, AllToAllVWithUnevenAndZeroCounts) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int p = world_->size(), r = world_->rank();
  for (int round = 0; round < 3; ++round) {
    for (DType dtype : {DType::kF32, DType::kI64, DType::kBF16}) {
      for (bool blocking : {true, false}) {
        SCOPED_TRACE("round " + std::to_string(round) + " " + std::string(DTypeName(dtype)) +
                     (blocking ? " blocking" : " non-blocking"));
        std::vector<int64_t> send_counts(static_cast<size_t>(p)), recv_counts(static_cast<size_t>(p));
        int64_t send_total = 0, recv_total = 0;
        for (int j = 0; j < p; ++j) {
          send_counts[j] = PairCount(seed_, round, r, j);
          recv_counts[j] = PairCount(seed_, round, j, r);
          send_total += send_counts[j];
          recv_total += recv_counts[j];
        }
        // Block (i -> j) is RankData(seed, i, count, dtype, salt j); buffers carry 5 spare elements.
        Tensor send = Tensor::Empty({send_total + 5}, dtype);
        int64_t off = 0;
        for (int j = 0; j < p; ++j) {
          Tensor block = RankData(seed_, r, send_counts[j], dtype, 100 * round + j);
          std::memcpy(static_cast<char*>(send.raw()) + off * DTypeSize(dtype), block.raw(), block.nbytes());
          off += send_counts[j];
        }
        Tensor sentinel = RankData(seed_, r + 77, recv_total + 5, dtype);
        Tensor recv = sentinel.Clone();
        if (blocking) {
          world_->AllToAllV(send, send_counts, recv, recv_counts);
        } else {
          Request q = world_->IAllToAllV(send, send_counts, recv, recv_counts);
          q.Wait();
        }
        off = 0;
        for (int i = 0; i < p; ++i) {
          Tensor want = RankData(seed_, i, recv_counts[i], dtype, 100 * round + r);
          EXPECT_TRUE(SameBits(recv.Rows(off, off + recv_counts[i]), want)) << "block from rank " << i;
          off += recv_counts[i];
        }
        EXPECT_TRUE(SameBits(recv.Rows(recv_total, recv_total + 5), sentinel, recv_total))
            << "elements past the received total were written";
      }
    }
  }
}

// Every rank creates a file and then enters the barrier; after it, every rank must see every file.
TEST_F(Collectives, BarrierOrdersWhatHappensBeforeAndAfter) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int p = world_->size(), r = world_->rank();
  auto path = [&](int round, int rank) {
    return ::testing::TempDir() + "fathom_barrier_" + std::to_string(seed_) + "_" + std::to_string(round) +
           "_" + std::to_string(rank);
  };
  for (int round = 0; round < 2; ++round) {
    if (r == p - 1) usleep(50000);  // the last rank arrives late
    std::FILE* f = std::fopen(path(round, r).c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
    if (round == 0) {
      world_->Barrier();
    } else {
      Request q = world_->IBarrier();
      while (!q.Test()) {
      }
    }
    for (int j = 0; j < p; ++j) EXPECT_EQ(access(path(round, j).c_str(), F_OK), 0) << "file of rank " << j;
    world_->Barrier();  // nobody deletes before everybody looked
    std::remove(path(round, r).c_str());
  }
}

class PointToPoint : public Collectives {};

TEST_F(PointToPoint, NonBlockingRing) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int p = world_->size(), r = world_->rank();
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  for (DType dtype : {DType::kF32, DType::kF64, DType::kI32, DType::kI64, DType::kBF16}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    Tensor out = RankData(seed_, r, 1000, dtype);
    Tensor in = Tensor::Empty({1000}, dtype);
    Request rq = world_->IRecv(in, prev, 3);
    Request sq = world_->ISend(out, next, 3);
    rq.Wait();
    sq.Wait();
    EXPECT_TRUE(SameBits(in, RankData(seed_, prev, 1000, dtype)));
  }
}

TEST_F(PointToPoint, BlockingPairsAndMessageOrderPerTag) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int p = world_->size(), r = world_->rank();
  if (p == 1) GTEST_SKIP() << "a blocking send to oneself would wait for its own receive";
  const int partner = r % 2 == 0 ? r + 1 : r - 1;
  if (partner >= p) return;  // the odd one out of an odd world
  // Three messages on tag 1 and one on tag 2, interleaved: tag 1 arrives in send order.
  auto message = [&](int from, int k) { return RankData(seed_, from, 10 + k, DType::kF32, k); };
  std::vector<Tensor> got;
  for (int k = 0; k < 4; ++k) got.push_back(Tensor::Empty({10 + k}, DType::kF32));
  auto send_all = [&] {
    world_->Send(message(r, 0), partner, 1);
    world_->Send(message(r, 3), partner, 2);
    world_->Send(message(r, 1), partner, 1);
    world_->Send(message(r, 2), partner, 1);
  };
  auto recv_all = [&] {
    world_->Recv(got[0], partner, 1);
    world_->Recv(got[1], partner, 1);
    world_->Recv(got[2], partner, 1);
    world_->Recv(got[3], partner, 2);
  };
  if (r % 2 == 0) {
    send_all();
    recv_all();
  } else {
    recv_all();
    send_all();
  }
  for (int k = 0; k < 4; ++k) EXPECT_TRUE(SameBits(got[k], message(partner, k))) << "message " << k;
}

TEST_F(PointToPoint, MessagesToSelf) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int r = world_->rank();
  Tensor out = RankData(seed_, r, 77, DType::kF64);
  Tensor in = Tensor::Empty({77}, DType::kF64);
  Request rq = world_->IRecv(in, r, 9);
  Request sq = world_->ISend(out, r, 9);
  sq.Wait();
  rq.Wait();
  EXPECT_TRUE(SameBits(in, out));
}

}  // namespace
}  // namespace fathom
