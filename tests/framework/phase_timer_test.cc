// PhaseTimer on the CPU clock (no OpContext is current, so even a CUDA build times on steady_clock):
// busy-waits inside scopes give lower bounds, the test's own clock around everything an upper bound.
// No assertion depends on how fast the machine is: a phase must hold at least the time spent busy inside
// it, and the phases together at most the wall time around them.
#include "framework/phase_timer.h"

#include <chrono>
#include <iterator>
#include <random>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"

#ifdef FATHOM_WITH_CUDA
#include <cuda_runtime.h>

#include "framework/cuda/check.h"
#include "framework/cuda/device_arena.h"
#include "framework/ops.h"
#include "tests/gpu/gpu_test_support.h"
#endif

namespace fathom {
namespace {

using ::fathom::testing::TestSeed;

using Clock = std::chrono::steady_clock;

double MillisSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Spins until `ms` milliseconds of steady_clock have passed (a sleep could return early on some clocks).
void BusyWait(double ms) {
  const Clock::time_point start = Clock::now();
  while (MillisSince(start) < ms) {
  }
}

double Sum(const PhaseMillis& ms) {
  double s = 0;
  for (double v : ms) s += v;
  return s;
}

// The test's own phases (the model's phases are the layers' business: layers/phases.h).
const PhaseId kAttention = RegisterPhase("test/attention");
const PhaseId kExperts = RegisterPhase("test/experts");
const PhaseId kDispatchCombine = RegisterPhase("test/dispatch");
const PhaseId kHeadLoss = RegisterPhase("test/head");
const PhaseId kOptimizer = RegisterPhase("test/optimizer");
const PhaseId kTestPhases[] = {kAttention, kExperts, kDispatchCombine, kHeadLoss, kOptimizer};

size_t Index(PhaseId p) { return static_cast<size_t>(p); }

// Leaves the calling thread's timer disabled and empty whatever a test did.
class PhaseTimerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PhaseTimer::Enable(false);
    PhaseTimer::Reset();
    seed_ = TestSeed();
    rng_.seed(seed_);
  }
  void TearDown() override {
    PhaseTimer::Enable(false);
    PhaseTimer::Reset();
  }
  // A fresh busy time in [lo, hi) milliseconds.
  double Draw(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng_); }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

// A name is registered once: registering it again gives its id back; ids are distinct, below kMaxPhases,
// and name their phase.
TEST_F(PhaseTimerTest, RegistryGivesOneIdPerName) {
  EXPECT_EQ(RegisterPhase("test/attention"), kAttention);
  EXPECT_EQ(RegisterPhase("test/optimizer"), kOptimizer);
  EXPECT_EQ(PhaseName(kAttention), "test/attention");
  EXPECT_EQ(PhaseName(kDispatchCombine), "test/dispatch");
  const size_t n = std::size(kTestPhases);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_GE(kTestPhases[i], 0);
    EXPECT_LT(kTestPhases[i], RegisteredPhases());
    for (size_t j = i + 1; j < n; ++j) EXPECT_NE(kTestPhases[i], kTestPhases[j]);
  }
  const int before = RegisteredPhases();
  const PhaseId fresh = RegisterPhase("test/registry-" + std::to_string(seed_));
  EXPECT_EQ(fresh, before);
  EXPECT_EQ(RegisteredPhases(), before + 1);
  EXPECT_DEATH(PhaseName(kMaxPhases), "\\[phase_timer\\] no phase 16");
  EXPECT_DEATH(RegisterPhase(""), "a phase needs a name");
}

// The registry is bounded: the name after the kMaxPhases-th fails loudly (in a child: the registry is
// process-wide).
TEST_F(PhaseTimerTest, RegistryRefusesMoreThanMaxPhases) {
  EXPECT_DEATH(
      {
        for (int i = 0; i <= kMaxPhases; ++i) RegisterPhase("test/overflow-" + std::to_string(i));
      },
      "phase ids are taken");
}

TEST_F(PhaseTimerTest, DisabledRecordsNothing) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  EXPECT_FALSE(PhaseTimer::enabled());
  {
    ScopedPhase a(kAttention);
    BusyWait(Draw(1, 3));
    ScopedPhase e(kExperts);
    BusyWait(Draw(1, 3));
  }
  EXPECT_EQ(PhaseTimer::scope_count(), 0);
  for (double v : PhaseTimer::Collect()) EXPECT_EQ(v, 0.0);
}

TEST_F(PhaseTimerTest, EveryPhaseHoldsItsBusyTimeAndNoMoreThanTheWallTime) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  PhaseTimer::Enable(true);
  PhaseMillis busy{};
  const Clock::time_point start = Clock::now();
  for (int round = 0; round < 2; ++round) {  // each phase twice: the totals accumulate
    for (PhaseId p : kTestPhases) {
      ScopedPhase phase(p);
      const double ms = Draw(0.5, 3);
      BusyWait(ms);
      busy[Index(p)] += ms;
    }
    BusyWait(Draw(0.5, 2));  // outside every scope: must not be counted
  }
  const double wall = MillisSince(start);
  const PhaseMillis got = PhaseTimer::Collect();
  EXPECT_EQ(PhaseTimer::scope_count(), 2 * static_cast<long long>(std::size(kTestPhases)));
  for (PhaseId p : kTestPhases) EXPECT_GE(got[Index(p)], busy[Index(p)]) << PhaseName(p);
  EXPECT_LE(Sum(got), wall);
}

// The inner phase's time is not counted in the outer one: with inclusive accounting the two would add up
// to more than the wall time around them (the inner time twice).
TEST_F(PhaseTimerTest, NestedScopesAreExclusive) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  PhaseTimer::Enable(true);
  const double before = Draw(0.5, 2), inner = Draw(10, 20), after = Draw(0.5, 2);
  const Clock::time_point start = Clock::now();
  {
    ScopedPhase outer(kDispatchCombine);
    BusyWait(before);
    {
      ScopedPhase nested(kExperts);
      BusyWait(inner);
    }
    BusyWait(after);
  }
  const double wall = MillisSince(start);
  const PhaseMillis got = PhaseTimer::Collect();
  EXPECT_GE(got[Index(kExperts)], inner);
  EXPECT_GE(got[Index(kDispatchCombine)], before + after);
  EXPECT_LE(got[Index(kExperts)] + got[Index(kDispatchCombine)], wall);
  EXPECT_LT(got[Index(kDispatchCombine)], wall - inner);  // the inner time was taken out
  EXPECT_EQ(got[Index(kAttention)], 0.0);
}

// A phase nested in itself is still counted once.
TEST_F(PhaseTimerTest, SamePhaseNestedInItselfCountsOnce) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  PhaseTimer::Enable(true);
  const double a = Draw(5, 10), b = Draw(5, 10);
  const Clock::time_point start = Clock::now();
  {
    ScopedPhase outer(kAttention);
    BusyWait(a);
    ScopedPhase inner(kAttention);
    BusyWait(b);
  }
  const double wall = MillisSince(start);
  const PhaseMillis got = PhaseTimer::Collect();
  EXPECT_GE(got[Index(kAttention)], a + b);
  EXPECT_LE(got[Index(kAttention)], wall);
}

TEST_F(PhaseTimerTest, CollectAccumulatesUntilReset) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  PhaseTimer::Enable(true);
  const double first = Draw(1, 3), second = Draw(1, 3);
  {
    ScopedPhase p(kOptimizer);
    BusyWait(first);
  }
  const double after_first = PhaseTimer::Collect()[Index(kOptimizer)];
  EXPECT_GE(after_first, first);
  {
    ScopedPhase p(kOptimizer);
    BusyWait(second);
  }
  const double after_second = PhaseTimer::Collect()[Index(kOptimizer)];
  EXPECT_GE(after_second, after_first + second);
  EXPECT_EQ(PhaseTimer::scope_count(), 2);

  PhaseTimer::Reset();
  EXPECT_EQ(PhaseTimer::scope_count(), 0);
  for (double v : PhaseTimer::Collect()) EXPECT_EQ(v, 0.0);
  {
    ScopedPhase p(kHeadLoss);
    BusyWait(first);
  }
  const PhaseMillis got = PhaseTimer::Collect();
  EXPECT_GE(got[Index(kHeadLoss)], first);
  EXPECT_EQ(got[Index(kOptimizer)], 0.0);
}

// A scope decides at construction: one opened while enabled records to its end, one opened while disabled
// never does.
TEST_F(PhaseTimerTest, EnableTakesEffectAtTheNextScope) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const double recorded = Draw(2, 4);
  PhaseTimer::Enable(true);
  {
    ScopedPhase p(kAttention);
    PhaseTimer::Enable(false);
    BusyWait(recorded);
    ScopedPhase ignored(kExperts);  // disabled: not part of the nest
    BusyWait(Draw(1, 2));
  }
  const PhaseMillis got = PhaseTimer::Collect();
  EXPECT_GE(got[Index(kAttention)], recorded);
  EXPECT_EQ(got[Index(kExperts)], 0.0);
  EXPECT_EQ(PhaseTimer::scope_count(), 1);
}

// Timers are per thread: another thread's scopes do not reach this thread's totals, and enabling here does
// not enable there.
TEST_F(PhaseTimerTest, TimersArePerThread) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  PhaseTimer::Enable(true);
  const double busy = Draw(2, 4);
  bool other_enabled = true;
  long long other_count = -1;
  double other_experts = -1;
  std::thread worker([&] {
    other_enabled = PhaseTimer::enabled();
    PhaseTimer::Enable(true);
    {
      ScopedPhase p(kExperts);
      BusyWait(busy);
    }
    other_count = PhaseTimer::scope_count();
    other_experts = PhaseTimer::Collect()[Index(kExperts)];
  });
  worker.join();
  EXPECT_FALSE(other_enabled);
  EXPECT_EQ(other_count, 1);
  EXPECT_GE(other_experts, busy);
  EXPECT_EQ(PhaseTimer::scope_count(), 0);
  for (double v : PhaseTimer::Collect()) EXPECT_EQ(v, 0.0);
}

TEST_F(PhaseTimerTest, CollectOrResetInsideAScopeFails) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        PhaseTimer::Enable(true);
        ScopedPhase p(kAttention);
        PhaseTimer::Collect();
      },
      "Collect with 1 scopes open");
  EXPECT_DEATH(
      {
        PhaseTimer::Enable(true);
        ScopedPhase p(kAttention);
        PhaseTimer::Reset();
      },
      "Reset with 1 scopes open");
}

#ifdef FATHOM_WITH_CUDA
// The device clock (an OpContext is current): the timer's events sit on the context's stream, so reference
// events recorded by the test around the same work bound what it may report. Containment only, nothing
// about speed: the inner phase lies within the reference span around it, and the outer phase's segments
// and the inner one are disjoint parts of the span around everything (inclusive accounting would count
// the inner work twice and exceed it). Run on the GPU machine: framework_tests
// --gtest_filter='PhaseTimerGpu*'.
TEST(PhaseTimerGpu, EventsTimeTheStreamExclusively) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int outer_fills = std::uniform_int_distribution<int>(2, 5)(rng);
  const int inner_fills = std::uniform_int_distribution<int>(10, 20)(rng);

  cudaStream_t stream = nullptr;
  FATHOM_CUDA_CHECK(cudaStreamCreate(&stream));
  {
    ops::OpContext context(stream);
    ops::OpContextScope scope(context);
    cuda::DeviceArena arena("phase_timer_test", size_t{256} << 20);
    const Tensor buffer = arena.Alloc({int64_t{64} << 20}, DType::kF32);  // 256 MiB per fill
    auto fill = [&](int n) {
      for (int i = 0; i < n; ++i) ops::Fill(buffer, static_cast<double>(i));
    };
    cudaEvent_t all_begin, all_end, inner_begin, inner_end;
    for (cudaEvent_t* e : {&all_begin, &all_end, &inner_begin, &inner_end})
      FATHOM_CUDA_CHECK(cudaEventCreate(e));

    PhaseTimer::Enable(true);
    PhaseTimer::Reset();
    for (int round = 0; round < 2; ++round) {  // the second round reuses the first round's events
      PhaseTimer::Reset();
      FATHOM_CUDA_CHECK(cudaEventRecord(all_begin, stream));
      {
        ScopedPhase outer(kDispatchCombine);
        fill(outer_fills);
        FATHOM_CUDA_CHECK(cudaEventRecord(inner_begin, stream));
        {
          ScopedPhase inner(kExperts);
          fill(inner_fills);
        }
        FATHOM_CUDA_CHECK(cudaEventRecord(inner_end, stream));
        fill(outer_fills);
      }
      FATHOM_CUDA_CHECK(cudaEventRecord(all_end, stream));
      const PhaseMillis got = PhaseTimer::Collect();
      FATHOM_CUDA_CHECK(cudaEventSynchronize(all_end));
      float all_ms = 0, inner_ms = 0;
      FATHOM_CUDA_CHECK(cudaEventElapsedTime(&all_ms, all_begin, all_end));
      FATHOM_CUDA_CHECK(cudaEventElapsedTime(&inner_ms, inner_begin, inner_end));
      // Event timestamps have about 0.5 us resolution; three differences are summed below.
      const double resolution = 0.002;
      EXPECT_GT(got[Index(kExperts)], 0.0);
      EXPECT_GT(got[Index(kDispatchCombine)], 0.0);
      EXPECT_LE(got[Index(kExperts)], inner_ms + resolution);
      EXPECT_LE(got[Index(kExperts)] + got[Index(kDispatchCombine)], all_ms + resolution);
      EXPECT_EQ(got[Index(kAttention)], 0.0);
      EXPECT_EQ(PhaseTimer::scope_count(), 2);
    }
    PhaseTimer::Enable(false);
    PhaseTimer::Reset();
    for (cudaEvent_t e : {all_begin, all_end, inner_begin, inner_end}) FATHOM_CUDA_CHECK(cudaEventDestroy(e));
  }
  FATHOM_CUDA_CHECK(cudaStreamDestroy(stream));
}
#endif  // FATHOM_WITH_CUDA

}  // namespace
}  // namespace fathom
