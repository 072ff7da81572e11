// The start-up memory check (launch/memory_check.h): its parameter counts are exactly the model's, its
// arithmetic saturates instead of wrapping, and its verdict names the bytes needed and available.
#include "launch/memory_check.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "layers/model.h"
#include "tests/common/unused_exchange.h"

namespace fathom {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

const std::string kTiny = std::string(FATHOM_SOURCE_DIR) + "/recipes/tiny.yaml";

// The model's own count for the slice of `rank`: the sum of its parameter specs' elements (what the
// ParamTable holds, before its 16-element alignment).
int64_t ModelElements(const Recipe& recipe, const MeshLayout& layout, int rank) {
  const RankSlice s = SliceOfRank(recipe, layout, rank);
  ModelSlice slice;
  slice.first_layer = s.first_layer;
  slice.end_layer = s.end_layer;
  slice.embedding = s.embedding;
  slice.head = s.head;
  if (layout.ep() > 1) {
    slice.experts = {layout.Coord(rank).ep_rank * s.local_experts, s.local_experts};
    slice.exchange = testing::UnusedExpertExchange::Get();
  }
  Model model(recipe.model, recipe.loss, slice);
  int64_t n = 0;
  for (int i = 0; i < model.params().size(); ++i) n += NumElements(model.params().spec(i).shape);
  return n;
}

TEST(MemoryCheck, ParameterCountsAreTheModelsForEverySlice) {
  const std::vector<std::vector<std::string>> variants = {
      {},
      {"model.q_lora_rank=null"},
      {"model.first_k_dense_replace=0"},
      {"model.first_k_dense_replace=3", "model.num_nextn_predict_layers=2"},
      {"model.num_nextn_predict_layers=0", "model.n_shared_experts=0"},
  };
  for (const std::vector<std::string>& overrides : variants) {
    absl::StatusOr<Recipe> recipe = LoadRecipe(kTiny, overrides);
    ASSERT_TRUE(recipe.ok()) << recipe.status();
    // (world, pp, ep): one rank; three stages; two expert ranks; pipeline x experts with given stages.
    for (auto [world, pp, ep] :
         std::vector<std::tuple<int, int, int>>{{1, 1, 1}, {3, 3, 1}, {2, 1, 2}, {4, 2, 2}}) {
      Recipe r = *recipe;
      r.parallel.pp = pp;
      r.parallel.ep = ep;
      r.parallel.stage_layers = pp == 2 ? std::vector<int64_t>{1, 2} : std::vector<int64_t>{};
      absl::StatusOr<MeshLayout> layout = MeshLayout::Create(world, pp, ep);
      ASSERT_TRUE(layout.ok());
      for (int rank = 0; rank < world; ++rank) {
        EXPECT_EQ(SliceParameterElements(r.model, SliceOfRank(r, *layout, rank)),
                  ModelElements(r, *layout, rank))
            << "overrides " << ::testing::PrintToString(overrides) << ", pp " << pp << ", ep " << ep
            << ", rank " << rank;
      }
    }
  }
}

// A dualpipe rank holds two model chunks (stage r and stage pp - 1 - r): its parameters are those of 1F1B's
// ranks r and pp - 1 - r together; dualpipev's rank 0 holds the first and the last of 2 pp stages. The
// experts' moments are sharded over edp, not dp.
TEST(MemoryCheck, TwoChunkSchedulesCountBothChunks) {
  absl::StatusOr<Recipe> recipe =
      LoadRecipe(kTiny, {"model.num_hidden_layers=4", "parallel.micro_batches=4"});
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  absl::StatusOr<MeshLayout> one = MeshLayout::Create(1, 1, 1);
  absl::StatusOr<MeshLayout> two = MeshLayout::Create(2, 2, 1);
  ASSERT_TRUE(one.ok() && two.ok());
  const MemoryNeed whole = EstimateRankMemory(*recipe, *one, 0, false);
  Recipe dual = *recipe;
  dual.parallel.pp = 2;
  dual.parallel.schedule = "dualpipe";
  ASSERT_EQ(SlicesOfRank(dual, *two, 0).size(), 2u);
  Recipe single = dual;
  single.parallel.schedule = "1f1b";
  EXPECT_EQ(SlicesOfRank(single, *two, 0).size(), 1u);
  const int64_t both = EstimateRankMemory(single, *two, 0, false).parameters +
                       EstimateRankMemory(single, *two, 1, false).parameters;
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_EQ(EstimateRankMemory(dual, *two, rank, false).parameters, both) << "rank " << rank;
  }
  EXPECT_GE(both, whole.parameters);  // with MTP, the last stage's copy of the embedding on top
  Recipe v = dual;
  v.parallel.schedule = "dualpipev";
  const std::vector<RankSlice> slices = SlicesOfRank(v, *two, 0);
  ASSERT_EQ(slices.size(), 2u);
  const RankSlice &first = slices[0], &last = slices[1];
  EXPECT_TRUE(first.embedding);
  EXPECT_TRUE(last.head);
  EXPECT_EQ(last.stage, 3);
  // ep 2 on 2 ranks: dp 2, edp 1: each rank keeps the moments of all its own experts.
  Recipe experts = *recipe;
  experts.parallel.ep = 2;
  absl::StatusOr<MeshLayout> ep2 = MeshLayout::Create(2, 1, 2);
  ASSERT_TRUE(ep2.ok());
  const RankSlice s = SliceOfRank(experts, *ep2, 0);
  const int64_t elements = SliceParameterElements(experts.model, s);
  const int64_t routed = SliceRoutedExpertElements(experts.model, s);
  ASSERT_GT(routed, 0);
  const int64_t moment = experts.optim.moment_dtype == "bf16" ? 2 : 4;
  EXPECT_EQ(EstimateRankMemory(experts, *ep2, 0, false).optimizer,
            ((elements - routed) / 2 + routed + 1) * 2 * moment);
}

TEST(MemoryCheck, ArithmeticSaturatesInsteadOfWrapping) {
  EXPECT_EQ(SaturatingMul(int64_t{1} << 40, int64_t{1} << 40), kSaturatedBytes);
  EXPECT_EQ(SaturatingMul(kSaturatedBytes, 2), kSaturatedBytes);
  EXPECT_EQ(SaturatingAdd(kSaturatedBytes, 1), kSaturatedBytes);
  EXPECT_EQ(SaturatingMul(12345, 6789), 12345 * 6789);
  absl::StatusOr<Recipe> huge = LoadRecipe(kTiny, {"model.hidden_size=1000000000000000000"});
  ASSERT_TRUE(huge.ok()) << huge.status();
  absl::StatusOr<MeshLayout> one = MeshLayout::Create(1, 1, 1);
  ASSERT_TRUE(one.ok());
  const MemoryNeed need = EstimateRankMemory(*huge, *one, 0, /*device=*/false);
  EXPECT_EQ(need.parameters, kSaturatedBytes);
  EXPECT_EQ(need.total(), kSaturatedBytes);
  EXPECT_THAT(need.Describe(), HasSubstr("more than 9223372036854775807 bytes (8 EiB)"));
}

TEST(MemoryCheck, GrowsWithWhatTheRecipeScales) {
  absl::StatusOr<Recipe> tiny = LoadRecipe(kTiny);
  absl::StatusOr<Recipe> deeper = LoadRecipe(kTiny, {"model.num_hidden_layers=100000000"});
  absl::StatusOr<Recipe> wider_batch = LoadRecipe(kTiny, {"train.micro_batch_size=100000000000"});
  ASSERT_TRUE(tiny.ok() && deeper.ok() && wider_batch.ok());
  absl::StatusOr<MeshLayout> one = MeshLayout::Create(1, 1, 1);
  ASSERT_TRUE(one.ok());
  const MemoryNeed base = EstimateRankMemory(*tiny, *one, 0, false);
  const MemoryNeed deep = EstimateRankMemory(*deeper, *one, 0, false);
  const MemoryNeed batch = EstimateRankMemory(*wider_batch, *one, 0, false);
  // Parameters: 10^8 layers hold about 10^8 / 3 times tiny's decoder parameters.
  EXPECT_GT(deep.parameters, base.parameters * 1000000);
  EXPECT_EQ(batch.parameters, base.parameters);
  EXPECT_GT(batch.activations, base.activations * 1000000000);
  // f32 values and gradients: 4 bytes each per element; AdamW moments of the whole slice at dp 1.
  const int64_t elements = SliceParameterElements(tiny->model, SliceOfRank(*tiny, *one, 0));
  EXPECT_EQ(base.parameters, 4 * elements);
  EXPECT_EQ(base.gradients, 4 * elements);
  EXPECT_EQ(base.optimizer, 8 * (elements + 1));
}

TEST(MemoryCheck, VerdictNamesNeededAndAvailable) {
  absl::StatusOr<Recipe> tiny = LoadRecipe(kTiny);
  ASSERT_TRUE(tiny.ok());
  absl::StatusOr<MeshLayout> four = MeshLayout::Create(4, 2, 2);
  ASSERT_TRUE(four.ok());
  Recipe r = *tiny;
  r.parallel.pp = 2;
  r.parallel.ep = 2;
  EXPECT_TRUE(CheckNodeHostMemory(r, *four, 2, 2, 4, int64_t{1} << 30).ok());  // tiny fits in 1 GiB
  const absl::Status s = CheckNodeHostMemory(r, *four, 2, 2, 4, 1000);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("rank 2 (pipeline stage 1 of 2) needs "), HasSubstr("parameters "),
                    HasSubstr("the 4 ranks on its node need "),
                    HasSubstr("available: 1000 bytes (MemAvailable"), HasSubstr("train.micro_batch_size")));
  // The node's need is the sum of its ranks': alone, rank 2 needs less than the four together.
  const int64_t alone = EstimateRankMemory(r, *four, 2, false).total();
  EXPECT_TRUE(CheckNodeHostMemory(r, *four, 2, 0, 1, alone).ok());
  EXPECT_FALSE(CheckNodeHostMemory(r, *four, 2, 2, 4, alone).ok());
}

TEST(MemoryCheck, DeviceVerdictCountsTheComputeCopy) {
  absl::StatusOr<Recipe> gpu = LoadRecipe(kTiny, {"train.device=cuda", "train.dtype=bf16"});
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  absl::StatusOr<MeshLayout> one = MeshLayout::Create(1, 1, 1);
  ASSERT_TRUE(one.ok());
  const int64_t elements = SliceParameterElements(gpu->model, SliceOfRank(*gpu, *one, 0));
  const MemoryNeed device = EstimateRankMemory(*gpu, *one, 0, /*device=*/true);
  const MemoryNeed host = EstimateRankMemory(*gpu, *one, 0, /*device=*/false);
  EXPECT_EQ(device.parameters, 6 * elements);       // f32 master + bf16 copy
  EXPECT_EQ(host.optimizer + host.activations, 0);  // the host only builds the model
  const absl::Status s = CheckRankDeviceMemory(*gpu, *one, 0, 4096);
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("more GPU memory"), HasSubstr("free on its GPU: 4096 bytes")));
}

// The estimate is a floor: recipes/small.yaml on one GPU measured 47.5 GiB at its peak (static + activation
// pool, README's `fathom bench` run on an H100); the check must never ask for more than a run that fits.
TEST(MemoryCheck, SmallRecipeEstimateStaysBelowItsMeasuredPeak) {
  absl::StatusOr<Recipe> small = LoadRecipe(std::string(FATHOM_SOURCE_DIR) + "/recipes/small.yaml",
                                            {"train.device=cuda", "train.dtype=bf16"});
  ASSERT_TRUE(small.ok()) << small.status();
  absl::StatusOr<MeshLayout> one = MeshLayout::Create(1, 1, 1);
  ASSERT_TRUE(one.ok());
  const MemoryNeed need = EstimateRankMemory(*small, *one, 0, /*device=*/true);
  std::printf("recipes/small.yaml, one GPU: estimate %s\n", need.Describe().c_str());
  EXPECT_LT(need.total(), static_cast<int64_t>(47.5 * (1 << 30)));
  EXPECT_GT(need.activations, 0);
}

TEST(MemoryCheck, FormatsBytesAndReadsMemAvailable) {
  EXPECT_EQ(FormatBytes(512), "512 bytes");
  EXPECT_EQ(FormatBytes(3 * (int64_t{1} << 30)), "3221225472 bytes (3.0 GiB)");
  absl::StatusOr<int64_t> available = HostMemoryAvailable();
  ASSERT_TRUE(available.ok()) << available.status();
  EXPECT_GT(*available, 0);
}

}  // namespace
}  // namespace fathom
