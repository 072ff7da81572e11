// The overlapped schedules on one process (the local communicator): DualPipeV with pp 1 (both chunks,
// both embedding copies and the turn from chunk 0 to chunk 1 on one rank, every FB pair interleaved)
// trains as 1F1B does; two-micro-batch overlap, whose pairs interleave at every MoE layer, changes no bit.
#include <cmath>
#include <map>

#include "gtest/gtest.h"
#include "launch/trainer.h"
#include "parallel/pipeline_executor.h"

namespace fathom {
namespace {

Recipe TinyRecipe(const std::string& schedule, const std::string& overlap, int64_t micro_batches) {
  absl::StatusOr<Recipe> r = LoadRecipe(
      FATHOM_SOURCE_DIR "/recipes/tiny.yaml",
      {"model.num_hidden_layers=4", "train.seq_len=16", "train.micro_batch_size=2", "train.steps=2",
       "optim.warmup_steps=1", "loss.balance_alpha=0.01", "optim.bias_update_speed=0.01"});
  FATHOM_CHECK(r.ok(), r.status().ToString());
  r->parallel.schedule = schedule;
  r->parallel.overlap = overlap;
  r->parallel.micro_batches = micro_batches;
  return *r;
}

struct TrainedRun {
  std::unique_ptr<DeviceMesh> mesh;
  std::unique_ptr<Trainer> trainer;
  std::vector<StepStats> steps;
};

TrainedRun Train(const Recipe& recipe) {
  TrainedRun run;
  auto world = CreateWorldCommunicator(CommBackend::kLocal);
  FATHOM_CHECK(world.ok(), world.status().ToString());
  auto mesh = DeviceMesh::Create(*std::move(world), 1, 1);
  FATHOM_CHECK(mesh.ok(), mesh.status().ToString());
  run.mesh = *std::move(mesh);
  auto trainer = Trainer::Create(recipe, *run.mesh);
  FATHOM_CHECK(trainer.ok(), trainer.status().ToString());
  run.trainer = *std::move(trainer);
  for (int64_t s = 0; s < recipe.train.steps; ++s) {
    absl::StatusOr<StepStats> st = run.trainer->Step(s);
    FATHOM_CHECK(st.ok(), st.status().ToString());
    run.steps.push_back(*st);
  }
  return run;
}

// Every parameter of every chunk of `a` against the same-named one of `b`'s single chunk: the largest
// absolute difference.
double MaxParameterDiff(TrainedRun& a, TrainedRun& b) {
  const ParamTable& ref = b.trainer->runtime().model(0).params();
  double worst = 0;
  for (int c = 0; c < a.trainer->runtime().num_chunks(); ++c) {
    const ParamTable& mine = a.trainer->runtime().model(c).params();
    for (int id = 0; id < mine.size(); ++id) {
      const int rid = ref.Find(mine.spec(id).name);
      EXPECT_GE(rid, 0) << mine.spec(id).name;
      if (rid < 0) continue;
      Tensor x = mine.value(id), y = ref.value(rid);
      for (int64_t i = 0; i < x.numel(); ++i) worst = std::max(worst, std::abs(x.Item(i) - y.Item(i)));
    }
  }
  return worst;
}

TEST(OverlapTrainer, DualPipeVOnOneRankTrainsAs1F1B) {
  // f64: the two schedules add the same terms in other orders (micro-batches, the two embedding copies'
  // gradients summed after the backward), so they agree to f64 round-off, far below what any wrong
  // gradient or missed copy would move (~lr = 1e-4 per step and element).
  Recipe v = TinyRecipe("dualpipev", "none", 4), plain = TinyRecipe("1f1b", "none", 4);
  v.train.dtype = plain.train.dtype = "f64";
  TrainedRun a = Train(v), b = Train(plain);
  ASSERT_EQ(a.trainer->runtime().num_chunks(), 2);
  EXPECT_EQ(a.trainer->runtime().chunk_model_stage(0), 0);
  EXPECT_EQ(a.trainer->runtime().chunk_model_stage(1), 1);
  EXPECT_EQ(a.trainer->runtime().executed_program(), a.trainer->runtime().schedule().ranks[0]);
  for (size_t s = 0; s < a.steps.size(); ++s) {
    EXPECT_NEAR(a.steps[s].loss, b.steps[s].loss, 1e-12 * std::abs(b.steps[s].loss)) << "step " << s;
    EXPECT_NEAR(a.steps[s].grad_norm, b.steps[s].grad_norm, 1e-10 * b.steps[s].grad_norm) << "step " << s;
  }
  EXPECT_LT(MaxParameterDiff(a, b), 1e-12);
  // The embedding's two copies (chunk 0's, and chunk 1's for MTP) stayed bit-identical.
  Model& first = a.trainer->runtime().model(0);
  Model& last = a.trainer->runtime().model(1);
  ASSERT_GE(first.embedding_id(), 0);
  ASSERT_GE(last.embedding_id(), 0);
  Tensor e0 = first.params().value(first.embedding_id()), e1 = last.params().value(last.embedding_id());
  for (int64_t i = 0; i < e0.numel(); ++i) ASSERT_EQ(e0.Item(i), e1.Item(i)) << "element " << i;
}

TEST(OverlapTrainer, TwoMicroBatchOverlapChangesNoBit) {
  // With the pairs interleaved, every parameter still accumulates its micro-batches' gradients in
  // micro-batch order, and each micro-batch's forward reads the same weights: 1F1B's bits exactly.
  // 5 micro-batches: two pairs and one alone.
  TrainedRun a = Train(TinyRecipe("1f1b", "two_micro_batch", 5)), b = Train(TinyRecipe("1f1b", "none", 5));
  const std::vector<Instruction>& executed = a.trainer->runtime().executed_program();
  EXPECT_EQ(executed, TwoMicroBatchSchedule(5).ranks[0]);
  ASSERT_EQ(executed.size(), 10u);
  EXPECT_EQ(executed[1], Instruction::F(1, 0));  // F0 F1 BW0 BW1 ...: the pairs ran
  for (size_t s = 0; s < a.steps.size(); ++s) {
    EXPECT_EQ(a.steps[s].loss, b.steps[s].loss) << "step " << s;
    EXPECT_EQ(a.steps[s].grad_norm, b.steps[s].grad_norm) << "step " << s;
    EXPECT_EQ(a.steps[s].expert_loads, b.steps[s].expert_loads) << "step " << s;
  }
  EXPECT_EQ(MaxParameterDiff(a, b), 0.0);
}

}  // namespace
}  // namespace fathom
