// What the runtime hands the executor, checked without running it: the two-micro-batch program is a valid
// single-stage list of F pairs and BW pairs, and the model is cut into as many stages as the schedule has
// (DualPipeV: 2 * pp, the embedding on the first and the head on the last, both on rank 0).
#include <numeric>

#include "gtest/gtest.h"
#include "parallel/pipeline_executor.h"
#include "parallel/schedule_validate.h"
#include "parallel/stage_split.h"

namespace fathom {
namespace {

TEST(TwoMicroBatchProgram, PairsForwardsThenBackwardsAndValidates) {
  for (int m : {1, 2, 3, 6}) {
    const Schedule s = TwoMicroBatchSchedule(m);
    ASSERT_EQ(s.pp, 1);
    ASSERT_EQ(s.ranks.size(), 1u);
    EXPECT_TRUE(ValidateSchedule(s).ok()) << "m " << m;
    const std::vector<Instruction>& list = s.ranks[0];
    ASSERT_EQ(static_cast<int>(list.size()), 2 * m);
    std::vector<Instruction> want;
    for (int first = 0; first < m; first += 2) {
      const int n = std::min(2, m - first);
      for (int i = 0; i < n; ++i) want.push_back(Instruction::F(first + i, 0));
      for (int i = 0; i < n; ++i) want.push_back(Instruction::BW(first + i, 0));
    }
    EXPECT_EQ(list, want) << "m " << m;
  }
  // Two micro-batches live at once, as 1F1B on one stage plus one.
  absl::StatusOr<ValidationReport> v = ValidateSchedule(TwoMicroBatchSchedule(6));
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->peak_live_activations[0], 2);
}

ModelConfig EightLayers() {
  ModelConfig m;
  m.num_hidden_layers = 8;
  m.num_nextn_predict_layers = 1;
  return m;
}

TEST(StageSplit, CutsAsManyStagesAsTheScheduleHas) {
  const ModelConfig model = EightLayers();
  for (const auto& [schedule, pp, stages] : std::vector<std::tuple<std::string, int, int>>{
           {"1f1b", 2, 2}, {"dualpipe", 2, 2}, {"dualpipev", 2, 4}, {"dualpipev", 4, 8}}) {
    ParallelConfig p;
    p.pp = pp;
    p.schedule = schedule;
    absl::StatusOr<std::vector<int64_t>> split = SplitStages(model, p, 64);
    ASSERT_TRUE(split.ok()) << schedule << " " << split.status();
    EXPECT_EQ(static_cast<int>(split->size()), stages) << schedule << " pp " << pp;
    EXPECT_EQ(std::accumulate(split->begin(), split->end(), int64_t{0}), 8) << schedule;
    for (int64_t n : *split) EXPECT_GE(n, 1) << schedule;
  }
  // The given split must have one entry per stage of the schedule.
  ParallelConfig v;
  v.pp = 2;
  v.schedule = "dualpipev";
  v.stage_layers = {4, 4};
  absl::StatusOr<std::vector<int64_t>> wrong = SplitStages(model, v, 64);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("2 * parallel.pp (4)"), std::string::npos) << wrong.status();
  v.stage_layers = {1, 3, 3, 1};
  ASSERT_TRUE(SplitStages(model, v, 64).ok());
  EXPECT_EQ(*SplitStages(model, v, 64), v.stage_layers);
}

TEST(StageSplit, DualPipeVPutsTheCostlyEndsOnTheirStages) {
  // A vocabulary large enough that the embedding's and the head's FLOPs dominate: the stages holding them
  // (the first and the last) get fewer decoder layers than the middle ones.
  ModelConfig model = EightLayers();
  model.vocab_size = 1 << 16;
  ParallelConfig p;
  p.pp = 2;
  p.schedule = "dualpipev";
  absl::StatusOr<std::vector<int64_t>> split = SplitStages(model, p, 64);
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_LT(split->back(), (*split)[1]) << "the head and MTP sit on the last stage";
}

}  // namespace
}  // namespace fathom
