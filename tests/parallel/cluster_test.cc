// Cluster files: the shipped ones load with the report's numbers; bad ones fail naming the key.
#include "parallel/cluster.h"

#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fathom {
namespace {

using ::testing::HasSubstr;

std::string Path(const std::string& name) {
  return std::string(FATHOM_SOURCE_DIR) + "/recipes/clusters/" + name;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The shipped H800 file with `from` replaced by `to` (which must occur).
std::string Edited(const std::string& from, const std::string& to) {
  std::string text = ReadText(Path("h800-2048.yaml"));
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

std::string ErrorOf(const std::string& text) {
  absl::StatusOr<ClusterConfig> c = ParseCluster(text, "bad.yaml");
  EXPECT_FALSE(c.ok());
  if (c.ok()) return "";
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(c.status().message());
}

TEST(Cluster, ReportClusterLoads) {
  absl::StatusOr<ClusterConfig> c = LoadCluster(Path("h800-2048.yaml"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->nodes, 256);
  EXPECT_EQ(c->gpus_per_node, 8);
  EXPECT_EQ(c->world(), 2048);
  EXPECT_DOUBLE_EQ(c->hbm_gib, 80);
  EXPECT_DOUBLE_EQ(c->nvlink_gbps, 160);
  EXPECT_DOUBLE_EQ(c->network_gbps_per_gpu, 50);  // 8 x 400 Gb/s per node of 8 GPUs
  EXPECT_GT(c->efficiency.gemm, 0);
  EXPECT_LT(c->usable_bytes(), 80.0 * 1073741824.0);
}

// FP8 GEMMs are rated by assumption where no profile measures them: simulate and plan print why, and for
// fathom's own layers that its FP8 path is measured slower; nothing without FP8, nothing when the profile
// has FP8 rates (the shipped H200 profile does since 2026-12-04).
TEST(Cluster, Fp8CaveatSaysTheRatesAreAssumed) {
  absl::StatusOr<ClusterConfig> measured = LoadCluster(Path("h200-1-measured.yaml"));
  ASSERT_TRUE(measured.ok()) << measured.status();
  ASSERT_TRUE(measured->profile.has_value());
  EXPECT_TRUE(measured->profile->has_fp8());
  EXPECT_EQ(measured->Fp8Caveat(true, true), "");
  ClusterConfig bf16_only = *measured;  // the same profile without its FP8 rates
  bf16_only.profile->fp8_dense_gemm_tflops = 0;
  bf16_only.profile->fp8_expert_tflops.clear();
  EXPECT_EQ(bf16_only.Fp8Caveat(false, true), "");
  const std::string report = bf16_only.Fp8Caveat(true, false), fathom = bf16_only.Fp8Caveat(true, true);
  EXPECT_THAT(report, HasSubstr("FP8 GEMMs are not measured by the profile: rated at the FP8 peak"));
  EXPECT_THAT(report, ::testing::Not(HasSubstr("fathom's FP8 path")));
  EXPECT_THAT(fathom, HasSubstr("fathom's FP8 path does not reach yet"));
  EXPECT_THAT(fathom, HasSubstr("--profile OUT.yaml"));
  absl::StatusOr<ClusterConfig> guessed = LoadCluster(Path("h800-2048.yaml"));
  ASSERT_TRUE(guessed.ok()) << guessed.status();
  EXPECT_THAT(guessed->Fp8Caveat(true, false), HasSubstr("not measured by this cluster file"));
}

TEST(Cluster, SingleNodeClustersLoad) {
  for (const char* name : {"h100-8.yaml", "h200-8.yaml"}) {
    absl::StatusOr<ClusterConfig> c = LoadCluster(Path(name));
    ASSERT_TRUE(c.ok()) << name << ": " << c.status();
    EXPECT_EQ(c->world(), 8);
  }
  EXPECT_GT(LoadCluster(Path("h200-8.yaml"))->hbm_gib, LoadCluster(Path("h100-8.yaml"))->hbm_gib);
}

TEST(Cluster, MissingFileIsNotFound) {
  absl::StatusOr<ClusterConfig> c = LoadCluster(Path("no-such-cluster.yaml"));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("no-such-cluster.yaml"));
}

TEST(Cluster, MissingKeyIsNamed) {
  EXPECT_THAT(ErrorOf(Edited("nodes: 256\n", "")), HasSubstr("missing key 'nodes'"));
  EXPECT_THAT(ErrorOf(Edited("peak_fp8_tflops: 1979\n", "")), HasSubstr("'peak_fp8_tflops'"));
  EXPECT_THAT(ErrorOf(Edited("  comm: 0.75", "")), HasSubstr("efficiency.comm"));
}

TEST(Cluster, UnknownKeyIsNamed) {
  const std::string e = ErrorOf(Edited("nodes: 256", "nodez: 256\nnodes: 256"));
  EXPECT_THAT(e, HasSubstr("nodez"));
  EXPECT_THAT(ErrorOf(Edited("  gemm: 0.55", "  gemm: 0.55\n  gem: 0.5")), HasSubstr("gem"));
}

// A misspelled required key is named as the unknown key it is (with the one it resembles), not as the
// missing one; a duplicate key and a document that is not a map are said as such.
TEST(Cluster, MisspelledDuplicateAndNonMapAreSaidAsSuch) {
  const std::string misspelled = ErrorOf(Edited("hbm_gib: 80", "hbm_gb: 80"));
  EXPECT_THAT(misspelled, HasSubstr("'hbm_gb'"));
  EXPECT_THAT(misspelled, HasSubstr("did you mean 'hbm_gib'"));
  EXPECT_THAT(ErrorOf(Edited("nodes: 256", "nodes: 256\nnodes: 128")), HasSubstr("duplicate key 'nodes'"));
  EXPECT_THAT(ErrorOf("just a sentence, not a cluster\n"), HasSubstr("expected a map"));
}

TEST(Cluster, WrongTypeIsNamed) {
  EXPECT_THAT(ErrorOf(Edited("gpus_per_node: 8", "gpus_per_node: eight")), HasSubstr("gpus_per_node"));
  EXPECT_THAT(ErrorOf(Edited("nodes: 256", "nodes: 2.5")), HasSubstr("nodes"));
  EXPECT_THAT(ErrorOf(Edited("hbm_gib: 80", "hbm_gib: [80]")), HasSubstr("hbm_gib"));
}

TEST(Cluster, OutOfRangeValuesAreNamed) {
  EXPECT_THAT(ErrorOf(Edited("  gemm: 0.55", "  gemm: 1.5")), HasSubstr("efficiency.gemm"));
  EXPECT_THAT(ErrorOf(Edited("memory_reserve_gib: 8", "memory_reserve_gib: 90")),
              HasSubstr("memory_reserve_gib"));
  EXPECT_THAT(ErrorOf(Edited("nvlink_gbps: 160", "nvlink_gbps: 0")), HasSubstr("nvlink_gbps"));
  EXPECT_THAT(ErrorOf(Edited("nodes: 256", "nodes: 0")), HasSubstr("nodes"));
  EXPECT_THAT(ErrorOf(Edited("comm_sm_fraction: 0.15", "comm_sm_fraction: 1")),
              HasSubstr("comm_sm_fraction"));
}

// The optional sections: the report cluster's whole-run assumptions load; a missing or out-of-range key is
// named; the headroom shares override the defaults.
TEST(Cluster, RunAndHeadroomSections) {
  absl::StatusOr<ClusterConfig> c = LoadCluster(Path("h800-2048.yaml"));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->run.has_value());
  EXPECT_EQ(c->run->batch_ramp_start, 3072);
  EXPECT_DOUBLE_EQ(c->run->batch_ramp_tokens, 4.69e11);
  EXPECT_FALSE(c->profile.has_value());
  EXPECT_THAT(ErrorOf(Edited("  restart_min: 20", "")), HasSubstr("run.restart_min"));
  EXPECT_THAT(ErrorOf(Edited("  eval_fraction: 0.01", "  eval_fraction: 1.5")), HasSubstr("eval_fraction"));
  EXPECT_THAT(ErrorOf(Edited("  eval_fraction: 0.01", "  eval_fraction: 0.01\n  evaluation: 2")),
              HasSubstr("evaluation"));
  const std::string with_headroom =
      Edited("memory_reserve_gib: 8", "memory_reserve_gib: 8\nmemory_headroom: {estimate_error: 0.03}");
  absl::StatusOr<ClusterConfig> h = ParseCluster(with_headroom, "h.yaml");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_DOUBLE_EQ(h->EstimateError(), 0.03);
  EXPECT_DOUBLE_EQ(h->Fragmentation(), kDefaultFragmentation);
  EXPECT_THAT(
      ErrorOf(Edited("memory_reserve_gib: 8", "memory_reserve_gib: 8\nmemory_headroom: {fragmentation: 2}")),
      HasSubstr("memory_headroom.fragmentation"));
}

TEST(Cluster, SyntaxErrorNamesTheFile) {
  EXPECT_THAT(ErrorOf(Edited("nodes: 256", "nodes: [256")), HasSubstr("bad.yaml"));
}

}  // namespace
}  // namespace fathom
