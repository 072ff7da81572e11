// Distributed checkpoints under mpirun (1 to 4 ranks): written by N ranks of one mesh with arbitrary
// ZeRO-like flat shards, read back bit for bit by M ranks of another mesh with other shards (the reshard
// core); async saves commit only when every rank is done; the collective decisions (status, resume,
// preemption) are the same on every rank.
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpoint_writer.h"
#include "checkpoint/model_config_json.h"
#include "gtest/gtest.h"
#include "parallel/collective_status.h"
#include "parallel/mesh.h"
#include "parallel/mpi_communicator.h"
#include "parallel/preemption.h"
#include "tests/checkpoint/checkpoint_test_support.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::CheckpointTestModel;
using testing::CountStateMismatches;

uint64_t SharedSeed(Communicator& comm) {
  Tensor s = Tensor::Empty({1}, DType::kI64);
  s.data<int64_t>()[0] = comm.rank() == 0 ? static_cast<int64_t>(testing::TestSeed()) : 0;
  comm.Broadcast(s, 0);
  return static_cast<uint64_t>(s.data<int64_t>()[0]);
}

// A directory made by rank 0, known to every rank, removed at the end.
class SharedTempDir {
 public:
  explicit SharedTempDir(Communicator& comm) : comm_(comm) {
    std::string made;
    if (comm.rank() == 0) {
      made = (std::filesystem::path(::testing::TempDir()) / "checkpoint_mpi_XXXXXX").string();
      if (::mkdtemp(made.data()) == nullptr) made.clear();
    }
    path_ = BroadcastString(comm, made, 0);
  }
  ~SharedTempDir() {
    comm_.Barrier();
    if (comm_.rank() == 0 && !path_.empty()) std::filesystem::remove_all(path_);
  }
  const std::string& path() const { return path_; }

 private:
  Communicator& comm_;
  std::string path_;
};

struct Layout {
  int pp, ep, edp;
  int world() const { return pp * ep * edp; }
  std::string str() const {
    return "(pp " + std::to_string(pp) + ", ep " + std::to_string(ep) + ", edp " + std::to_string(edp) + ")";
  }
};

// Every mesh of the test model (4 layers, 8 experts) on at most `max_world` ranks.
std::vector<Layout> Layouts(int max_world) {
  std::vector<Layout> out;
  for (int pp : {1, 2, 3, 4})
    for (int ep : {1, 2, 4})
      for (int edp : {1, 2, 3, 4})
        if (pp * ep * edp <= max_world) out.push_back({pp, ep, edp});
  return out;
}

// Sorted cut points splitting [0, n) into `parts` contiguous (possibly empty) shards.
std::vector<int64_t> RandomCuts(int64_t n, int parts, std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> at(0, n);
  std::vector<int64_t> cuts = {0, n};
  for (int i = 1; i < parts; ++i) cuts.push_back(at(rng));
  std::sort(cuts.begin(), cuts.end());
  return cuts;
}

// One rank of a mesh: its table slice and its shard (replicated range cut over the stage's dp ranks,
// expert range cut over the edp replicas of its expert block), both cut at random points drawn from
// `shard_seed`, the same on every rank.
struct MeshRank {
  std::unique_ptr<Model> model;
  std::vector<std::pair<int64_t, int64_t>> shard;  // table ranges this rank owns

  MeshRank(const Layout& layout, int rank, uint64_t shard_seed) {
    absl::StatusOr<MeshLayout> mesh = MeshLayout::Create(layout.world(), layout.pp, layout.ep);
    FATHOM_CHECK(mesh.ok(), mesh.status().ToString());
    const MeshCoord c = mesh->Coord(rank);
    const ModelConfig cfg = CheckpointTestModel();
    const int64_t layers = cfg.num_hidden_layers, per_ep = cfg.n_routed_experts / layout.ep;
    model = std::make_unique<Model>(
        cfg, LossConfig{},
        testing::TableSlice(cfg, c.pp_rank * layers / layout.pp, (c.pp_rank + 1) * layers / layout.pp,
                            c.ep_rank * per_ep, per_ep));
    model->Finalize(DType::kF32, 1);
    const ParamTable& t = model->params();
    auto [rb, re] = t.GroupRange(ParamGroup::kReplicated);
    auto [xb, xe] = t.GroupRange(ParamGroup::kExpert);
    std::mt19937_64 stage_rng(shard_seed + 1000 * c.pp_rank);
    std::vector<int64_t> rc = RandomCuts(re - rb, mesh->dp(), stage_rng);
    shard.push_back({rb + rc[c.dp_rank], rb + rc[c.dp_rank + 1]});
    std::mt19937_64 expert_rng(shard_seed + 1000 * c.pp_rank + 1 + c.ep_rank);
    std::vector<int64_t> xc = RandomCuts(xe - xb, mesh->edp(), expert_rng);
    shard.push_back({xb + xc[c.edp_rank], xb + xc[c.edp_rank + 1]});
  }
  const ParamTable& table() const { return model->params(); }
  std::vector<TensorPiece> ShardPieces(PieceFilter filter) const {
    std::vector<TensorPiece> out;
    for (auto [b, e] : shard) {
      std::vector<TensorPiece> p = TablePieces(table(), b, e, filter);
      out.insert(out.end(), p.begin(), p.end());
    }
    return out;
  }
};

// Saves `seed`'s state from `layout` on the first layout.world() ranks of `world`.
void SaveFromMesh(Communicator& world, const Layout& layout, uint64_t seed, uint64_t shard_seed,
                  const std::string& dir, int64_t step) {
  const bool member = world.rank() < layout.world();
  std::unique_ptr<Communicator> group = world.Split(member ? 0 : 1, world.rank(), "writers");
  if (!member) return;
  MeshRank me(layout, group->rank(), shard_seed);
  std::vector<ShardSource> sources;
  for (auto [kind, dtype, filter] :
       {std::tuple<const char*, DType, PieceFilter>{kKindValue, DType::kF32, PieceFilter::kAll},
        {kKindAdamM, DType::kF32, PieceFilter::kTrainableOnly},
        {kKindAdamV, DType::kBF16, PieceFilter::kTrainableOnly}}) {
    // One buffer per owned range, as ZeRO holds one optimizer per parameter group.
    for (auto [b, e] : me.shard) {
      ShardSource s{kind, TablePieces(me.table(), b, e, filter), Tensor::Zeros({e - b}, dtype), b};
      testing::FillState(s.data, b, s.pieces, seed, kind);
      sources.push_back(std::move(s));
    }
  }
  CheckpointMetadata meta;
  meta.step = step;
  meta.model = ModelConfigToJson(CheckpointTestModel());
  CheckpointWriter writer(*group, dir, 0);
  absl::StatusOr<CheckpointSaveStats> stats = writer.Save(sources, meta);
  EXPECT_TRUE(stats.ok()) << layout.str() << ": " << stats.status();
}

// Loads the checkpoint into `layout` on the first layout.world() ranks: every value of the rank's table,
// and the moments of its shard when `with_moments`; expects every element to be `seed`'s.
void LoadIntoMesh(Communicator& world, const Layout& layout, uint64_t seed, uint64_t shard_seed,
                  const std::string& path, const std::string& what, bool with_moments = true) {
  const bool member = world.rank() < layout.world();
  std::unique_ptr<Communicator> group = world.Split(member ? 0 : 1, world.rank(), "readers");
  if (!member) return;
  MeshRank me(layout, group->rank(), shard_seed);
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(path);
  ASSERT_TRUE(reader.ok()) << what << ": " << reader.status();
  EXPECT_TRUE((*reader)->CheckModel(CheckpointTestModel(), nullptr).ok());
  const ParamTable& t = me.table();
  std::vector<TensorPiece> values = TablePieces(t, 0, t.numel());
  Tensor v = Tensor::Zeros({t.numel()}, DType::kF32);
  ASSERT_TRUE((*reader)->ReadPieces(kKindValue, values, v, 0).ok()) << what;
  EXPECT_EQ(CountStateMismatches(v, 0, values, seed, kKindValue, DType::kF32), 0) << what << " values";
  if (!with_moments) return;
  for (auto [b, e] : me.shard) {
    std::vector<TensorPiece> moments = TablePieces(t, b, e, PieceFilter::kTrainableOnly);
    for (auto [kind, stored] :
         {std::pair<const char*, DType>{kKindAdamM, DType::kF32}, {kKindAdamV, DType::kBF16}}) {
      Tensor m = Tensor::Zeros({e - b}, DType::kF32);
      ASSERT_TRUE((*reader)->ReadPieces(kind, moments, m, b).ok()) << what << " " << kind;
      EXPECT_EQ(CountStateMismatches(m, b, moments, seed, kind, stored), 0) << what << " " << kind;
    }
  }
}

TEST(CheckpointMpi, ReshardFromEveryMeshOfThisSizeToOthers) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  const uint64_t seed = SharedSeed(*world);
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  SharedTempDir dir(*world);
  ASSERT_FALSE(dir.path().empty());
  std::vector<Layout> all = Layouts(world->size());
  int64_t step = 0;
  for (const Layout& w : all) {
    if (w.world() != world->size()) continue;  // smaller writers are another run's (np) business
    const uint64_t state_seed = rng(), write_shards = rng();
    SaveFromMesh(*world, w, state_seed, write_shards, dir.path(), ++step);
    // Read back by the one-rank mesh, the writer's own mesh with other shards, and two random meshes.
    std::vector<Layout> readers = {{1, 1, 1}, w};
    std::uniform_int_distribution<size_t> pick(0, all.size() - 1);
    readers.push_back(all[pick(rng)]);
    readers.push_back(all[pick(rng)]);
    for (const Layout& r : readers) {
      LoadIntoMesh(*world, r, state_seed, rng(), CheckpointPath(dir.path(), step),
                   "written by " + w.str() + ", read by " + r.str());
    }
  }
}

TEST(CheckpointMpi, AsyncSaveCommitsWhenEveryRankIsDoneAndPrunes) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  const uint64_t seed = SharedSeed(*world);
  SCOPED_TRACE("seed " + std::to_string(seed));
  SharedTempDir dir(*world);
  const Layout layout{1, 1, world->size()};
  MeshRank me(layout, world->rank(), seed);
  CheckpointWriter writer(*world, dir.path(), /*keep_last=*/1);
  for (int64_t step = 1; step <= 2; ++step) {
    std::vector<ShardSource> sources = {
        {kKindValue, me.ShardPieces(PieceFilter::kAll), Tensor::Zeros({me.table().numel()}, DType::kF32), 0}};
    testing::FillState(sources[0].data, 0, sources[0].pieces, seed + step, kKindValue);
    CheckpointMetadata meta;
    meta.step = step;
    meta.model = ModelConfigToJson(CheckpointTestModel());
    ASSERT_TRUE(writer.StartAsync(sources, meta).ok());
    std::optional<CheckpointSaveStats> stats;
    int polls = 0;
    while (!stats) {  // every rank polls at every "step boundary"; all commit at the same poll
      absl::StatusOr<std::optional<CheckpointSaveStats>> polled = writer.Poll();
      ASSERT_TRUE(polled.ok()) << polled.status();
      stats = *polled;
      ++polls;
      if (!stats) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    Tensor agreed =
        Tensor::FromVector({static_cast<double>(polls), static_cast<double>(stats->bytes)}, {2}, DType::kI64);
    Tensor max = agreed.Clone();
    world->AllReduce(max, ReduceOp::kMax);
    EXPECT_EQ(max.data<int64_t>()[0], polls) << "every rank committed at the same poll";
    EXPECT_EQ(max.data<int64_t>()[1], stats->bytes);
    EXPECT_EQ(stats->path, CheckpointPath(dir.path(), step));
  }
  absl::StatusOr<std::vector<CheckpointEntry>> kept = ListCheckpoints(dir.path());
  ASSERT_TRUE(kept.ok());
  ASSERT_EQ(kept->size(), 1u);
  EXPECT_EQ((*kept)[0].step, 2);
  LoadIntoMesh(*world, {1, 1, 1}, seed + 2, seed, (*kept)[0].path, "async", /*with_moments=*/false);
}

TEST(CheckpointMpi, AgreeOnStatusGivesTheLowestFailingRanksError) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  const int r = world->rank();
  EXPECT_TRUE(AgreeOnStatus(*world, absl::OkStatus()).ok());
  const int first_failing = world->size() > 1 ? 1 : 0;
  absl::Status local =
      r >= first_failing ? absl::DataLossError("rank " + std::to_string(r) + " broke") : absl::OkStatus();
  absl::Status agreed = AgreeOnStatus(*world, local);
  EXPECT_EQ(agreed.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(agreed.message(),
            first_failing == 0 ? "rank 0 broke" : "rank 1: rank 1 broke (rank 0 did not fail)");
  std::vector<std::string> gathered =
      GatherStrings(*world, std::string(static_cast<size_t>(r) * 5 + 1, 'a' + r), 0);
  if (r == 0) {
    ASSERT_EQ(static_cast<int>(gathered.size()), world->size());
    for (int j = 0; j < world->size(); ++j)
      EXPECT_EQ(gathered[j], std::string(static_cast<size_t>(j) * 5 + 1, 'a' + j));
  } else {
    EXPECT_TRUE(gathered.empty());
  }
}

TEST(CheckpointMpi, PreemptionSignalOnOneRankStopsEveryRank) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  ASSERT_TRUE(InstallPreemptionHandlers().ok());
  ResetPreemptionForTesting();
  EXPECT_FALSE(AgreeToStop(*world).stop());
  const int last = world->size() - 1;
  if (world->rank() == last) ::raise(SIGUSR1);
  // Every rank learns the signal and where it arrived, not only that one arrived (rank 0, which reports,
  // received none unless it is the last).
  const StopAgreement agreed = AgreeToStop(*world);
  EXPECT_TRUE(agreed.stop());
  EXPECT_EQ(agreed.signal, SIGUSR1);
  EXPECT_EQ(agreed.ranks, std::vector<int>{last});
  EXPECT_EQ(PreemptionSignal(), world->rank() == last ? SIGUSR1 : 0);
  ResetPreemptionForTesting();
  EXPECT_FALSE(AgreeToStop(*world).stop());
}

TEST(CheckpointMpi, EveryRankResumesFromTheSameCheckpoint) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  SharedTempDir dir(*world);
  CheckpointConfig cfg;
  cfg.dir = dir.path();
  absl::StatusOr<std::optional<std::string>> none = ResolveResumeOnAllRanks(cfg, *world);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  SaveFromMesh(*world, {1, 1, world->size()}, 3, 4, dir.path(), 8);
  absl::StatusOr<std::optional<std::string>> latest = ResolveResumeOnAllRanks(cfg, *world);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->value_or(""), CheckpointPath(dir.path(), 8));
  cfg.resume = dir.path() + "/nowhere";
  EXPECT_EQ(ResolveResumeOnAllRanks(cfg, *world).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace fathom
