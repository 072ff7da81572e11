// The planner and the `fathom plan` / `fathom simulate` commands on the report's model and cluster.
#include "parallel/planner.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/commands.h"
#include "nlohmann/json.hpp"

namespace fathom {
namespace {

using ::testing::HasSubstr;

std::string Source(const std::string& rel) { return std::string(FATHOM_SOURCE_DIR) + "/" + rel; }
const std::string kV3 = "recipes/v3-671b.yaml";
const std::string kH800 = "recipes/clusters/h800-2048.yaml";

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "." + std::to_string(::getpid()))).string();
}

struct CommandOutput {
  int code;
  std::string out, err;
};

CommandOutput RunCommand(int (*command)(const std::vector<std::string>&),
                         const std::vector<std::string>& args) {
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  const int code = command(args);
  CommandOutput o{code, ::testing::internal::GetCapturedStdout(), ::testing::internal::GetCapturedStderr()};
  return o;
}

TEST(Planner, ChoosesTheReportLayoutForDeepSeekV3OnH800) {
  absl::StatusOr<Recipe> recipe = LoadRecipe(Source(kV3));
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  absl::StatusOr<ClusterConfig> cluster = LoadCluster(Source(kH800));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  absl::StatusOr<PlanReport> report = PlanParallelism(*recipe, *cluster);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->global_batch, 15360);
  ASSERT_FALSE(report->ranked.empty());
  const SimulationResult& best = report->ranked.front();
  EXPECT_EQ(best.plan.schedule, ScheduleKind::kDualPipe);
  EXPECT_EQ(best.plan.pp, 16);
  EXPECT_EQ(best.plan.ep, 64);
  EXPECT_EQ(best.plan.ep / cluster->gpus_per_node, 8);  // expert groups span 8 nodes
  EXPECT_EQ(best.dp, 128);                              // ZeRO-1 data parallelism over the rest
  EXPECT_EQ(best.edp, 2);
  EXPECT_TRUE(best.fits);
  EXPECT_LE(best.peak_memory_bytes, 80.0 * 1073741824.0);
  EXPECT_EQ(best.tokens_per_step, 15360.0 * 4096);
  EXPECT_GT(best.tokens_per_s_per_gpu, 0);
  // Every listed candidate fits, and they come out fastest first outside the tie band.
  for (const SimulationResult& r : report->ranked) EXPECT_TRUE(r.fits);
  for (size_t i = 1; i < report->ranked.size(); ++i) {
    EXPECT_GE(report->ranked[i].step_s, best.step_s * (1 - kPlannerTieTolerance));
  }
  // Its stage split runs as written: simulating it again gives the same step.
  absl::StatusOr<SimulationResult> again = Simulate(recipe->model, *cluster, best.plan);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_DOUBLE_EQ(again->step_s, best.step_s);
}

// Thousands of micro-batches per pipeline (the global batch x 34): the planner simulates short schedules
// and extends them, and still chooses the report's layout (how long it took is printed, not asserted).
TEST(Planner, ThousandsOfMicroBatchesPlanTheSameLayout) {
  absl::StatusOr<Recipe> recipe = LoadRecipe(Source(kV3), {"train.global_batch_size=524288"});
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  absl::StatusOr<ClusterConfig> cluster = LoadCluster(Source(kH800));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  absl::StatusOr<PlanReport> report = PlanParallelism(*recipe, *cluster);
  ASSERT_TRUE(report.ok()) << report.status();
  const SimulationResult& best = report->ranked.front();
  EXPECT_EQ(best.plan.schedule, ScheduleKind::kDualPipe);
  EXPECT_EQ(best.plan.pp, 16);
  EXPECT_EQ(best.plan.ep, 64);
  EXPECT_EQ(best.plan.micro_batches, 4096);
  EXPECT_EQ(best.tokens_per_step, 524288.0 * 4096);
  // The leaders were simulated in full after the ranking by extended simulations; the rest agree with the
  // full simulation to 0.1%.
  absl::StatusOr<SimulationResult> full = Simulate(recipe->model, *cluster, best.plan);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_DOUBLE_EQ(best.step_s, full->step_s);
  ASSERT_GT(report->ranked.size(), 10u);
  const SimulationResult& extended = report->ranked.back();
  if (extended.extrapolated_from[0] != 0) {
    full = Simulate(recipe->model, *cluster, extended.plan);
    ASSERT_TRUE(full.ok()) << full.status();
    EXPECT_NEAR(extended.step_s, full->step_s, 1e-3 * full->step_s);
  }
}

// --policy fathom plans what fathom runs: its layers' activations with nothing recomputed, and every schedule
// its executor runs (DualPipe and DualPipeV too: the planner used to drop them, from before the executor ran
// them).
// A --fix that no layout can satisfy names the constraint it breaks, not "no layout for the global batch".
TEST(Planner, ImpossibleFixNamesItsConstraint) {
  absl::StatusOr<Recipe> recipe = LoadRecipe(Source(kV3));
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  absl::StatusOr<ClusterConfig> cluster = LoadCluster(Source(kH800));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"parallel.ep=48", "ep must divide model.n_routed_experts (256)"},
      {"parallel.pp=7", "pp must divide the cluster's 2048 GPUs"},
      {"parallel.stage_layers=[1, 1, 1]", "3 entries; a layout has pp stages"},
  };
  for (const auto& [fix, expect] : cases) {
    SCOPED_TRACE(fix);
    PlannerOptions options;
    ASSERT_TRUE(AddPlanConstraint(fix, *recipe, &options.fixed).ok());
    absl::StatusOr<PlanReport> report = PlanParallelism(*recipe, *cluster, options);
    ASSERT_FALSE(report.ok());
    EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(report.status().message()), HasSubstr(expect));
  }
}

TEST(Planner, FathomPolicyPlansWhatFathomRuns) {
  absl::StatusOr<Recipe> recipe = LoadRecipe(Source("recipes/small.yaml"), {"train.global_batch_size=64"});
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  absl::StatusOr<ClusterConfig> cluster = LoadCluster(Source("recipes/clusters/h200-8.yaml"));
  ASSERT_TRUE(cluster.ok());
  PlannerOptions options;
  absl::StatusOr<PrecisionPolicy> policy = PolicyNamed("fathom", *recipe);
  ASSERT_TRUE(policy.ok());
  options.precision = *policy;
  absl::StatusOr<PlanReport> report = PlanParallelism(*recipe, *cluster, options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GT(report->considered, 0);
  for (const SimulationResult& r : report->ranked) {
    EXPECT_FALSE(r.plan.recompute.norm || r.plan.recompute.mla_up) << r.plan.Describe();
    EXPECT_EQ(r.plan.precision.activations, ActivationModel::kFathom);
  }
  EXPECT_FALSE(PolicyNamed("fp8", *recipe).ok());
}

// Near-ties (within 1% of the fastest) go to fewer stages, then the smaller ep, then the preferred
// schedule; beyond 1% time decides.
TEST(Planner, TiesPreferFewerStagesThenSmallerEp) {
  auto result = [](ScheduleKind kind, int pp, int ep, double step) {
    SimulationResult r;
    r.plan.schedule = kind;
    r.plan.pp = pp;
    r.plan.ep = ep;
    r.step_s = step;
    return r;
  };
  std::vector<SimulationResult> plans = {
      result(ScheduleKind::kDualPipe, 16, 64, 10.00),   // fastest, 16 stages
      result(ScheduleKind::k1F1B, 8, 64, 10.09),        // 0.9% slower, 8 stages, ep 64
      result(ScheduleKind::kZB1P, 8, 32, 10.095),       // 8 stages, ep 32: the simplest of the ties
      result(ScheduleKind::k1F1B, 4, 8, 10.2),          // 2% slower: not a tie
      result(ScheduleKind::kDualPipeV, 8, 64, 10.001),  // 16 stages like DualPipe pp 16
  };
  RankPlans(&plans);
  ASSERT_EQ(plans.size(), 5u);
  EXPECT_EQ(plans[0].plan.ep, 32);
  EXPECT_EQ(plans[0].plan.schedule, ScheduleKind::kZB1P);
  EXPECT_EQ(plans[1].plan.schedule, ScheduleKind::k1F1B);
  EXPECT_EQ(plans[1].plan.pp, 8);
  EXPECT_EQ(plans[2].plan.schedule, ScheduleKind::kDualPipe);  // 16 stages each: the preferred schedule
  EXPECT_EQ(plans[3].plan.schedule, ScheduleKind::kDualPipeV);
  EXPECT_EQ(plans[4].plan.pp, 4);  // faster-first outside the band
}

// Headroom: the plan must fit its estimate plus the activation estimate's error and fragmentation, each a
// share of its activations (the cluster's memory_headroom, else the profile's, else the defaults).
TEST(Planner, PlansLeaveHeadroomForTheEstimatesErrorAndFragmentation) {
  absl::StatusOr<Recipe> recipe = LoadRecipe(Source(kV3));
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  absl::StatusOr<ClusterConfig> cluster = LoadCluster(Source(kH800));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  EXPECT_DOUBLE_EQ(cluster->EstimateError(), kUncalibratedEstimateError);
  EXPECT_DOUBLE_EQ(cluster->Fragmentation(), kDefaultFragmentation);
  ParallelPlan plan;
  plan.schedule = ScheduleKind::kDualPipe;
  plan.pp = 16;
  plan.ep = 64;
  plan.micro_batches = 120;
  plan.seq_len = 4096;
  plan.stage_layers = recipe->parallel.stage_layers;
  plan.precision = PrecisionFor(*recipe);
  ClusterConfig c = *cluster;
  c.estimate_error = 0.2;
  c.fragmentation = 0.07;
  absl::StatusOr<SimulationResult> r = SimulateMemory(recipe->model, c, plan);
  ASSERT_TRUE(r.ok()) << r.status();
  for (const RankMemory& m : r->memory) {
    EXPECT_NEAR(m.estimate_error, 0.2 * m.activations, 1e-6);
    EXPECT_NEAR(m.fragmentation, 0.07 * m.activations, 1e-6);
    EXPECT_NEAR(m.required(), m.total() + 0.27 * m.activations, 1e-3);
  }
  const RankMemory& peak = r->memory[r->peak_memory_rank];
  EXPECT_DOUBLE_EQ(r->required_bytes, peak.required());
  // Usable memory between the estimate and the estimate with headroom: it does not fit.
  c.memory_reserve_gib =
      c.hbm_gib - (r->peak_memory_bytes + 0.5 * (r->required_bytes - r->peak_memory_bytes)) / 1073741824.0;
  r = SimulateMemory(recipe->model, c, plan);
  ASSERT_TRUE(r.ok());
  EXPECT_LT(r->peak_memory_bytes, r->usable_bytes);
  EXPECT_FALSE(r->fits);
  c.estimate_error = c.fragmentation = 0.0;
  EXPECT_TRUE(SimulateMemory(recipe->model, c, plan)->fits);
}

TEST(PlanCommand, PrintsThePlanAndTheReportComparison) {
  const std::string out_file = TempPath("fathom_plan.yaml");
  CommandOutput o = RunCommand(RunPlan, {Source(kV3), "--cluster", Source(kH800), "--out", out_file});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("parallel:\n  pp: 16\n  ep: 64\n"));
  EXPECT_THAT(o.out, HasSubstr("schedule: dualpipe"));
  EXPECT_THAT(o.out, HasSubstr("no tensor parallelism"));
  EXPECT_THAT(o.out, HasSubstr("ZeRO-1"));
  EXPECT_THAT(o.out, HasSubstr("1543 tokens/s/GPU"));  // 180K GPU-hours per trillion tokens
  EXPECT_THAT(o.out, HasSubstr("predicted throughput:"));
  EXPECT_THAT(o.out, HasSubstr("fits in"));
  EXPECT_THAT(o.out, HasSubstr("planned in"));
  EXPECT_THAT(o.out, HasSubstr("UNCALIBRATED"));
  EXPECT_THAT(o.out, HasSubstr("for fragmentation"));
  EXPECT_THAT(o.out, HasSubstr("whole run ("));
  EXPECT_THAT(o.out, HasSubstr("failures and restarts"));
  EXPECT_THAT(o.out, HasSubstr("steady state"));
  // The written section, pasted over the recipe's, loads and carries the plan.
  std::ifstream in(out_file);
  std::stringstream section;
  section << in.rdbuf();
  std::remove(out_file.c_str());
  std::ifstream recipe_in(Source(kV3));
  std::stringstream recipe_text;
  recipe_text << recipe_in.rdbuf();
  std::string text = recipe_text.str();
  const size_t start = text.find("\nparallel:\n");
  const size_t end = text.find("\ntrain:\n");
  ASSERT_TRUE(start != std::string::npos && end != std::string::npos);
  text = text.substr(0, start + 1) + section.str() + text.substr(end);
  absl::StatusOr<Recipe> pasted = ParseRecipe(text, "pasted.yaml");
  ASSERT_TRUE(pasted.ok()) << pasted.status();
  EXPECT_EQ(pasted->parallel.pp, 16);
  EXPECT_EQ(pasted->parallel.ep, 64);
  EXPECT_EQ(pasted->parallel.schedule, "dualpipe");
  EXPECT_EQ(pasted->parallel.stage_layers.size(), 16u);
  // The --set line applies the same section.
  const size_t flags = o.out.find("--set parallel.pp=");
  ASSERT_NE(flags, std::string::npos);
  std::vector<std::string> overrides;
  const std::string line = o.out.substr(flags, o.out.find('\n', flags) - flags);
  for (absl::string_view piece : absl::StrSplit(line, ' ')) {
    if (piece != "--set" && !piece.empty()) overrides.push_back(std::string(piece));
  }
  absl::StatusOr<Recipe> set = LoadRecipe(Source(kV3), overrides);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->parallel.stage_layers, pasted->parallel.stage_layers);
}

// A global batch at or below the cluster's batch_ramp_start has no ramp to grow through: the whole-run
// accounting counts none, and the report says so instead of printing a ramp that shrinks.
TEST(PlanCommand, NoBatchRampBelowItsStart) {
  CommandOutput o = RunCommand(RunPlan, {Source(kV3), "--cluster", Source(kH800), "--global-batch", "1024"});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("batch-size ramp                  none   (the cluster's batch_ramp_start 3072 is "
                               "not below the global batch 1024)"));
  EXPECT_THAT(o.out, Not(HasSubstr("3072 to 1024 sequences")));
  o = RunCommand(RunPlan, {Source(kV3), "--cluster", Source(kH800), "--global-batch", "8192"});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("(3072 to 8192 sequences over 0.469T tokens)"));
}

TEST(PlanCommand, TooSmallClusterReportsTheShortfall) {
  for (const char* cluster : {"recipes/clusters/h100-8.yaml", "recipes/clusters/h200-8.yaml"}) {
    CommandOutput o = RunCommand(RunPlan, {Source(kV3), "--cluster", Source(cluster)});
    EXPECT_EQ(o.code, 2) << cluster;
    EXPECT_THAT(o.err, HasSubstr("does not fit"));
    EXPECT_THAT(o.err, HasSubstr("short by"));
    EXPECT_THAT(o.err, HasSubstr("GiB"));
    EXPECT_TRUE(o.out.empty());
  }
}

TEST(PlanCommand, SmallModelOnOneNode) {
  // The CPU recipe's model plans on one H100 node; its parallel section round-trips through the recipe.
  CommandOutput o = RunCommand(RunPlan, {Source("recipes/tiny.yaml"), "--cluster",
                                         Source("recipes/clusters/h100-8.yaml"), "--global-batch", "64"});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("parallel:\n  pp: "));
  EXPECT_THAT(o.out, ::testing::Not(HasSubstr("DeepSeek-V3 report")));
}

// --fix narrows the layouts to the stated values; everything else is still the planner's choice.
TEST(Planner, FixedValuesConstrainThePlan) {
  absl::StatusOr<Recipe> recipe = LoadRecipe(Source(kV3));
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  absl::StatusOr<ClusterConfig> cluster = LoadCluster(Source(kH800));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  PlannerOptions options;
  ASSERT_TRUE(AddPlanConstraint("parallel.pp=8", *recipe, &options.fixed).ok());
  ASSERT_TRUE(AddPlanConstraint("parallel.schedule=1f1b", *recipe, &options.fixed).ok());
  absl::StatusOr<PlanReport> report = PlanParallelism(*recipe, *cluster, options);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_FALSE(report->ranked.empty());
  for (const SimulationResult& r : report->ranked) {
    EXPECT_EQ(r.plan.pp, 8);
    EXPECT_EQ(r.plan.schedule, ScheduleKind::k1F1B);
  }
  // A key alone fixes the recipe's value; errors name --fix and the key.
  PlanConstraints c;
  ASSERT_TRUE(AddPlanConstraint("parallel.ep", *recipe, &c).ok());
  EXPECT_EQ(c.ep, 64);
  ASSERT_TRUE(AddPlanConstraint("parallel.stage_layers=[30, 31]", *recipe, &c).ok());
  EXPECT_EQ(*c.stage_layers, (std::vector<int64_t>{30, 31}));
  EXPECT_EQ(c.Describe(), "parallel.ep=64, parallel.stage_layers=[30,31]");
  for (const char* bad : {"parallel.pp=0", "parallel.pp=x", "parallel.schedule=gpipe", "parallel.bogus=1",
                          "parallel.stage_layers=3"}) {
    const absl::Status s = AddPlanConstraint(bad, *recipe, &c);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.message(), HasSubstr(std::string("--fix ") + bad));
  }
}

// The plan command ignores the recipe's parallel section: one that is invalid for the model (ep not
// dividing the 256 experts, stage_layers of the wrong length) still plans, and the chosen layout is the same.
TEST(PlanCommand, InvalidParallelSectionStillPlans) {
  CommandOutput o = RunCommand(RunPlan, {Source(kV3), "--cluster", Source(kH800), "--set", "parallel.ep=7",
                                         "--set", "parallel.stage_layers=[1, 2]", "--top", "1"});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("parallel:\n  pp: 16\n  ep: 64\n"));
  EXPECT_THAT(o.out, HasSubstr("the recipe's parallel section is not used"));
  // With --fix the recipe's value is a constraint, and an impossible one is reported.
  o = RunCommand(RunPlan,
                 {Source(kV3), "--cluster", Source(kH800), "--set", "parallel.ep=7", "--fix", "parallel.ep"});
  EXPECT_EQ(o.code, 2);
  EXPECT_THAT(o.err, HasSubstr("parallel.ep=7"));
}

TEST(PlanCommand, MissingGlobalBatchIsRefused) {
  CommandOutput o =
      RunCommand(RunPlan, {Source("recipes/tiny.yaml"), "--cluster", Source("recipes/clusters/h100-8.yaml")});
  EXPECT_EQ(o.code, 2);
  EXPECT_THAT(o.err, HasSubstr("train.global_batch_size"));
  EXPECT_TRUE(o.out.empty());
  o = RunCommand(RunPlan, {Source("recipes/tiny.yaml"), "--cluster", Source("recipes/clusters/h100-8.yaml"),
                           "--set", "train.global_batch_size=64"});
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("global batch 64 sequences"));
}

TEST(PlanCommand, BadInputExitsTwo) {
  EXPECT_EQ(RunCommand(RunPlan, {Source(kV3)}).code, 2);  // no cluster
  CommandOutput o = RunCommand(RunPlan, {Source(kV3), "--cluster", Source("recipes/clusters/missing.yaml")});
  EXPECT_EQ(o.code, 2);
  EXPECT_THAT(o.err, HasSubstr("missing.yaml"));
  o = RunCommand(RunPlan, {Source(kV3), "--cluster", Source(kH800), "--bogus"});
  EXPECT_EQ(o.code, 2);
  EXPECT_THAT(o.err, HasSubstr("--bogus"));
}

TEST(SimulateCommand, SummaryAndTrace) {
  const std::string trace = TempPath("fathom_trace.json");
  CommandOutput o = RunCommand(RunSimulate, {Source(kV3), "--cluster", Source(kH800), "--trace", trace});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("dualpipe pp=16 ep=64"));
  EXPECT_THAT(o.out, HasSubstr("tokens/s/GPU"));
  EXPECT_THAT(o.out, HasSubstr("bubble"));
  EXPECT_THAT(o.out, HasSubstr("fits: peak"));
  std::ifstream in(trace);
  const nlohmann::json doc = nlohmann::json::parse(in);
  std::remove(trace.c_str());
  ASSERT_TRUE(doc["traceEvents"].is_array());
  int complete = 0;
  for (const nlohmann::json& e : doc["traceEvents"]) complete += e["ph"] == "X";
  EXPECT_GT(complete, 16 * 120);  // at least one event per micro-batch per rank
}

TEST(SimulateCommand, OverridesAndBadInput) {
  // A shallower pipeline with the split left to the simulator.
  CommandOutput o =
      RunCommand(RunSimulate, {Source(kV3), "--cluster", Source(kH800), "--set", "parallel.pp=8", "--set",
                               "parallel.stage_layers=[]", "--set", "parallel.micro_batches=60"});
  EXPECT_THAT(o.out, HasSubstr("pp=8"));
  EXPECT_THAT(o.out, HasSubstr("balanced by the simulator"));
  // Eight stages do not fit the H800s' memory: the summary says so and the exit code too (it was 0).
  EXPECT_THAT(o.out, HasSubstr("DOES NOT FIT"));
  EXPECT_EQ(o.code, 2) << o.err;
  // pp must divide the 2048 GPUs.
  o = RunCommand(RunSimulate, {Source(kV3), "--cluster", Source(kH800), "--set", "parallel.pp=6", "--set",
                               "parallel.stage_layers=[]", "--set", "parallel.micro_batches=60"});
  EXPECT_EQ(o.code, 2);
  EXPECT_THAT(o.err, HasSubstr("parallel.pp"));
  o = RunCommand(RunSimulate, {Source(kV3), "--cluster", Source(kH800), "--recompute", "all"});
  EXPECT_EQ(o.code, 2);
  EXPECT_THAT(o.err, HasSubstr("--recompute"));
}

}  // namespace
}  // namespace fathom
