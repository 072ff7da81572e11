// fathom export / import / logits from a shell: a checkpoint exported, imported and run gives the same
// logits as the checkpoint itself; bad input gets one message, exit 2 and nothing written; an export on
// three MPI ranks writes the same bytes as on one.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/safetensors.h"
#include "tests/checkpoint/checkpoint_test_support.h"
#include "tests/checkpoint/hf_test_support.h"
#include "tests/common/gradcheck.h"
#include "tests/launch/run_fathom.h"

namespace fathom {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::RunFathom;
using testing::RunResult;

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Every regular file under `dir` (relative name -> bytes).
std::map<std::string, std::string> Files(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file())
      out[fs::relative(e.path(), dir).string()] = testing::ReadFileBytes(e.path().string());
  }
  return out;
}

class HfCliTest : public testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    recipe_ = testing::HfTestRecipe();
    std::mt19937_64 rng(testing::TestSeed());
    // Values of the size a trained model has, so that logits stay moderate.
    checkpoint_ = testing::SaveRandomModel(Path("ckpt"), recipe_, rng, [](ParamTable& params) {
      for (int id = 0; id < params.size(); ++id) {
        Tensor v = params.value(id);
        const bool norm = params.spec(id).name.find("norm") != std::string::npos;
        for (int64_t i = 0; i < v.numel(); ++i)
          v.data<float>()[i] = norm ? 1 + 0.1f * v.data<float>()[i] : 0.05f * v.data<float>()[i];
      }
    });
    Tensor ids = Tensor::Empty({2, 9}, DType::kI64);
    for (int64_t i = 0; i < ids.numel(); ++i) ids.data<int64_t>()[i] = static_cast<int64_t>(rng() % 160);
    ASSERT_TRUE(WriteSafetensors(Path("tokens.safetensors"), {{"input_ids", ids}}).ok());
  }

  std::string Logits(const std::string& source, const std::string& out) {
    RunResult r = RunFathom("logits " + source + " --tokens " + Path("tokens.safetensors") + " --out " + out);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return testing::ReadFileBytes(out);
  }

  Recipe recipe_;
  std::string checkpoint_;
};

TEST_F(HfCliTest, HelpForEveryCommand) {
  for (const char* cmd : {"export", "import", "logits"}) {
    RunResult r = RunFathom(std::string(cmd) + " --help");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_THAT(r.output, HasSubstr(std::string("usage: fathom ") + cmd));
  }
}

TEST_F(HfCliTest, ExportImportAndTheSameLogits) {
  RunResult e =
      RunFathom("export " + Path("ckpt") + " --out " + Path("hf") + " --dtype f32 --shard-size 300kB");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_THAT(e.output, HasSubstr("GB/s written"));
  EXPECT_THAT(e.output, HasSubstr("byte tokenizer"));
  EXPECT_TRUE(fs::exists(Path("hf/model.safetensors.index.json"))) << e.output;
  EXPECT_GE(Files(Path("hf")).size(), 5u) << "config, generation config, index and at least two shards";
  RunResult i = RunFathom("import " + Path("hf") + " --out " + Path("imported"));
  ASSERT_EQ(i.exit_code, 0) << i.output;
  EXPECT_TRUE(fs::exists(Path("imported/step_00000000/index.json")));
  // The checkpoint, the f32 directory made from it and the checkpoint imported from that hold the same
  // weights: the same logits, bit for bit.
  const std::string a = Logits(checkpoint_, Path("a.safetensors"));
  const std::string b = Logits(Path("hf"), Path("b.safetensors"));
  const std::string c = Logits(Path("imported"), Path("c.safetensors"));
  absl::StatusOr<SafetensorsFile> fa = SafetensorsFile::Open(Path("a.safetensors"));
  absl::StatusOr<SafetensorsFile> fb = SafetensorsFile::Open(Path("b.safetensors"));
  absl::StatusOr<SafetensorsFile> fc = SafetensorsFile::Open(Path("c.safetensors"));
  ASSERT_TRUE(fa.ok() && fb.ok() && fc.ok());
  const Tensor la = *fa->Get("logits"), lb = *fb->Get("logits"), lc = *fc->Get("logits");
  EXPECT_EQ(la.shape(), (Shape{2, 9, 160}));
  ASSERT_EQ(la.nbytes(), lb.nbytes());
  EXPECT_EQ(std::memcmp(la.raw(), lb.raw(), la.nbytes()), 0);
  EXPECT_EQ(std::memcmp(la.raw(), lc.raw(), la.nbytes()), 0);
  double sum = 0;
  for (int64_t k = 0; k < la.numel(); ++k) sum += std::fabs(la.Item(k));
  EXPECT_GT(sum, 0);
}

TEST_F(HfCliTest, BadExportsGetOneMessageExitTwoAndWriteNothing) {
  fs::create_directories(Path("busy"));
  testing::WriteFileBytes(Path("busy/keep"), "x");
  struct Case {
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {"export " + Path("ckpt") + " --out " + Path("busy"), "exists and is not empty"},
      {"export " + Path("nothing") + " --out " + Path("hf"), "is not a checkpoint"},
      {"export " + Path("ckpt") + " --out " + Path("hf") + " --dtype fp16",
       "--dtype must be bf16, fp8 or f32"},
      {"export " + Path("ckpt") + " --out " + Path("hf") + " --shard-size lots", "--shard-size 'lots'"},
      {"export " + Path("ckpt") + " --out " + Path("hf") + " --tokenizer-dir " + Path("busy"),
       "holds none of tokenizer.json"},
      {"export " + Path("ckpt"), "--out HF_DIR is required"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    RunResult r = RunFathom(c.args);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_EQ(Count(r.output, "fathom export:"), 1u) << r.output;
    EXPECT_THAT(r.output, HasSubstr(c.expect));
    EXPECT_FALSE(fs::exists(Path("hf")));
    EXPECT_FALSE(fs::exists(Path("hf.tmp")));
  }
  EXPECT_EQ(testing::ReadFileBytes(Path("busy/keep")), "x");
}

// An export writes into HF_DIR.tmp: a directory or file of that name that a fathom export did not make is
// refused (exit 2, naming it) and left as it was; the leftover of a killed export (it holds the marker) is
// removed and the export succeeds.
TEST_F(HfCliTest, ExportRemovesOnlyTheTemporaryDirectoryItMade) {
  fs::create_directories(Path("hf.tmp"));
  testing::WriteFileBytes(Path("hf.tmp/mine.txt"), "precious");
  testing::WriteFileBytes(Path("file.tmp"), "precious too");
  for (const char* out : {"hf", "file"}) {
    SCOPED_TRACE(out);
    RunResult r = RunFathom("export " + Path("ckpt") + " --out " + Path(out));
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_EQ(Count(r.output, "fathom export:"), 1u) << r.output;
    EXPECT_THAT(r.output, HasSubstr(Path(out) + ".tmp exists and fathom did not make it"));
    EXPECT_THAT(r.output, HasSubstr("move it elsewhere"));
    EXPECT_FALSE(fs::exists(Path(out)));
  }
  EXPECT_EQ(testing::ReadFileBytes(Path("hf.tmp/mine.txt")), "precious");
  EXPECT_EQ(testing::ReadFileBytes(Path("file.tmp")), "precious too");
  // What a killed export leaves: its marked temporary with a partial shard.
  fs::create_directories(Path("killed.tmp"));
  testing::WriteFileBytes(Path("killed.tmp/") + kOwnedMarkerName, "");
  testing::WriteFileBytes(Path("killed.tmp/model-00001-of-00001.safetensors"), "partial");
  RunResult r = RunFathom("export " + Path("ckpt") + " --out " + Path("killed"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(Path("killed.tmp")));
  EXPECT_TRUE(fs::exists(Path("killed/model.safetensors.index.json")));
  EXPECT_FALSE(fs::exists(Path("killed/") + kOwnedMarkerName));
}

TEST_F(HfCliTest, BadImportsGetOneMessageExitTwoAndWriteNothing) {
  ASSERT_EQ(RunFathom("export " + Path("ckpt") + " --out " + Path("hf") + " --shard-size 300kB").exit_code,
            0);
  fs::copy(Path("hf"), Path("no_shard"), fs::copy_options::recursive);
  std::string second;  // model-00002-of-0000N.safetensors
  for (const auto& [name, bytes] : Files(Path("hf"))) {
    if (name.rfind("model-00002-of-", 0) == 0) second = name;
  }
  ASSERT_FALSE(second.empty());
  fs::remove(Path("no_shard/" + second));
  // A recipe for another model: two keys differ.
  Recipe other = recipe_;
  other.model.qk_rope_head_dim = 4;
  other.model.rms_norm_eps = 1e-5;
  testing::WriteFileBytes(Path("other.yaml"), ResolvedRecipeYaml(other));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"import " + Path("no_shard") + " --out " + Path("out"), second + ", which is missing"},
      {"import " + Path("hf") + " --out " + Path("out") + " --recipe " + Path("other.yaml"),
       "2 key(s) differ"},
      {"import " + Path("hf") + " --out " + Path("out") + " --recipe " + Path("other.yaml"),
       "qk_rope_head_dim: config.json 8, recipe 4"},
      {"import " + Path("hf") + " --out " + Path("ckpt"), "already holds 1 checkpoint(s)"},
      {"import " + Path("missing") + " --out " + Path("out"), "does not exist"},
      {"import " + Path("hf") + " --out " + Path("out") + " --set model.hidden_size=64", "hidden_size"},
  };
  for (const auto& [args, expect] : cases) {
    SCOPED_TRACE(args);
    RunResult r = RunFathom(args);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_EQ(Count(r.output, "fathom import:"), 1u) << r.output;
    EXPECT_THAT(r.output, HasSubstr(expect));
    EXPECT_FALSE(fs::exists(Path("out")));
  }
  EXPECT_EQ(Files(Path("ckpt")).size(), 2u) << "the existing checkpoint untouched (index + one rank file)";
}

TEST_F(HfCliTest, ExportOnThreeRanksWritesTheSameBytesAsOnOne) {
  RunResult one =
      RunFathom("export " + Path("ckpt") + " --out " + Path("one") + " --dtype fp8 --shard-size 200kB");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  RunResult three = testing::RunShell(
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 mpirun --oversubscribe -np 3 " +
      std::string(FATHOM_BINARY) + " export " + Path("ckpt") + " --out " + Path("three") +
      " --dtype fp8 --shard-size 200kB");
  ASSERT_EQ(three.exit_code, 0) << three.output;
  EXPECT_THAT(three.output, HasSubstr("3 rank(s)"));
  EXPECT_EQ(Count(three.output, "exported "), 1u) << three.output;
  const auto a = Files(Path("one")), b = Files(Path("three"));
  EXPECT_GE(a.size(), 6u);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, bytes] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(b.at(name) == bytes) << name << " differs";
  }
}

// The whole path a user takes: train, export, import, train on from the import.
TEST_F(HfCliTest, TrainExportImportAndTrainOn) {
  const std::string tiny = std::string(FATHOM_SOURCE_DIR) + "/recipes/tiny.yaml";
  RunResult t =
      RunFathom("train " + tiny +
                " --set train.steps=2 --set checkpoint.save_every=2 --set checkpoint.dir=" + Path("run"));
  ASSERT_EQ(t.exit_code, 0) << t.output;
  RunResult e = RunFathom("export " + Path("run") + " --out " + Path("hf") + " --dtype f32");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_THAT(e.output, HasSubstr("(step 2)"));
  // fathom's forward on the trained checkpoint and on its export: the same logits, bit for bit.
  Tensor ids = Tensor::Empty({1, 12}, DType::kI32);
  for (int64_t i = 0; i < 12; ++i) ids.data<int32_t>()[i] = static_cast<int32_t>(i * 19 % 256);
  ASSERT_TRUE(WriteSafetensors(Path("tokens.safetensors"), {{"input_ids", ids}}).ok());
  Logits(Path("run"), Path("a.safetensors"));
  Logits(Path("hf"), Path("b.safetensors"));
  absl::StatusOr<SafetensorsFile> a = SafetensorsFile::Open(Path("a.safetensors"));
  absl::StatusOr<SafetensorsFile> b = SafetensorsFile::Open(Path("b.safetensors"));
  ASSERT_TRUE(a.ok() && b.ok());
  const Tensor la = *a->Get("logits"), lb = *b->Get("logits");
  ASSERT_EQ(la.shape(), lb.shape());
  EXPECT_EQ(std::memcmp(la.raw(), lb.raw(), la.nbytes()), 0);

  RunResult i = RunFathom("import " + Path("hf") + " --out " + Path("imported") + " --recipe " + tiny);
  ASSERT_EQ(i.exit_code, 0) << i.output;
  RunResult on = RunFathom("train " + tiny + " --set train.steps=3 --set checkpoint.dir=" + Path("imported"));
  ASSERT_EQ(on.exit_code, 0) << on.output;
  EXPECT_THAT(on.output,
              HasSubstr("resumed from " + Path("imported") + "/step_00000000: step 0 (weights only"));
  EXPECT_THAT(on.output, HasSubstr("step     3/3"));

  // model.init_from reads the HF directory directly: the same weights, so the same first three steps as
  // training on from its import (both start AdamW and the data fresh).
  RunResult init = RunFathom("train " + tiny + " --set train.steps=3 --set model.init_from=" + Path("hf"));
  ASSERT_EQ(init.exit_code, 0) << init.output;
  EXPECT_THAT(init.output, HasSubstr("initialised from " + Path("hf")));
  for (const char* step : {"step     1/3", "step     3/3"}) {
    auto losses = [&](const std::string& out) {
      const size_t at = out.find(step);
      const size_t lr = out.find("| lr", at);
      return at == std::string::npos || lr == std::string::npos ? std::string("missing")
                                                                : out.substr(at, lr - at);
    };
    EXPECT_EQ(losses(init.output), losses(on.output)) << init.output << on.output;
    EXPECT_NE(losses(init.output), "missing");
  }
  RunResult bad = RunFathom("train " + tiny + " --set model.init_from=" + Path("missing_dir"));
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_THAT(bad.output, HasSubstr("model.init_from"));
  // A fathom checkpoint given to model.init_from: the message names the key that takes it.
  bad = RunFathom("train " + tiny + " --set model.init_from=" + Path("imported") + "/step_00000000");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_THAT(bad.output, HasSubstr("is a fathom checkpoint: resume from it with checkpoint.resume: "));
  bad = RunFathom("train " + tiny + " --set model.init_from=" + Path("imported"));
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_THAT(bad.output,
              HasSubstr("holds fathom checkpoints: resume from its newest with checkpoint.dir: "));
}

}  // namespace
}  // namespace fathom
