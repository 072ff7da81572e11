// Checkpoints in the training loop (issue 10): N steps + save + resume + N steps equals 2N straight steps
// bit for bit (every loss, every final parameter) on the mesh that saved; and a checkpoint saved on one
// mesh continues on another (resharding: 1 rank, (pp 1, ep 4), (pp 4, ep 1), and back) with losses within
// the equivalence tolerance of a run that never stopped (tests/mpi/train_equivalence_test.cc explains
// 1e-5: the ranks sum the same terms in other orders).
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "launch/trainer.h"
#include "parallel/mpi_communicator.h"

namespace fathom {
namespace {

constexpr int64_t kHalf = 3;  // steps before and after the save

Recipe ResumeRecipe(int64_t pp, int64_t ep, int64_t micro_batches_per_rank, const std::string& dir,
                    const std::string& schedule = "1f1b") {
  absl::StatusOr<Recipe> r =
      LoadRecipe(FATHOM_SOURCE_DIR "/recipes/tiny.yaml",
                 {"model.num_hidden_layers=4", "train.seq_len=16", "train.micro_batch_size=2",
                  "train.steps=" + std::to_string(2 * kHalf), "optim.warmup_steps=1",
                  "loss.balance_alpha=0.01", "optim.bias_update_speed=0.01", "optim.moment_dtype=bf16"});
  FATHOM_CHECK(r.ok(), r.status().ToString());
  r->parallel.pp = pp;
  r->parallel.ep = ep;
  r->parallel.micro_batches = micro_batches_per_rank;
  r->checkpoint.dir = dir;
  r->checkpoint.resume = dir.empty() ? "none" : "auto";
  r->parallel.schedule = schedule;
  return *r;
}

std::unique_ptr<DeviceMesh> Mesh(int64_t pp, int64_t ep, bool local) {
  std::unique_ptr<Communicator> world;
  if (local) {
    world = *CreateWorldCommunicator(CommBackend::kLocal);
  } else {
    world = MpiCommunicator::World();
  }
  absl::StatusOr<std::unique_ptr<DeviceMesh>> mesh = DeviceMesh::Create(std::move(world), pp, ep);
  FATHOM_CHECK(mesh.ok(), mesh.status().ToString());
  return *std::move(mesh);
}

// A directory every rank of the job agrees on (the ranks are children of the same launcher), emptied.
std::string SharedDir(const std::string& name) {
  const std::string dir =
      std::filesystem::temp_directory_path() / ("fathom_resume_" + std::to_string(::getppid()) + "_" + name);
  auto world = MpiCommunicator::World();
  if (world->rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  world->Barrier();
  return dir;
}

struct TrainingRun {
  std::vector<double> losses;  // per step run
  std::unique_ptr<DeviceMesh> mesh;
  std::unique_ptr<Trainer> trainer;
};

// Builds a trainer (resuming when `recipe` says so) and runs steps [first_step(), end).
TrainingRun Train(const Recipe& recipe, bool local, int64_t end) {
  TrainingRun run;
  run.mesh = Mesh(recipe.parallel.pp, recipe.parallel.ep, local);
  absl::StatusOr<std::unique_ptr<Trainer>> t = Trainer::Create(recipe, *run.mesh);
  FATHOM_CHECK(t.ok(), t.status().ToString());
  run.trainer = *std::move(t);
  for (int64_t s = run.trainer->first_step(); s < end; ++s) {
    absl::StatusOr<StepStats> st = run.trainer->Step(s);
    FATHOM_CHECK(st.ok(), st.status().ToString());
    run.losses.push_back(st->loss);
  }
  return run;
}

void Save(TrainingRun& run, int64_t steps_done) {
  std::ostringstream log;
  absl::Status s = run.trainer->SaveCheckpoint(steps_done, log);
  ASSERT_TRUE(s.ok()) << s;
}

// Equal bits of every parameter value of two trainers on the same mesh (every model chunk).
void ExpectSameParameters(Trainer& a, Trainer& b) {
  ASSERT_EQ(a.runtime().num_chunks(), b.runtime().num_chunks());
  for (int c = 0; c < a.runtime().num_chunks(); ++c) {
    const Tensor va = a.runtime().model(c).params().values(), vb = b.runtime().model(c).params().values();
    ASSERT_EQ(va.nbytes(), vb.nbytes());
    EXPECT_EQ(std::memcmp(va.raw(), vb.raw(), va.nbytes()), 0) << "parameters of chunk " << c << " differ";
  }
}

// Bit-exact on the mesh that saved: (pp, ep) over the whole MPI world.
void ExpectBitExactResume(int64_t pp, int64_t ep, const std::string& name,
                          const std::string& schedule = "1f1b") {
  const int dp = MpiCommunicator::World()->size() / static_cast<int>(pp);
  const int64_t m = 2 * pp;
  const std::string dir = SharedDir(name);
  TrainingRun straight = Train(ResumeRecipe(pp, ep, m, "", schedule), false, 2 * kHalf);
  {
    TrainingRun first = Train(ResumeRecipe(pp, ep, m, dir, schedule), false, kHalf);
    Save(first, kHalf);
    for (int64_t s = 0; s < kHalf; ++s) EXPECT_EQ(first.losses[s], straight.losses[s]) << "step " << s;
  }
  TrainingRun second = Train(ResumeRecipe(pp, ep, m, dir, schedule), false, 2 * kHalf);
  ASSERT_EQ(second.trainer->first_step(), kHalf);
  ASSERT_EQ(second.losses.size(), static_cast<size_t>(kHalf));
  for (int64_t s = 0; s < kHalf; ++s) {
    EXPECT_EQ(second.losses[s], straight.losses[kHalf + s]) << "step " << kHalf + s << " (dp " << dp << ")";
  }
  ExpectSameParameters(*second.trainer, *straight.trainer);
}

double RelDiff(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

TEST(Resume, BitExactOnOneRank) { ExpectBitExactResume(1, 1, "one"); }
TEST(Resume, BitExactOnPp2Ep2) { ExpectBitExactResume(2, 2, "pp2ep2"); }
// Two model chunks per rank (issue 15): every chunk's shards are saved and restored; DualPipe's two copies
// of a stage write each element once (their ZeRO groups span the rank pair), DualPipeV's rank 0 writes the
// embedding's two copies.
TEST(Resume, BitExactDualPipePp2Ep2) { ExpectBitExactResume(2, 2, "dualpipe", "dualpipe"); }
TEST(Resume, BitExactDualPipeVPp2Ep2) { ExpectBitExactResume(2, 2, "dualpipev", "dualpipev"); }

// Saved with DualPipe on (pp 2, ep 2), continued with 1F1B on the same mesh and with DualPipeV on one rank.
TEST(Resume, DualPipeCheckpointContinuesUnderOtherSchedules) {
  auto world = MpiCommunicator::World();
  ASSERT_EQ(world->size(), 4) << "run on 4 ranks";
  const std::string dir = SharedDir("dualpipe_reshard");
  TrainingRun straight = Train(ResumeRecipe(2, 2, 4, "", "dualpipe"), false, 2 * kHalf);
  {
    TrainingRun first = Train(ResumeRecipe(2, 2, 4, dir, "dualpipe"), false, kHalf);
    Save(first, kHalf);
  }
  struct Target {
    int64_t pp, ep, micro_batches;
    bool local;
    std::string schedule;
  };
  for (const Target& t : {Target{2, 2, 4, false, "1f1b"}, Target{1, 1, 8, true, "dualpipev"}}) {
    SCOPED_TRACE("continued with " + t.schedule + " on pp " + std::to_string(t.pp) + ", ep " +
                 std::to_string(t.ep));
    Recipe r = ResumeRecipe(t.pp, t.ep, t.micro_batches, dir, t.schedule);
    r.checkpoint.resume = dir + "/step_00000003";
    r.checkpoint.dir = "";
    TrainingRun next = Train(r, t.local, 2 * kHalf);
    ASSERT_EQ(next.losses.size(), static_cast<size_t>(kHalf));
    for (int64_t s = 0; s < kHalf; ++s) {
      EXPECT_LE(RelDiff(next.losses[s], straight.losses[kHalf + s]), 1e-5)
          << "step " << kHalf + s << ": " << next.losses[s] << " vs " << straight.losses[kHalf + s];
    }
  }
}

// Saved on (pp 2, ep 2) over 4 ranks, continued on other meshes; and saved on one rank, continued on
// (pp 2, ep 2). The global batch stays 8 sequences (micro-batches per rank x dp x 2).
TEST(Resume, ReshardsAcrossMeshes) {
  auto world = MpiCommunicator::World();
  ASSERT_EQ(world->size(), 4) << "run on 4 ranks";
  const std::string dir = SharedDir("reshard");
  // The run that never stopped, and the save after kHalf steps, both on (pp 2, ep 2) (dp 2: 2 mb per rank).
  TrainingRun straight = Train(ResumeRecipe(2, 2, 2, ""), false, 2 * kHalf);
  {
    TrainingRun first = Train(ResumeRecipe(2, 2, 2, dir), false, kHalf);
    Save(first, kHalf);
  }
  struct Target {
    int64_t pp, ep, micro_batches;
    bool local;
  };
  for (const Target& t : {Target{1, 1, 4, true}, Target{1, 4, 1, false}, Target{4, 1, 4, false}}) {
    SCOPED_TRACE("continued on pp " + std::to_string(t.pp) + ", ep " + std::to_string(t.ep) +
                 (t.local ? " (one rank)" : ""));
    Recipe r = ResumeRecipe(t.pp, t.ep, t.micro_batches, dir);
    r.checkpoint.resume = dir + "/step_00000003";
    r.checkpoint.dir = "";  // continues without saving (a second writer per rank would collide)
    TrainingRun next = Train(r, t.local, 2 * kHalf);
    ASSERT_EQ(next.losses.size(), static_cast<size_t>(kHalf));
    for (int64_t s = 0; s < kHalf; ++s) {
      EXPECT_LE(RelDiff(next.losses[s], straight.losses[kHalf + s]), 1e-5)
          << "step " << kHalf + s << ": " << next.losses[s] << " vs " << straight.losses[kHalf + s];
    }
  }
  // The reverse: rank 0 saves on one rank, (pp 2, ep 2) continues.
  const std::string single_dir = SharedDir("reshard_single");
  if (world->rank() == 0) {
    TrainingRun first = Train(ResumeRecipe(1, 1, 4, single_dir), true, kHalf);
    Save(first, kHalf);
  }
  world->Barrier();
  Recipe r = ResumeRecipe(2, 2, 2, single_dir);
  r.checkpoint.dir = "";
  r.checkpoint.resume = single_dir + "/step_00000003";
  TrainingRun next = Train(r, false, 2 * kHalf);
  for (int64_t s = 0; s < kHalf; ++s) {
    EXPECT_LE(RelDiff(next.losses[s], straight.losses[kHalf + s]), 1e-5)
        << "one rank -> pp 2 ep 2, step " << kHalf + s;
  }
}

}  // namespace
}  // namespace fathom
