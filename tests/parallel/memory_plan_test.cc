// The start-up device memory plan: its rows add up, each knob moves the row it should, a device too small
// for the estimate is rejected with the numbers and the recipe knobs, and the table shows every row.
#include "parallel/memory_plan.h"

#include <cstdio>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "layers/cost.h"
#include "parallel/schedule.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using ::fathom::testing::TestSeed;

constexpr int64_t kGiB = int64_t{1} << 30;

const char* kSmall = FATHOM_SOURCE_DIR "/recipes/small.yaml";

// A plan input with fresh random sizes, on a device large enough for it.
MemoryPlanInput RandomInput(std::mt19937_64& rng) {
  auto draw = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  MemoryPlanInput in;
  in.param_elements = draw(int64_t{1} << 20, int64_t{2} << 30);
  in.compute_copy_bytes = 2;
  in.optimizer_elements = draw(1, in.param_elements);
  in.moment_bytes = 4;
  in.activation_bytes_per_micro_batch = static_cast<double>(draw(1, 8 * kGiB));
  in.micro_batches_in_flight = draw(1, 8);
  in.transient_bytes = static_cast<double>(draw(0, 2 * kGiB));
  in.gemm_workspace_bytes = draw(1, 64 << 20);
  in.free_bytes = 4 * in.param_elements * 4 + in.micro_batches_in_flight * 8 * kGiB + 40 * kGiB;
  return in;
}

int64_t Row(const MemoryPlan& plan, const std::string& name) {
  for (const MemoryRow& r : plan.rows) {
    if (r.name == name) return r.bytes;
  }
  ADD_FAILURE() << "no row " << name;
  return -1;
}

TEST(MemoryPlan, RowsAddUp) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 20; ++trial) {
    const MemoryPlanInput in = RandomInput(rng);
    const MemoryPlan plan = EstimateDeviceMemory(in);
    ASSERT_EQ(plan.rows.size(), 7u);
    EXPECT_EQ(Row(plan, "parameters"), in.param_elements * 4);
    EXPECT_EQ(Row(plan, "gradients"), in.param_elements * 4);
    EXPECT_EQ(Row(plan, "compute copy"), in.param_elements * 2);
    EXPECT_EQ(Row(plan, "optimizer moments"), in.optimizer_elements * 2 * 4);
    EXPECT_EQ(Row(plan, "gemm workspace"), in.gemm_workspace_bytes);
    const double activations =
        static_cast<double>(in.micro_batches_in_flight) * in.activation_bytes_per_micro_batch +
        in.transient_bytes;
    EXPECT_NEAR(static_cast<double>(Row(plan, "activations (est.)")), activations, 1.0);
    EXPECT_EQ(plan.activation_bytes, Row(plan, "activations (est.)"));
    EXPECT_EQ(plan.reserve_bytes, std::max<int64_t>(2 * kGiB, in.free_bytes / 20));
    EXPECT_EQ(Row(plan, "reserve"), plan.reserve_bytes);
    int64_t static_sum = 0;
    for (size_t i = 0; i < 5; ++i) static_sum += plan.rows[i].bytes;
    EXPECT_EQ(plan.static_bytes, static_sum);
    EXPECT_EQ(plan.free_bytes, in.free_bytes);
    EXPECT_EQ(plan.static_bytes + plan.reserve_bytes + plan.pool_bytes, in.free_bytes);
    EXPECT_TRUE(plan.fits());
    EXPECT_EQ(plan.shortfall(), 0);
    ASSERT_TRUE(PlanDeviceMemory(in).ok());
    EXPECT_EQ(PlanDeviceMemory(in)->pool_bytes, plan.pool_bytes);
  }
}

TEST(MemoryPlan, ReserveIsTwoGibOrFivePercent) {
  EXPECT_EQ(DeviceMemoryReserve(10 * kGiB), 2 * kGiB);
  EXPECT_EQ(DeviceMemoryReserve(40 * kGiB), 2 * kGiB);
  EXPECT_EQ(DeviceMemoryReserve(80 * kGiB), 4 * kGiB);
  EXPECT_EQ(DeviceMemoryReserve(140 * kGiB), 7 * kGiB);
}

TEST(MemoryPlan, Bf16CopyAddsTwoBytesPerParameter) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  MemoryPlanInput in = RandomInput(rng);
  in.compute_copy_bytes = 0;
  const MemoryPlan f32 = EstimateDeviceMemory(in);
  in.compute_copy_bytes = 2;
  const MemoryPlan bf16 = EstimateDeviceMemory(in);
  EXPECT_EQ(Row(f32, "compute copy"), 0);
  EXPECT_EQ(bf16.static_bytes - f32.static_bytes, 2 * in.param_elements);
  EXPECT_EQ(f32.pool_bytes - bf16.pool_bytes, 2 * in.param_elements);
  EXPECT_NE(FormatMemoryPlan(f32).find("none"), std::string::npos);
  EXPECT_NE(FormatMemoryPlan(bf16).find("bf16 copies"), std::string::npos);
}

TEST(MemoryPlan, MomentDtypeChangesTheOptimizerRow) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  MemoryPlanInput in = RandomInput(rng);
  in.moment_bytes = 4;
  const MemoryPlan f32 = EstimateDeviceMemory(in);
  in.moment_bytes = 2;
  const MemoryPlan bf16 = EstimateDeviceMemory(in);
  EXPECT_EQ(Row(f32, "optimizer moments"), 8 * in.optimizer_elements);
  EXPECT_EQ(Row(bf16, "optimizer moments"), 4 * in.optimizer_elements);
  EXPECT_EQ(f32.static_bytes - bf16.static_bytes, 4 * in.optimizer_elements);
  // Nothing else moved.
  for (const char* name :
       {"parameters", "gradients", "compute copy", "gemm workspace", "activations (est.)"}) {
    EXPECT_EQ(Row(f32, name), Row(bf16, name)) << name;
  }
}

TEST(MemoryPlan, TooSmallDeviceNamesTheNumbersAndTheKnobs) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  MemoryPlanInput in = RandomInput(rng);
  const MemoryPlan roomy = EstimateDeviceMemory(in);
  // The free bytes F with F = static + activations + reserve(F): exactly enough (the reserve grows with F,
  // so iterate to the fixed point; F only decreases and stays an integer, so it converges).
  int64_t exact = in.free_bytes;
  for (int i = 0; i < 200; ++i) {
    const int64_t next = roomy.static_bytes + roomy.activation_bytes + DeviceMemoryReserve(exact);
    if (next == exact) break;
    exact = next;
  }
  ASSERT_EQ(exact, roomy.static_bytes + roomy.activation_bytes + DeviceMemoryReserve(exact));
  in.free_bytes = exact;
  EXPECT_TRUE(EstimateDeviceMemory(in).fits());
  EXPECT_TRUE(PlanDeviceMemory(in).ok());
  // The most free bytes that do not fit (the pool shrinks by at most one byte per byte less free).
  in.free_bytes = exact - 1;
  while (EstimateDeviceMemory(in).fits()) --in.free_bytes;
  EXPECT_GE(in.free_bytes, exact - 2);
  const MemoryPlan tight = EstimateDeviceMemory(in);
  ASSERT_FALSE(tight.fits());
  EXPECT_EQ(tight.shortfall(), 1);
  absl::StatusOr<MemoryPlan> plan = PlanDeviceMemory(in);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(plan.status().message());
  for (const char* knob :
       {"train.micro_batch_size", "train.seq_len", "optim.moment_dtype", "parallel.pp", "parallel.ep"}) {
    EXPECT_NE(msg.find(knob), std::string::npos) << knob << " missing from: " << msg;
  }
  EXPECT_NE(msg.find("GiB free"), std::string::npos) << msg;
  EXPECT_NE(msg.find("short"), std::string::npos) << msg;
  EXPECT_NE(msg.find("device memory plan (GiB):"), std::string::npos) << msg;  // the table comes along

  // A device smaller than the static part alone: the pool is negative, still the same error.
  in.free_bytes = roomy.static_bytes / 2;
  const MemoryPlan hopeless = EstimateDeviceMemory(in);
  EXPECT_LT(hopeless.pool_bytes, 0);
  EXPECT_EQ(PlanDeviceMemory(in).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(MemoryPlan, TableShowsEveryRowAligned) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const MemoryPlan plan = EstimateDeviceMemory(RandomInput(rng));
  const std::string table = FormatMemoryPlan(plan);
  std::vector<std::string> names;
  for (const MemoryRow& r : plan.rows) names.push_back(r.name);
  for (const char* extra : {"static total", "free at start-up", "activation pool"}) names.push_back(extra);
  size_t value_column = std::string::npos;
  for (const std::string& name : names) {
    const size_t at = table.find("  " + name + " ");
    ASSERT_NE(at, std::string::npos) << name << " missing from:\n" << table;
    // The GiB value ends at the same column on every line.
    const size_t line_end = table.find('\n', at);
    const std::string line = table.substr(at, line_end - at);
    const size_t dot = line.find('.', name.size() + 2);
    ASSERT_NE(dot, std::string::npos) << line;
    if (value_column == std::string::npos) value_column = dot;
    EXPECT_EQ(dot, value_column) << "misaligned:\n" << table;
  }
  // The GiB numbers are the bytes'.
  char expect[64];
  std::snprintf(expect, sizeof(expect), "%.3f", static_cast<double>(plan.rows[0].bytes) / kGiB);
  EXPECT_NE(table.find(expect), std::string::npos) << table;
}

TEST(MemoryPlan, MicroBatchesInFlightFollowTheSchedule) {
  // 1F1B holds min(M, pp - rank) micro-batches on rank `rank`; ZB1P the same (W delayed, 1F1B's memory).
  for (int pp : {1, 2, 4}) {
    for (int m : {1, 3, 8}) {
      const Schedule s = Schedule1F1B(pp, m);
      for (int r = 0; r < pp; ++r) {
        EXPECT_EQ(MicroBatchesInFlight(s.ranks[r]), std::min(m, pp - r))
            << "pp " << pp << " m " << m << " r " << r;
      }
    }
  }
  EXPECT_EQ(MicroBatchesInFlight({Instruction::F(0, 0), Instruction::F(1, 0), Instruction::B(0, 0),
                                  Instruction::W(0, 0), Instruction::BW(1, 0)}),
            2);
  EXPECT_EQ(MicroBatchesInFlight({}), 0);
}

// The recipe path: small.yaml on one GPU, its bf16 copy and moments, and activations from the cost model.
TEST(MemoryPlan, SmallRecipeInputs) {
  absl::StatusOr<Recipe> recipe = LoadRecipe(kSmall);
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  ASSERT_EQ(recipe->train.dtype, "bf16");
  ASSERT_EQ(recipe->optim.moment_dtype, "bf16");
  const ModelSlice whole;  // one stage: everything
  const std::vector<Instruction> program = Schedule1F1B(1, 1).ranks[0];
  const int64_t numel = 1234567891, workspace = 32 << 20, free = 79 * kGiB;
  const MemoryPlanInput in = MemoryPlanInputFor(*recipe, whole, program, numel, numel, workspace, free);
  EXPECT_EQ(in.param_elements, numel);
  EXPECT_EQ(in.compute_copy_bytes, 2);
  EXPECT_EQ(in.optimizer_elements, numel);
  EXPECT_EQ(in.moment_bytes, 2);
  EXPECT_EQ(in.micro_batches_in_flight, 1);
  EXPECT_EQ(in.gemm_workspace_bytes, workspace);
  EXPECT_EQ(in.free_bytes, free);

  // fathom's layers (PrecisionPolicy::Fathom) over every node, times the tokens of a micro-batch; one
  // micro-batch in flight, so the rest of the peak is its BW pass (each node's W right after its B; the head
  // and the MTP module together). On CUDA each MoE layer (MTP's included) adds the tiled expert layout's pad
  // rows (ExpertPaddingBytes).
  ASSERT_EQ(recipe->train.device, "cuda");
  const ActivationBytes pad = ExpertPaddingBytes(*recipe);
  ASSERT_GT(pad.held_f, 0.0);
  const double tokens = 2.0 * 4096.0;
  double held = 0, moe = 0;
  std::vector<ActivationBytes> nodes;
  size_t head_group = 0;
  for (const NodeCost& n :
       BuildCostGraph(recipe->model, recipe->train.seq_len, PrecisionPolicy::Fathom(2, 2))) {
    const ActivationBytes a = n.activations(Recompute::None(), false);
    const ActivationBytes p = n.moe ? pad : ActivationBytes{};
    held += a.held_f;
    moe += n.moe ? 1 : 0;
    if (n.kind == NodeKind::kHead) head_group = nodes.size();
    nodes.push_back({a.held_f * tokens + p.held_f, a.held_b * tokens + p.held_b, a.peak_f * tokens + p.peak_f,
                     a.peak_b * tokens + p.peak_b});
  }
  EXPECT_DOUBLE_EQ(in.activation_bytes_per_micro_batch, held * tokens + moe * pad.held_f);
  const ActivationBytes step = Sequence(nodes, head_group);
  EXPECT_NEAR(in.transient_bytes, std::max(step.peak_f, step.peak_bw) - step.held_f, 1e-6 * tokens);
  EXPECT_GT(in.transient_bytes, 0.05 * in.activation_bytes_per_micro_batch);
  // A BW pass frees each node's bytes after its W: less than B then W would hold.
  EXPECT_LT(step.peak_bw, 0.85 * step.peak_b);
  const MemoryPlan plan = EstimateDeviceMemory(in);
  std::printf("small.yaml activation estimate: %.2f GiB (forward keeps %.2f GiB)\n",
              static_cast<double>(plan.activation_bytes) / kGiB, in.activation_bytes_per_micro_batch / kGiB);
  // recipes/small.yaml (its MTP module included) measured a 10.41 GiB pool peak on one H200 (`fathom bench
  // recipes/small.yaml`, 2026-12-04; its estimate 10.40).
  EXPECT_NEAR(static_cast<double>(plan.activation_bytes) / kGiB, 10.41, 0.03 * 10.41);

  // f32 activations are larger, but less than twice the bf16 ones (statistics and ids keep their widths).
  Recipe f32 = *recipe;
  f32.train.dtype = "f32";
  f32.optim.moment_dtype = "f32";
  const MemoryPlanInput in32 = MemoryPlanInputFor(f32, whole, program, numel, numel, workspace, free);
  EXPECT_EQ(in32.compute_copy_bytes, 0);
  EXPECT_EQ(in32.moment_bytes, 4);
  EXPECT_GT(in32.activation_bytes_per_micro_batch, 1.5 * in.activation_bytes_per_micro_batch);
  EXPECT_LT(in32.activation_bytes_per_micro_batch, 2.0 * in.activation_bytes_per_micro_batch);
}

// A pipeline stage counts only its own nodes: the stages of a 2-way split add up to the whole model.
TEST(MemoryPlan, StageSlicesPartitionTheActivations) {
  absl::StatusOr<Recipe> recipe = LoadRecipe(kSmall);
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  const ModelSlice whole;
  ModelSlice first, second;
  first.end_layer = 3;
  first.head = false;
  second.first_layer = 3;
  second.embedding = false;
  const double all = MicroBatchActivationBytes(*recipe, whole);
  const double a = MicroBatchActivationBytes(*recipe, first), b = MicroBatchActivationBytes(*recipe, second);
  EXPECT_GT(a, 0);
  EXPECT_GT(b, 0);
  EXPECT_NEAR(a + b, all, 1e-9 * all);
  // Each stage's peak is at most the whole model's on one rank.
  const std::vector<Instruction> program = Schedule1F1B(1, 1).ranks[0];
  EXPECT_LE(ActivationPeakBytes(*recipe, first, program), ActivationPeakBytes(*recipe, whole, program));
  EXPECT_LE(ActivationPeakBytes(*recipe, second, program), ActivationPeakBytes(*recipe, whole, program));
}

// The tiled expert layout's pad rows count on CUDA without an exchange (FP8 included): each MoE layer adds
// the same expected bytes, E * (tile - 1) / 2 rows at a routed row's activations; the CPU and expert
// parallelism pack.
TEST(MemoryPlan, TiledExpertPaddingCountsOncePerMoeLayer) {
  absl::StatusOr<Recipe> recipe = LoadRecipe(kSmall);
  ASSERT_TRUE(recipe.ok()) << recipe.status();
  recipe->model.num_nextn_predict_layers = 0;
  Recipe cpu = *recipe, cuda = *recipe, ep = *recipe, fp8 = *recipe;
  cpu.train.device = "cpu";
  cuda.train.device = ep.train.device = fp8.train.device = "cuda";
  ep.parallel.ep = 2;
  fp8.train.precision = "fp8";
  EXPECT_EQ(ExpertPaddingBytes(cpu).held_f, 0.0);
  EXPECT_EQ(ExpertPaddingBytes(ep).held_b, 0.0);
  const ActivationBytes pad = ExpertPaddingBytes(cuda);
  // 32 experts x 63.5 rows x (2 x 2048 x 2 + 8 + 3 x 1408 x 2) bytes forward; + (2048 + 2 x 1408) x 2
  // backward.
  EXPECT_DOUBLE_EQ(pad.held_f, 32 * 63.5 * (8192 + 8 + 8448));
  EXPECT_DOUBLE_EQ(pad.held_b, pad.held_f + 32 * 63.5 * (4096 + 5632));
  // FP8 keeps the gathered input and the output gradient as FP8 rows: 2048 codes + 16 f32 scales = 2112
  // bytes a row instead of 4096.
  const ActivationBytes pad8 = ExpertPaddingBytes(fp8);
  EXPECT_DOUBLE_EQ(pad8.held_f, 32 * 63.5 * (2112 + 4096 + 8 + 8448));
  EXPECT_DOUBLE_EQ(pad8.held_b, pad8.held_f + 32 * 63.5 * (2112 + 5632));
  const ModelSlice whole;
  const int64_t moe_layers = cuda.model.num_hidden_layers - cuda.model.first_k_dense_replace;
  EXPECT_NEAR(MicroBatchActivationBytes(cuda, whole) - MicroBatchActivationBytes(cpu, whole),
              static_cast<double>(moe_layers) * pad.held_f, 1.0);
  // train.expert_gemm own lays out the worst case: 8192 tokens x top-4 = 32768 routed rows over 32 experts
  // take up to floor((32768 + 127 x 32) / 128) = 287 tiles of 128, 3968 pad rows (about twice the expected
  // 2032).
  Recipe own = cuda;
  own.train.expert_gemm = "own";
  const ActivationBytes pad_own = ExpertPaddingBytes(own);
  EXPECT_DOUBLE_EQ(pad_own.held_f, 3968.0 * (8192 + 8 + 8448));
  EXPECT_DOUBLE_EQ(pad_own.held_b, pad_own.held_f + 3968.0 * (4096 + 5632));
  EXPECT_NEAR(MicroBatchActivationBytes(own, whole) - MicroBatchActivationBytes(cpu, whole),
              static_cast<double>(moe_layers) * pad_own.held_f, 1.0);
}

// Under train.precision fp8 the MoE keeps its routed rows and their output gradients as FP8 rows (codes
// and a f32 scale per 128 values), so the estimate drops by about K x H x (2 - 2112 / 2048) bytes per token
// and MoE layer. recipes/small.yaml without MTP measured a 7.68 GiB pool peak in fp8 and 8.14 in bf16 on one
// H200 in the same call (`fathom bench recipes/small.yaml --set model.num_nextn_predict_layers=0 [--set
// train.precision=fp8]`, 2026-12-04); the bf16 estimate was 8.16, the fp8 one 8.16 before the FP8 rows
// were counted.
TEST(MemoryPlan, Fp8RowsShrinkTheSmallRecipeEstimate) {
  const ModelSlice whole;
  const std::vector<Instruction> program = Schedule1F1B(1, 1).ranks[0];
  const int64_t numel = 1234567891, workspace = 32 << 20, free = 120 * kGiB;
  auto estimate = [&](const std::string& precision) {
    absl::StatusOr<Recipe> r =
        LoadRecipe(kSmall, {"model.num_nextn_predict_layers=0", "train.precision=" + precision});
    EXPECT_TRUE(r.ok()) << r.status();
    const MemoryPlan plan =
        EstimateDeviceMemory(MemoryPlanInputFor(*r, whole, program, numel, numel, workspace, free));
    return static_cast<double>(plan.activation_bytes) / kGiB;
  };
  const double bf16 = estimate("bf16"), fp8 = estimate("fp8");
  std::printf("small.yaml without MTP, activation estimate: bf16 %.2f GiB, fp8 %.2f GiB\n", bf16, fp8);
  EXPECT_NEAR(bf16, 8.14, 0.03 * 8.14);
  EXPECT_NEAR(fp8, 7.68, 0.03 * 7.68);
  EXPECT_LT(fp8, bf16);
}

}  // namespace
}  // namespace fathom
