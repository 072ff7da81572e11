// The step-statistics ops of framework/ops.h on the CPU: AccumulateF64 equals the plain host loop bit for
// bit (terms in list order, f32 / f64 / i64 values, overlapping terms), ExpertBiasUpdate applies the
// DeepSeek-V3 bias rule exactly (integer comparison with the mean), and CopyToHostAsync hands a host
// tensor back unchanged. The CUDA twins are compared with these in tests/gpu/statistics_ops_test.cc.
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "framework/ops.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::RandomTensor;
using testing::TestSeed;

Tensor RandomCounts(int64_t n, std::mt19937_64& rng) {
  Tensor t = Tensor::Empty({n}, DType::kI64);
  for (int64_t i = 0; i < n; ++i) t.data<int64_t>()[i] = static_cast<int64_t>(rng() % 100000);
  return t;
}

TEST(StatisticsOps, AccumulateF64EqualsTheHostLoopBitForBit) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t n = 40;
  const Tensor start = RandomTensor({n}, DType::kF64, rng, 10.0);
  // Overlapping terms of every dtype, more than one launch's worth on the GPU (32 per launch there).
  std::vector<ops::AccumulationTerm> terms;
  for (int i = 0; i < 45; ++i) {
    const int64_t len = 1 + static_cast<int64_t>(rng() % 8);
    const int64_t offset = static_cast<int64_t>(rng() % static_cast<uint64_t>(n - len + 1));
    const int kind = static_cast<int>(rng() % 3);
    Tensor values = kind == 0   ? RandomTensor({len}, DType::kF32, rng, 1e3)
                    : kind == 1 ? RandomTensor({len}, DType::kF64, rng, 1e-3)
                                : RandomCounts(len, rng);
    terms.push_back({offset, values});
  }
  Tensor got = start.Clone();
  ops::AccumulateF64(got, terms);
  Tensor want = start.Clone();
  double* w = want.data<double>();
  for (const ops::AccumulationTerm& t : terms) {
    for (int64_t i = 0; i < t.values.numel(); ++i) w[t.offset + i] += t.values.Item(i);
  }
  EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0);
}

TEST(StatisticsOps, AccumulateF64RejectsTermsOutsideTheSums) {
  const Tensor sums = Tensor::Zeros({4}, DType::kF64);
  const Tensor values = Tensor::Zeros({3}, DType::kF32);
  EXPECT_DEATH(ops::AccumulateF64(sums, {{2, values}}), "\\[accumulate_f64\\] term at 2 of 3 elements");
  EXPECT_DEATH(ops::AccumulateF64(sums, {{0, Tensor::Zeros({2}, DType::kI32)}}), "\\[accumulate_f64\\]");
}

// b_i += gamma * sign(mean - load_i): loads above the mean go down, below go up, equal to it stay (the
// comparison is exact even where the mean is not representable: 3 experts, sum 10).
TEST(StatisticsOps, ExpertBiasUpdateFollowsTheRule) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (DType dtype : {DType::kF32, DType::kF64}) {
    const int64_t e = 24;
    Tensor bias = RandomTensor({e}, dtype, rng);
    const Tensor before = bias.Clone();
    Tensor load = RandomCounts(e, rng);
    int64_t sum = 0;
    for (int64_t i = 0; i < e; ++i) sum += load.data<int64_t>()[i];
    // Make one load exactly the mean when it is an integer.
    if (sum % e == 0) load.data<int64_t>()[0] = sum / e;
    sum = 0;
    for (int64_t i = 0; i < e; ++i) sum += load.data<int64_t>()[i];
    ops::ExpertBiasUpdate(bias, load, 0.25);
    for (int64_t i = 0; i < e; ++i) {
      const int64_t scaled = e * load.data<int64_t>()[i];
      const double sign = sum > scaled ? 1.0 : (sum < scaled ? -1.0 : 0.0);
      const double want = dtype == DType::kF32
                              ? static_cast<double>(static_cast<float>(before.Item(i) + 0.25 * sign))
                              : before.Item(i) + 0.25 * sign;
      EXPECT_EQ(bias.Item(i), want) << "expert " << i;
    }
  }
  Tensor bias = Tensor::Zeros({3}, DType::kF32);
  ops::ExpertBiasUpdate(bias, Tensor::FromVector({3, 3, 4}, {3}, DType::kI64), 1.0);  // mean 10/3
  EXPECT_EQ(bias.Item(0), 1.0);
  EXPECT_EQ(bias.Item(1), 1.0);
  EXPECT_EQ(bias.Item(2), -1.0);
}

TEST(StatisticsOps, ExpertBiasUpdateRejectsNegativeLoads) {
  Tensor bias = Tensor::Zeros({2}, DType::kF32);
  EXPECT_DEATH(ops::ExpertBiasUpdate(bias, Tensor::FromVector({1, -1}, {2}, DType::kI64), 0.1),
               "negative expert load -1");
}

TEST(StatisticsOps, CopyToHostAsyncOfAHostTensorIsTheTensor) {
  std::mt19937_64 rng(TestSeed());
  const Tensor counts = RandomCounts(7, rng);
  ops::PendingHostCopy copy = ops::CopyToHostAsync(counts);
  ASSERT_TRUE(copy.pending());
  const Tensor got = copy.Wait();
  EXPECT_FALSE(copy.pending());
  EXPECT_EQ(got.raw(), counts.raw());
  EXPECT_DEATH(copy.Wait(), "\\[copy_to_host_async\\] Wait on an empty PendingHostCopy");
}

// ops::HostWaits counts the host waiting for a GPU: host-only copies and waits count nothing.
TEST(StatisticsOps, HostOnlyWorkIsNoHostWait) {
  std::mt19937_64 rng(TestSeed());
  const int64_t before = ops::HostWaits();
  const Tensor counts = RandomCounts(7, rng);
  ops::CopyToHostAsync(counts).Wait();
  Tensor copy = Tensor::Empty(counts.shape(), counts.dtype());
  ops::Copy(copy, counts);
  const Tensor again = ops::To(counts, Device::kCPU);
  EXPECT_EQ(again.Item(3), counts.Item(3));
  EXPECT_EQ(ops::HostWaits(), before);
}

#ifndef FATHOM_WITH_CUDA
TEST(StatisticsOps, ToDeviceAsyncNeedsTheCudaBackend) {
  EXPECT_DEATH(ops::ToDeviceAsync(Tensor::Zeros({2}, DType::kI32)),
               "\\[to_device_async\\] CUDA tensor but this build has no CUDA backend");
}
#endif

}  // namespace
}  // namespace fathom
