// HF export and import round trips (checkpoint/hf_export.h, hf_import.h) on one process: fathom checkpoint
// -> export f32 -> import gives the same parameters bit for bit; bf16 gives the bf16-rounded parameters bit
// for bit; fp8 gives exactly the CPU quantize-dequantize of the originals (checkpoint/fp8_blocks.h). Also:
// the directory's layout (names as the release, shards, index, configs), slices of a pipeline / expert
// mesh filled from it, the weights-only checkpoint an import writes, and exports that must not happen.
#include "checkpoint/hf_export.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/fp8_blocks.h"
#include "checkpoint/hf_directory.h"
#include "checkpoint/hf_import.h"
#include "checkpoint/hf_layout.h"
#include "framework/numeric.h"
#include "tests/checkpoint/checkpoint_test_support.h"
#include "tests/checkpoint/hf_test_support.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::HasSubstr;

using testing::ReadJson;

// What a value becomes in an export of `dtype` and back (bit for bit).
float Exported(HfDType dtype, const HfTensorSpec& t, float v) {
  if (t.f32 || dtype == HfDType::kF32) return v;
  return Bf16ToFloat(FloatToBf16(v));
}

class HfExportTest : public testing::TempDirTest {
 protected:
  HfExportTest() : recipe_(testing::HfTestRecipe()), original_(recipe_.model, recipe_.loss) {
    seed_ = testing::TestSeed();
    std::mt19937_64 rng(seed_);
    original_.Finalize(DType::kF32, 1);
    testing::FillRandomValues(original_.params(), rng);
  }
  void SetUp() override {
    TempDirTest::SetUp();
    checkpoint_ = testing::SaveValues(Path("ckpt"), recipe_, original_.params());
  }

  HfExportStats Export(HfDType dtype, const std::string& out, int64_t shard_bytes = 100'000) {
    absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(checkpoint_);
    EXPECT_TRUE(reader.ok()) << reader.status();
    HfExportOptions options;
    options.dtype = dtype;
    options.shard_bytes = shard_bytes;
    options.tokens.eos = 3;
    absl::StatusOr<HfExportStats> stats = ExportHfDirectory(**reader, out, options, comm_);
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? *stats : HfExportStats{};
  }

  // The element the original whole-model table holds for flat element i of tensor `name`.
  float Original(const std::string& name, int64_t i) {
    if (offsets_.empty()) {
      const ParamTable& t = original_.params();
      for (const TensorPiece& p : TablePieces(t, 0, t.numel())) offsets_[p.name] = p.table_offset;
    }
    return original_.params().values().data<float>()[offsets_.at(name) + i];
  }

  // Loads `dir` into a fresh whole-model table and compares every element with `expected(spec, element)`.
  template <class Expected>
  void ExpectLoadedEquals(const std::string& dir, Expected expected) {
    Model loaded(recipe_.model, recipe_.loss);
    loaded.Finalize(DType::kF32, 2);  // other random values: every element must be overwritten
    absl::Status s = LoadHfDirectoryInto(dir, recipe_.model, loaded.params());
    ASSERT_TRUE(s.ok()) << s;
    const ParamTable& t = loaded.params();
    int64_t bad = 0, checked = 0;
    std::map<std::string, const HfTensorSpec*> specs;
    const std::vector<HfTensorSpec> tensors = HfModelTensors(recipe_.model);
    for (const HfTensorSpec& spec : tensors) specs[spec.name] = &spec;
    for (const TensorPiece& p : TablePieces(t, 0, t.numel())) {
      const std::vector<float> want = expected(*specs.at(p.name));
      for (int64_t i = 0; i < p.numel(); ++i, ++checked) {
        const float got = t.values().data<float>()[p.table_offset + i];
        if (FloatBits(got) != FloatBits(want[static_cast<size_t>(i)]) && bad++ < 5) {
          ADD_FAILURE() << p.name << "[" << i << "]: " << got << " vs " << want[static_cast<size_t>(i)];
        }
      }
    }
    EXPECT_EQ(bad, 0);
    EXPECT_EQ(checked, PieceElements(TablePieces(t, 0, t.numel())));
  }

  std::vector<float> OriginalValues(const HfTensorSpec& spec) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = Original(spec.source, i);
    return v;
  }

  Recipe recipe_;
  Model original_;
  uint64_t seed_ = 0;
  std::string checkpoint_;
  LocalCommunicator comm_{"world"};
  std::map<std::string, int64_t> offsets_;  // HF name -> table offset in original_
};

TEST_F(HfExportTest, F32ExportImportsBitForBit) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const HfExportStats stats = Export(HfDType::kF32, Path("hf"));
  EXPECT_GT(stats.shards, 3) << "100 kB shards of a ~1.6 MB export";
  ExpectLoadedEquals(Path("hf"), [&](const HfTensorSpec& s) { return OriginalValues(s); });
}

TEST_F(HfExportTest, Bf16ExportImportsTheRoundedValuesBitForBit) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  Export(HfDType::kBF16, Path("hf"));
  ExpectLoadedEquals(Path("hf"), [&](const HfTensorSpec& s) {
    std::vector<float> v = OriginalValues(s);
    for (float& x : v) x = Exported(HfDType::kBF16, s, x);
    return v;
  });
  absl::StatusOr<std::unique_ptr<HfDirectory>> hf = HfDirectory::Open(Path("hf"));
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ((*hf)->Find("model.layers.1.mlp.gate.e_score_correction_bias")->dtype, "F32");
  EXPECT_EQ((*hf)->Find("model.layers.1.mlp.experts.3.down_proj.weight")->dtype, "BF16");
}

TEST_F(HfExportTest, Fp8ExportImportsTheQuantizeDequantizeOfTheOriginals) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  Export(HfDType::kFP8, Path("hf"));
  int quantized = 0;
  ExpectLoadedEquals(Path("hf"), [&](const HfTensorSpec& s) {
    std::vector<float> v = OriginalValues(s);
    if (!s.fp8) {
      for (float& x : v) x = Exported(HfDType::kFP8, s, x);
      return v;
    }
    ++quantized;
    const Shape grid = Fp8ScaleShape(s.shape[0], s.shape[1]);
    std::vector<uint8_t> q(v.size());
    std::vector<float> scale(static_cast<size_t>(grid[0] * grid[1]));
    QuantizeE4M3Blocks(v.data(), s.shape[0], s.shape[1], q.data(), scale.data());
    DequantizeE4M3Blocks(q.data(), 0, static_cast<int64_t>(v.size()), s.shape[1], scale.data(), v.data());
    return v;
  });
  EXPECT_GT(quantized, 20);
  // As the release: e4m3 Linear weights with f32 block scales, bf16 elsewhere.
  absl::StatusOr<std::unique_ptr<HfDirectory>> hf = HfDirectory::Open(Path("hf"));
  ASSERT_TRUE(hf.ok()) << hf.status();
  const HfTensorLocation* kv_a = (*hf)->Find("model.layers.0.self_attn.kv_a_proj_with_mqa.weight");
  ASSERT_NE(kv_a, nullptr);
  EXPECT_EQ(kv_a->dtype, "F8_E4M3");
  const HfTensorLocation* scales =
      (*hf)->Find("model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv");
  ASSERT_NE(scales, nullptr);
  EXPECT_EQ(scales->dtype, "F32");
  EXPECT_EQ(scales->shape, (Shape{2, 2}));  // (138, 136) in 128x128 blocks
  for (const char* bf16 : {"model.embed_tokens.weight", "lm_head.weight", "model.layers.1.mlp.gate.weight",
                           "model.layers.3.eh_proj.weight", "model.layers.3.shared_head.head.weight",
                           "model.norm.weight", "model.layers.2.self_attn.kv_a_layernorm.weight"}) {
    ASSERT_NE((*hf)->Find(bf16), nullptr) << bf16;
    EXPECT_EQ((*hf)->Find(bf16)->dtype, "BF16") << bf16;
  }
  EXPECT_EQ((*hf)->Find("model.layers.3.mlp.experts.0.up_proj.weight")->dtype, "F8_E4M3");
  const json config = ReadJson(Path("hf/config.json"));
  EXPECT_EQ(config["quantization_config"], json({{"activation_scheme", "dynamic"},
                                                 {"fmt", "e4m3"},
                                                 {"quant_method", "fp8"},
                                                 {"weight_block_size", {128, 128}}}));
}

TEST_F(HfExportTest, DirectoryLaysTensorsOutAsTheRelease) {
  const HfExportStats stats = Export(HfDType::kBF16, Path("hf"), 300'000);
  const json index = ReadJson(Path("hf/model.safetensors.index.json"));
  const json& map = index["weight_map"];
  const std::vector<HfTensorSpec> tensors = HfModelTensors(recipe_.model);
  EXPECT_EQ(map.size(), tensors.size());
  int64_t total = 0;
  std::set<std::string> files;
  for (const HfTensorSpec& t : tensors) {
    ASSERT_TRUE(map.contains(t.name)) << t.name;
    files.insert(map[t.name].get<std::string>());
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    total += n * (t.f32 ? 4 : 2);
  }
  EXPECT_EQ(index["metadata"]["total_size"], total);
  EXPECT_EQ(stats.bytes, total);
  EXPECT_EQ(static_cast<int64_t>(files.size()), stats.shards);
  for (int64_t i = 1; i <= stats.shards; ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05lld-of-%05lld.safetensors", static_cast<long long>(i),
                  static_cast<long long>(stats.shards));
    EXPECT_TRUE(files.count(name)) << name;
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(Path("hf/") + name);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->metadata().at("format"), "pt");
  }
  // The release's names, MTP module 1 as layer 3 with its own copies of the embedding and the head.
  for (const char* name :
       {"model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.self_attn.q_a_proj.weight", "model.layers.2.mlp.experts.3.gate_proj.weight",
        "model.layers.2.mlp.shared_experts.up_proj.weight", "model.layers.2.mlp.gate.e_score_correction_bias",
        "model.norm.weight", "lm_head.weight", "model.layers.3.embed_tokens.weight",
        "model.layers.3.enorm.weight", "model.layers.3.hnorm.weight", "model.layers.3.eh_proj.weight",
        "model.layers.3.self_attn.o_proj.weight", "model.layers.3.mlp.experts.0.down_proj.weight",
        "model.layers.3.shared_head.norm.weight", "model.layers.3.shared_head.head.weight"}) {
    EXPECT_TRUE(map.contains(name)) << name;
  }
  absl::StatusOr<std::unique_ptr<HfDirectory>> hf = HfDirectory::Open(Path("hf"));
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ((*hf)->Find("model.layers.3.eh_proj.weight")->shape, (Shape{136, 272}));
  // The copies hold the shared tensors' bytes.
  for (auto [copy, shared] : {std::pair{"model.layers.3.embed_tokens.weight", "model.embed_tokens.weight"},
                              {"model.layers.3.shared_head.head.weight", "lm_head.weight"}}) {
    Tensor a = Tensor::Empty({160 * 136}, DType::kF32), b = Tensor::Empty({160 * 136}, DType::kF32);
    ASSERT_TRUE((*hf)->Read(copy, 0, 160 * 136, a).ok());
    ASSERT_TRUE((*hf)->Read(shared, 0, 160 * 136, b).ok());
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << copy;
  }
  const json config = ReadJson(Path("hf/config.json"));
  absl::StatusOr<ModelConfig> model = ModelConfigFromHfConfig(config, "config.json", 0);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE(ModelConfigMismatches(*model, recipe_.model).empty());
  EXPECT_EQ(config["eos_token_id"], 3);
  EXPECT_EQ(ReadJson(Path("hf/generation_config.json"))["eos_token_id"], 3);
  EXPECT_FALSE(fs::exists(Path("hf.tmp")));
}

TEST_F(HfExportTest, ShardPlanKeepsTensorsWholeAndScalesWithTheirWeights) {
  const std::vector<HfTensorSpec> tensors = HfModelTensors(recipe_.model);
  for (int64_t limit : {int64_t{1}, int64_t{50'000}, int64_t{1'000'000}, int64_t{1} << 40}) {
    const std::vector<HfShard> shards = PlanHfShards(tensors, HfDType::kFP8, limit);
    size_t entries = 0, weights = 0;
    for (const HfShard& s : shards) {
      EXPECT_TRUE(s.bytes <= limit || s.entries.size() <= 2) << s.file << " " << s.bytes;
      for (size_t i = 0; i < s.entries.size(); ++i) {
        if (s.entries[i].scale) {
          ASSERT_GT(i, 0u) << s.file << ": scales open the shard";
          EXPECT_EQ(s.entries[i - 1].tensor, s.entries[i].tensor);
        } else {
          ++weights;
        }
      }
      entries += s.entries.size();
    }
    EXPECT_EQ(weights, tensors.size());
    if (limit == int64_t{1} << 40) {
      EXPECT_EQ(shards.size(), 1u);
    }
    // Every rank's run of shards, together, is every shard once.
    for (int world : {1, 3, 7, 1000}) {
      int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        auto [first, end] = HfShardsOfRank(static_cast<int64_t>(shards.size()), r, world);
        EXPECT_EQ(first, next);
        next = end;
      }
      EXPECT_EQ(next, static_cast<int64_t>(shards.size()));
    }
  }
}

TEST_F(HfExportTest, SlicesOfAMeshLoadTheirPart) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  Export(HfDType::kF32, Path("hf"));
  // The last stage of two (layer 2, the head, MTP with its own embedding copy) holding experts 2 and 3.
  Model slice(recipe_.model, recipe_.loss, testing::TableSlice(recipe_.model, 2, 3, 2, 2));
  slice.Finalize(DType::kF64, 3);
  absl::Status s = LoadHfDirectoryInto(Path("hf"), recipe_.model, slice.params());
  ASSERT_TRUE(s.ok()) << s;
  const ParamTable& t = slice.params();
  int64_t bad = 0;
  const std::vector<TensorPiece> pieces = TablePieces(t, 0, t.numel());
  for (const TensorPiece& p : pieces) {
    for (int64_t i = 0; i < p.numel(); ++i) {
      bad += t.values().data<double>()[p.table_offset + i] != static_cast<double>(Original(p.name, i));
    }
  }
  EXPECT_EQ(bad, 0);
  std::set<std::string> names;
  for (const TensorPiece& p : pieces) names.insert(p.name);
  EXPECT_TRUE(names.count("model.layers.2.mlp.experts.3.gate_proj.weight"));
  EXPECT_FALSE(names.count("model.layers.2.mlp.experts.1.gate_proj.weight"));
  EXPECT_TRUE(names.count("model.embed_tokens.weight"));
}

TEST_F(HfExportTest, ImportWritesAWeightsOnlyCheckpoint) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  Export(HfDType::kBF16, Path("hf"));
  absl::StatusOr<HfImportStats> stats = ImportHfDirectory(Path("hf"), recipe_, Path("imported"));
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->path, CheckpointPath(Path("imported"), 0));
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(stats->path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_TRUE((*reader)->CheckFiles().ok());
  EXPECT_TRUE(IsWeightsOnlyCheckpoint((*reader)->metadata()));
  EXPECT_EQ((*reader)->step(), 0);
  // The expert biases of the three MoE layers (two main, one MTP) stay f32 in a bf16 export.
  EXPECT_EQ((*reader)->metadata().extra["source_dtypes"], json({{"BF16", stats->tensors - 3}, {"F32", 3}}));
  std::vector<std::string> notes;
  EXPECT_TRUE((*reader)->CheckModel(recipe_.model, &notes).ok());
  // Values: the bf16-rounded originals; no optimizer state.
  Model loaded(recipe_.model, recipe_.loss);
  loaded.Finalize(DType::kF32, 4);
  ParamTable& t = loaded.params();
  const std::vector<TensorPiece> pieces = TablePieces(t, 0, t.numel());
  ASSERT_TRUE((*reader)->ReadPieces(kKindValue, pieces, t.values(), 0).ok());
  std::map<std::string, HfTensorSpec> specs;
  for (const HfTensorSpec& s : HfModelTensors(recipe_.model)) specs[s.name] = s;
  int64_t bad = 0;
  for (const TensorPiece& p : pieces) {
    for (int64_t i = 0; i < p.numel(); ++i) {
      const float want = Exported(HfDType::kBF16, specs[p.name], Original(p.name, i));
      bad += FloatBits(t.values().data<float>()[p.table_offset + i]) != FloatBits(want);
    }
    EXPECT_EQ((*reader)->Find(p.name)->kinds.count(kKindAdamM), 0u);
  }
  EXPECT_EQ(bad, 0);
  // A second import into the same directory is refused: a resume would not pick it.
  absl::StatusOr<HfImportStats> again = ImportHfDirectory(Path("hf"), recipe_, Path("imported"));
  ASSERT_FALSE(again.ok());
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("already holds 1 checkpoint"));
}

TEST_F(HfExportTest, ExportRefusesANonEmptyDirectoryAndNonFiniteWeightsWritingNothing) {
  fs::create_directories(Path("busy"));
  testing::WriteFileBytes(Path("busy/keep.txt"), "mine");
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(checkpoint_);
  ASSERT_TRUE(reader.ok());
  absl::StatusOr<HfExportStats> s = ExportHfDirectory(**reader, Path("busy"), {}, comm_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("exists and is not empty"));
  EXPECT_EQ(testing::ReadFileBytes(Path("busy/keep.txt")), "mine");
  EXPECT_FALSE(fs::exists(Path("busy.tmp")));

  // An empty directory is fine; a leftover HF_DIR.tmp of a crashed export (it holds fathom's marker) is
  // replaced.
  fs::create_directories(Path("empty"));
  fs::create_directories(Path("empty.tmp"));
  testing::WriteFileBytes(Path("empty.tmp/") + kOwnedMarkerName, "");
  testing::WriteFileBytes(Path("empty.tmp/junk"), "x");
  ASSERT_TRUE(ExportHfDirectory(**reader, Path("empty"), {}, comm_).ok());
  EXPECT_FALSE(fs::exists(Path("empty/junk")));
  EXPECT_FALSE(fs::exists(Path("empty.tmp")));
  EXPECT_FALSE(fs::exists(Path("empty/") + kOwnedMarkerName)) << "a complete export keeps no marker";

  // A symbolic link to an empty directory: the final rename would replace the link; refused, naming it.
  fs::create_directories(Path("target"));
  fs::create_directory_symlink(Path("target"), Path("link"));
  s = ExportHfDirectory(**reader, Path("link"), {}, comm_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("--out " + Path("link") + " is a symbolic link (to " + Path("target") + ")"));
  EXPECT_TRUE(fs::is_symlink(Path("link")) && fs::is_empty(Path("target")));
  EXPECT_FALSE(fs::exists(Path("link.tmp")));

  // An HF_DIR.tmp fathom did not make (a user's directory or file of that name) is refused and kept.
  fs::create_directories(Path("mine.tmp"));
  testing::WriteFileBytes(Path("mine.tmp/mine.txt"), "precious");
  testing::WriteFileBytes(Path("file.tmp"), "precious too");
  for (const char* name : {"mine", "file"}) {
    s = ExportHfDirectory(**reader, Path(name), {}, comm_);
    ASSERT_FALSE(s.ok()) << name;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.status().message()),
                HasSubstr(Path(name) + ".tmp exists and fathom did not make it"));
    EXPECT_FALSE(fs::exists(Path(name)));
  }
  EXPECT_EQ(testing::ReadFileBytes(Path("mine.tmp/mine.txt")), "precious");
  EXPECT_EQ(testing::ReadFileBytes(Path("file.tmp")), "precious too");

  // A NaN weight stops the export with the tensor named, and no directory appears.
  original_.params()
      .value(original_.params().Find("model.layers.2.mlp.experts.{e}.down_proj.weight"))
      .data<float>()[17] = std::nanf("");
  const std::string bad = testing::SaveValues(Path("nan_ckpt"), recipe_, original_.params());
  absl::StatusOr<std::unique_ptr<CheckpointReader>> nan_reader = CheckpointReader::Open(bad);
  ASSERT_TRUE(nan_reader.ok());
  s = ExportHfDirectory(**nan_reader, Path("nan_hf"), {}, comm_);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("model.layers.2.mlp.experts.0.down_proj.weight"));
  EXPECT_FALSE(fs::exists(Path("nan_hf")));
  EXPECT_FALSE(fs::exists(Path("nan_hf.tmp")));
}

TEST(HfExportNoMtp, AModelWithoutMtpRoundTripsAndMtpDepthsMustAgree) {
  const std::string dir = (fs::path(::testing::TempDir()) / "hf_no_mtp").string();
  fs::remove_all(dir);
  Recipe recipe = testing::HfTestRecipe();
  recipe.model.num_nextn_predict_layers = 0;
  Model model(recipe.model, recipe.loss);
  model.Finalize(DType::kF32, 1);
  std::mt19937_64 rng(testing::TestSeed());
  testing::FillRandomValues(model.params(), rng);
  const std::string checkpoint = testing::SaveValues(dir + "/ckpt", recipe, model.params());
  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(checkpoint);
  ASSERT_TRUE(reader.ok());
  LocalCommunicator comm("world");
  HfExportOptions options;
  options.dtype = HfDType::kF32;
  ASSERT_TRUE(ExportHfDirectory(**reader, dir + "/hf", options, comm).ok());
  absl::StatusOr<std::unique_ptr<HfDirectory>> hf = HfDirectory::Open(dir + "/hf");
  ASSERT_TRUE(hf.ok());
  EXPECT_EQ((*hf)->Find("model.layers.3.eh_proj.weight"), nullptr) << "no MTP layer";
  Model loaded(recipe.model, recipe.loss);
  loaded.Finalize(DType::kF32, 2);
  ASSERT_TRUE(LoadHfDirectoryInto(dir + "/hf", recipe.model, loaded.params()).ok());
  const Tensor a = model.params().values(), b = loaded.params().values();
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
  // A recipe with MTP against a directory without: the depth is named, whether config.json states it or
  // not (transformers' own files do not; the depth is then counted among the weights).
  Recipe with_mtp = recipe;
  with_mtp.model.num_nextn_predict_layers = 1;
  for (bool stated : {true, false}) {
    if (!stated) {
      json config = ReadJson(dir + "/hf/config.json");
      config.erase("num_nextn_predict_layers");
      ASSERT_TRUE(WriteFileAtomically(dir + "/hf/config.json", config.dump()).ok());
    }
    Model m(with_mtp.model, with_mtp.loss);
    m.Finalize(DType::kF32, 3);
    absl::Status st = LoadHfDirectoryInto(dir + "/hf", with_mtp.model, m.params());
    EXPECT_THAT(std::string(st.message()), HasSubstr("num_nextn_predict_layers: config.json 0, recipe 1"));
  }
  // transformers' save_pretrained states its default num_nextn_predict_layers 1 but writes no MTP module:
  // such a directory is a model without MTP, with a note, and loads into the recipe without MTP.
  {
    json config = ReadJson(dir + "/hf/config.json");
    config["num_nextn_predict_layers"] = 1;
    ASSERT_TRUE(WriteFileAtomically(dir + "/hf/config.json", config.dump()).ok());
    absl::StatusOr<std::unique_ptr<HfDirectory>> stated = HfDirectory::Open(dir + "/hf");
    ASSERT_TRUE(stated.ok());
    absl::StatusOr<ModelConfig> read = (*stated)->Model();
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->num_nextn_predict_layers, 0);
    EXPECT_THAT((*stated)->MtpNote(), HasSubstr("holds no MTP weights"));
    Model m(recipe.model, recipe.loss);
    m.Finalize(DType::kF32, 4);
    absl::Status st = LoadHfDirectoryInto(dir + "/hf", recipe.model, m.params());
    EXPECT_TRUE(st.ok()) << st;
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace fathom
