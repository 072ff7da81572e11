// The step-statistics ops on the GPU against their CPU twins (framework/ops.h): AccumulateF64 bit for bit
// (the same f64 additions in the same order, also over more terms than one launch carries), ExpertBiasUpdate
// bit for bit (integer comparison, one f32 rounding), and CopyToHostAsync: the copy waits for its own event
// only, slots are reused, and an unwaited copy is waited for when dropped.
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "framework/cuda/device_pool.h"
#include "framework/cuda/host_staging.h"
#include "framework/ops.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using testing::Down;
using testing::RandomTensor;
using testing::TestSeed;
using testing::Up;

struct GpuEnv : testing::GpuOpsEnv {
  GpuEnv() : GpuOpsEnv("statistics_ops_test", size_t{256} << 20) {}
};

Tensor RandomCounts(int64_t n, std::mt19937_64& rng) {
  Tensor t = Tensor::Empty({n}, DType::kI64);
  for (int64_t i = 0; i < n; ++i) t.data<int64_t>()[i] = static_cast<int64_t>(rng() % 100000);
  return t;
}

bool SameBits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

TEST(StatisticsOpsGpu, AccumulateF64IsBitwiseTheCpuTwin) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  GpuEnv env;
  const int64_t n = 300;
  const Tensor start = RandomTensor({n}, DType::kF64, rng, 10.0);
  // 70 overlapping terms (three launches of at most 32), f32 / f64 / i64 values.
  std::vector<ops::AccumulationTerm> host_terms, device_terms;
  for (int i = 0; i < 70; ++i) {
    const int64_t len = 1 + static_cast<int64_t>(rng() % 40);
    const int64_t offset = static_cast<int64_t>(rng() % static_cast<uint64_t>(n - len + 1));
    const int kind = static_cast<int>(rng() % 3);
    Tensor values = kind == 0   ? RandomTensor({len}, DType::kF32, rng, 1e3)
                    : kind == 1 ? RandomTensor({len}, DType::kF64, rng, 1e-3)
                                : RandomCounts(len, rng);
    host_terms.push_back({offset, values});
    device_terms.push_back({offset, Up(values)});
  }
  Tensor want = start.Clone();
  ops::AccumulateF64(want, host_terms);
  Tensor got = Up(start);
  ops::AccumulateF64(got, device_terms);
  EXPECT_TRUE(SameBits(Down(got), want));
}

TEST(StatisticsOpsGpu, ExpertBiasUpdateIsBitwiseTheCpuTwin) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  GpuEnv env;
  for (int64_t e : {1, 3, 32, 256, 1024}) {
    const Tensor bias = RandomTensor({e}, DType::kF32, rng, 0.01);
    Tensor load = RandomCounts(e, rng);
    int64_t sum = 0;
    for (int64_t i = 0; i < e; ++i) sum += load.data<int64_t>()[i];
    if (e > 1) load.data<int64_t>()[e - 1] = 0;  // one starved expert
    Tensor want = bias.Clone();
    ops::ExpertBiasUpdate(want, load, 1e-3);
    Tensor got = Up(bias);
    ops::ExpertBiasUpdate(got, Up(load), 1e-3);
    EXPECT_TRUE(SameBits(Down(got), want)) << e << " experts (load sum " << sum << ")";
    // One expert always carries the mean load, so the rule leaves its bias alone; with more, the starved
    // expert's bias must move (else the comparison above would be vacuous).
    if (e == 1) {
      EXPECT_TRUE(SameBits(want, bias)) << "a single expert's bias moved";
    } else {
      EXPECT_NE(want.data<float>()[e - 1], bias.data<float>()[e - 1])
          << "the starved expert's bias did not move";
    }
  }
}

// The copy is ordered after the work queued before it and ahead of the work queued after it: zeroing the
// source right after starting the copy does not reach the copy.
TEST(StatisticsOpsGpu, CopyToHostAsyncCopiesInStreamOrder) {
  FATHOM_REQUIRE_GPU();
  std::mt19937_64 rng(TestSeed());
  GpuEnv env;
  const Tensor want = RandomCounts(64, rng);
  Tensor counts = Up(want);
  const int64_t waits = ops::HostWaits();
  ops::PendingHostCopy copy = ops::CopyToHostAsync(counts);
  ops::Zero(counts);
  EXPECT_EQ(ops::HostWaits(), waits) << "starting the copy does not wait";
  const Tensor got = copy.Wait();
  EXPECT_EQ(ops::HostWaits(), waits + 1) << "its Wait is one host wait";
  EXPECT_EQ(got.device(), Device::kCPU);
  EXPECT_TRUE(SameBits(got, want));
  EXPECT_EQ(Down(counts).Item(0), 0.0);
  EXPECT_EQ(env.context.staging().leased(), 0);
}

// Three copies in flight take three slots; later copies reuse them (no new page-locked memory after the
// first round); a copy dropped without Wait frees its slot (after waiting for it).
TEST(StatisticsOpsGpu, CopyToHostAsyncReusesSlots) {
  FATHOM_REQUIRE_GPU();
  std::mt19937_64 rng(TestSeed());
  GpuEnv env;
  cuda::HostStaging& staging = env.context.staging();
  for (int round = 0; round < 4; ++round) {
    std::vector<Tensor> want;
    std::vector<ops::PendingHostCopy> copies;
    for (int i = 0; i < 3; ++i) {
      want.push_back(RandomCounts(16 + 8 * i, rng));
      copies.push_back(ops::CopyToHostAsync(Up(want.back())));
    }
    EXPECT_EQ(staging.leased(), 3);
    for (int i = 0; i < 2; ++i)
      EXPECT_TRUE(SameBits(copies[static_cast<size_t>(i)].Wait(), want[static_cast<size_t>(i)]));
    copies.clear();  // the third is dropped unwaited
    EXPECT_EQ(staging.leased(), 0) << "round " << round;
    EXPECT_EQ(staging.slots(), 3) << "round " << round;
  }
}

// Uploads do not wait and do not reuse a slot before its copy has run: many uploads of different data in a
// row (the host overwrites its source right after each) all arrive intact.
TEST(StatisticsOpsGpu, ToDeviceAsyncStagesWithoutWaiting) {
  FATHOM_REQUIRE_GPU();
  std::mt19937_64 rng(TestSeed());
  GpuEnv env;
  Tensor source = Tensor::Empty({4096}, DType::kI32);
  std::vector<Tensor> want, got;
  for (int i = 0; i < 20; ++i) {
    for (int64_t j = 0; j < source.numel(); ++j) source.data<int32_t>()[j] = static_cast<int32_t>(rng());
    want.push_back(source.Clone());
    got.push_back(ops::ToDeviceAsync(source));  // `source` is overwritten next iteration
    EXPECT_EQ(got.back().device(), Device::kCUDA);
  }
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(SameBits(Down(got[i]), want[i])) << "upload " << i;
  EXPECT_EQ(env.context.staging().leased(), 0);
  EXPECT_LE(env.context.staging().slots(), 21);
}

}  // namespace
}  // namespace fathom
