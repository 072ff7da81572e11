// Start-up agreement between ranks (parallel/rank_agreement.h): one verdict on every rank, naming the
// rank that failed or the first recipe key that differs.
#include "parallel/rank_agreement.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "parallel/mpi_communicator.h"

namespace fathom {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

const std::string kTiny = std::string(FATHOM_SOURCE_DIR) + "/recipes/tiny.yaml";

TEST(RankAgreement, AllRanksFineIsOk) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  EXPECT_TRUE(AgreeOnStatus(*world, absl::OkStatus()).ok());
}

TEST(RankAgreement, OneFailingRankIsNamedOnEveryRank) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  const int bad = world->size() - 1;
  const absl::Status mine = world->rank() == bad
                                ? absl::NotFoundError("recipe file not found: /tmp/nothing.yaml")
                                : absl::OkStatus();
  const absl::Status agreed = AgreeOnStatus(*world, mine);
  ASSERT_FALSE(agreed.ok());
  EXPECT_EQ(agreed.code(), absl::StatusCode::kNotFound);  // the failing rank's code, on every rank
  if (world->size() == 1) {
    EXPECT_EQ(agreed, mine);
  } else {
    EXPECT_THAT(std::string(agreed.message()),
                AllOf(HasSubstr("rank " + std::to_string(bad) + ": recipe file not found: /tmp/nothing.yaml"),
                      HasSubstr("did not fail")));
  }
}

TEST(RankAgreement, AllFailingAlikeKeepTheirMessage) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  const absl::Status mine = absl::InvalidArgumentError("tiny.yaml: model.n_group is not stated");
  EXPECT_EQ(AgreeOnStatus(*world, mine), mine);
}

TEST(RankAgreement, SameRecipeEverywhereIsOk) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  absl::StatusOr<Recipe> recipe = LoadRecipe(kTiny, {"parallel.pp=1"});
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  recipe->path = "rank" + std::to_string(world->rank()) + ".yaml";  // paths may differ, contents not
  EXPECT_TRUE(CheckSameRecipeOnAllRanks(*recipe, *world).ok());
}

TEST(RankAgreement, DifferingLearningRateIsNamedWithBothValues) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  if (world->size() < 2) GTEST_SKIP() << "needs 2 ranks to differ";
  const int odd = world->size() - 1;
  absl::StatusOr<Recipe> recipe =
      LoadRecipe(kTiny, {world->rank() == odd ? "optim.lr=0.001" : "optim.lr=0.003"});
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  const absl::Status s = CheckSameRecipeOnAllRanks(*recipe, *world);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("optim.lr is 0.003 on rank 0 ("),
                                              HasSubstr("but 0.001 on rank " + std::to_string(odd)),
                                              HasSubstr("every rank must run the same recipe")));
}

TEST(RankAgreement, FirstDifferenceNamesNestedKeysAndAbsentOnes) {
  const std::string a =
      "model:\n  hidden_size: 64\n  rope_scaling:\n    type: \"yarn\"\n    factor: 4\ntrain:\n  steps: 3\n";
  const std::string b =
      "model:\n  hidden_size: 64\n  rope_scaling:\n    type: \"yarn\"\n    factor: 8\ntrain:\n  steps: 3\n";
  RecipeDifference d = FirstRecipeDifference(a, b);
  EXPECT_EQ(d.key, "model.rope_scaling.factor");
  EXPECT_EQ(d.left, "4");
  EXPECT_EQ(d.right, "8");
  d = FirstRecipeDifference(a, a + "  seed: 5\n");
  EXPECT_EQ(d.key, "train.seed");
  EXPECT_EQ(d.left, "(absent)");
  EXPECT_EQ(FirstRecipeDifference(a, a).key, "");
}

TEST(RankAgreement, BroadcastTextOfEveryLength) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  for (const std::string& text :
       {std::string(), std::string("x"), std::string(8, 'y'), std::string(1001, 'z')}) {
    const std::string root_text = text + std::to_string(world->size() - 1);
    const std::string got =
        BroadcastString(*world, world->rank() == world->size() - 1 ? root_text : "", world->size() - 1);
    EXPECT_EQ(got, root_text);
  }
}

}  // namespace
}  // namespace fathom
