// model.init_from (checkpoint/hf_init.h) on every mesh the world allows: each rank loads its ZeRO shards
// from an HF directory and the replicas gather them, so every rank's parameters equal the directory's
// tensors bit for bit (the last stage's copy of the embedding, with MTP, included).
#include "checkpoint/hf_init.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>

#include "checkpoint/hf_config.h"
#include "checkpoint/hf_params.h"
#include "checkpoint/param_slices.h"
#include "checkpoint/safetensors.h"
#include "framework/file_io.h"
#include "gtest/gtest.h"
#include "launch/trainer.h"
#include "parallel/mpi_communicator.h"

namespace fathom {
namespace {

Recipe InitRecipe(int64_t pp, int64_t ep) {
  absl::StatusOr<Recipe> r = LoadRecipe(FATHOM_SOURCE_DIR "/recipes/tiny.yaml",
                                        {"model.num_hidden_layers=4", "train.seq_len=16",
                                         "train.micro_batch_size=2", "checkpoint.resume=none"});
  FATHOM_CHECK(r.ok(), r.status().ToString());
  r->parallel.pp = pp;
  r->parallel.ep = ep;
  r->parallel.micro_batches = 2 * pp;
  return *r;
}

TEST(HfInit, EveryMeshLoadsTheDirectory) {
  auto world = MpiCommunicator::World();
  const std::string dir =
      std::filesystem::temp_directory_path() / ("fathom_hf_init_" + std::to_string(::getppid()));
  const Recipe base = InitRecipe(1, 1);
  if (world->rank() == 0) {
    // One model.safetensors of random values (one draw: rank 0 writes, every rank compares with the file).
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    Model model(base.model, base.loss);
    model.Finalize(DType::kF32, 1);
    std::mt19937_64 rng(std::random_device{}());
    std::normal_distribution<float> normal(0.0f, 1.0f);
    Tensor v = model.params().values();
    for (int64_t i = 0; i < v.numel(); ++i) v.data<float>()[i] = normal(rng);
    ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", CollectHfTensors(model.params(), false)).ok());
    ASSERT_TRUE(
        WriteFileAtomically(dir + "/config.json", HfConfigJson(base.model, HfDType::kF32, {}).dump()).ok());
  }
  world->Barrier();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();

  const int size = world->size();
  std::vector<std::pair<int64_t, int64_t>> meshes = {{1, size}};  // every rank an expert shard
  if (size > 1) meshes.push_back({size, 1});                      // every rank a stage
  if (size == 4) meshes.push_back({2, 2});
  if (size == 4) meshes.push_back({1, 2});  // ep 2, edp 2
  for (auto [pp, ep] : meshes) {
    SCOPED_TRACE("pp " + std::to_string(pp) + " ep " + std::to_string(ep));
    absl::StatusOr<std::unique_ptr<DeviceMesh>> mesh = DeviceMesh::Create(MpiCommunicator::World(), pp, ep);
    ASSERT_TRUE(mesh.ok()) << mesh.status();
    absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(InitRecipe(pp, ep), **mesh);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    absl::Status s = InitFromHfDirectory(dir, (*trainer)->runtime());
    ASSERT_TRUE(s.ok()) << s;
    const ParamTable& table = (*trainer)->model().params();
    int64_t bad = 0, checked = 0;
    for (const TensorPiece& p : TablePieces(table, 0, table.numel())) {
      const Tensor want = *file->Get(p.name);
      for (int64_t i = 0; i < p.numel(); ++i, ++checked) {
        bad += table.values().data<float>()[p.table_offset + i] != want.data<float>()[p.begin + i];
      }
    }
    EXPECT_EQ(bad, 0) << "of " << checked << " elements on rank " << world->rank();
    EXPECT_GT(checked, 0);
  }
  world->Barrier();
  if (world->rank() == 0) std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fathom
