#include "checkpoint/hf_params.h"

#include <stdlib.h>

#include <filesystem>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kV = 11, kH = 6, kI = 4, kE = 8;
const char* const kEmbed = "model.embed_tokens.weight";
const char* const kGate = "model.layers.1.mlp.experts.{e}.gate_proj.weight";
const char* const kBias = "model.layers.1.mlp.gate.e_score_correction_bias";

std::string Expert(int e) { return "model.layers.1.mlp.experts." + std::to_string(e) + ".gate_proj.weight"; }

// A table like one expert-parallel rank's: the embedding, experts [expert_begin, expert_begin + e_local)
// of one MoE layer stacked in one spec, and the (non-trainable) expert bias.
void AddSpecs(ParamTable& table, int expert_begin, int64_t e_local) {
  table.Add({.name = kEmbed, .shape = {kV, kH}});
  table.Add({.name = kGate,
             .shape = {e_local, kI, kH},
             .group = ParamGroup::kExpert,
             .layer = 1,
             .expert_begin = expert_begin});
  table.Add({.name = kBias,
             .shape = {kE},
             .init = ParamInit::kZeros,
             .trainable = false,
             .weight_decay = false,
             .layer = 1});
}

class HfParamsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "hf_params_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    seed_ = testing::TestSeed();
    rng_.seed(seed_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  SafetensorsFile WriteAndOpen(const std::string& name,
                               const std::vector<std::pair<std::string, Tensor>>& t) {
    const std::string path = Path(name);
    absl::Status s = WriteSafetensors(path, t);
    EXPECT_TRUE(s.ok()) << s;
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
    EXPECT_TRUE(f.ok()) << f.status();
    return *f;
  }

  std::string dir_;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

void ExpectEqualTensors(const Tensor& a, const Tensor& b, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(a.shape(), b.shape());
  for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.Item(i), b.Item(i)) << "element " << i;
}

TEST(ExpandHfNamesTest, StackedSpecsExpandToGlobalExpertIds) {
  ParamSpec stacked{.name = "model.layers.3.mlp.experts.{e}.down_proj.weight",
                    .shape = {3, 8, 4},
                    .group = ParamGroup::kExpert,
                    .expert_begin = 5};
  EXPECT_THAT(ExpandHfNames(stacked), ElementsAre("model.layers.3.mlp.experts.5.down_proj.weight",
                                                  "model.layers.3.mlp.experts.6.down_proj.weight",
                                                  "model.layers.3.mlp.experts.7.down_proj.weight"));
  ParamSpec plain{.name = "model.norm.weight", .shape = {8}};
  EXPECT_THAT(ExpandHfNames(plain), ElementsAre("model.norm.weight"));
}

TEST_F(HfParamsTest, CollectWriteLoadRoundTripsValuesAndGradients) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  ParamTable src;
  AddSpecs(src, /*expert_begin=*/2, /*e_local=*/3);
  src.Finalize(DType::kF64);
  testing::FillRandom(src.values(), rng_);
  testing::FillRandom(src.grads(), rng_);

  std::vector<std::pair<std::string, Tensor>> values = CollectHfTensors(src, /*grads=*/false);
  std::vector<std::string> names;
  for (const auto& [n, t] : values) names.push_back(n);
  EXPECT_THAT(names, ElementsAre(kEmbed, Expert(2), Expert(3), Expert(4), kBias));
  EXPECT_EQ(values[2].second.shape(), (Shape{kI, kH}));

  std::vector<std::pair<std::string, Tensor>> grads = CollectHfTensors(src, /*grads=*/true, "grad.");
  names.clear();
  for (const auto& [n, t] : grads) names.push_back(n);
  // The expert bias is not trained: it has no gradient.
  EXPECT_THAT(names, ElementsAre(std::string("grad.") + kEmbed, "grad." + Expert(2), "grad." + Expert(3),
                                 "grad." + Expert(4)));

  std::vector<std::pair<std::string, Tensor>> all = values;
  all.insert(all.end(), grads.begin(), grads.end());
  SafetensorsFile f = WriteAndOpen("params.safetensors", all);

  ParamTable dst;
  AddSpecs(dst, 2, 3);
  dst.Finalize(DType::kF64);
  absl::Status s = LoadHfTensors(f, dst);
  ASSERT_TRUE(s.ok()) << s;
  s = LoadHfTensorsInto(f, dst, "grad.", /*use_grads_buffer=*/true);
  ASSERT_TRUE(s.ok()) << s;
  for (int id = 0; id < src.size(); ++id) {
    ExpectEqualTensors(dst.value(id), src.value(id), "value " + src.spec(id).name);
    if (src.spec(id).trainable) ExpectEqualTensors(dst.grad(id), src.grad(id), "grad " + src.spec(id).name);
  }
  EXPECT_EQ(dst.grad(dst.Find(kBias)).Item(0), 0.0);
}

TEST_F(HfParamsTest, LoadsThisRanksExpertsAndConvertsDtypes) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  // A full checkpoint: 8 experts in f64, the embedding in bf16, the bias in f32.
  std::vector<std::pair<std::string, Tensor>> file_tensors;
  std::vector<Tensor> experts;
  for (int e = 0; e < kE; ++e) {
    experts.push_back(testing::RandomTensor({kI, kH}, DType::kF64, rng_));
    file_tensors.emplace_back(Expert(e), experts.back());
  }
  Tensor embed = testing::RandomTensor({kV, kH}, DType::kF32, rng_).To(DType::kBF16);
  Tensor bias = testing::RandomTensor({kE}, DType::kF32, rng_);
  file_tensors.emplace_back(kEmbed, embed);
  file_tensors.emplace_back(kBias, bias);
  SafetensorsFile f = WriteAndOpen("full.safetensors", file_tensors);

  ParamTable table;
  AddSpecs(table, /*expert_begin=*/4, /*e_local=*/2);
  table.Finalize(DType::kF32);
  absl::Status s = LoadHfTensors(f, table);
  ASSERT_TRUE(s.ok()) << s;
  Tensor stacked = table.value(table.Find(kGate));
  for (int i = 0; i < 2; ++i) {
    ExpectEqualTensors(stacked.Rows(i, i + 1).Reshape({kI, kH}), experts[4 + i].To(DType::kF32),
                       "expert " + std::to_string(4 + i));
  }
  ExpectEqualTensors(table.value(table.Find(kEmbed)), embed.To(DType::kF32), "bf16 embedding");
  ExpectEqualTensors(table.value(table.Find(kBias)), bias, "bias");
}

TEST_F(HfParamsTest, MissingAndMisshapedTensorsAreNamedAndNothingIsLoaded) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  // Expert 3 is missing, the embedding has the wrong shape, expert 2 is fine.
  SafetensorsFile f =
      WriteAndOpen("broken.safetensors", {{kEmbed, testing::RandomTensor({kV + 1, kH}, DType::kF32, rng_)},
                                          {Expert(2), testing::RandomTensor({kI, kH}, DType::kF32, rng_)},
                                          {Expert(4), testing::RandomTensor({kI, kH}, DType::kF32, rng_)},
                                          {kBias, testing::RandomTensor({kE}, DType::kF32, rng_)}});
  ParamTable table;
  AddSpecs(table, 2, 3);
  table.Finalize(DType::kF32);
  testing::FillRandom(table.values(), rng_);
  Tensor before = table.values().Clone();

  absl::Status s = LoadHfTensors(f, table);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(s.message());
  EXPECT_THAT(msg, HasSubstr(f.path()));
  EXPECT_THAT(msg, HasSubstr("'" + Expert(3) + "' is missing"));
  EXPECT_THAT(msg, HasSubstr(std::string("'") + kEmbed + "' has shape (12, 6), expected (11, 6)"));
  EXPECT_THAT(msg, Not(HasSubstr(Expert(2))));
  ExpectEqualTensors(table.values(), before, "table untouched after a failed load");

  // With allow_missing only the misshaped embedding is an error.
  s = LoadHfTensors(f, table, "", /*allow_missing=*/true);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), Not(HasSubstr("missing")));
  EXPECT_THAT(std::string(s.message()), HasSubstr(kEmbed));

  // Gradients must all be present: none are in this file.
  s = LoadHfTensorsInto(f, table, "grad.", /*use_grads_buffer=*/true);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("'grad." + Expert(4) + "' is missing"));
  EXPECT_THAT(std::string(s.message()), Not(HasSubstr("grad." + std::string(kBias))));
}

TEST_F(HfParamsTest, AllowMissingLoadsWhatIsThereAndKeepsTheRest) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  Tensor embed = testing::RandomTensor({kV, kH}, DType::kF32, rng_);
  SafetensorsFile f = WriteAndOpen("partial.safetensors", {{kEmbed, embed}});
  ParamTable table;
  AddSpecs(table, 0, 2);
  table.Finalize(DType::kF32);
  testing::FillRandom(table.values(), rng_);
  Tensor experts_before = table.value(table.Find(kGate)).Clone();
  ASSERT_TRUE(LoadHfTensors(f, table, "", /*allow_missing=*/true).ok());
  ExpectEqualTensors(table.value(table.Find(kEmbed)), embed, "embedding loaded");
  ExpectEqualTensors(table.value(table.Find(kGate)), experts_before, "experts kept");
  EXPECT_FALSE(LoadHfTensors(f, table).ok());
}

TEST_F(HfParamsTest, RefusesDtypesThatNeedScales) {
  SafetensorsFile f = WriteAndOpen(
      "fp8.safetensors", {{kEmbed, testing::RandomTensor({kV, kH}, DType::kF32, rng_).To(DType::kF8E4M3)}});
  ParamTable table;
  table.Add({.name = kEmbed, .shape = {kV, kH}});
  table.Finalize(DType::kF32);
  absl::Status s = LoadHfTensors(f, table);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr(std::string("'") + kEmbed + "' has dtype F8_E4M3"));
}

}  // namespace
}  // namespace fathom
