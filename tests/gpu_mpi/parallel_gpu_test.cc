// The multi-rank components on the GPU under mpirun, one rank per GPU, against their host path over MPI on
// the same data:
//   ExchangeGpu  AllToAllExpertExchange with CUDA rows over NCCL and host counts over MPI: dispatch
//                and combine of f32 and bf16 rows, uneven random counts with an expert that
//                receives nothing and a rank that sends nothing, two micro-batches in flight. Pure data
//                movement, so bitwise equal to the host path, which is itself checked against the rows
//                every rank recomputes from the shared seed.
//   ZeroGpu      ZeroOptimizer on a CUDA ParamTable with NCCL groups against the same on the CPU with MPI
//                groups: three steps of reduce-scatter, local norm (with an excluded range), clipping (active
//                in one step), AdamW and all-gather; the expert group is either the world or one rank.
// Each rank's data is drawn from (shared seed, rank, salt), so every rank can recompute every other rank's.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "framework/cuda/check.h"
#include "framework/cuda/device_arena.h"
#include "framework/cuda/device_pool.h"
#include "framework/ops.h"
#include "framework/param_table.h"
#include "gtest/gtest.h"
#include "parallel/all_to_all_exchange.h"
#include "parallel/cuda/nccl_communicator.h"
#include "parallel/launch_env.h"
#include "parallel/mpi_communicator.h"
#include "parallel/zero.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu_mpi/gpu_mpi_support.h"

namespace fathom {
namespace {

// ---- process-wide set-up ----------------------------------------------------------------------------
// One MPI world, one NCCL world on a non-blocking compute stream of its own, and one device pool on that
// stream, created by the first test that runs (every rank runs the same tests in the same order, so the
// collective creation lines up) and destroyed by the environment's TearDown, before MpiFinalize.
struct GpuWorld : testing::NcclTestWorld {
  std::unique_ptr<cuda::DevicePool> pool;  // on the compute stream
  bool created = false;
};

GpuWorld& World() {
  static GpuWorld* world = new GpuWorld;
  return *world;
}

GpuWorld& CreatedWorld() {
  GpuWorld& w = World();
  if (w.created) return w;
  w.created = true;
  w.Join();
  if (w.skip.empty()) {
    w.pool = std::make_unique<cuda::DevicePool>("parallel_gpu_test", size_t{256} << 20, w.compute);
  }
  return w;
}

class GpuWorldEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    GpuWorld& w = World();
    if (w.nccl) w.nccl->Synchronize();  // nothing in flight uses the pool when it goes
    if (w.compute != nullptr) FATHOM_CUDA_CHECK(cudaStreamSynchronize(w.compute));
    w.pool.reset();
    w.Leave();
  }
};

::testing::Environment* const kGpuWorldEnvironment =
    ::testing::AddGlobalTestEnvironment(new GpuWorldEnvironment);

// ---- data -------------------------------------------------------------------------------------------

using testing::SharedSeed;

std::mt19937_64 Rng(uint64_t seed, int rank, int salt) {
  return std::mt19937_64(seed * 1000003ull + static_cast<uint64_t>(rank) * 7919ull +
                         static_cast<uint64_t>(salt) * 104729ull);
}

// (rows, width) normal f32 values of rank `rank`, or those values rounded to bf16.
Tensor RankRows(uint64_t seed, int rank, int salt, int64_t rows, int64_t width, DType dtype) {
  std::mt19937_64 rng = Rng(seed, rank, salt);
  Tensor t = testing::RandomTensor({rows, width}, DType::kF32, rng);
  return dtype == DType::kF32 ? t : t.To(dtype);
}

// Bitwise equality of two host tensors; names the first differing element.
::testing::AssertionResult SameBits(const Tensor& got, const Tensor& want) {
  if (got.dtype() != want.dtype() || got.shape() != want.shape()) {
    return ::testing::AssertionFailure() << "got " << got.shape_str() << " " << DTypeName(got.dtype())
                                         << ", want " << want.shape_str() << " " << DTypeName(want.dtype());
  }
  const size_t es = DTypeSize(got.dtype());
  const char* g = static_cast<const char*>(got.raw());
  const char* w = static_cast<const char*>(want.raw());
  for (int64_t i = 0; i < got.numel(); ++i) {
    if (std::memcmp(g + i * es, w + i * es, es) != 0) {
      return ::testing::AssertionFailure() << "element " << i << " of " << got.shape_str() << ": got "
                                           << got.Item(i) << ", want " << want.Item(i);
    }
  }
  return ::testing::AssertionSuccess();
}

double SumOver(Communicator& comm, double x) {
  Tensor t = Tensor::FromVector({x}, {1}, DType::kF64);
  comm.AllReduce(t, ReduceOp::kSum);
  return t.data<double>()[0];
}

double RelDiff(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); }

// ---- fixture ----------------------------------------------------------------------------------------

class GpuParallelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GpuWorld& w = CreatedWorld();
    if (!w.skip.empty()) GTEST_SKIP() << w.skip;
    seed_ = SharedSeed(mpi());
    context_ = std::make_unique<ops::OpContext>(w.compute);
    pool_scope_ = std::make_unique<cuda::PoolScope>(*w.pool);
    op_scope_ = std::make_unique<ops::OpContextScope>(*context_);
  }
  void TearDown() override {
    if (!context_) return;
    nccl().Synchronize();
    FATHOM_CUDA_CHECK(cudaStreamSynchronize(World().compute));
    EXPECT_EQ(nccl().pending_requests(), 0);
    op_scope_.reset();
    pool_scope_.reset();
    context_.reset();
  }

  MpiCommunicator& mpi() { return *World().mpi; }
  NcclCommunicator& nccl() { return *World().nccl; }
  int p() { return mpi().size(); }
  int r() { return mpi().rank(); }

  // A device copy of a host tensor (from the pool, on the compute stream).
  Tensor ToDevice(const Tensor& host) { return ops::To(host, Device::kCUDA); }
  // The host copy of a device tensor after everything started so far: the communicators' work first (a
  // host wait with their timeout, so a hang is reported rather than waited out), then the compute stream.
  Tensor ToHost(const Tensor& device, NcclCommunicator* also = nullptr) {
    nccl().Synchronize();
    if (also != nullptr) also->Synchronize();
    return ops::To(device, Device::kCPU);
  }

  uint64_t seed_ = 0;
  std::unique_ptr<ops::OpContext> context_;
  std::unique_ptr<cuda::PoolScope> pool_scope_;
  std::unique_ptr<ops::OpContextScope> op_scope_;
};

// ---- ExchangeGpu ------------------------------------------------------------------------------------

class ExchangeGpu : public GpuParallelTest {};

constexpr int64_t kLocalExperts = 3;
constexpr int64_t kWidth = 37;  // odd: no alignment to lean on

// Rank `rank`'s rows per global expert (E) for micro-batch `mb`: uniform in [0, 4], zero for `empty` on every
// rank (that expert receives no rows at all), and zero everywhere on `silent_rank` (it sends no rows).
Tensor RankCounts(uint64_t seed, int rank, int mb, int64_t experts, int64_t empty, int silent_rank) {
  std::mt19937_64 rng = Rng(seed, rank, 100 + mb);
  std::uniform_int_distribution<int64_t> u(0, 4);
  Tensor c = Tensor::Empty({experts}, DType::kI64);
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t n = u(rng);
    c.data<int64_t>()[e] = (e == empty || rank == silent_rank) ? 0 : n;
  }
  return c;
}

int64_t Total(const Tensor& counts) {
  int64_t s = 0;
  for (int64_t i = 0; i < counts.numel(); ++i) s += counts.data<int64_t>()[i];
  return s;
}

TEST_F(ExchangeGpu, DispatchAndCombineMatchTheHostPathBitwise) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t experts = p() * kLocalExperts;
  const int64_t empty = static_cast<int64_t>(seed_ % static_cast<uint64_t>(experts));
  const int silent = p() - 1;  // micro-batch 1 only: that rank sends no rows
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    const int salt = dtype == DType::kF32 ? 0 : 10;
    AllToAllExpertExchange host(&mpi(), experts);             // rows and counts over MPI
    AllToAllExpertExchange device(&nccl(), experts, &mpi());  // rows over NCCL, counts over MPI
    // Both micro-batches dispatch before either combines, as in a pipeline with several in flight: each
    // keeps its own handle, the exchange keeps nothing.
    std::vector<Tensor> counts, xs, grouped, device_grouped;
    std::vector<DispatchHandle> host_handle(2), device_handle(2);
    for (int mb = 0; mb < 2; ++mb) {
      counts.push_back(RankCounts(seed_, r(), mb, experts, empty, mb == 1 ? silent : -1));
      xs.push_back(RankRows(seed_, r(), salt + mb, Total(counts[mb]), kWidth, dtype));
      grouped.push_back(host.Dispatch(xs[mb], counts[mb], &host_handle[mb]));
      device_grouped.push_back(ToHost(device.Dispatch(ToDevice(xs[mb]), counts[mb], &device_handle[mb])));
      EXPECT_TRUE(SameBits(device_handle[mb].local_counts, host_handle[mb].local_counts)) << "mb " << mb;
    }
    for (int mb : {1, 0}) {
      SCOPED_TRACE("micro-batch " + std::to_string(mb));
      const Tensor& local = host_handle[mb].local_counts;
      const Tensor& x = xs[mb];
      const int64_t arrived = Total(local);

      // What the dispatch must deliver, from every rank's recomputed rows: local expert by local expert,
      // the rows of each source rank in its order (a source's rows are in global-expert order).
      Tensor want = Tensor::Empty({arrived, kWidth}, dtype);
      int64_t at = 0;
      for (int64_t e = 0; e < kLocalExperts; ++e) {
        const int64_t g = r() * kLocalExperts + e;
        int64_t expected_local = 0;
        for (int src = 0; src < p(); ++src) {
          const Tensor c = RankCounts(seed_, src, mb, experts, empty, mb == 1 ? silent : -1);
          const Tensor src_rows = RankRows(seed_, src, salt + mb, Total(c), kWidth, dtype);
          int64_t offset = 0;
          for (int64_t k = 0; k < g; ++k) offset += c.data<int64_t>()[k];
          const int64_t n = c.data<int64_t>()[g];
          if (n > 0) want.Rows(at, at + n).CopyFrom(src_rows.Rows(offset, offset + n));
          at += n;
          expected_local += n;
        }
        EXPECT_EQ(local.data<int64_t>()[e], expected_local) << "local expert " << e;
        if (g == empty) {
          EXPECT_EQ(expected_local, 0);
        }
      }
      EXPECT_EQ(at, arrived);
      EXPECT_TRUE(SameBits(grouped[mb], want)) << "host dispatch";
      EXPECT_TRUE(SameBits(device_grouped[mb], grouped[mb])) << "device dispatch";
      // The cached-layout dispatch (the backward's) moves the same rows the same way.
      EXPECT_TRUE(SameBits(host.Dispatch(x, host_handle[mb]), want)) << "host dispatch with a handle";
      EXPECT_TRUE(SameBits(ToHost(device.Dispatch(ToDevice(x), device_handle[mb])), want))
          << "device dispatch with a handle";

      // Combine: random expert outputs, then the dispatched rows, which must come back as x.
      const Tensor y = RankRows(seed_, r(), salt + mb + 5, arrived, kWidth, dtype);
      const Tensor back = host.Combine(y, host_handle[mb]);
      EXPECT_TRUE(SameBits(ToHost(device.Combine(ToDevice(y), device_handle[mb])), back)) << "device combine";
      EXPECT_TRUE(SameBits(host.Combine(grouped[mb], host_handle[mb]), x)) << "host round trip";
      EXPECT_TRUE(SameBits(ToHost(device.Combine(ToDevice(grouped[mb]), device_handle[mb])), x))
          << "device round trip";
    }
  }
}

// ---- ZeroGpu ----------------------------------------------------------------------------------------

class ZeroGpu : public GpuParallelTest {
 protected:
  void ExpectSameAsTheCpu(bool expert_group_is_world);
};

// Odd shapes so that shard boundaries fall inside tensors; one non-trainable buffer whose grads are noise;
// the embedding is the excluded range (as the last pipeline stage's copy is).
void AddSpecs(ParamTable& t) {
  t.Add({.name = "model.layers.0.self_attn.q_proj.weight", .shape = {37, 13}});
  t.Add({.name = "model.layers.0.input_layernorm.weight", .shape = {29}, .weight_decay = false});
  t.Add({.name = "model.embed_tokens.weight", .shape = {23, 7}});
  t.Add({.name = "model.layers.1.mlp.gate.e_score_correction_bias",
         .shape = {11},
         .trainable = false,
         .weight_decay = false});
  t.Add({.name = "model.layers.1.mlp.experts.{e}.gate_proj.weight",
         .shape = {3, 17, 9},
         .group = ParamGroup::kExpert});
  t.Add({.name = "model.layers.1.mlp.experts.{e}.down_proj.weight",
         .shape = {3, 5, 19},
         .group = ParamGroup::kExpert});
}

// Rank `rank`'s gradients of step `step` over the whole flat buffer: padding and the non-trainable buffer
// get noise too, which nothing may read.
Tensor RankGrads(uint64_t seed, int rank, int step, int64_t numel) {
  std::mt19937_64 rng = Rng(seed, rank, 200 + step);
  return testing::RandomTensor({numel}, DType::kF32, rng);
}

// The global norm^2 from every rank's recomputed gradients: replicated elements summed over the ranks in
// rank order in f32 (as MPI does; NCCL's two-rank sum is the same one addition), expert elements summed
// likewise when the expert group is the world, else counted once per rank (each rank owns its experts).
double ExpectedNormSquared(const ParamTable& t, uint64_t seed, int ranks, int step,
                           bool expert_group_is_world, int excluded_id) {
  std::vector<Tensor> g;
  for (int q = 0; q < ranks; ++q) g.push_back(RankGrads(seed, q, step, t.numel()));
  double total = 0;
  for (int id = 0; id < t.size(); ++id) {
    const ParamSpec& s = t.spec(id);
    if (!s.trainable || id == excluded_id) continue;
    for (int64_t i = s.offset; i < s.offset + NumElements(s.shape); ++i) {
      if (s.group == ParamGroup::kExpert && !expert_group_is_world) {
        for (int q = 0; q < ranks; ++q) total += std::pow(static_cast<double>(g[q].data<float>()[i]), 2);
      } else {
        float sum = g[0].data<float>()[i];
        for (int q = 1; q < ranks; ++q) sum += g[q].data<float>()[i];
        total += static_cast<double>(sum) * sum;
      }
    }
  }
  return total;
}

// Tolerances (1e-6 relative): with two ranks NCCL's sums equal MPI's bit for bit, the device AdamW equals
// the CPU's bit for bit on equal inputs, and only the norm differs, by double round-off (a tree instead of
// a sequential sum); that moves the clip factor by at most an ulp of f32, hence the updates by ~1e-7 of lr.
// More ranks sum in NCCL's order, ~1e-7 relative per element. Values are drawn N(0, 1) and lr is 1e-2, so a
// shard that missed, doubled or misplaced an update differs by ~1e-2, four decades above the bound.
void ZeroGpu::ExpectSameAsTheCpu(bool expert_group_is_world) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  OptimConfig cfg;
  cfg.lr = 1e-2;
  std::unique_ptr<Communicator> cpu_edp, gpu_edp;
  if (!expert_group_is_world) {
    cpu_edp = mpi().Split(r(), 0, "edp");
    gpu_edp = nccl().Split(r(), 0, "edp");
  }
  Communicator& cpu_e = expert_group_is_world ? static_cast<Communicator&>(mpi()) : *cpu_edp;
  Communicator& gpu_e = expert_group_is_world ? static_cast<Communicator&>(nccl()) : *gpu_edp;

  ParamTable cpu, gpu;
  AddSpecs(cpu);
  AddSpecs(gpu);
  cpu.Finalize(DType::kF32);
  gpu.Finalize(DType::kF32);
  std::mt19937_64 rng = Rng(seed_, 0, 300);  // the same values on every rank: they are replicas
  testing::FillRandom(cpu.values(), rng);
  gpu.values().CopyFrom(cpu.values());
  gpu.MoveTo(Device::kCUDA);
  const Tensor initial = cpu.values().Clone();
  const int embed = cpu.Find("model.embed_tokens.weight");
  const int bias = cpu.Find("model.layers.1.mlp.gate.e_score_correction_bias");
  const ParamSpec& e = cpu.spec(embed);
  const std::vector<std::pair<int64_t, int64_t>> exclude = {{e.offset, e.offset + NumElements(e.shape)}};

  ZeroOptimizer zc(cpu, cfg, mpi(), cpu_e, exclude);
  ZeroOptimizer zg(gpu, cfg, nccl(), gpu_e, exclude);
  EXPECT_EQ(zg.state_bytes(), zc.state_bytes());
  EXPECT_GT(zc.state_bytes(), 0u);
  for (ParamGroup g : {ParamGroup::kReplicated, ParamGroup::kExpert}) EXPECT_EQ(zg.shard(g), zc.shard(g));
  auto* gpu_edp_nccl = dynamic_cast<NcclCommunicator*>(gpu_edp.get());

  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const Tensor grads = RankGrads(seed_, r(), step, cpu.numel());
    cpu.grads().CopyFrom(grads);
    ops::Copy(gpu.grads(), grads);

    zc.ReduceGradients();
    zg.ReduceGradients();
    for (ParamGroup g : {ParamGroup::kReplicated, ParamGroup::kExpert}) {
      auto [b, end] = zc.shard(g);
      const Tensor mine = ToHost(gpu.grads(), gpu_edp_nccl).Rows(b, end), ref = cpu.grads().Rows(b, end);
      double d2 = 0, r2 = 0;
      for (int64_t i = 0; i < mine.numel(); ++i) {
        d2 += std::pow(mine.Item(i) - ref.Item(i), 2);
        r2 += ref.Item(i) * ref.Item(i);
      }
      EXPECT_LE(std::sqrt(d2), 1e-6 * std::sqrt(r2)) << "reduced gradients of group " << static_cast<int>(g);
    }

    const double local_c = zc.LocalNormSquared(), local_g = zg.LocalNormSquared();
    EXPECT_LE(RelDiff(local_g, local_c), 1e-6) << local_g << " vs " << local_c;
    const double total_c = std::sqrt(SumOver(mpi(), local_c)), total_g = std::sqrt(SumOver(mpi(), local_g));
    const double want = std::sqrt(ExpectedNormSquared(cpu, seed_, p(), step, expert_group_is_world, embed));
    EXPECT_LE(RelDiff(total_c, want), 1e-6) << "CPU norm " << total_c << ", expected " << want;
    EXPECT_LE(RelDiff(total_g, want), 1e-6) << "GPU norm " << total_g << ", expected " << want;

    // Clipping configured but inactive, active (half the norm), disabled.
    const double max_norm = step == 0 ? 2 * total_c : step == 1 ? 0.5 * total_c : 0.0;
    zc.Step(cfg.lr, total_c, max_norm);
    zg.Step(cfg.lr, total_g, max_norm);
    zc.GatherParameters();
    zg.GatherParameters();

    const Tensor got = ToHost(gpu.values(), gpu_edp_nccl), ref = cpu.values();
    int64_t bad = 0, moved = 0, first_bad = -1;
    for (int64_t i = 0; i < ref.numel(); ++i) {
      const double a = got.Item(i), b = ref.Item(i);
      if (std::abs(a - b) > 1e-6 * std::max(std::abs(b), 1.0) && bad++ == 0) first_bad = i;
      moved += a != initial.Item(i);
    }
    EXPECT_EQ(bad, 0) << "values differ from the CPU's, first at flat element " << first_bad << ": "
                      << (first_bad >= 0 ? got.Item(first_bad) : 0.0) << " vs "
                      << (first_bad >= 0 ? ref.Item(first_bad) : 0.0);
    EXPECT_GT(moved, ref.numel() / 2) << "the step must update the parameters";
    const ParamSpec& b = cpu.spec(bias);
    EXPECT_TRUE(SameBits(got.Rows(b.offset, b.offset + NumElements(b.shape)),
                         initial.Rows(b.offset, b.offset + NumElements(b.shape))))
        << "the non-trainable buffer must not change";
  }
  nccl().Synchronize();
  if (gpu_edp_nccl != nullptr) gpu_edp_nccl->Synchronize();
}

TEST_F(ZeroGpu, ExpertGroupIsTheWorld) { ExpectSameAsTheCpu(/*expert_group_is_world=*/true); }
TEST_F(ZeroGpu, ExpertGroupOfOneRank) { ExpectSameAsTheCpu(/*expert_group_is_world=*/false); }

}  // namespace
}  // namespace fathom
