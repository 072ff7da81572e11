// Importing HF directories (checkpoint/hf_import.h, hf_directory.h): every bad directory is refused with
// one message naming the file or tensor and nothing written; one model.safetensors and transformers' fused
// expert tensors read as the sharded per-expert layout does; and the golden directories (transformers'
// weights, tests/golden) imported through config.json reproduce transformers' logits within the golden
// tolerance.
#include "checkpoint/hf_import.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/fp8_blocks.h"
#include "checkpoint/hf_directory.h"
#include "checkpoint/hf_export.h"
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

void CopyTree(const std::string& from, const std::string& to) {
  fs::copy(from, to, fs::copy_options::recursive);
}

// Every tensor of the safetensors file of `dir` that holds `tensor`, passed through `edit` and written back.
void RewriteShardOf(const std::string& dir, const std::string& tensor,
                    const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit) {
  const std::string file = ReadJson(dir + "/model.safetensors.index.json")["weight_map"][tensor];
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(dir + "/" + file);
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : f->names()) tensors.emplace_back(name, *f->Get(name));
  edit(tensors);
  ASSERT_TRUE(WriteSafetensors(dir + "/" + file, tensors, f->metadata()).ok());
}

Tensor& Named(std::vector<std::pair<std::string, Tensor>>& tensors, const std::string& name) {
  for (auto& [n, t] : tensors) {
    if (n == name) return t;
  }
  ADD_FAILURE() << "no " << name;
  static Tensor none;
  return none;
}

class HfImportTest : public testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    recipe_ = testing::HfTestRecipe();
    std::mt19937_64 rng(testing::TestSeed());
    const std::string checkpoint = testing::SaveRandomModel(Path("ckpt"), recipe_, rng);
    absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(checkpoint);
    ASSERT_TRUE(reader.ok()) << reader.status();
    LocalCommunicator comm("world");
    for (HfDType dtype : {HfDType::kBF16, HfDType::kFP8}) {
      HfExportOptions options;
      options.dtype = dtype;
      options.shard_bytes = 200'000;
      absl::StatusOr<HfExportStats> s = ExportHfDirectory(**reader, Path(HfDTypeName(dtype)), options, comm);
      ASSERT_TRUE(s.ok()) << s.status();
    }
  }

  // A copy of the bf16 (or fp8) export, broken by `sabotage`, must be refused by an import with a message
  // holding `expect`, leaving no checkpoint directory behind.
  void ExpectRefused(const std::string& expect, const std::function<void(const std::string&)>& sabotage,
                     const std::string& from = "bf16", const Recipe* recipe = nullptr) {
    SCOPED_TRACE(expect);
    const std::string dir = Path("broken");
    fs::remove_all(dir);
    CopyTree(Path(from), dir);
    sabotage(dir);
    const std::string out = Path("out");
    absl::StatusOr<HfImportStats> s = ImportHfDirectory(dir, recipe ? *recipe : recipe_, out);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.status().code(), absl::StatusCode::kInternal) << s.status();
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(expect));
    EXPECT_FALSE(fs::exists(out)) << "an import that failed left " << out;
    // The same verdict from the loader a run's model.init_from uses.
    Model model(recipe_.model, recipe_.loss);
    model.Finalize(DType::kF32, 1);
    absl::Status load = LoadHfDirectoryInto(dir, recipe ? recipe->model : recipe_.model, model.params());
    EXPECT_FALSE(load.ok());
    EXPECT_THAT(std::string(load.message()), HasSubstr(expect));
  }

  Recipe recipe_;
};

TEST_F(HfImportTest, GoodDirectoriesImport) {
  for (const char* dir : {"bf16", "fp8"}) {
    absl::StatusOr<HfImportStats> s = ImportHfDirectory(Path(dir), recipe_, Path(std::string("out_") + dir));
    EXPECT_TRUE(s.ok()) << dir << ": " << s.status();
  }
}

TEST_F(HfImportTest, MissingShard) {
  ExpectRefused("model-00002-of-", [](const std::string& d) {
    for (const auto& e : fs::directory_iterator(d)) {
      if (e.path().filename().string().rfind("model-00002-of-", 0) == 0) fs::remove(e.path());
    }
  });
}

TEST_F(HfImportTest, IndexNamingATensorItsShardLacks) {
  ExpectRefused("maps tensor 'model.layers.0.self_attn.extra.weight' to model-00001-of-",
                [](const std::string& d) {
                  json index = ReadJson(d + "/model.safetensors.index.json");
                  const std::string first = index["weight_map"]["model.embed_tokens.weight"];
                  index["weight_map"]["model.layers.0.self_attn.extra.weight"] = first;
                  testing::WriteFileBytes(d + "/model.safetensors.index.json", index.dump());
                });
}

TEST_F(HfImportTest, MissingTensor) {
  ExpectRefused("'model.layers.2.mlp.experts.1.up_proj.weight' is missing", [](const std::string& d) {
    const std::string name = "model.layers.2.mlp.experts.1.up_proj.weight";
    RewriteShardOf(d, name, [&](auto& tensors) {
      std::erase_if(tensors, [&](const auto& t) { return t.first == name; });
    });
    json index = ReadJson(d + "/model.safetensors.index.json");
    index["weight_map"].erase(name);
    testing::WriteFileBytes(d + "/model.safetensors.index.json", index.dump());
  });
}

TEST_F(HfImportTest, WrongShape) {
  ExpectRefused("'model.layers.1.self_attn.kv_b_proj.weight' has shape (64, 129), expected (64, 130)",
                [](const std::string& d) {
                  const std::string name = "model.layers.1.self_attn.kv_b_proj.weight";
                  RewriteShardOf(d, name, [&](auto& tensors) {
                    Named(tensors, name) = Tensor::Zeros({64, 129}, DType::kBF16);
                  });
                });
}

TEST_F(HfImportTest, DtypeFathomCannotRead) {
  ExpectRefused("'model.norm.weight' has dtype I32, expected F32, BF16, F64 or F8_E4M3",
                [](const std::string& d) {
                  RewriteShardOf(d, "model.norm.weight", [&](auto& tensors) {
                    Named(tensors, "model.norm.weight") = Tensor::Zeros({136}, DType::kI32);
                  });
                });
  // A dtype outside the format: the file's header is refused.
  ExpectRefused("unknown or unsupported dtype 'BF17'", [](const std::string& d) {
    const std::string file = ReadJson(d + "/model.safetensors.index.json")["weight_map"]["model.norm.weight"];
    std::string bytes = testing::ReadFileBytes(d + "/" + file);
    const size_t at = bytes.find("\"BF16\"");
    ASSERT_NE(at, std::string::npos);
    bytes.replace(at, 6, "\"BF17\"");
    testing::WriteFileBytes(d + "/" + file, bytes);
  });
}

TEST_F(HfImportTest, ConfigOfAnotherModelNamesEveryKey) {
  Recipe other = recipe_;
  other.model.rope_theta = 20000;
  other.model.num_attention_heads = 4;
  other.model.v_head_dim = 8;
  ExpectRefused(
      "3 key(s) differ", [](const std::string&) {}, "bf16", &other);
  for (const char* key : {"rope_theta: config.json 10000.0, recipe 20000.0",
                          "num_attention_heads: config.json 2", "v_head_dim: config.json 16, recipe 8"}) {
    ExpectRefused(
        key, [](const std::string&) {}, "bf16", &other);
  }
  ExpectRefused("hidden_act", [](const std::string& d) {
    json config = ReadJson(d + "/config.json");
    config["hidden_act"] = "relu";
    testing::WriteFileBytes(d + "/config.json", config.dump());
  });
}

TEST_F(HfImportTest, NonFiniteScalesAndWeights) {
  const std::string weight = "model.layers.2.self_attn.o_proj.weight";
  ExpectRefused(
      "'" + weight + "_scale_inv' holds inf",
      [&](const std::string& d) {
        RewriteShardOf(d, weight + "_scale_inv", [&](auto& tensors) {
          Named(tensors, weight + "_scale_inv").template data<float>()[0] = INFINITY;
        });
      },
      "fp8");
  ExpectRefused(
      "'" + weight + "' is F8_E4M3 but its scales '" + weight + "_scale_inv' are missing",
      [&](const std::string& d) {
        json index = ReadJson(d + "/model.safetensors.index.json");
        index["weight_map"].erase(weight + "_scale_inv");
        testing::WriteFileBytes(d + "/model.safetensors.index.json", index.dump());
      },
      "fp8");
  ExpectRefused("'model.layers.0.mlp.up_proj.weight' holds nan", [](const std::string& d) {
    RewriteShardOf(d, "model.layers.0.mlp.up_proj.weight", [&](auto& tensors) {
      Named(tensors, "model.layers.0.mlp.up_proj.weight").template data<Bf16>()[99] = Bf16{0x7FC0};
    });
  });
}

// fathom shares the embedding and the head with the MTP module (as DeepSeek-V3 does), so an import reads
// model.embed_tokens / lm_head only: a directory whose MTP copies differ from them is refused, naming the
// copy and the largest difference, rather than losing the copy silently. Equal copies import.
TEST_F(HfImportTest, MtpCopiesThatDifferFromTheSharedTensorsAreRefused) {
  std::vector<HfTensorSpec> copies;
  for (const HfTensorSpec& t : HfModelTensors(recipe_.model)) {
    if (t.mtp_copy) copies.push_back(t);
  }
  ASSERT_EQ(copies.size(), 2u) << "embed_tokens and shared_head.head of the one MTP module";
  for (const HfTensorSpec& copy : copies) {
    SCOPED_TRACE(copy.name);
    const std::string dir = Path("mtp_differs"), out = Path("mtp_out");
    fs::remove_all(dir);
    CopyTree(Path("bf16"), dir);
    double difference = 0;
    RewriteShardOf(dir, copy.name, [&](auto& tensors) {
      Bf16& v = Named(tensors, copy.name).template data<Bf16>()[5];
      const float before = Bf16ToFloat(v);
      v = FloatToBf16(before + 0.5f);
      difference = std::fabs(static_cast<double>(Bf16ToFloat(v)) - static_cast<double>(before));
    });
    ASSERT_GT(difference, 0.4);
    absl::StatusOr<HfImportStats> s = ImportHfDirectory(dir, recipe_, out);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
    EXPECT_THAT(std::string(s.status().message()),
                HasSubstr(copy.name + " differs from " + copy.source + " in 1 of "));
    EXPECT_THAT(std::string(s.status().message()),
                HasSubstr(absl::StrCat("at element 5, the largest difference ", difference, ")")));
    EXPECT_FALSE(fs::exists(out));
    // model.init_from runs the same check before its ranks load their slices.
    absl::Status init = CheckHfMtpCopies(dir, recipe_.model);
    EXPECT_EQ(init.code(), absl::StatusCode::kInvalidArgument) << init;
    EXPECT_THAT(std::string(init.message()), HasSubstr(copy.name + " differs from " + copy.source));
  }
  // The same values stored in another dtype (f32 copies of a bf16 export) are equal copies.
  const std::string dir = Path("mtp_f32");
  CopyTree(Path("bf16"), dir);
  for (const HfTensorSpec& copy : copies) {
    RewriteShardOf(dir, copy.name, [&](auto& tensors) {
      Tensor& t = Named(tensors, copy.name);
      Tensor f32 = Tensor::Empty(t.shape(), DType::kF32);
      for (int64_t i = 0; i < t.numel(); ++i) f32.data<float>()[i] = Bf16ToFloat(t.data<Bf16>()[i]);
      t = f32;
    });
  }
  absl::StatusOr<HfImportStats> s = ImportHfDirectory(dir, recipe_, Path("mtp_f32_out"));
  EXPECT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(CheckHfMtpCopies(dir, recipe_.model).ok());
}

TEST_F(HfImportTest, MissingOrBrokenFiles) {
  ExpectRefused("config.json is missing", [](const std::string& d) { fs::remove(d + "/config.json"); });
  ExpectRefused("has neither model.safetensors.index.json nor model.safetensors", [](const std::string& d) {
    for (const auto& e : fs::directory_iterator(d)) {
      if (e.path().filename() != "config.json") fs::remove(e.path());
    }
  });
  ExpectRefused("model.safetensors.index.json is not valid JSON", [](const std::string& d) {
    testing::WriteFileBytes(d + "/model.safetensors.index.json", "{\"weight_map\": ");
  });
  ExpectRefused("out of range: the data section has", [](const std::string& d) {
    const std::string file = ReadJson(d + "/model.safetensors.index.json")["weight_map"]["lm_head.weight"];
    fs::resize_file(d + "/" + file, fs::file_size(d + "/" + file) - 10);
  });
  ExpectRefused("HF directory " + Path("broken") + " does not exist",
                [](const std::string& d) { fs::remove_all(d); });
}

TEST_F(HfImportTest, OneFileAndFusedExpertsReadAsTheShardedLayout) {
  // Every tensor of the bf16 export in one model.safetensors; the routed experts of layer 1 fused as
  // transformers holds them: gate_up_proj (E, 2I, H), down_proj (E, H, I).
  absl::StatusOr<std::unique_ptr<HfDirectory>> sharded = HfDirectory::Open(Path("bf16"));
  ASSERT_TRUE(sharded.ok());
  std::vector<std::pair<std::string, Tensor>> all;
  const int64_t experts = 4, inter = 72, hidden = 136;
  Tensor gate_up = Tensor::Empty({experts, 2 * inter, hidden}, DType::kF32);
  Tensor down = Tensor::Empty({experts, hidden, inter}, DType::kF32);
  for (const HfTensorSpec& t : HfModelTensors(recipe_.model)) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    Tensor v = Tensor::Empty(t.shape, DType::kF32);
    ASSERT_TRUE((*sharded)->Read(t.name, 0, n, v.Reshape({n})).ok());
    const std::string prefix = "model.layers.1.mlp.experts.";
    if (t.name.rfind(prefix, 0) == 0) {
      const int64_t e = std::stoll(t.name.substr(prefix.size()));
      const bool is_up = t.name.find("up_proj") != std::string::npos;
      const bool is_down = t.name.find("down_proj") != std::string::npos;
      float* dst = is_down ? down.data<float>() + e * hidden * inter
                           : gate_up.data<float>() + e * 2 * inter * hidden + (is_up ? inter * hidden : 0);
      std::memcpy(dst, v.raw(), v.nbytes());
      continue;
    }
    all.emplace_back(t.name, v);
  }
  all.emplace_back("model.layers.1.mlp.experts.gate_up_proj", gate_up);
  all.emplace_back("model.layers.1.mlp.experts.down_proj", down);
  testing::WriteHfDirectory(Path("one"), ReadJson(Path("bf16/config.json")), {all}, /*single_file=*/true);

  Model a(recipe_.model, recipe_.loss), b(recipe_.model, recipe_.loss);
  a.Finalize(DType::kF32, 1);
  b.Finalize(DType::kF32, 2);
  ASSERT_TRUE(LoadHfDirectoryInto(Path("bf16"), recipe_.model, a.params()).ok());
  absl::Status s = LoadHfDirectoryInto(Path("one"), recipe_.model, b.params());
  ASSERT_TRUE(s.ok()) << s;
  const Tensor va = a.params().values(), vb = b.params().values();
  EXPECT_EQ(std::memcmp(va.raw(), vb.raw(), va.nbytes()), 0);
}

// tests/golden's transformers weights as an HF directory (their config.json written by fathom from the
// golden recipe), loaded and run: transformers' logits within the golden test's tolerance (f32: 1e-5
// relative L2, tests/model/golden_test.cc).
TEST(HfGoldenImport, ReproducesTransformersLogits) {
  int ran = 0;
  for (const char* config : {"yarn_nolora", "lora_groups", "moe_all_odd", "dense2_eps"}) {
    const std::string golden = std::string(FATHOM_SOURCE_DIR) + "/tests/golden/" + config;
    if (!fs::exists(golden + "/golden.safetensors")) continue;
    SCOPED_TRACE(config);
    absl::StatusOr<Recipe> recipe = LoadRecipe(golden + "/recipe.yaml");
    ASSERT_TRUE(recipe.ok()) << recipe.status();
    const std::string dir = (fs::path(::testing::TempDir()) / ("hf_golden_" + std::string(config))).string();
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::copy_file(golden + "/model.safetensors", dir + "/model.safetensors");
    ASSERT_TRUE(
        WriteFileAtomically(dir + "/config.json", HfConfigJson(recipe->model, HfDType::kF32, {}).dump())
            .ok());
    Model model(recipe->model, recipe->loss);
    model.Finalize(DType::kF32, 1);
    absl::Status s = LoadHfDirectoryInto(dir, recipe->model, model.params());
    ASSERT_TRUE(s.ok()) << s;
    absl::StatusOr<SafetensorsFile> ref = SafetensorsFile::Open(golden + "/golden.safetensors");
    ASSERT_TRUE(ref.ok());
    MicroBatch batch{ref->Get("input_ids")->To(DType::kI32), ref->Get("labels")->To(DType::kI32)};
    model.head().set_keep_logits(true);
    model.Forward(0, batch, model.Normalizers({batch}, 1));
    const Tensor ours = model.head().logits(0);
    const Tensor want = *ref->Get("logits");
    ASSERT_EQ(ours.numel(), want.numel());
    double d2 = 0, r2 = 0;
    for (int64_t i = 0; i < want.numel(); ++i) {
      d2 += (ours.Item(i) - want.Item(i)) * (ours.Item(i) - want.Item(i));
      r2 += want.Item(i) * want.Item(i);
    }
    EXPECT_LE(std::sqrt(d2 / r2), 1e-5);
    std::printf("golden %s imported from an HF directory: logits rel L2 %.2e\n", config, std::sqrt(d2 / r2));
    fs::remove_all(dir);
    ++ran;
  }
  if (ran == 0) GTEST_SKIP() << "no golden files: run tests/golden/make_golden.py on the GPU machine";
}

}  // namespace
}  // namespace fathom
