// Trainer behaviour: the same seed reproduces the same losses bit for bit; another seed does not;
// micro-batching does not change the step (same loss and same update as one big micro-batch).
#include "launch/trainer.h"

#include <sstream>

#include "gtest/gtest.h"

namespace fathom {
namespace {

Recipe SmallRecipe(uint64_t seed, int64_t micro_batches, int64_t micro_batch_size) {
  absl::StatusOr<Recipe> r = LoadRecipe(FATHOM_SOURCE_DIR "/recipes/tiny.yaml");
  FATHOM_CHECK(r.ok(), r.status().ToString());
  r->train.seed = seed;
  r->train.steps = 4;
  r->train.seq_len = 16;
  r->parallel.micro_batches = micro_batches;
  r->train.micro_batch_size = micro_batch_size;
  return *r;
}

std::unique_ptr<DeviceMesh> LocalMesh() {
  auto world = CreateWorldCommunicator(CommBackend::kLocal);
  FATHOM_CHECK(world.ok(), world.status().ToString());
  auto mesh = DeviceMesh::Create(*std::move(world), 1, 1);
  FATHOM_CHECK(mesh.ok(), mesh.status().ToString());
  return *std::move(mesh);
}

std::vector<double> Losses(const Recipe& recipe) {
  auto mesh = LocalMesh();
  auto t = Trainer::Create(recipe, *mesh);
  FATHOM_CHECK(t.ok(), t.status().ToString());
  std::vector<double> out;
  for (int64_t s = 0; s < recipe.train.steps; ++s) out.push_back((*t)->Step(s)->loss);
  return out;
}

TEST(Trainer, SameSeedSameLossesBitForBit) {
  Recipe r = SmallRecipe(77, 2, 2);
  std::vector<double> a = Losses(r), b = Losses(r);
  ASSERT_EQ(a.size(), 4u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i;
  std::vector<double> c = Losses(SmallRecipe(78, 2, 2));
  EXPECT_NE(a[0], c[0]);
}

TEST(Trainer, MicroBatchingDoesNotChangeTheStep) {
  // 4 sequences as 4 micro-batches of 1 and as 1 micro-batch of 4: the sampler draws the same sequences
  // (global index = mb * B + b) and the loss is normalised over the whole step, so losses and parameters
  // agree to f32 round-off. f64 makes the comparison tight.
  Recipe split = SmallRecipe(5, 4, 1), whole = SmallRecipe(5, 1, 4);
  split.train.dtype = whole.train.dtype = "f64";
  // The balance loss is a mean over sequences weighted alpha / micro-batches, so it is invariant too.
  split.loss.balance_alpha = whole.loss.balance_alpha = 0.01;
  auto mesh_a = LocalMesh(), mesh_b = LocalMesh();
  auto a = Trainer::Create(split, *mesh_a), b = Trainer::Create(whole, *mesh_b);
  ASSERT_TRUE(a.ok() && b.ok());
  for (int s = 0; s < 2; ++s) {
    StepStats sa = *(*a)->Step(s), sb = *(*b)->Step(s);
    EXPECT_NEAR(sa.loss, sb.loss, 1e-12 * std::abs(sb.loss)) << "step " << s;
  }
  Tensor va = (*a)->model().params().values(), vb = (*b)->model().params().values();
  double max_diff = 0;
  for (int64_t i = 0; i < va.numel(); ++i) max_diff = std::max(max_diff, std::abs(va.Item(i) - vb.Item(i)));
  EXPECT_LT(max_diff, 1e-10);
}

// The summary's first/last windows never overlap: min(10, steps / 2) steps each (one for a single step).
TEST(Trainer, SummaryWindowsForShortRuns) {
  auto steps_with = [](std::vector<double> losses) {
    std::vector<StepStats> s(losses.size());
    for (size_t i = 0; i < losses.size(); ++i) s[i].lm_loss = losses[i];
    return s;
  };
  LossWindows one = SummarizeLosses(steps_with({5.0}));
  EXPECT_EQ(one.window, 1u);
  EXPECT_EQ(one.first, 5.0);
  EXPECT_EQ(one.last, 5.0);
  LossWindows five = SummarizeLosses(steps_with({5, 4, 3, 2, 1}));
  EXPECT_EQ(five.window, 2u);
  EXPECT_DOUBLE_EQ(five.first, 4.5);
  EXPECT_DOUBLE_EQ(five.last, 1.5);
  std::vector<double> many(30);
  for (size_t i = 0; i < many.size(); ++i) many[i] = static_cast<double>(i);
  LossWindows thirty = SummarizeLosses(steps_with(many));
  EXPECT_EQ(thirty.window, 10u);
  EXPECT_DOUBLE_EQ(thirty.first, 4.5);
  EXPECT_DOUBLE_EQ(thirty.last, 24.5);
  EXPECT_EQ(SummarizeLosses({}).window, 0u);
}

}  // namespace
}  // namespace fathom
