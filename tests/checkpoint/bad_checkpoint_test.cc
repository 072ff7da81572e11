// Bad checkpoints are refused with a status that names the file or tensor and what was expected: a missing
// directory, index or rank file, a truncated file, a corrupt slice, an unknown format version, a malformed
// index, a hole in a tensor's slices, another model's shapes, a tensor the model needs that is missing.
// Reading never writes: the checkpoint is byte-for-byte as it was after every refusal.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpoint_writer.h"
#include "checkpoint/model_config_json.h"
#include "layers/model.h"
#include "parallel/local_communicator.h"
#include "tests/checkpoint/checkpoint_test_support.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

class BadCheckpointTest : public testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    model_.Finalize(DType::kF32, 1);
    seed_ = std::mt19937_64(testing::TestSeed())();
    sources_ = testing::MakeSources(table(), 0, table().numel(), seed_);
    CheckpointMetadata meta;
    meta.step = 4;
    meta.model = ModelConfigToJson(testing::CheckpointTestModel());
    CheckpointWriter writer(comm_, dir_, 0);
    absl::StatusOr<CheckpointSaveStats> stats = writer.Save(sources_, meta);
    ASSERT_TRUE(stats.ok()) << stats.status();
    ckpt_ = stats->path;
    file_ = ckpt_ + "/rank_00000.h5";
  }
  const ParamTable& table() { return model_.params(); }

  absl::Status OpenStatus() { return CheckpointReader::Open(ckpt_).status(); }

  // Reads every value of the table; the first error.
  absl::Status ReadAllValues() {
    absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(ckpt_);
    if (!r.ok()) return r.status();
    Tensor out = Tensor::Empty({table().numel()}, DType::kF32);
    return (*r)->ReadPieces(kKindValue, TablePieces(table(), 0, table().numel()), out, 0);
  }

  void EditIndex(const std::function<void(nlohmann::json&)>& edit) {
    const std::string path = ckpt_ + "/index.json";
    nlohmann::json j = nlohmann::json::parse(testing::ReadFileBytes(path));
    edit(j);
    testing::WriteFileBytes(path, j.dump());
  }

  LocalCommunicator comm_{"world"};
  Model model_{testing::CheckpointTestModel(), LossConfig{}};
  uint64_t seed_ = 0;
  std::vector<ShardSource> sources_;
  std::string ckpt_, file_;
};

TEST_F(BadCheckpointTest, MissingDirectory) {
  absl::Status s = CheckpointReader::Open(Path("step_00000099")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(Path("step_00000099") + " does not exist"));
}

TEST_F(BadCheckpointTest, MissingIndexIsAnIncompleteCheckpoint) {
  fs::remove(ckpt_ + "/index.json");
  absl::Status s = OpenStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr(ckpt_), HasSubstr("has no index.json"), HasSubstr("not a complete")));
}

TEST_F(BadCheckpointTest, MissingRankFile) {
  fs::remove(file_);
  absl::Status s = OpenStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("checkpoint file " + file_ + " is missing"));
}

TEST_F(BadCheckpointTest, TruncatedFile) {
  const auto size = fs::file_size(file_);
  fs::resize_file(file_, size / 2);
  absl::Status s = OpenStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr(file_), HasSubstr("(truncated)"), HasSubstr(std::to_string(size))));
}

TEST_F(BadCheckpointTest, AFileThatIsNotHdf5) {
  // Same size, other bytes: HDF5's superblock is gone.
  std::string bytes = testing::ReadFileBytes(file_);
  std::fill(bytes.begin(), bytes.begin() + 64, 'x');
  testing::WriteFileBytes(file_, bytes);
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(ckpt_);
  ASSERT_TRUE(r.ok()) << r.status();
  absl::Status s = (*r)->CheckFiles();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(file_ + " is not a readable HDF5 file"));
  EXPECT_EQ(ReadAllValues().code(), absl::StatusCode::kDataLoss);
}

TEST_F(BadCheckpointTest, CorruptSliceNamesFileTensorAndChecksum) {
  // Flip one bit inside the stored bytes of the first value piece (found by its contents).
  const ShardSource& values = sources_[0];
  const TensorPiece& piece = values.pieces.at(3);
  const char* first = static_cast<const char*>(values.data.raw()) + piece.table_offset * 4;
  std::string bytes = testing::ReadFileBytes(file_);
  const size_t at = bytes.find(std::string(first, 16));
  ASSERT_NE(at, std::string::npos);
  bytes[at + 5] ^= 0x10;
  testing::WriteFileBytes(file_, bytes);
  EXPECT_TRUE(OpenStatus().ok()) << "same size: only the checksum can tell";
  absl::Status s = ReadAllValues();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(file_ + " is corrupt"),
                                 HasSubstr("tensor '" + piece.name + "' (value)"), HasSubstr("CRC-32C")));
}

TEST_F(BadCheckpointTest, UnknownFormatVersion) {
  EditIndex([](nlohmann::json& j) { j["format_version"] = 99; });
  absl::Status s = OpenStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr(ckpt_ + "/index.json"), HasSubstr("format_version 99 is not supported"),
                    HasSubstr("reads format_version 1")));
}

TEST_F(BadCheckpointTest, MalformedIndex) {
  testing::WriteFileBytes(ckpt_ + "/index.json", "{\"format\": \"fathom-checkpoint\", \"format_ver");
  EXPECT_EQ(OpenStatus().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(OpenStatus().message(),
              AllOf(HasSubstr(ckpt_ + "/index.json"), HasSubstr("not a JSON object")));
}

TEST_F(BadCheckpointTest, WrongFieldTypeNamesTheField) {
  EditIndex([](nlohmann::json& j) { j["files"][0]["bytes"] = "many"; });
  absl::Status s = OpenStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("index.files[0].bytes must be an integer, found \"many\""));
}

TEST_F(BadCheckpointTest, HoleInATensorsSlices) {
  const std::string name = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight";
  EditIndex([&](nlohmann::json& j) {
    nlohmann::json& slice = j["tensors"][name]["kinds"]["value"]["slices"][0];
    slice["begin"] = 8;
    slice["crc32c"] = nlohmann::json::array({1});
  });
  absl::Status s = OpenStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor '" + name + "' (value): elements [0, 8) of"));
}

TEST_F(BadCheckpointTest, ADatasetOfAnotherLengthIsDataLoss) {
  // The index claims more elements than the file's dataset holds (a file from another save).
  EditIndex([](nlohmann::json& j) {
    j["files"][0]["datasets"][0]["elements"] = j["files"][0]["datasets"][0]["elements"].get<int64_t>() + 1;
  });
  absl::Status s = ReadAllValues();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(file_), HasSubstr("dataset 'value' holds")));
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(ckpt_);
  ASSERT_TRUE(r.ok()) << "sizes match: only opening the file tells";
  EXPECT_EQ((*r)->CheckFiles().code(), absl::StatusCode::kDataLoss);
}

TEST_F(BadCheckpointTest, AnotherModelsConfigAndShapes) {
  ModelConfig other = testing::CheckpointTestModel();
  other.hidden_size = 32;
  other.n_routed_experts = 16;
  other.rope_theta = 50000;
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(ckpt_);
  ASSERT_TRUE(r.ok());
  std::vector<std::string> notes;
  absl::Status s = (*r)->CheckModel(other, &notes);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("was saved by another model"),
                                 HasSubstr("hidden_size: checkpoint 16, recipe 32"),
                                 HasSubstr("n_routed_experts: checkpoint 8, recipe 16")));
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_THAT(notes[0], HasSubstr("rope_theta"));
  // The tensors themselves: another shape, and tensors the model has and the checkpoint lacks.
  Model wide(other, LossConfig{});
  wide.Finalize(DType::kF32, 1);
  Tensor out = Tensor::Empty({wide.params().numel()}, DType::kF32);
  s = (*r)->ReadPieces(kKindValue, TablePieces(wide.params(), 0, wide.params().numel()), out, 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("does not fit the model (value)"),
                    HasSubstr("tensor 'model.embed_tokens.weight' is (48, 16), the model's is (48, 32)"),
                    HasSubstr("more")));
  ModelConfig more_experts = testing::CheckpointTestModel();
  more_experts.n_routed_experts = 16;
  Model bigger(more_experts, LossConfig{});
  bigger.Finalize(DType::kF32, 1);
  Tensor out2 = Tensor::Empty({bigger.params().numel()}, DType::kF32);
  s = (*r)->ReadPieces(kKindValue, TablePieces(bigger.params(), 0, bigger.params().numel()), out2, 0);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("tensor 'model.layers.1.mlp.gate.weight' is (8, 16), the model's is (16, 16)"),
                    HasSubstr("tensor 'model.layers.1.mlp.experts.8.gate_proj.weight' is missing")));
}

// A tensor the model does not have (an index edited by hand, or written by a newer fathom) is not loaded,
// and the resume says so in a note rather than dropping it silently.
TEST_F(BadCheckpointTest, ATensorTheModelDoesNotHaveIsNamedInANote) {
  const std::string known = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight";
  EditIndex([&](nlohmann::json& j) { j["tensors"]["model.layers.0.self_attn.extra.weight"] = j["tensors"][known]; });
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(ckpt_);
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<std::string> notes;
  ASSERT_TRUE((*r)->CheckModel(testing::CheckpointTestModel(), &notes).ok());
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_EQ(notes[0],
            "the checkpoint holds 1 tensor(s) the model does not have, not loaded: "
            "'model.layers.0.self_attn.extra.weight'");
}

TEST_F(BadCheckpointTest, MissingKindOfState) {
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(ckpt_);
  ASSERT_TRUE(r.ok());
  Tensor out = Tensor::Empty({8}, DType::kF32);
  absl::Status s = (*r)->Read("model.layers.1.mlp.gate.e_score_correction_bias", kKindAdamM, 0, 8, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("has no adam_m state (it has: value)"));
  s = (*r)->Read("model.layers.9.mlp.gate.weight", kKindValue, 0, 8, out);
  EXPECT_THAT(s.message(), HasSubstr("has no tensor 'model.layers.9.mlp.gate.weight'"));
}

TEST_F(BadCheckpointTest, RefusalsChangeNothingOnDisk) {
  const std::string before = testing::ReadFileBytes(file_) + testing::ReadFileBytes(ckpt_ + "/index.json");
  ModelConfig other = testing::CheckpointTestModel();
  other.hidden_size = 8;
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(ckpt_);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE((*r)->CheckModel(other, nullptr).ok());
  EXPECT_TRUE(ReadAllValues().ok());
  EXPECT_EQ(testing::ReadFileBytes(file_) + testing::ReadFileBytes(ckpt_ + "/index.json"), before);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

}  // namespace
}  // namespace fathom
