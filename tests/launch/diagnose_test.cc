// fathom diagnose's checks and verdict (launch/diagnose.h): the CPU checks are deterministic, the verdict
// names the rank that differs or is slow, and the table shows every rank.
#include "launch/diagnose.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "parallel/local_communicator.h"

namespace fathom {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

std::vector<DiagnoseRow> AgreeingRows(int n) {
  std::vector<DiagnoseRow> rows(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    DiagnoseRow& d = rows[static_cast<size_t>(r)];
    d.rank = r;
    d.host = "node" + std::to_string(r / 2);
    d.device = "cpu";
    d.gemm = {0x1234abcdu, 10.0 + 0.1 * r};  // within 1% of each other
    d.attention = {0x0badf00du, 5.0};
    d.all_reduce = {0x55aa55aau, 3.0 + r};  // all-reduce times are not judged
  }
  return rows;
}

TEST(Diagnose, CpuChecksAreDeterministicAndTheAllReduceExact) {
  LocalCommunicator world("world");
  LaunchEnv node;
  absl::StatusOr<DiagnoseRow> a = RunDiagnoseChecks(Device::kCPU, world, node, 2);
  absl::StatusOr<DiagnoseRow> b = RunDiagnoseChecks(Device::kCPU, world, node, 3);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->gemm.checksum, b->gemm.checksum);
  EXPECT_EQ(a->attention.checksum, b->attention.checksum);
  EXPECT_EQ(a->all_reduce.checksum, b->all_reduce.checksum);
  EXPECT_NE(a->gemm.checksum, a->attention.checksum);
  EXPECT_TRUE(a->all_reduce_exact);
  EXPECT_GT(a->gemm.ms, 0);
  EXPECT_EQ(a->device, "cpu");
}

TEST(Diagnose, AgreeingRanksAreAllOk) {
  const std::vector<std::string> v = DiagnoseVerdicts(AgreeingRows(4));
  EXPECT_EQ(v, std::vector<std::string>(4, "ok"));
}

TEST(Diagnose, TheRankThatDiffersIsNamed) {
  std::vector<DiagnoseRow> rows = AgreeingRows(4);
  rows[2].gemm.checksum ^= 1;  // one flipped bit
  rows[3].all_reduce_exact = false;
  const std::vector<std::string> v = DiagnoseVerdicts(rows);
  EXPECT_EQ(v[0], "ok");
  EXPECT_EQ(v[1], "ok");
  EXPECT_THAT(v[2], HasSubstr("gemm checksum differs (1234abcc, most ranks 1234abcd)"));
  EXPECT_THAT(v[3], HasSubstr("all-reduce is not the exact sum"));
  // Two ranks, two values: the tie goes to rank 0's, so rank 1 is the one named.
  std::vector<DiagnoseRow> two = AgreeingRows(2);
  two[1].attention.checksum = 7;
  EXPECT_EQ(DiagnoseVerdicts(two)[0], "ok");
  EXPECT_THAT(DiagnoseVerdicts(two)[1], HasSubstr("attention checksum differs"));
}

TEST(Diagnose, ARankMoreThanTenPercentSlowerThanTheMedianIsNamed) {
  std::vector<DiagnoseRow> rows = AgreeingRows(5);
  rows[4].attention.ms = 5.0 * 1.25;  // 25% slower
  rows[1].gemm.ms = 10.0 * 1.05;      // 5% slower: within the 10%
  rows[0].all_reduce.ms = 100;        // all-reduce time is not judged
  const std::vector<std::string> v = DiagnoseVerdicts(rows);
  EXPECT_EQ(v[0], "ok");
  EXPECT_EQ(v[1], "ok");
  EXPECT_THAT(v[4], HasSubstr("attention 25% slower than the median"));
  EXPECT_EQ(DiagnoseVerdicts(rows, /*slow_factor=*/1.5)[4], "ok");
}

TEST(Diagnose, TableShowsEveryRankAndTheVerdict) {
  std::vector<DiagnoseRow> rows = AgreeingRows(3);
  std::string table = FormatDiagnoseTable(rows, Device::kCPU, 10);
  EXPECT_THAT(table, AllOf(HasSubstr("fathom diagnose: 3 rank(s) on CPU"), HasSubstr("1234abcd"),
                           HasSubstr("node1"), HasSubstr("verdict: all 3 rank(s) agree bitwise")));
  rows[1].gemm.checksum = 0;
  table = FormatDiagnoseTable(rows, Device::kCPU, 10);
  EXPECT_THAT(table, HasSubstr("verdict: 1 of 3 rank(s) need attention"));
}

}  // namespace
}  // namespace fathom
