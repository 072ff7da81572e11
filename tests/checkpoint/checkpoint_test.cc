// Distributed checkpoints on one process (LocalCommunicator): round trips through any range and dtype,
// checksum chunks, metadata, async = sync, keep_last pruning, leftovers of crashed saves, resume choices.
// The multi-rank cases (N writers, M readers) are in tests/mpi/checkpoint_mpi_test.cc.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpoint_writer.h"
#include "checkpoint/hdf5_rank_file.h"
#include "checkpoint/model_config_json.h"
#include "layers/model.h"
#include "parallel/local_communicator.h"
#include "tests/checkpoint/checkpoint_test_support.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

namespace fs = std::filesystem;
using testing::CountStateMismatches;
using ::testing::HasSubstr;
using testing::MakeSources;

CheckpointMetadata Metadata(int64_t step) {
  CheckpointMetadata m;
  m.step = step;
  m.lr_schedule_step = step;
  m.model = ModelConfigToJson(testing::CheckpointTestModel());
  return m;
}

class CheckpointTest : public testing::TempDirTest {
 protected:
  CheckpointTest() : model_(testing::CheckpointTestModel(), LossConfig{}) { model_.Finalize(DType::kF32, 1); }
  const ParamTable& table() { return model_.params(); }

  // Saves the whole table as one rank would; returns the checkpoint's path.
  std::string SaveAll(const std::string& dir, int64_t step, uint64_t seed, int64_t keep_last = 0) {
    CheckpointWriter writer(comm_, dir, keep_last);
    absl::StatusOr<CheckpointSaveStats> stats =
        writer.Save(MakeSources(table(), 0, table().numel(), seed), Metadata(step));
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? stats->path : "";
  }

  LocalCommunicator comm_{"world"};
  Model model_;
};

TEST_F(CheckpointTest, RoundTripThroughAnyRangeAndDType) {
  std::mt19937_64 rng(testing::TestSeed());
  const uint64_t seed = rng();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const std::string path = SaveAll(dir_, 12, seed);
  EXPECT_EQ(path, dir_ + "/step_00000012");
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  // Random table ranges, read into fresh buffers of every dtype; values were saved f32, adam_v bf16.
  std::uniform_int_distribution<int64_t> cut(0, table().numel());
  for (int trial = 0; trial < 8; ++trial) {
    int64_t b = cut(rng), e = cut(rng);
    if (b > e) std::swap(b, e);
    for (auto [kind, stored, filter] :
         {std::tuple<const char*, DType, PieceFilter>{kKindValue, DType::kF32, PieceFilter::kAll},
          {kKindAdamM, DType::kF32, PieceFilter::kTrainableOnly},
          {kKindAdamV, DType::kBF16, PieceFilter::kTrainableOnly}}) {
      for (DType out_dtype : {DType::kF32, DType::kF64, DType::kBF16}) {
        std::vector<TensorPiece> pieces = TablePieces(table(), b, e, filter);
        Tensor out = Tensor::Zeros({e - b}, out_dtype);
        ASSERT_TRUE((*reader)->ReadPieces(kind, pieces, out, b).ok());
        // bf16 out of an f32 store rounds; compare against the same rounding of the saved value.
        const DType effective = out_dtype == DType::kBF16 ? DType::kBF16 : stored;
        EXPECT_EQ(CountStateMismatches(out, b, pieces, seed, kind, effective), 0)
            << kind << " [" << b << ", " << e << ") into " << DTypeName(out_dtype);
      }
    }
  }
}

TEST_F(CheckpointTest, ChecksumChunksAcrossALargeTensor) {
  // One tensor of 2.6 chunks: reads that start and end inside chunks take the scratch path, whole chunks
  // go straight to the output; every chunk's checksum is checked either way.
  ParamTable big;
  big.Add({.name = "model.embed_tokens.weight", .shape = {1300, 2000}});
  big.Finalize(DType::kF32);
  std::mt19937_64 rng(testing::TestSeed());
  const uint64_t seed = rng();
  CheckpointWriter writer(comm_, dir_, 0);
  std::vector<ShardSource> sources = {
      {kKindValue, TablePieces(big, 0, big.numel()), Tensor::Empty({big.numel()}, DType::kF32), 0}};
  testing::FillState(sources[0].data, 0, sources[0].pieces, seed, kKindValue);
  absl::StatusOr<CheckpointSaveStats> stats = writer.Save(sources, Metadata(3));
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->bytes, 1300 * 2000 * 4);
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(stats->path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const SliceRecord& slice = (*reader)->Find("model.embed_tokens.weight")->kinds.at(kKindValue).slices.at(0);
  EXPECT_EQ(slice.crc32c.size(), 3u);
  const int64_t c = kCrcChunkElements;
  for (auto [b, e] : {std::pair<int64_t, int64_t>{0, 2600000},
                      {5, c - 3},
                      {c - 7, 2 * c + 11},
                      {c, 2 * c},
                      {2 * c + 1, 2600000}}) {
    Tensor out = Tensor::Empty({e - b}, DType::kF32);
    ASSERT_TRUE((*reader)->Read("model.embed_tokens.weight", kKindValue, b, e, out).ok());
    int64_t bad = 0;
    for (int64_t i = b; i < e; ++i)
      bad +=
          out.data<float>()[i - b] != testing::StateValue(seed, kKindValue, "model.embed_tokens.weight", i);
    EXPECT_EQ(bad, 0) << "[" << b << ", " << e << ")";
  }
}

TEST_F(CheckpointTest, MetadataAndIndexRoundTrip) {
  CheckpointWriter writer(comm_, dir_, 0);
  CheckpointMetadata meta = Metadata(77);
  meta.lr_schedule_step = 70;
  meta.seed = 18446744073709551557ull;  // above 2^63: must survive JSON
  meta.data_loader = {{"consumed_samples", 4928}, {"fingerprint", "abc"}};
  meta.rng = {{"stream", 3}};
  meta.recipe = "model:\n  hidden_size: 16\n";
  absl::StatusOr<CheckpointSaveStats> stats = writer.Save(MakeSources(table(), 0, table().numel(), 5), meta);
  ASSERT_TRUE(stats.ok()) << stats.status();
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(stats->path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const CheckpointMetadata& m = (*reader)->metadata();
  EXPECT_EQ(m.step, 77);
  EXPECT_EQ(m.lr_schedule_step, 70);
  EXPECT_EQ(m.seed, meta.seed);
  EXPECT_EQ(m.data_loader, meta.data_loader);
  EXPECT_EQ(m.rng, meta.rng);
  EXPECT_EQ(m.recipe, meta.recipe);
  EXPECT_EQ((*reader)->index().fathom_version, FathomVersion());
  EXPECT_FALSE(FathomVersion().empty());
  EXPECT_NE(FathomVersion(), "unknown");
  std::vector<std::string> notes;
  EXPECT_TRUE((*reader)->CheckModel(testing::CheckpointTestModel(), &notes).ok());
  EXPECT_TRUE(notes.empty());
  // Per-expert HF names with their own shapes; the expert bias has values but no moments.
  const TensorRecord* expert = (*reader)->Find("model.layers.2.mlp.experts.7.up_proj.weight");
  ASSERT_NE(expert, nullptr);
  EXPECT_EQ(expert->shape, (Shape{8, 16}));
  EXPECT_EQ(expert->kinds.size(), 3u);
  const TensorRecord* bias = (*reader)->Find("model.layers.2.mlp.gate.e_score_correction_bias");
  ASSERT_NE(bias, nullptr);
  EXPECT_EQ(bias->kinds.size(), 1u);
  EXPECT_EQ(bias->kinds.begin()->first, kKindValue);
  EXPECT_EQ(stats->bytes, SourceBytes(MakeSources(table(), 0, table().numel(), 5)));
}

TEST_F(CheckpointTest, AsyncSaveEqualsSyncAndSnapshotsItsSources) {
  std::mt19937_64 rng(testing::TestSeed());
  const uint64_t seed = rng();
  const std::string sync_dir = Path("sync"), async_dir = Path("async");
  SaveAll(sync_dir, 9, seed);
  CheckpointWriter writer(comm_, async_dir, 0);
  std::vector<ShardSource> sources = MakeSources(table(), 0, table().numel(), seed);
  ASSERT_TRUE(writer.StartAsync(sources, Metadata(9)).ok());
  EXPECT_TRUE(writer.in_flight());
  // The step loop goes on and changes its buffers: the checkpoint holds the state at StartAsync.
  for (ShardSource& s : sources) testing::FillState(s.data, 0, s.pieces, seed + 1, s.kind);
  std::optional<CheckpointSaveStats> done;
  for (int polls = 0; !done && polls < 100000; ++polls) {
    absl::StatusOr<std::optional<CheckpointSaveStats>> polled = writer.Poll();
    ASSERT_TRUE(polled.ok()) << polled.status();
    done = *polled;
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(done.has_value());
  EXPECT_FALSE(writer.in_flight());
  EXPECT_EQ(done->async, Hdf5IsThreadSafe());
  EXPECT_GT(done->bytes, 0);
  std::printf("%s\n", DescribeSave(*done).c_str());
  EXPECT_THAT(DescribeSave(*done), HasSubstr("checkpoint step 9 saved to " + async_dir + "/step_00000009: "));
  // Byte for byte the same files (HDF5 stores no timestamps here) and the same index.
  for (const char* name : {"rank_00000.h5", "index.json"}) {
    EXPECT_EQ(testing::ReadFileBytes(sync_dir + "/step_00000009/" + name),
              testing::ReadFileBytes(async_dir + "/step_00000009/" + name))
        << name;
  }
  absl::StatusOr<std::optional<CheckpointSaveStats>> nothing = writer.Finish();
  ASSERT_TRUE(nothing.ok());
  EXPECT_FALSE(nothing->has_value());
}

TEST_F(CheckpointTest, KeepLastPrunesOldOnesAndLeftoversGoWithTheNextSave) {
  for (int64_t step = 1; step <= 4; ++step) SaveAll(dir_, step, step, /*keep_last=*/2);
  absl::StatusOr<std::vector<CheckpointEntry>> all = ListCheckpoints(dir_);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].step, 3);
  EXPECT_EQ((*all)[1].step, 4);
  // Leftovers of crashed saves and prunes (fathom's: marked, or empty), an incomplete directory, a user's
  // file, and a user's directory and file under leftover names (no marker: not ours to remove).
  fs::create_directories(Path("step_00000009.tmp/sub"));
  testing::WriteFileBytes(Path("step_00000009.tmp/") + kOwnedMarkerName, "");
  fs::create_directories(Path("step_00000002.pruned"));
  fs::create_directories(Path("step_00000007"));  // no index.json: not a checkpoint, not ours to remove
  testing::WriteFileBytes(Path("notes.txt"), "mine");
  fs::create_directories(Path("step_00000008.tmp"));
  testing::WriteFileBytes(Path("step_00000008.tmp/notes.txt"), "also mine");
  testing::WriteFileBytes(Path("step_00000001.replaced"), "a file");
  absl::StatusOr<std::optional<std::string>> latest = FindLatestCheckpoint(dir_);
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ(**latest, Path("step_00000004"));
  SaveAll(dir_, 5, 5, /*keep_last=*/2);
  EXPECT_FALSE(fs::exists(Path("step_00000009.tmp")));
  EXPECT_FALSE(fs::exists(Path("step_00000002.pruned")));
  EXPECT_FALSE(fs::exists(Path("step_00000003")));
  EXPECT_TRUE(fs::exists(Path("step_00000004/index.json")));
  EXPECT_TRUE(fs::exists(Path("step_00000005/index.json")));
  EXPECT_TRUE(fs::exists(Path("step_00000007")));
  EXPECT_EQ(testing::ReadFileBytes(Path("notes.txt")), "mine");
  EXPECT_EQ(testing::ReadFileBytes(Path("step_00000008.tmp/notes.txt")), "also mine");
  EXPECT_EQ(testing::ReadFileBytes(Path("step_00000001.replaced")), "a file");
  // A committed checkpoint does not keep the marker its temporary had.
  EXPECT_FALSE(fs::exists(Path("step_00000005/") + kOwnedMarkerName));
}

// A save replaces only fathom's own complete checkpoint of its step and removes only its own leftover
// step_N.tmp: a step directory without index.json (a damaged save, a user's directory) or a step_N.tmp
// fathom did not make is refused, naming the path, and left as it was.
TEST_F(CheckpointTest, ASaveNeverReplacesWhatFathomDidNotMake) {
  auto save = [&](int64_t step) {
    CheckpointWriter writer(comm_, dir_, 0);
    return writer.Save(MakeSources(table(), 0, table().numel(), 1), Metadata(step));
  };
  fs::create_directories(Path("step_00000005"));
  testing::WriteFileBytes(Path("step_00000005/rank_00000.h5"), "damaged");
  fs::create_directories(Path("step_00000006.tmp"));
  testing::WriteFileBytes(Path("step_00000006.tmp/mine.txt"), "precious");
  testing::WriteFileBytes(Path("step_00000007.tmp"), "a file");
  const struct {
    int64_t step;
    std::string expect;
  } cases[] = {{5, Path("step_00000005") + ": no index.json"},
               {6, Path("step_00000006.tmp") + " exists and fathom did not make it"},
               {7, Path("step_00000007.tmp") + " exists and fathom did not make it"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.step);
    absl::StatusOr<CheckpointSaveStats> s = save(c.step);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(c.expect));
  }
  EXPECT_EQ(testing::ReadFileBytes(Path("step_00000005/rank_00000.h5")), "damaged");
  EXPECT_EQ(testing::ReadFileBytes(Path("step_00000006.tmp/mine.txt")), "precious");
  EXPECT_EQ(testing::ReadFileBytes(Path("step_00000007.tmp")), "a file");
  EXPECT_FALSE(fs::exists(Path("step_00000006")));
  // fathom's own leftover of the same step (marked) is replaced, as before.
  fs::create_directories(Path("step_00000008.tmp"));
  testing::WriteFileBytes(Path("step_00000008.tmp/") + kOwnedMarkerName, "");
  testing::WriteFileBytes(Path("step_00000008.tmp/rank_00000.h5"), "half written");
  ASSERT_TRUE(save(8).ok());
  EXPECT_TRUE(fs::exists(Path("step_00000008/index.json")));
  EXPECT_FALSE(fs::exists(Path("step_00000008.tmp")));
}

// What resume: auto skips is reported; a checkpoint.dir that is itself a checkpoint, and resume: none into
// a directory of another run's checkpoints, are refused naming the path.
TEST_F(CheckpointTest, ResumeReportsSkippedStepsAndRefusesAmbiguousDirectories) {
  CheckpointConfig cfg;
  cfg.dir = Path("run");
  SaveAll(cfg.dir, 2, 1);
  fs::create_directories(cfg.dir + "/step_00000004");  // an incomplete save: no index.json
  testing::WriteFileBytes(cfg.dir + "/step_00000006", "a file");
  cfg.resume = "auto";
  std::vector<std::string> warnings;
  absl::StatusOr<std::optional<std::string>> r = ResolveResume(cfg, &warnings);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->value_or(""), cfg.dir + "/step_00000002");
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_THAT(warnings[0], HasSubstr(cfg.dir + "/step_00000004: no index.json (an incomplete save"));
  EXPECT_THAT(warnings[1], HasSubstr(cfg.dir + "/step_00000006: not a directory"));
  warnings.clear();
  ASSERT_TRUE(ResolveResumeOnAllRanks(cfg, comm_, &warnings).ok());
  EXPECT_EQ(warnings.size(), 2u);

  CheckpointConfig inside = cfg;
  inside.dir = cfg.dir + "/step_00000002";
  for (const char* resume : {"auto", "none"}) {
    inside.resume = resume;
    absl::StatusOr<std::optional<std::string>> bad = ResolveResume(inside);
    ASSERT_FALSE(bad.ok()) << resume;
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(bad.status().message()),
                HasSubstr("checkpoint.dir " + inside.dir +
                          " is itself a checkpoint (it holds index.json); set checkpoint.dir to its parent, "
                          "or checkpoint.resume: " +
                          inside.dir));
  }

  cfg.resume = "none";
  absl::StatusOr<std::optional<std::string>> none = ResolveResume(cfg);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("the newest " + cfg.dir + "/step_00000002"));
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("use an empty checkpoint.dir"));
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("checkpoint.resume: auto"));
}

TEST_F(CheckpointTest, SavingAStepAgainReplacesIt) {
  std::mt19937_64 rng(testing::TestSeed());
  const uint64_t first = rng(), second = first + 1;
  SaveAll(dir_, 6, first);
  const std::string path = SaveAll(dir_, 6, second);
  EXPECT_FALSE(fs::exists(path + ".replaced"));
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<TensorPiece> pieces = TablePieces(table(), 0, table().numel());
  Tensor out = Tensor::Empty({table().numel()}, DType::kF32);
  ASSERT_TRUE((*reader)->ReadPieces(kKindValue, pieces, out, 0).ok());
  EXPECT_EQ(CountStateMismatches(out, 0, pieces, second, kKindValue, DType::kF32), 0);
}

TEST_F(CheckpointTest, ResumeChoices) {
  CheckpointConfig cfg;
  cfg.dir = Path("run");
  for (const char* resume : {"auto", "none"}) {
    cfg.resume = resume;
    absl::StatusOr<std::optional<std::string>> r = ResolveResume(cfg);  // the directory does not exist yet
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE(r->has_value()) << resume;
  }
  SaveAll(cfg.dir, 10, 1);
  SaveAll(cfg.dir, 20, 2);
  fs::create_directories(cfg.dir + "/step_00000030.tmp");  // a crashed save: never resumed from
  cfg.resume = "auto";
  EXPECT_EQ(ResolveResume(cfg)->value_or(""), cfg.dir + "/step_00000020");
  EXPECT_EQ(ResolveResumeOnAllRanks(cfg, comm_)->value_or(""), cfg.dir + "/step_00000020");
  cfg.resume = "none";  // a fresh run among another run's checkpoints: refused (see below)
  EXPECT_EQ(ResolveResume(cfg).status().code(), absl::StatusCode::kInvalidArgument);
  cfg.resume = cfg.dir + "/step_00000010";
  EXPECT_EQ(ResolveResume(cfg)->value_or(""), cfg.dir + "/step_00000010");
  CheckpointConfig other;  // another run's directory of checkpoints: its newest
  other.resume = cfg.dir;
  EXPECT_EQ(ResolveResume(other)->value_or(""), cfg.dir + "/step_00000020");
  other.resume = cfg.dir + "/step_00000030.tmp";
  absl::StatusOr<std::optional<std::string>> bad = ResolveResume(other);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(bad.status().message(), HasSubstr("step_00000030.tmp is not a checkpoint"));
  EXPECT_EQ(ResolveResumeOnAllRanks(other, comm_).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointTest, ADirectoryThatIsAFileIsRefusedAndUntouched) {
  testing::WriteFileBytes(Path("file"), "precious");
  CheckpointWriter writer(comm_, Path("file"), 0);
  absl::StatusOr<CheckpointSaveStats> stats =
      writer.Save(MakeSources(table(), 0, table().numel(), 1), Metadata(1));
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(stats.status().message(), HasSubstr(Path("file") + " is not a directory"));
  EXPECT_EQ(testing::ReadFileBytes(Path("file")), "precious");
  CheckpointConfig cfg;
  cfg.dir = Path("file");
  EXPECT_EQ(ResolveResume(cfg).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CheckpointTest, AnUnwritableDirectoryIsAnErrorAndLeavesNoCheckpoint) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: permissions do not stop writes";
  fs::create_directories(Path("ro"));
  ::chmod(Path("ro").c_str(), 0555);
  CheckpointWriter writer(comm_, Path("ro"), 0);
  absl::StatusOr<CheckpointSaveStats> stats =
      writer.Save(MakeSources(table(), 0, table().numel(), 1), Metadata(1));
  ::chmod(Path("ro").c_str(), 0755);
  ASSERT_FALSE(stats.ok());
  EXPECT_FALSE(FindLatestCheckpoint(Path("ro"))->has_value());
}

}  // namespace
}  // namespace fathom
