// NcclCommunicator under mpirun, one rank per GPU: every collective against values computed on the host,
// all-to-all with uneven and zero counts, point-to-point rings, stream ordering (without kernels: copies and
// host functions on the compute stream), barrier, split, and the launch check for too few GPUs.
//
// Each rank's input is drawn from (shared seed, rank, salt), so every rank recomputes every other rank's
// input and the expected result on the host. Sums are compared with the bound of any summation order (NCCL
// does not sum in rank order, nccl_communicator.h) and, with two ranks, bitwise (one addition commutes);
// every reduced result is also checked to be bitwise equal on every rank.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "framework/cuda/check.h"
#include "framework/cuda/device_arena.h"
#include "gtest/gtest.h"
#include "parallel/cuda/nccl_communicator.h"
#include "parallel/launch_env.h"
#include "parallel/mpi_communicator.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu_mpi/gpu_mpi_support.h"

namespace fathom {
namespace {

// ---- process-wide set-up ----------------------------------------------------------------------------
// NCCL's initialisation takes seconds, so one world communicator serves every test. Built by a global
// test environment (after MpiInit, torn down before MpiFinalize), on a non-blocking compute stream of its
// own, so that nothing is ordered by the legacy default stream behind the tests' backs.
using TestWorld = testing::NcclTestWorld;

TestWorld& World() {
  static TestWorld* world = new TestWorld;
  return *world;
}

class NcclEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { World().Join(); }
  void TearDown() override { World().Leave(); }
};

::testing::Environment* const kNcclEnvironment = ::testing::AddGlobalTestEnvironment(new NcclEnvironment);

// ---- data -------------------------------------------------------------------------------------------

using testing::SharedSeed;

// Rank r's input: f32/f64 normal with magnitudes spread over six decades (so that the order of a sum
// matters), bf16 rounded from such f32 values, i32/i64 in [-1000, 1000], fp8 random bytes (moved, never
// interpreted).
Tensor RankData(uint64_t seed, int r, int64_t n, DType dtype, int salt = 0) {
  std::mt19937_64 rng(seed * 1000003ull + static_cast<uint64_t>(r) * 7919ull + static_cast<uint64_t>(salt));
  if (dtype == DType::kBF16) return RankData(seed, r, n, DType::kF32, salt).To(DType::kBF16);
  Tensor t = Tensor::Empty({n}, dtype);
  if (dtype == DType::kF32 || dtype == DType::kF64) {
    testing::FillRandom(t, rng);
    std::uniform_real_distribution<double> decade(-3.0, 3.0);
    DispatchFloat(dtype, "RankData", [&](auto tag) {
      using T = decltype(tag);
      T* p = t.data<T>();
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(p[i] * std::pow(10.0, decade(rng)));
    });
  } else if (dtype == DType::kI32 || dtype == DType::kI64) {
    std::uniform_int_distribution<int> u(-1000, 1000);
    for (int64_t i = 0; i < n; ++i) {
      if (dtype == DType::kI32) t.data<int32_t>()[i] = u(rng);
      if (dtype == DType::kI64) t.data<int64_t>()[i] = u(rng);
    }
  } else {
    unsigned char* p = static_cast<unsigned char*>(t.raw());
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<unsigned char>(rng() & 0xff);
  }
  return t;
}

std::string Name(DType d) { return std::string(DTypeName(d)); }

// Bitwise equality of got with want[offset, offset + got.numel()); reports the first differing element.
::testing::AssertionResult SameBits(const Tensor& got, const Tensor& want, int64_t offset = 0) {
  if (got.dtype() != want.dtype()) return ::testing::AssertionFailure() << "dtype differs";
  const size_t es = DTypeSize(got.dtype());
  const char* g = static_cast<const char*>(got.raw());
  const char* w = static_cast<const char*>(want.raw()) + static_cast<size_t>(offset) * es;
  for (int64_t i = 0; i < got.numel(); ++i) {
    if (std::memcmp(g + i * es, w + i * es, es) != 0) {
      return ::testing::AssertionFailure()
             << "element " << i << " of " << got.numel() << " (" << Name(got.dtype()) << "): got "
             << got.Item(i) << ", want " << want.Item(offset + i);
    }
  }
  return ::testing::AssertionSuccess();
}

// The distance between 1 and the next value of the dtype.
double Epsilon(DType d) {
  if (d == DType::kF64) return std::ldexp(1.0, -52);
  if (d == DType::kF32) return std::ldexp(1.0, -23);
  return std::ldexp(1.0, -7);  // bf16: 8 significant bits
}

// got[i] against the reduction over ranks 0..p-1 of inputs[r][offset + i]:
//   max, integers: exactly.
//   float sums: |got - exact| <= p * eps * sum_r |x_r|. Any summation order of p terms makes p-1
//     roundings, each at most eps/2 relative to a partial sum bounded by sum_r |x_r| (for bf16, NCCL rounds
//     every partial sum to bf16, which the same bound covers); p * eps leaves a factor of two to spare and
//     still fails on a missing or doubled contribution (at least eps-relative larger, for values spread
//     over decades, by orders of magnitude). With two ranks, f32/f64 sums must match bitwise the host's
//     x_0 + x_1 in the dtype: one addition, commutative, correctly rounded.
::testing::AssertionResult MatchesHostReduction(const Tensor& got, const std::vector<Tensor>& inputs,
                                                int64_t offset, ReduceOp op) {
  const int p = static_cast<int>(inputs.size());
  const DType d = got.dtype();
  const bool integer = d == DType::kI32 || d == DType::kI64;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.Item(i);
    long double exact = 0, magnitude = 0;
    double max = inputs[0].Item(offset + i);
    for (int r = 0; r < p; ++r) {
      const double x = inputs[static_cast<size_t>(r)].Item(offset + i);
      exact += x;
      magnitude += std::fabs(x);
      max = std::max(max, x);
    }
    bool ok = true;
    std::string want;
    if (op == ReduceOp::kMax) {
      ok = g == max;
      want = std::to_string(max);
    } else if (integer) {
      ok = static_cast<long double>(g) == exact;
      want = std::to_string(static_cast<double>(exact));
    } else if (p == 2 && d != DType::kBF16) {
      const double x0 = inputs[0].Item(offset + i), x1 = inputs[1].Item(offset + i);
      const double sum =
          d == DType::kF32 ? static_cast<double>(static_cast<float>(x0) + static_cast<float>(x1)) : x0 + x1;
      ok = g == sum;
      want = std::to_string(sum) + " bitwise";
    } else {
      const long double bound = static_cast<long double>(p) * Epsilon(d) * magnitude;
      ok = std::fabs(static_cast<long double>(g) - exact) <= bound;
      want = std::to_string(static_cast<double>(exact)) + " within " +
             std::to_string(static_cast<double>(bound));
    }
    if (!ok) {
      return ::testing::AssertionFailure() << ReduceOpName(op) << " element " << i << " of " << got.numel()
                                           << " (" << Name(d) << "): got " << g << ", want " << want;
    }
  }
  return ::testing::AssertionSuccess();
}

// ---- fixture ----------------------------------------------------------------------------------------

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!World().skip.empty()) GTEST_SKIP() << World().skip;
    seed_ = SharedSeed(mpi());
    arena_ = std::make_unique<cuda::DeviceArena>("nccl_test", size_t{256} << 20);
  }
  void TearDown() override {
    if (!arena_) return;
    comm().Synchronize();
    FATHOM_CUDA_CHECK(cudaStreamSynchronize(World().compute));
    EXPECT_EQ(comm().pending_requests(), 0);
    arena_.reset();
  }

  NcclCommunicator& comm() { return *World().nccl; }
  MpiCommunicator& mpi() { return *World().mpi; }
  cudaStream_t compute() { return World().compute; }
  int p() { return comm().size(); }
  int r() { return comm().rank(); }

  // A device copy of a host tensor, complete when this returns.
  Tensor ToDevice(const Tensor& host) {
    Tensor d = arena_->Alloc(host.shape(), host.dtype());
    if (host.nbytes() == 0) return d;
    FATHOM_CUDA_CHECK(cudaMemcpyAsync(d.raw(), host.raw(), host.nbytes(), cudaMemcpyHostToDevice, compute()));
    FATHOM_CUDA_CHECK(cudaStreamSynchronize(compute()));
    return d;
  }
  // The host copy of a device tensor after everything started so far: the communicator's work first (a
  // host wait with its timeout, so that a hang is reported rather than waited out), then the compute stream.
  Tensor ToHost(const Tensor& device) {
    comm().Synchronize();
    Tensor h = Tensor::Empty(device.shape(), device.dtype());
    if (h.nbytes() == 0) return h;
    FATHOM_CUDA_CHECK(
        cudaMemcpyAsync(h.raw(), device.raw(), device.nbytes(), cudaMemcpyDeviceToHost, compute()));
    FATHOM_CUDA_CHECK(cudaStreamSynchronize(compute()));
    return h;
  }
  // Every rank's host tensor compared with this rank's: results of reductions must be bitwise equal.
  ::testing::AssertionResult EqualOnEveryRank(const Tensor& host) {
    Tensor all = Tensor::Empty({p() * host.numel()}, host.dtype());
    mpi().AllGather(host, all);
    for (int j = 0; j < p(); ++j) {
      ::testing::AssertionResult same = SameBits(host, all, j * host.numel());
      if (!same) return ::testing::AssertionFailure() << "rank " << j << " differs: " << same.message();
    }
    return ::testing::AssertionSuccess();
  }
  std::vector<Tensor> AllInputs(int64_t n, DType dtype, int salt) {
    std::vector<Tensor> inputs;
    for (int j = 0; j < p(); ++j) inputs.push_back(RankData(seed_, j, n, dtype, salt));
    return inputs;
  }

  uint64_t seed_ = 0;
  std::unique_ptr<cuda::DeviceArena> arena_;
};

const std::vector<DType> kReducible = {DType::kF32, DType::kF64, DType::kBF16, DType::kI32, DType::kI64};
const std::vector<DType> kEveryDType = {DType::kF32, DType::kF64,    DType::kBF16,  DType::kI32,
                                        DType::kI64, DType::kF8E4M3, DType::kF8E5M2};

// A host function for the compute stream: holds it for 200 ms, so that anything not ordered after it runs
// first. (Host functions must not call CUDA.)
void HoldTheStream(void*) { std::this_thread::sleep_for(std::chrono::milliseconds(200)); }

// ---- collectives ------------------------------------------------------------------------------------

class NcclCollectives : public NcclTest {};

TEST_F(NcclCollectives, AllReduceSumMatchesTheHostAndIsBitwiseEqualOnEveryRank) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (DType dtype : kReducible) {
    // 1 << 20 + 3 f32: several MiB, so NCCL pipelines it over channels and chunks; 0: nothing to do.
    std::vector<int64_t> sizes = {0, 1, 37, 4099};
    if (dtype == DType::kF32) sizes.push_back((int64_t{1} << 20) + 3);
    for (int64_t n : sizes) {
      SCOPED_TRACE(Name(dtype) + " n " + std::to_string(n));
      Tensor t = ToDevice(RankData(seed_, r(), n, dtype, 1));
      comm().AllReduce(t, ReduceOp::kSum);
      Tensor got = ToHost(t);
      EXPECT_TRUE(MatchesHostReduction(got, AllInputs(n, dtype, 1), 0, ReduceOp::kSum));
      EXPECT_TRUE(EqualOnEveryRank(got));
    }
  }
}

TEST_F(NcclCollectives, AllReduceMaxIsExact) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (DType dtype : kReducible) {
    SCOPED_TRACE(Name(dtype));
    Tensor t = ToDevice(RankData(seed_, r(), 4099, dtype, 2));
    comm().AllReduce(t, ReduceOp::kMax);
    Tensor got = ToHost(t);
    EXPECT_TRUE(MatchesHostReduction(got, AllInputs(4099, dtype, 2), 0, ReduceOp::kMax));
  }
}

TEST_F(NcclCollectives, ReduceScatterGivesEachRankItsChunkOfTheReduction) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (DType dtype : kReducible) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
      for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{33}, int64_t{4099}}) {
        SCOPED_TRACE(Name(dtype) + " " + ReduceOpName(op) + " n " + std::to_string(n));
        Tensor send = ToDevice(RankData(seed_, r(), p() * n, dtype, 3));
        Tensor recv = ToDevice(RankData(seed_, r() + 100, n, dtype, 4));  // stale contents to overwrite
        Request q = comm().IReduceScatter(send, recv, op);
        q.Wait();
        Tensor got = ToHost(recv);
        EXPECT_TRUE(MatchesHostReduction(got, AllInputs(p() * n, dtype, 3), r() * n, op));
        EXPECT_TRUE(SameBits(ToHost(send), RankData(seed_, r(), p() * n, dtype, 3))) << "send was modified";
      }
    }
  }
}

TEST_F(NcclCollectives, AllGatherPlacesRankJAtChunkJ) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (DType dtype : kEveryDType) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{257}, int64_t{100003}}) {
      SCOPED_TRACE(Name(dtype) + " n " + std::to_string(n));
      Tensor send = ToDevice(RankData(seed_, r(), n, dtype, 5));
      Tensor recv = ToDevice(RankData(seed_, r() + 100, p() * n, dtype, 6));
      comm().AllGather(send, recv);
      Tensor got = ToHost(recv);
      for (int j = 0; j < p(); ++j) {
        EXPECT_TRUE(SameBits(got.Rows(j * n, (j + 1) * n), RankData(seed_, j, n, dtype, 5))) << "chunk " << j;
      }
    }
  }
}

TEST_F(NcclCollectives, BroadcastFromEveryRoot) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (int root = 0; root < p(); ++root) {
    for (DType dtype : {DType::kF64, DType::kBF16, DType::kF8E4M3, DType::kI64}) {
      SCOPED_TRACE(Name(dtype) + " root " + std::to_string(root));
      Tensor t = ToDevice(RankData(seed_, r(), 1237, dtype, 7 + root));
      Request q = comm().IBroadcast(t, root);
      q.Wait();
      EXPECT_TRUE(SameBits(ToHost(t), RankData(seed_, root, 1237, dtype, 7 + root)));
    }
  }
}

// counts[i][j]: elements rank i sends rank j. Round 0: uneven, a third of the pairs zero; round 1: every
// pair involving rank 0 zero (rank 0 neither sends nor receives); round 2: everything zero.
int64_t PairCount(uint64_t seed, int round, int i, int j) {
  if (round == 1 && (i == 0 || j == 0)) return 0;
  if (round == 2) return 0;
  std::mt19937_64 rng(seed ^ (static_cast<uint64_t>(round) << 40) ^ (static_cast<uint64_t>(i) << 20) ^
                      static_cast<uint64_t>(j));
  return static_cast<int64_t>(rng() % 3) * static_cast<int64_t>(1 + rng() % 3000);
}

TEST_F(NcclCollectives, AllToAllVWithUnevenAndZeroCounts) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (int round = 0; round < 3; ++round) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF8E4M3, DType::kI64}) {
      SCOPED_TRACE("round " + std::to_string(round) + " " + Name(dtype));
      std::vector<int64_t> send_counts(static_cast<size_t>(p())), recv_counts(static_cast<size_t>(p()));
      int64_t send_total = 0, recv_total = 0;
      for (int j = 0; j < p(); ++j) {
        send_counts[j] = PairCount(seed_, round, r(), j);
        recv_counts[j] = PairCount(seed_, round, j, r());
        send_total += send_counts[j];
        recv_total += recv_counts[j];
      }
      // Block (i -> j) is RankData(seed, i, count, dtype, 1000 * round + j); buffers carry 5 spare elements.
      const size_t es = DTypeSize(dtype);
      Tensor send_host = RankData(seed_, r() + 200, send_total + 5, dtype);
      int64_t off = 0;
      for (int j = 0; j < p(); ++j) {
        Tensor block = RankData(seed_, r(), send_counts[j], dtype, 1000 * round + j);
        std::memcpy(static_cast<char*>(send_host.raw()) + off * es, block.raw(), block.nbytes());
        off += send_counts[j];
      }
      Tensor sentinel = RankData(seed_, r() + 300, recv_total + 5, dtype);
      Tensor send = ToDevice(send_host);
      Tensor recv = ToDevice(sentinel);
      Request q = comm().IAllToAllV(send, send_counts, recv, recv_counts);
      q.Wait();
      Tensor got = ToHost(recv);
      off = 0;
      for (int i = 0; i < p(); ++i) {
        Tensor want = RankData(seed_, i, recv_counts[i], dtype, 1000 * round + r());
        EXPECT_TRUE(SameBits(got.Rows(off, off + recv_counts[i]), want)) << "block from rank " << i;
        off += recv_counts[i];
      }
      EXPECT_TRUE(SameBits(got.Rows(recv_total, recv_total + 5), sentinel, recv_total))
          << "elements past the received total were written";
    }
  }
}

// Several operations in flight at once, waited in reverse order, one completed by polling Test().
TEST_F(NcclCollectives, OperationsInFlightTogetherCompleteInAnyWaitOrder) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const std::vector<int64_t> sizes = {513, 3, 20000, 64, 129};
  std::vector<Tensor> tensors;
  std::vector<Request> requests;
  for (size_t k = 0; k < sizes.size(); ++k) {
    DType dtype = kReducible[k % kReducible.size()];
    tensors.push_back(ToDevice(RankData(seed_, r(), sizes[k], dtype, 10 + static_cast<int>(k))));
    requests.push_back(comm().IAllReduce(tensors.back(), k % 2 == 1 ? ReduceOp::kMax : ReduceOp::kSum));
  }
  Tensor mine = ToDevice(RankData(seed_, r(), 5, DType::kI64, 99));
  Tensor gathered = arena_->Alloc({p() * 5}, DType::kI64);
  Request gather = comm().IAllGather(mine, gathered);
  EXPECT_EQ(comm().pending_requests(), static_cast<int64_t>(sizes.size()) + 1);
  while (!requests[2].Test()) {
  }
  for (size_t k = requests.size(); k-- > 0;) requests[k].Wait();
  gather.Wait();
  EXPECT_EQ(comm().pending_requests(), 0);
  for (size_t k = 0; k < sizes.size(); ++k) {
    DType dtype = kReducible[k % kReducible.size()];
    SCOPED_TRACE("operation " + std::to_string(k) + " " + Name(dtype));
    EXPECT_TRUE(MatchesHostReduction(ToHost(tensors[k]), AllInputs(sizes[k], dtype, 10 + static_cast<int>(k)),
                                     0, k % 2 == 1 ? ReduceOp::kMax : ReduceOp::kSum));
  }
  Tensor got = ToHost(gathered);
  for (int j = 0; j < p(); ++j) {
    EXPECT_TRUE(SameBits(got.Rows(j * 5, j * 5 + 5), RankData(seed_, j, 5, DType::kI64, 99))) << "rank " << j;
  }
}

// ---- point to point ---------------------------------------------------------------------------------

class NcclPointToPoint : public NcclTest {};

// Every rank posts its receive and its send, then waits: NCCL needs both in one group (the batch), or
// every rank's send would wait for a receive queued behind its own send. With one rank: a send to oneself.
TEST_F(NcclPointToPoint, NonBlockingRing) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int next = (r() + 1) % p(), prev = (r() + p() - 1) % p();
  for (DType dtype : kEveryDType) {
    SCOPED_TRACE(Name(dtype));
    Tensor out = ToDevice(RankData(seed_, r(), 10007, dtype, 20));
    Tensor in = ToDevice(RankData(seed_, r() + 100, 10007, dtype, 21));
    Request rq = comm().IRecv(in, prev, 3);
    Request sq = comm().ISend(out, next, 3);
    rq.Wait();
    sq.Wait();
    EXPECT_TRUE(SameBits(ToHost(in), RankData(seed_, prev, 10007, dtype, 20)));
  }
}

// Blocking pairs, each rank's sends and receives with its partner posted in matching order (NCCL pairs
// the k-th send with the k-th receive): three messages of different sizes arrive in the order sent.
TEST_F(NcclPointToPoint, BlockingPairsArriveInPostingOrder) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  if (p() == 1) GTEST_SKIP() << "a blocking send to oneself needs its receive in the same batch";
  const int partner = r() % 2 == 0 ? r() + 1 : r() - 1;
  if (partner >= p()) return;  // the odd one out of an odd world
  auto message = [&](int from, int k) { return RankData(seed_, from, 1000 + 777 * k, DType::kF32, 30 + k); };
  std::vector<Tensor> out, in;
  for (int k = 0; k < 3; ++k) {
    out.push_back(ToDevice(message(r(), k)));
    in.push_back(ToDevice(RankData(seed_, r() + 100, 1000 + 777 * k, DType::kF32, 40 + k)));
  }
  auto send_all = [&] {
    for (int k = 0; k < 3; ++k) comm().Send(out[k], partner, 1);
  };
  auto recv_all = [&] {
    for (int k = 0; k < 3; ++k) comm().Recv(in[k], partner, 1);
  };
  if (r() % 2 == 0) {
    send_all();
    recv_all();
  } else {
    recv_all();
    send_all();
  }
  for (int k = 0; k < 3; ++k) EXPECT_TRUE(SameBits(ToHost(in[k]), message(partner, k))) << "message " << k;
}

TEST_F(NcclPointToPoint, SendToOneselfInOneBatch) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  Tensor out = ToDevice(RankData(seed_, r(), 333, DType::kBF16, 50));
  Tensor in = ToDevice(RankData(seed_, r() + 100, 333, DType::kBF16, 51));
  Request sq = comm().ISend(out, r(), 0);
  Request rq = comm().IRecv(in, r(), 0);
  sq.Wait();
  rq.Wait();
  EXPECT_TRUE(SameBits(ToHost(in), RankData(seed_, r(), 333, DType::kBF16, 50)));
}

// ---- streams ----------------------------------------------------------------------------------------

class NcclStreams : public NcclTest {};

// Page-locked host memory: an asynchronous copy from pageable memory may wait for the stream on the host,
// which would order the test's operations by itself and hide a missing event.
struct PinnedI64 {
  explicit PinnedI64(int64_t n) : n(n) {
    FATHOM_CUDA_CHECK(
        cudaMallocHost(reinterpret_cast<void**>(&data), static_cast<size_t>(n) * sizeof(int64_t)));
  }
  ~PinnedI64() { FATHOM_CUDA_CHECK(cudaFreeHost(data)); }
  size_t bytes() const { return static_cast<size_t>(n) * sizeof(int64_t); }
  int64_t n;
  int64_t* data = nullptr;
};

// The compute stream is held for 200 ms, then the rank's value is copied into the buffer; the all-reduce
// is started right away (the host does not wait). Only the start event keeps NCCL from reducing the stale
// contents. After Wait(), a copy back queued on the compute stream - with no host synchronisation before it
// is queued - must see the reduced values: only the done event keeps it from reading the rank's own value.
TEST_F(NcclStreams, AllReduceRunsAfterComputeWorkAndWaitOrdersTheComputeStream) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t n = 1000;
  PinnedI64 in(n), out(n);
  Tensor fresh = RankData(seed_, r(), n, DType::kI64, 60);
  std::memcpy(in.data, fresh.raw(), in.bytes());
  Tensor buffer = ToDevice(RankData(seed_, r(), n, DType::kI64, 61));  // stale contents
  FATHOM_CUDA_CHECK(cudaLaunchHostFunc(compute(), HoldTheStream, nullptr));
  FATHOM_CUDA_CHECK(cudaMemcpyAsync(buffer.raw(), in.data, in.bytes(), cudaMemcpyHostToDevice, compute()));
  Request q = comm().IAllReduce(buffer, ReduceOp::kSum);
  q.Wait();
  FATHOM_CUDA_CHECK(cudaMemcpyAsync(out.data, buffer.raw(), out.bytes(), cudaMemcpyDeviceToHost, compute()));
  comm().Synchronize();
  FATHOM_CUDA_CHECK(cudaStreamSynchronize(compute()));
  Tensor got = Tensor::Empty({n}, DType::kI64);
  std::memcpy(got.raw(), out.data, out.bytes());
  EXPECT_TRUE(MatchesHostReduction(got, AllInputs(n, DType::kI64, 60), 0, ReduceOp::kSum));
}

// The same through a batch of point-to-point operations, on a second compute stream installed with
// set_compute_stream: the batch starts after that stream's work and its Wait() orders that stream.
TEST_F(NcclStreams, PointToPointBatchFollowsTheComputeStreamItWasStartedOn) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t n = 2000;
  const int next = (r() + 1) % p(), prev = (r() + p() - 1) % p();
  cudaStream_t other = nullptr;
  FATHOM_CUDA_CHECK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  PinnedI64 in(n), out(n);
  Tensor fresh = RankData(seed_, r(), n, DType::kI64, 70);
  std::memcpy(in.data, fresh.raw(), in.bytes());
  Tensor send = ToDevice(RankData(seed_, r(), n, DType::kI64, 71));  // stale
  Tensor recv = ToDevice(RankData(seed_, r(), n, DType::kI64, 72));  // stale
  comm().set_compute_stream(other);
  EXPECT_EQ(comm().compute_stream(), other);
  FATHOM_CUDA_CHECK(cudaLaunchHostFunc(other, HoldTheStream, nullptr));
  FATHOM_CUDA_CHECK(cudaMemcpyAsync(send.raw(), in.data, in.bytes(), cudaMemcpyHostToDevice, other));
  Request sq = comm().ISend(send, next, 5);
  Request rq = comm().IRecv(recv, prev, 5);
  rq.Wait();
  sq.Wait();
  FATHOM_CUDA_CHECK(cudaMemcpyAsync(out.data, recv.raw(), out.bytes(), cudaMemcpyDeviceToHost, other));
  comm().Synchronize();
  FATHOM_CUDA_CHECK(cudaStreamSynchronize(other));
  comm().set_compute_stream(compute());
  FATHOM_CUDA_CHECK(cudaStreamDestroy(other));
  Tensor got = Tensor::Empty({n}, DType::kI64);
  std::memcpy(got.raw(), out.data, out.bytes());
  EXPECT_TRUE(SameBits(got, RankData(seed_, prev, n, DType::kI64, 70)));
}

// Test() answers without waiting and, once true, the result is there.
TEST_F(NcclStreams, TestPollsUntilTheOperationFinished) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  Tensor t = ToDevice(RankData(seed_, r(), 5000, DType::kI32, 80));
  // A warm-up of the same shape first: NCCL connects peers lazily, inside the first call that needs them,
  // which could outlast the hold below.
  Tensor warm_up = ToDevice(RankData(seed_, r(), 5000, DType::kI32, 81));
  comm().AllReduce(warm_up, ReduceOp::kSum);
  comm().Synchronize();
  FATHOM_CUDA_CHECK(cudaLaunchHostFunc(compute(), HoldTheStream, nullptr));
  Request q = comm().IAllReduce(t, ReduceOp::kSum);
  EXPECT_FALSE(q.Test()) << "finished although its compute stream is held for 200 ms";
  while (!q.Test()) {
  }
  EXPECT_FALSE(q.pending());
  Tensor got = Tensor::Empty({5000}, DType::kI32);
  FATHOM_CUDA_CHECK(cudaMemcpy(got.raw(), t.raw(), got.nbytes(), cudaMemcpyDeviceToHost));
  EXPECT_TRUE(MatchesHostReduction(got, AllInputs(5000, DType::kI32, 80), 0, ReduceOp::kSum));
}

struct FileProbe {
  std::string path;
  bool create = false;  // create the file (after holding the stream) or look for it
  bool seen = false;
};

void ProbeFile(void* arg) {
  auto* probe = static_cast<FileProbe*>(arg);
  if (probe->create) {
    HoldTheStream(nullptr);
    std::FILE* f = std::fopen(probe->path.c_str(), "w");
    if (f != nullptr) std::fclose(f);
  } else {
    probe->seen = access(probe->path.c_str(), F_OK) == 0;
  }
}

// The last rank's compute stream creates a file after 200 ms and then enters the barrier; every rank queues
// a look for the file on its compute stream after the barrier's Wait(). Every rank must find it: the
// barrier waited for the late rank's compute stream, and Wait() ordered each compute stream after it.
TEST_F(NcclStreams, BarrierOrdersEveryComputeStreamAfterEveryRanksEarlierWork) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int late = p() - 1;
  FileProbe make{::testing::TempDir() + "fathom_nccl_barrier_" + std::to_string(seed_), true, false};
  FileProbe look{make.path, false, false};
  if (r() == late) FATHOM_CUDA_CHECK(cudaLaunchHostFunc(compute(), ProbeFile, &make));
  Request q = comm().IBarrier();
  q.Wait();
  FATHOM_CUDA_CHECK(cudaLaunchHostFunc(compute(), ProbeFile, &look));
  comm().Synchronize();
  FATHOM_CUDA_CHECK(cudaStreamSynchronize(compute()));
  EXPECT_TRUE(look.seen) << "the look after the barrier ran before rank " << late << " created the file";
  mpi().Barrier();  // nobody deletes before everybody looked
  if (r() == late) std::remove(make.path.c_str());
}

// ---- groups -----------------------------------------------------------------------------------------

class NcclGroups : public NcclTest {};

TEST_F(NcclGroups, SplitByParityWithReversedKeys) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  std::unique_ptr<Communicator> g = comm().Split(r() % 2, -r(), "parity");
  auto* child = dynamic_cast<NcclCommunicator*>(g.get());
  ASSERT_NE(child, nullptr);  // the same on every rank: Split returns the implementation it was called on
  std::vector<int> want;
  for (int j = p() - 1; j >= 0; --j) {
    if (j % 2 == r() % 2) want.push_back(j);
  }
  EXPECT_EQ(g->name(), "parity");
  EXPECT_EQ(g->size(), static_cast<int>(want.size()));
  EXPECT_EQ(child->device(), comm().device());
  EXPECT_EQ(child->compute_stream(), comm().compute_stream());
  // Members, by world rank, in group-rank order, learnt over the group itself.
  Tensor mine = ToDevice(Tensor::FromVector({static_cast<double>(r())}, {1}, DType::kI32));
  Tensor members = arena_->Alloc({g->size()}, DType::kI32);
  g->AllGather(mine, members);
  child->Synchronize();  // the group's own stream: ToHost waits for the world's
  Tensor got_members = ToHost(members);
  std::vector<int> got(got_members.data<int32_t>(), got_members.data<int32_t>() + g->size());
  EXPECT_EQ(got, want);
  // A reduction over the group covers exactly its members.
  Tensor t = ToDevice(RankData(seed_, r(), 777, DType::kI64, 90));
  g->AllReduce(t, ReduceOp::kSum);
  child->Synchronize();
  std::vector<Tensor> inputs;
  for (int j : want) inputs.push_back(RankData(seed_, j, 777, DType::kI64, 90));
  EXPECT_TRUE(MatchesHostReduction(ToHost(t), inputs, 0, ReduceOp::kSum));
}

TEST_F(NcclGroups, SingletonSplitMovesToItself) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  std::unique_ptr<Communicator> self = comm().Split(r(), 0, "self");
  EXPECT_EQ(self->size(), 1);
  EXPECT_EQ(self->rank(), 0);
  Tensor t = ToDevice(RankData(seed_, r(), 100, DType::kF32, 95));
  self->AllReduce(t, ReduceOp::kSum);
  Tensor send = ToDevice(RankData(seed_, r(), 64, DType::kF8E5M2, 96));
  Tensor recv = arena_->Alloc({64}, DType::kF8E5M2);
  self->AllToAllV(send, {64}, recv, {64});
  static_cast<NcclCommunicator*>(self.get())->Synchronize();
  EXPECT_TRUE(SameBits(ToHost(t), RankData(seed_, r(), 100, DType::kF32, 95)));
  EXPECT_TRUE(SameBits(ToHost(recv), RankData(seed_, r(), 64, DType::kF8E5M2, 96)));
}

// ---- launch check -----------------------------------------------------------------------------------

// Run by ctest as gpu_mpi.nccl_too_few_gpus (two ranks, CUDA_VISIBLE_DEVICES=0, FATHOM_NCCL_LAUNCH_PROBE=1):
// creating the communicator must end the job with exit code 2 and a message naming the rank and its device
// count (the ctest entry matches the message). Anywhere else it skips.
TEST(NcclLaunchProbe, TooFewGpusEndsTheJobNamingTheRank) {
  if (std::getenv("FATHOM_NCCL_LAUNCH_PROBE") == nullptr) {
    GTEST_SKIP() << "run by ctest with two ranks on one visible GPU (gpu_mpi.nccl_too_few_gpus)";
  }
  MpiCommunicator& mpi = *World().mpi;
  std::unique_ptr<NcclCommunicator> nccl = NcclCommunicator::Create(mpi, LaunchEnvFromMpi());
  ADD_FAILURE() << "a communicator was created with " << cuda::DeviceCount() << " visible CUDA device(s) for "
                << mpi.size() << " ranks; expected the job to end";
}

}  // namespace
}  // namespace fathom
