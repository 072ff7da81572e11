// Schedules as data: the generators' lists validate, their simulated bubbles equal the closed forms of the
// DualPipe README, their peak activations match its table, and the validator rejects broken lists.
#include "parallel/schedule.h"

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/schedule_validate.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using ::testing::HasSubstr;

struct UnitCosts {
  double f, b_input, w, fb;                 // F, input-gradient B, W, overlapped F&B
  double b() const { return b_input + w; }  // the README's B: a full backward chunk
};

// The DualPipe README's bubble: the idle time of a rank over one step (makespan minus the time the rank
// computes), for the rank that idles most; in 1F1B and ZB1P every rank idles the same. Costs are exact
// small integers and halves, so the comparison is exact.
double SimulatedBubble(const Schedule& s, const UnitCosts& c) {
  absl::StatusOr<ScheduleDeps> deps = ResolveDependencies(s);
  EXPECT_TRUE(deps.ok()) << deps.status();
  auto duration = [&](int, const Instruction& ins) {
    switch (ins.kind) {
      case OpKind::kF:
        return c.f;
      case OpKind::kB:
        return c.b_input;
      case OpKind::kW:
        return c.w;
      case OpKind::kBW:
        return c.b();
      case OpKind::kFB:
        return c.fb;
    }
    return 0.0;
  };
  absl::StatusOr<ScheduleTimes> times =
      ExecuteSchedule(s, *deps, duration, [](const Dependency&, int, int) { return 0.0; });
  EXPECT_TRUE(times.ok()) << times.status();
  double makespan = 0;
  for (const auto& rank : *times) {
    for (const TimedInstruction& t : rank) makespan = std::max(makespan, t.end);
  }
  double bubble = 0;
  for (const auto& rank : *times) {
    double busy = 0;
    for (const TimedInstruction& t : rank) busy += t.end - t.start;
    bubble = std::max(bubble, makespan - busy);
  }
  return bubble;
}

// The README's closed forms. For DualPipeV, PP in the README counts stages (2 per rank): PP/2 - 1 = pp - 1.
double ReadmeBubble(ScheduleKind kind, int pp, const UnitCosts& c) {
  switch (kind) {
    case ScheduleKind::k1F1B:
      return (pp - 1) * (c.f + c.b());
    case ScheduleKind::kZB1P:
      return (pp - 1) * (c.f + c.b() - 2 * c.w);
    case ScheduleKind::kDualPipe:
      return (pp / 2 - 1) * (c.fb + c.b() - 3 * c.w);
    case ScheduleKind::kDualPipeV:
      return (pp - 1) * (c.fb + c.b() - 3 * c.w);
  }
  return -1;
}

// Random costs in halves. The closed forms assume what the README's figure draws: a forward chunk takes as
// long as the input-gradient part of a backward (B - W = F), a W no longer than F (else ZB1P's deferred W
// passes overflow the bubbles they fill); F&B lies between max(F, B) and F + B.
UnitCosts RandomCosts(std::mt19937_64& rng) {
  UnitCosts c;
  c.f = std::uniform_int_distribution<int>(2, 8)(rng) / 2.0;
  c.b_input = c.f;
  c.w = std::uniform_int_distribution<int>(1, static_cast<int>(2 * c.f))(rng) / 2.0;
  const int lo = static_cast<int>(2 * std::max(c.f, c.b())), hi = static_cast<int>(2 * (c.f + c.b()));
  c.fb = std::uniform_int_distribution<int>(lo, hi)(rng) / 2.0;
  return c;
}

TEST(ScheduleBubble, MatchesDualPipeReadmeClosedForms) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<UnitCosts> costs = {{1, 1, 1, 2.5}, {2, 2, 1, 4.5}};
  for (int i = 0; i < 4; ++i) costs.push_back(RandomCosts(rng));
  for (ScheduleKind kind :
       {ScheduleKind::k1F1B, ScheduleKind::kZB1P, ScheduleKind::kDualPipe, ScheduleKind::kDualPipeV}) {
    for (int pp : {2, 4, 6, 8, 16}) {
      for (int m : {pp, 2 * pp, 2 * pp + 2, 3 * pp + 4, 5 * pp}) {
        if (!CheckScheduleShape(kind, pp, m).ok()) continue;
        absl::StatusOr<Schedule> s = MakeSchedule(kind, pp, m);
        ASSERT_TRUE(s.ok()) << s.status();
        for (const UnitCosts& c : costs) {
          SCOPED_TRACE(ScheduleKindName(kind) + " pp " + std::to_string(pp) + " micro-batches " +
                       std::to_string(m) + " F " + std::to_string(c.f) + " W " + std::to_string(c.w) +
                       " F&B " + std::to_string(c.fb));
          const double expected = ReadmeBubble(kind, pp, c);
          if (pp > 2 || kind == ScheduleKind::k1F1B || kind == ScheduleKind::kZB1P ||
              kind == ScheduleKind::kDualPipeV) {
            ASSERT_GT(expected, 0.0);  // the comparison is not vacuous
          }
          EXPECT_DOUBLE_EQ(SimulatedBubble(*s, c), expected);
        }
      }
    }
  }
}

TEST(ScheduleBubble, ZeroBubbleBeatsOneFOneBAndDualPipeBeatsBoth) {
  const UnitCosts c{1, 1, 1, 2.5};
  for (int pp : {4, 8}) {
    const double b1 = SimulatedBubble(Schedule1F1B(pp, 4 * pp), c);
    const double zb = SimulatedBubble(ScheduleZB1P(pp, 4 * pp), c);
    const double dp = SimulatedBubble(ScheduleDualPipe(pp, 4 * pp), c);
    EXPECT_LT(zb, b1);
    EXPECT_LT(dp, zb);
  }
}

TEST(ScheduleActivations, PeaksMatchDualPipeReadmeTable) {
  for (int pp : {2, 4, 8, 16}) {
    for (int m : {2 * pp, 4 * pp + 2}) {
      SCOPED_TRACE("pp " + std::to_string(pp) + " micro-batches " + std::to_string(m));
      absl::StatusOr<ValidationReport> one = ValidateSchedule(Schedule1F1B(pp, m));
      absl::StatusOr<ValidationReport> zb = ValidateSchedule(ScheduleZB1P(pp, m));
      absl::StatusOr<ValidationReport> dual = ValidateSchedule(ScheduleDualPipe(pp, m));
      absl::StatusOr<ValidationReport> v = ValidateSchedule(ScheduleDualPipeV(pp, m));
      ASSERT_TRUE(one.ok()) << one.status();
      ASSERT_TRUE(zb.ok()) << zb.status();
      ASSERT_TRUE(dual.ok()) << dual.status();
      ASSERT_TRUE(v.ok()) << v.status();
      for (int r = 0; r < pp; ++r) {
        // 1F1B and ZB1P: PP on the first rank, one less per rank after it.
        EXPECT_EQ(one->peak_live_activations[r], pp - r);
        EXPECT_EQ(zb->peak_live_activations[r], pp - r);
        // DualPipe: PP + 1 chunk activations on every rank (with 2x parameters).
        EXPECT_EQ(dual->peak_live_activations[r], pp + 1);
        // DualPipeV: PP + 1 where the README's PP counts the 2*pp stages.
        EXPECT_EQ(v->peak_live_activations[r], 2 * pp + 1);
      }
      // ZB1P keeps W passes pending on later ranks; 1F1B never splits B and W.
      EXPECT_EQ(one->peak_pending_weight_grads[pp - 1], 0);
      if (pp > 1) {
        EXPECT_GT(zb->peak_pending_weight_grads[pp - 1], 0);
      }
    }
  }
}

TEST(ScheduleShape, PreconditionsNameTheKey) {
  absl::StatusOr<Schedule> s = MakeSchedule(ScheduleKind::kDualPipe, 3, 12);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("parallel.pp"));
  s = MakeSchedule(ScheduleKind::kDualPipe, 4, 7);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("parallel.micro_batches"));
  s = MakeSchedule(ScheduleKind::kDualPipe, 4, 6);
  ASSERT_FALSE(s.ok());
  s = MakeSchedule(ScheduleKind::kDualPipeV, 4, 7);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(MakeSchedule(ScheduleKind::kDualPipeV, 4, 9).ok());  // DualPipeV needs no even count
  EXPECT_FALSE(ParseScheduleKind("gpipe").ok());
  for (ScheduleKind k :
       {ScheduleKind::k1F1B, ScheduleKind::kZB1P, ScheduleKind::kDualPipe, ScheduleKind::kDualPipeV}) {
    EXPECT_EQ(*ParseScheduleKind(ScheduleKindName(k)), k);
  }
}

TEST(SchedulePlacement, DualPipeRanksHoldMirroredStagesAndDualPipeVTurns) {
  const Schedule d = ScheduleDualPipe(8, 16);
  EXPECT_EQ(d.Place(0, 0), (StageSlot{0, 0}));
  EXPECT_EQ(d.Place(8, 0), (StageSlot{7, 1}));  // second direction enters at the last rank
  EXPECT_EQ(d.ModelStage(2, 1), 5);
  EXPECT_EQ(d.StageOf(2, 1, 3), -1);  // a first-direction micro-batch never visits chunk 1
  const Schedule v = ScheduleDualPipeV(4, 8);
  EXPECT_EQ(v.num_stages(), 8);
  EXPECT_EQ(v.Place(5, 3), (StageSlot{3, 0}));
  EXPECT_EQ(v.Place(5, 4), (StageSlot{3, 1}));  // the turn stays on the last rank
  EXPECT_EQ(v.Place(5, 7), (StageSlot{0, 1}));
}

// The lists a test breaks start from a valid schedule, so each failure below comes from the edit.
TEST(ScheduleValidate, RejectsMissingW) {
  Schedule s = ScheduleZB1P(4, 8);
  ASSERT_TRUE(ValidateSchedule(s).ok());
  auto& list = s.ranks[2];
  auto it = std::find_if(list.begin(), list.end(), [](const Instruction& i) { return i.kind == OpKind::kW; });
  ASSERT_NE(it, list.end());
  const int mb = it->mb;
  list.erase(it);
  absl::StatusOr<ValidationReport> r = ValidateSchedule(s);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("has no W"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("micro-batch " + std::to_string(mb)));
}

TEST(ScheduleValidate, RejectsDuplicateForward) {
  Schedule s = Schedule1F1B(4, 8);
  s.ranks[1].insert(s.ranks[1].begin() + 1, Instruction::F(0, 0));
  absl::StatusOr<ValidationReport> r = ValidateSchedule(s);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("second F"));
}

TEST(ScheduleValidate, RejectsBackwardBeforeItsForward) {
  Schedule s = Schedule1F1B(4, 8);
  auto& list = s.ranks[3];  // last rank: F0 BW0 F1 BW1 ...
  ASSERT_EQ(list[0], Instruction::F(0, 0));
  std::swap(list[0], list[1]);
  absl::StatusOr<ValidationReport> r = ValidateSchedule(s);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("before its F"));
}

TEST(ScheduleValidate, RejectsWeightGradBeforeItsBackward) {
  Schedule s = ScheduleZB1P(2, 4);
  auto& list = s.ranks[0];
  auto b = std::find(list.begin(), list.end(), Instruction::B(0, 0));
  auto w = std::find(list.begin(), list.end(), Instruction::W(0, 0));
  ASSERT_TRUE(b != list.end() && w != list.end());
  std::iter_swap(b, w);
  absl::StatusOr<ValidationReport> r = ValidateSchedule(s);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("before its B"));
}

TEST(ScheduleValidate, RejectsDeadlockingOrder) {
  // Every list is locally in order, yet rank 0 waits for the gradient of micro-batch 0 while rank 1 waits
  // for the activation of micro-batch 1, which rank 0 sends only after that gradient.
  Schedule s{ScheduleKind::k1F1B, 2, 2, {}};
  s.ranks = {{Instruction::F(0, 0), Instruction::BW(0, 0), Instruction::F(1, 0), Instruction::BW(1, 0)},
             {Instruction::F(1, 0), Instruction::BW(1, 0), Instruction::F(0, 0), Instruction::BW(0, 0)}};
  absl::StatusOr<ValidationReport> r = ValidateSchedule(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("deadlock"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("rank 0"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("rank 1"));
}

TEST(ScheduleValidate, RejectsOutOfOrderChannel) {
  // Rank 1 takes micro-batch 1's activation before micro-batch 0's: no deadlock (sends are buffered),
  // but the channel 0 -> 1 would need tags by micro-batch.
  Schedule s{ScheduleKind::k1F1B, 2, 2, {}};
  s.ranks = {{Instruction::F(0, 0), Instruction::F(1, 0), Instruction::BW(0, 0), Instruction::BW(1, 0)},
             {Instruction::F(1, 0), Instruction::BW(1, 0), Instruction::F(0, 0), Instruction::BW(0, 0)}};
  absl::StatusOr<ValidationReport> r = ValidateSchedule(s);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("channel rank 0 -> rank 1"));
}

TEST(ScheduleValidate, RejectsWrongChunkAndRange) {
  Schedule s = ScheduleDualPipe(4, 8);
  s.ranks[0][0].chunk = 1;  // a first-direction micro-batch on the second-direction chunk
  absl::StatusOr<ValidationReport> r = ValidateSchedule(s);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("never visits chunk 1"));
  s = Schedule1F1B(2, 2);
  s.ranks[0][0].mb = 5;
  r = ValidateSchedule(s);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("outside [0, 2)"));
}

TEST(ScheduleValidate, EveryGeneratedListIsCompleteAndUsesOverlappedPairs) {
  for (int pp : {2, 4, 6, 8}) {
    const Schedule d = ScheduleDualPipe(pp, 6 * pp);
    const Schedule v = ScheduleDualPipeV(pp, 3 * pp + 1);
    EXPECT_TRUE(ValidateSchedule(d).ok());
    EXPECT_TRUE(ValidateSchedule(v).ok());
    for (const Schedule* s : {&d, &v}) {
      for (const auto& list : s->ranks) {
        EXPECT_GT(std::count_if(list.begin(), list.end(),
                                [](const Instruction& i) { return i.kind == OpKind::kFB; }),
                  0);
      }
    }
  }
  for (int pp : {1, 3, 5}) {
    for (int m : {1, 2, pp, 3 * pp}) {
      EXPECT_TRUE(ValidateSchedule(Schedule1F1B(pp, m)).ok());
      EXPECT_TRUE(ValidateSchedule(ScheduleZB1P(pp, m)).ok());
    }
  }
}

}  // namespace
}  // namespace fathom

namespace fathom {
namespace {

// The schedule rules a recipe's parallel section must meet (moved here from framework/config with the
// same messages: the schedules are the one place that knows them).
std::string ScheduleError(const std::vector<std::string>& overrides) {
  absl::StatusOr<Recipe> r = LoadRecipe(FATHOM_SOURCE_DIR "/recipes/tiny.yaml", overrides);
  if (!r.ok()) return std::string(r.status().message());
  absl::Status s = ValidateParallelSchedule(r->parallel, r->model);
  return s.ok() ? "" : std::string(s.message());
}

TEST(ScheduleRecipe, StageRulesComeFromTheSchedule) {
  EXPECT_THAT(ScheduleError({"parallel.schedule=gpipe"}),
              HasSubstr("parallel.schedule must be one of 1f1b, zb1p, dualpipe, dualpipev; got 'gpipe'"));
  EXPECT_THAT(ScheduleError({"parallel.pp=2", "parallel.stage_layers=[3]"}),
              HasSubstr("parallel.stage_layers has 1 entry, must have parallel.pp (2)"));
  EXPECT_THAT(ScheduleError({"parallel.pp=4"}),
              HasSubstr("parallel.pp (4) must be <= model.num_hidden_layers (3)"));
  // DualPipeV cuts the model into 2 * pp stages.
  EXPECT_THAT(ScheduleError({"parallel.pp=2", "parallel.schedule=dualpipev", "parallel.micro_batches=4"}),
              HasSubstr("2 * parallel.pp (4) must be <= model.num_hidden_layers (3)"));
  EXPECT_THAT(ScheduleError({"parallel.pp=2", "parallel.schedule=dualpipe", "parallel.micro_batches=3"}),
              HasSubstr("parallel.micro_batches: dualpipe needs an even count >= 2*pp = 4, got 3"));
  EXPECT_EQ(ScheduleError({"parallel.pp=2", "parallel.schedule=zb1p"}), "");
}

}  // namespace
}  // namespace fathom
