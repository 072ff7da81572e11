// cuda::DevicePool (framework/cuda/device_pool.h): random allocate/release patterns keep live blocks
// disjoint, aligned, inside the pool and usable, with exact statistics; best fit, reuse of a released
// block and coalescing of free neighbours; exhaustion, foreign and double releases and a leaked block abort
// with messages that name what went wrong (death tests); Tensor::Empty/Zeros(kCUDA) allocate from the
// current pool, return the block when the last sharing tensor dies, and reuse it.
#include "framework/cuda/device_pool.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "framework/cuda/check.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using cuda::DevicePool;
using cuda::PoolScope;
constexpr size_t kUnit = DevicePool::kBlockBytes;

struct Live {
  char* p;
  size_t rounded;
  unsigned char tag;
};

// Writes each live block's tag over the whole block, then reads every block back: overlapping or
// out-of-range blocks would clobber one another.
void ExpectBlocksHoldTheirTags(const std::vector<Live>& live) {
  for (const Live& b : live) FATHOM_CUDA_CHECK(cudaMemset(b.p, b.tag, b.rounded));
  for (const Live& b : live) {
    std::vector<unsigned char> host(b.rounded);
    FATHOM_CUDA_CHECK(cudaMemcpy(host.data(), b.p, b.rounded, cudaMemcpyDeviceToHost));
    EXPECT_TRUE(std::all_of(host.begin(), host.end(), [&](unsigned char c) { return c == b.tag; }))
        << "block at " << static_cast<void*>(b.p) << " lost its contents";
  }
}

TEST(DevicePool, RandomPatternsKeepBlocksDisjointAndStatsExact) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  DevicePool pool("pattern", size_t{1} << 20);
  ASSERT_EQ(pool.capacity(), size_t{1} << 20);
  // The whole capacity in one block comes from the base, which every later block is aligned to.
  char* base = static_cast<char*>(pool.Allocate(pool.capacity()));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(base) % 256, 0u);
  pool.Release(base);
  pool.ResetPeak();  // the peak now follows the pattern below
  EXPECT_EQ(pool.peak(), 0u);

  std::vector<Live> live;
  size_t peak = 0;
  for (int step = 0; step < 3000; ++step) {
    const bool allocate = live.empty() || rng() % 100 < 55;
    const size_t bytes = (rng() % 4 == 0) ? rng() % 8 : rng() % 40000;  // tiny (incl. 0) and large requests
    if (allocate && pool.largest_free_block() >= DevicePool::RoundedSize(bytes)) {
      char* p = static_cast<char*>(pool.Allocate(bytes));
      live.push_back({p, DevicePool::RoundedSize(bytes), static_cast<unsigned char>(1 + step % 250)});
    } else if (!live.empty()) {
      const size_t i = rng() % live.size();
      pool.Release(live[i].p);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    }
    size_t in_use = 0;
    for (const Live& b : live) in_use += b.rounded;
    peak = std::max(peak, in_use);
    ASSERT_EQ(pool.in_use(), in_use) << "step " << step;
    ASSERT_EQ(pool.peak(), peak) << "step " << step;
    ASSERT_EQ(pool.num_blocks(), static_cast<int64_t>(live.size())) << "step " << step;
    std::vector<Live> sorted = live;
    std::sort(sorted.begin(), sorted.end(), [](const Live& a, const Live& b) { return a.p < b.p; });
    for (size_t i = 0; i < sorted.size(); ++i) {
      ASSERT_GE(sorted[i].p, base);
      ASSERT_LE(sorted[i].p + sorted[i].rounded, base + pool.capacity());
      ASSERT_EQ(static_cast<size_t>(sorted[i].p - base) % kUnit, 0u);
      if (i + 1 < sorted.size()) {
        ASSERT_LE(sorted[i].p + sorted[i].rounded, sorted[i + 1].p) << "overlap";
      }
    }
    if (step % 500 == 250) ExpectBlocksHoldTheirTags(live);
  }
  EXPECT_GT(peak, pool.capacity() / 4) << "the pattern never filled the pool: a vacuous test";
  for (const Live& b : live) pool.Release(b.p);
  EXPECT_EQ(pool.in_use(), 0u);
  EXPECT_EQ(pool.num_blocks(), 0);
  EXPECT_EQ(pool.num_free_blocks(), 1) << "free neighbours were not merged";
  EXPECT_EQ(pool.largest_free_block(), pool.capacity());
}

TEST(DevicePool, CoalescesFreeNeighbours) {
  FATHOM_REQUIRE_GPU();
  DevicePool pool("coalesce", 8 * kUnit);
  char* a = static_cast<char*>(pool.Allocate(kUnit));
  char* b = static_cast<char*>(pool.Allocate(2 * kUnit));
  char* c = static_cast<char*>(pool.Allocate(kUnit - 100));
  char* d = static_cast<char*>(pool.Allocate(4 * kUnit));
  EXPECT_EQ(b, a + kUnit);
  EXPECT_EQ(c, b + 2 * kUnit);
  EXPECT_EQ(d, c + kUnit);
  EXPECT_EQ(pool.largest_free_block(), 0u);
  EXPECT_EQ(pool.num_free_blocks(), 0);
  pool.Release(a);
  pool.Release(c);  // two holes with b between them
  EXPECT_EQ(pool.num_free_blocks(), 2);
  EXPECT_EQ(pool.largest_free_block(), kUnit);
  pool.Release(b);  // joins both holes
  EXPECT_EQ(pool.num_free_blocks(), 1);
  EXPECT_EQ(pool.largest_free_block(), 4 * kUnit);
  EXPECT_EQ(pool.Allocate(4 * kUnit), a) << "the merged block should start at a";
  pool.Release(d);
  pool.Release(a);
  EXPECT_EQ(pool.num_free_blocks(), 1);
  EXPECT_EQ(pool.Allocate(8 * kUnit), a);
  pool.Release(a);
}

TEST(DevicePool, BestFitAndReuse) {
  FATHOM_REQUIRE_GPU();
  DevicePool pool("best_fit", 64 * kUnit);
  void* small = pool.Allocate(1000);  // 2 units
  void* sep1 = pool.Allocate(1);
  void* large = pool.Allocate(8 * kUnit);
  void* sep2 = pool.Allocate(1);
  pool.Release(large);
  pool.Release(small);
  // Free: 2 units at `small`, 8 at `large`, the tail. Each request takes the smallest block that fits.
  EXPECT_EQ(pool.Allocate(900), small);
  EXPECT_EQ(pool.Allocate(5 * kUnit), large);
  void* rest = pool.Allocate(3 * kUnit);  // the remainder of `large`'s block, ahead of the tail
  EXPECT_EQ(rest, static_cast<char*>(large) + 5 * kUnit);
  pool.Release(small);
  EXPECT_EQ(pool.Allocate(2 * kUnit), small) << "a released block is reused";
  for (void* p : {small, sep1, large, sep2, rest}) pool.Release(p);
  EXPECT_EQ(pool.in_use(), 0u);
}

TEST(DevicePool, Stats) {
  FATHOM_REQUIRE_GPU();
  DevicePool odd("odd", 5000);
  EXPECT_EQ(odd.capacity(), 9 * kUnit) << "capacity rounds down to whole blocks";
  DevicePool pool("stats", size_t{1} << 20);
  EXPECT_EQ(pool.in_use(), 0u);
  EXPECT_EQ(pool.peak(), 0u);
  EXPECT_EQ(pool.num_blocks(), 0);
  void* a = pool.Allocate(100);
  void* b = pool.Allocate(5000);
  void* z = pool.Allocate(0);
  EXPECT_NE(z, nullptr);
  EXPECT_EQ(pool.in_use(), kUnit + 10 * kUnit + kUnit);
  EXPECT_EQ(pool.num_blocks(), 3);
  pool.Release(a);
  pool.Release(z);
  EXPECT_EQ(pool.in_use(), 10 * kUnit);
  EXPECT_EQ(pool.peak(), 12 * kUnit);
  pool.ResetPeak();
  EXPECT_EQ(pool.peak(), 10 * kUnit);
  pool.Release(b);
  EXPECT_EQ(pool.in_use(), 0u);
  EXPECT_EQ(pool.num_blocks(), 0);
  EXPECT_EQ(pool.largest_free_block(), pool.capacity());
}

TEST(DevicePool, TensorsAllocateFromTheCurrentPoolAndReturnTheirBlock) {
  FATHOM_REQUIRE_GPU();
  DevicePool outer("outer", size_t{1} << 20), pool("tensors", size_t{1} << 20);
  EXPECT_EQ(cuda::CurrentPool(), nullptr);
  PoolScope outer_scope(outer);
  void* first = nullptr;
  {
    PoolScope scope(pool);
    EXPECT_EQ(cuda::CurrentPool(), &pool);
    {
      const Tensor t = Tensor::Empty({100, 3}, DType::kF32, Device::kCUDA);
      EXPECT_EQ(t.device(), Device::kCUDA);
      EXPECT_TRUE(pool.Contains(t.raw()));
      EXPECT_EQ(pool.in_use(), 3 * kUnit);  // 1200 bytes
      first = t.raw();
      const Tensor view = t.Reshape({300});
      EXPECT_EQ(view.raw(), t.raw());
      EXPECT_EQ(pool.num_blocks(), 1) << "a view shares the block";
    }
    EXPECT_EQ(pool.in_use(), 0u) << "the block returns when the last sharing tensor dies";
    Tensor u = Tensor::Empty({300}, DType::kF32, Device::kCUDA);
    EXPECT_EQ(u.raw(), first) << "a freed tensor's memory is reused";
    Tensor rows = u.Rows(10, 20);
    u = Tensor();
    EXPECT_EQ(pool.in_use(), 3 * kUnit) << "a view keeps the block alive";
    FATHOM_CUDA_CHECK(cudaMemset(rows.raw(), 0xFF, 40));
    rows = Tensor();
    // Zeros clears on the pool's stream: the reused block held 0xFF bytes.
    const Tensor z = Tensor::Zeros({300}, DType::kF32, Device::kCUDA);
    EXPECT_EQ(z.raw(), first);
    std::vector<float> host(300, 1.0f);
    FATHOM_CUDA_CHECK(cudaMemcpy(host.data(), z.raw(), 1200, cudaMemcpyDeviceToHost));
    EXPECT_TRUE(std::all_of(host.begin(), host.end(), [](float v) { return v == 0.0f; }));
    EXPECT_EQ(outer.in_use(), 0u) << "the inner scope's pool served the requests";
  }
  EXPECT_EQ(cuda::CurrentPool(), &outer) << "the scope restores the previous pool";
  const Tensor o = Tensor::Empty({1}, DType::kI64, Device::kCUDA);
  EXPECT_TRUE(outer.Contains(o.raw()));
}

class DevicePoolDeathTest : public ::testing::Test {
 protected:
  // The child re-executes the binary instead of forking a process that holds a CUDA context.
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(DevicePoolDeathTest, ExhaustionNamesRequestUsePeakAndCapacity) {
  FATHOM_REQUIRE_GPU();
  DevicePool pool("tiny", 8 * kUnit);
  void* a = pool.Allocate(1000);
  void* b = pool.Allocate(600);
  pool.Release(b);
  EXPECT_DEATH(
      pool.Allocate(4000),
      "\\[device_pool 'tiny'\\] exhausted: request of 4000 bytes \\(4096 rounded\\) for raw allocation; "
      "in use 1024 bytes in 1 blocks, peak 2048, capacity 4096, largest free block 3072");
  PoolScope scope(pool);
  EXPECT_DEATH(Tensor::Empty({1000, 2}, DType::kF32, Device::kCUDA),
               "request of 8000 bytes \\(8192 rounded\\) for a \\(1000, 2\\) f32 tensor; in use 1024");
  pool.Release(a);
}

TEST_F(DevicePoolDeathTest, MisuseIsReported) {
  FATHOM_REQUIRE_GPU();
  EXPECT_DEATH(Tensor::Empty({4}, DType::kF32, Device::kCUDA),
               "\\[Tensor::Empty\\] no current device pool on this thread");
  DevicePool pool("misuse", 8 * kUnit);
  int host = 0;
  EXPECT_DEATH(pool.Release(&host), "\\[device_pool 'misuse'\\] release of .* which is not in the pool");
  void* a = pool.Allocate(1);
  void* b = pool.Allocate(1);
  pool.Release(a);
  EXPECT_DEATH(pool.Release(a), "not an allocated block \\(double release\\?\\)");
  EXPECT_DEATH(pool.Release(static_cast<char*>(b) + 8), "not an allocated block");
  pool.Release(b);
  EXPECT_DEATH(
      {
        DevicePool leaky("leaky", 8 * kUnit);
        leaky.Allocate(10);
      },
      "\\[device_pool 'leaky'\\] destroyed with 1 blocks \\(512 bytes\\) still allocated");
}

}  // namespace
}  // namespace fathom
