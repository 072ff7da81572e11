// Training on two GPUs (issue 5): with train.device cuda, an ep = 2 run and a pp = 2 run of recipes/tiny.yaml
// give the same losses and gradient norms as one GPU training on the same global batch.
//
// Rank 0 first trains the single-GPU references on a LocalCommunicator mesh (world 1) while rank 1 waits,
// and broadcasts their per-step (lm, mtp, loss, grad norm) over MPI; then both ranks train each two-GPU
// mesh, built as DeviceMesh::Create over the MPI world (the trainer builds its NCCL groups itself), and
// rank 0 compares. The global batch stays the one of the reference: ep = 2 means dp = 2, so its reference
// runs 2 * M micro-batches (data-parallel rank d takes the step's micro-batches [d * M, (d + 1) * M));
// pp = 2 keeps dp = 1 and M.
//
// Tolerances. Everything is f32. NCCL's sums over two ranks are one addition, which commutes, so the
// reductions themselves agree bit for bit; what moves is the GEMMs: each rank multiplies other shapes than
// the single GPU (half the micro-batches per rank with dp = 2, each rank's experts see the rows of both
// ranks' tokens, the pipeline's stages run the same layers), so cuBLAS sums in other orders, ~1e-6 relative
// per step. Losses are means over thousands of tokens: 1e-5 relative. The gradient norm is the root of a
// sum of squares of gradients that are themselves sums of many near-cancelling terms: 1e-4 relative.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "framework/cuda/device_arena.h"
#include "gtest/gtest.h"
#include "launch/trainer.h"
#include "parallel/launch_env.h"
#include "parallel/mpi_communicator.h"
#include "tests/gpu_mpi/gpu_mpi_support.h"

namespace fathom {
namespace {

constexpr int64_t kSteps = 10;
constexpr int64_t kMicroBatches = 4;
constexpr int kFields = 4;  // lm, mtp, loss, grad norm

Recipe GpuRecipe(int64_t pp, int64_t ep, int64_t micro_batches) {
  absl::StatusOr<Recipe> r = LoadRecipe(FATHOM_SOURCE_DIR "/recipes/tiny.yaml",
                                        {"train.device=cuda", "train.steps=" + std::to_string(kSteps),
                                         "parallel.micro_batches=" + std::to_string(kMicroBatches)});
  FATHOM_CHECK(r.ok(), r.status().ToString());
  r->parallel.pp = pp;
  r->parallel.ep = ep;
  r->parallel.micro_batches = micro_batches;
  return *r;
}

std::vector<double> Fields(const StepStats& s) { return {s.lm_loss, s.mtp_loss, s.loss, s.grad_norm}; }

// kSteps x kFields values of one run of `recipe` on `mesh`; empty when the trainer could not be created
// or a step failed (the test has reported it).
std::vector<double> Train(const Recipe& recipe, DeviceMesh& mesh) {
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(recipe, mesh);
  EXPECT_TRUE(trainer.ok()) << mesh.Describe() << ": " << trainer.status();
  if (!trainer.ok()) return {};
  std::vector<double> out;
  for (int64_t step = 0; step < kSteps; ++step) {
    absl::StatusOr<StepStats> st = (*trainer)->Step(step);
    EXPECT_TRUE(st.ok()) << mesh.Describe() << " step " << step << ": " << st.status();
    if (!st.ok()) return {};
    for (double v : Fields(*st)) out.push_back(v);
  }
  return out;
}

// The single-GPU run on rank 0, broadcast to every rank; all-NaN when it failed there.
std::vector<double> Reference(Communicator& world, int64_t micro_batches) {
  Tensor values = Tensor::Empty({kSteps * kFields}, DType::kF64);
  values.Fill(std::nan(""));
  if (world.rank() == 0) {
    auto local = DeviceMesh::Create(*CreateWorldCommunicator(CommBackend::kLocal), 1, 1);
    EXPECT_TRUE(local.ok()) << local.status();
    if (local.ok()) {
      std::vector<double> ref = Train(GpuRecipe(1, 1, micro_batches), **local);
      if (!ref.empty()) std::copy(ref.begin(), ref.end(), values.data<double>());
    }
  }
  world.Broadcast(values, 0);
  return std::vector<double>(values.data<double>(), values.data<double>() + values.numel());
}

double RelDiff(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

void ExpectSameAsOneGpu(const std::vector<double>& got, const std::vector<double>& ref, const char* run) {
  ASSERT_EQ(got.size(), ref.size()) << run;
  const char* names[kFields] = {"lm", "mtp", "loss", "grad norm"};
  double worst[kFields] = {};
  for (int64_t step = 0; step < kSteps; ++step) {
    for (int f = 0; f < kFields; ++f) {
      const double a = got[step * kFields + f], b = ref[step * kFields + f];
      EXPECT_LE(RelDiff(a, b), f == 3 ? 1e-4 : 1e-5)
          << run << " step " << step + 1 << " " << names[f] << ": " << a << " vs one GPU " << b;
      worst[f] = std::max(worst[f], RelDiff(a, b));
    }
  }
  std::printf(
      "%s against one GPU over %d steps: worst relative difference lm %.2e, mtp %.2e, loss %.2e, grad "
      "norm %.2e; last lm %.6f vs %.6f\n",
      run, static_cast<int>(kSteps), worst[0], worst[1], worst[2], worst[3], got[(kSteps - 1) * kFields],
      ref[(kSteps - 1) * kFields]);
}

TEST(TrainGpu2, Ep2AndPp2MatchOneGpu) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  ASSERT_EQ(world->size(), 2) << "run on two ranks";
  // Every rank must reach the same verdict before anything else talks.
  const std::string skip = testing::TooFewGpus(*world, LaunchEnvFromMpi(), cuda::DeviceCount());
  if (!skip.empty()) GTEST_SKIP() << skip;

  // ep = 2 is dp = 2: its reference trains both ranks' micro-batches.
  const std::vector<double> ref_ep = Reference(*world, 2 * kMicroBatches);
  const std::vector<double> ref_pp = Reference(*world, kMicroBatches);
  EXPECT_FALSE(std::isnan(ref_ep[0]) || std::isnan(ref_pp[0])) << "the single-GPU reference did not train";

  struct Run {
    const char* name;
    int64_t pp, ep;
    const std::vector<double>& ref;
  };
  for (const Run& run : {Run{"ep=2", 1, 2, ref_ep}, Run{"pp=2", 2, 1, ref_pp}}) {
    SCOPED_TRACE(run.name);
    auto mesh = DeviceMesh::Create(MpiCommunicator::World(), run.pp, run.ep);
    ASSERT_TRUE(mesh.ok()) << mesh.status();
    const std::vector<double> got = Train(GpuRecipe(run.pp, run.ep, kMicroBatches), **mesh);
    // Every rank holds the all-reduced step statistics; rank 0 compares.
    if (world->rank() == 0) ExpectSameAsOneGpu(got, run.ref, run.name);
    world->Barrier();
  }
}

}  // namespace
}  // namespace fathom
