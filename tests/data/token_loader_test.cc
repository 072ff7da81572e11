// The trainer's data interface: demo and synthetic draw exactly the windows they always did; megatron and
// hdf5 give the documented packed stream, the same stream for every data-parallel splitting of a global
// batch, disjoint samples across ranks, blends by Megatron's rule, resumable states whose fingerprint
// guards against changed data, and every bad-data case rejected at open with the file or key named.
#include "data/token_loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <set>

#include "data/blend.h"
#include "data/demo_corpus.h"
#include "data/sampler.h"
#include "data/tokenizer.h"
#include "tests/common/gradcheck.h"
#include "tests/data/data_test_support.h"

namespace fathom {
namespace {

using ::testing::AllOf;
using testing::Documents;
using ::testing::HasSubstr;
using testing::MakeRecipe;
using testing::ScratchDir;
using testing::TestSeed;

struct Batch {
  std::vector<int32_t> input, labels;
};

Batch FillRange(TokenLoader& loader, int64_t step, int64_t first, int64_t count) {
  Batch b{std::vector<int32_t>(static_cast<size_t>(count * loader.seq_len())),
          std::vector<int32_t>(static_cast<size_t>(count * loader.seq_len()))};
  absl::Status s = loader.Fill(step, first, count, b.input.data(), b.labels.data());
  EXPECT_TRUE(s.ok()) << s;
  return b;
}

std::unique_ptr<TokenLoader> Open(const Recipe& recipe, DataSplit split, int64_t global_batch) {
  absl::StatusOr<std::unique_ptr<TokenLoader>> l = OpenTokenLoader(recipe, split, global_batch);
  EXPECT_TRUE(l.ok()) << l.status();
  return l.ok() ? *std::move(l) : nullptr;
}

std::string OpenError(const Recipe& recipe, DataSplit split = DataSplit::kTrain) {
  absl::StatusOr<std::unique_ptr<TokenLoader>> l = OpenTokenLoader(recipe, split, 4);
  EXPECT_FALSE(l.ok()) << "opened";
  if (l.ok()) return "";
  EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument) << l.status();
  return std::string(l.status().message());
}

// Documents whose tokens say which dataset they came from: dataset k uses ids [k * 50, k * 50 + 49] (the
// EOD, 255, is outside every range).
Documents DatasetDocuments(std::mt19937_64& rng, int k, int n) {
  return testing::RandomDocuments(rng, n, 1, 90, k * 50, k * 50 + 49);
}

TEST(TokenLoaderTest, DemoAndSyntheticDrawTheWindowsTheTrainerAlwaysDrew) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t train_seed = static_cast<int64_t>(rng() >> 1);
  const Recipe demo = MakeRecipe({"train.seed=" + std::to_string(train_seed), "train.seq_len=32"});
  const Recipe synthetic =
      MakeRecipe({"train.seed=" + std::to_string(train_seed), "train.seq_len=32", "data.source=synthetic"});
  const std::vector<int32_t> corpus = EncodeBytes(DemoCorpus());
  const std::vector<int32_t> stream = SyntheticTokens(1 << 20, synthetic.model.vocab_size, train_seed);
  for (const auto& [recipe, tokens] : {std::pair{&demo, &corpus}, std::pair{&synthetic, &stream}}) {
    SCOPED_TRACE(recipe->data.source);
    auto loader = Open(*recipe, DataSplit::kTrain, 8);
    auto sampler = SequenceSampler::Create(tokens, 32, train_seed);
    ASSERT_TRUE(sampler.ok());
    for (int64_t step : {0, 1, 17}) {
      const Batch got = FillRange(*loader, step, 3, 4);
      std::vector<int32_t> in(32 * 4), lab(32 * 4);
      sampler->SampleBatch(step, 3, 4, in.data(), lab.data());
      EXPECT_EQ(got.input, in);
      EXPECT_EQ(got.labels, lab);
    }
  }
  EXPECT_THAT(OpenError(demo, DataSplit::kValid), AllOf(HasSubstr("data.source demo has no valid split"),
                                                        HasSubstr("fathom preprocess --demo-corpus")));
}

// The loader's samples are the packed split's windows (one dataset: global sample g is window g).
TEST(TokenLoaderTest, MegatronSamplesAreThePackedWindows) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ScratchDir dir;
  const Documents docs = DatasetDocuments(rng, 0, 60);
  testing::WriteMegatron(dir / "a", docs);
  const Recipe recipe = MakeRecipe({"data.source=megatron", "data.path=" + dir / "a", "train.seq_len=16",
                                    "data.eod_token_id=255", "data.split=90,10,0"});
  auto loader = Open(recipe, DataSplit::kTrain, 4);
  // The same packing, built directly: documents [0, 54) of 60 (Megatron's 90/10 split).
  auto ds = IndexedDataset::Open(dir / "a", 256);
  ASSERT_TRUE(ds.ok());
  const std::array<int64_t, 4> b = SplitBoundaries({0.9, 0.1, 0.0}, 60);
  ASSERT_EQ(b[1], 54);
  // The loader seeds dataset 0's train split with this; any other seed would fail the comparison.
  const uint64_t part_seed = SplitMix64(SplitMix64(SplitMix64(recipe.train.seed) ^ 0) ^ 1);
  auto split = PackedSplit::Create(ds->get(), 0, 54, 16, 255, part_seed, "a");
  ASSERT_TRUE(split.ok());
  const int64_t steps = 3 * (*split)->samples_per_epoch() / 4 + 2;  // three epochs and a bit
  for (int64_t step = 0; step < steps; ++step) {
    const Batch got = FillRange(*loader, step, 0, 4);
    for (int64_t i = 0; i < 4; ++i) {
      std::vector<int32_t> w(17);
      ASSERT_TRUE((*split)->Window(step * 4 + i, w.data()).ok());
      const size_t at = static_cast<size_t>(i * 16);
      ASSERT_EQ(std::vector<int32_t>(got.input.begin() + at, got.input.begin() + at + 16),
                std::vector<int32_t>(w.begin(), w.end() - 1));
      ASSERT_EQ(std::vector<int32_t>(got.labels.begin() + at, got.labels.begin() + at + 16),
                std::vector<int32_t>(w.begin() + 1, w.end()));
    }
  }
  // The valid split draws only from documents [54, 60).
  auto valid = Open(recipe, DataSplit::kValid, 4);
  std::set<int32_t> valid_tokens{255}, seen;
  for (size_t d = 54; d < 60; ++d) valid_tokens.insert(docs[d].begin(), docs[d].end());
  for (int64_t step = 0; step < 5; ++step) {
    const Batch v = FillRange(*valid, step, 0, 4);
    seen.insert(v.input.begin(), v.input.end());
  }
  EXPECT_TRUE(std::includes(valid_tokens.begin(), valid_tokens.end(), seen.begin(), seen.end()));
  EXPECT_THAT((*valid).Describe(), AllOf(HasSubstr("valid split"), HasSubstr("6 of 60 documents")));
}

// Every data-parallel splitting of a global batch reads the same samples; within a step the ranks' samples
// are distinct windows; megatron and hdf5 files with the same documents give the same stream.
TEST(TokenLoaderTest, SameStreamForEveryDataParallelSplittingAndBothFormats) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ScratchDir dir;
  const Documents a = DatasetDocuments(rng, 0, 80), b = DatasetDocuments(rng, 1, 50);
  testing::WriteMegatron(dir / "a", a);
  testing::WriteMegatron(dir / "b", b, IndexedDType::kInt32);
  testing::WriteHdf5(dir / "a.h5", a, IndexedDType::kInt32);
  testing::WriteHdf5(dir / "b.h5", b);
  const int64_t global_batch = 8, seq_len = 12;
  const std::vector<std::string> common = {"train.seq_len=" + std::to_string(seq_len),
                                           "data.eod_token_id=255"};
  auto recipe = [&](const std::string& source, const std::string& path) {
    std::vector<std::string> o = common;
    o.push_back("data.source=" + source);
    o.push_back("data.path=" + path);
    return MakeRecipe(o);
  };
  const Recipe megatron = recipe("megatron", "[0.6, " + dir / "a" + ", 0.4, " + dir / "b" + "]");
  const Recipe hdf5 = recipe("hdf5", "[0.6, " + dir / "a.h5" + ", 0.4, " + dir / "b.h5" + "]");
  auto reference = Open(megatron, DataSplit::kTrain, global_batch);
  auto from_hdf5 = Open(hdf5, DataSplit::kTrain, global_batch);
  for (int64_t dp : {2, 4, 8}) {
    SCOPED_TRACE("dp " + std::to_string(dp));
    // One loader per rank, as on a real mesh; rank d fills [d * per, (d + 1) * per).
    std::vector<std::unique_ptr<TokenLoader>> ranks;
    for (int64_t d = 0; d < dp; ++d) ranks.push_back(Open(megatron, DataSplit::kTrain, global_batch));
    const int64_t per = global_batch / dp;
    for (int64_t step = 0; step < 40; ++step) {
      const Batch whole = FillRange(*reference, step, 0, global_batch);
      Batch joined;
      for (int64_t d = 0; d < dp; ++d) {
        const Batch part = FillRange(*ranks[static_cast<size_t>(d)], step, d * per, per);
        joined.input.insert(joined.input.end(), part.input.begin(), part.input.end());
        joined.labels.insert(joined.labels.end(), part.labels.begin(), part.labels.end());
      }
      ASSERT_EQ(joined.input, whole.input) << "step " << step;
      ASSERT_EQ(joined.labels, whole.labels) << "step " << step;
      if (dp == 2) {
        const Batch h = FillRange(*from_hdf5, step, 0, global_batch);
        ASSERT_EQ(h.input, whole.input) << "hdf5, step " << step;
        // Distinct samples of the step: no two rows are the same window (rows of random ids repeat with
        // negligible probability unless they are the same window).
        std::set<std::vector<int32_t>> rows;
        for (int64_t r = 0; r < global_batch; ++r) {
          rows.insert(std::vector<int32_t>(whole.input.begin() + r * seq_len,
                                           whole.input.begin() + (r + 1) * seq_len));
        }
        EXPECT_EQ(static_cast<int64_t>(rows.size()), global_batch) << "step " << step;
      }
    }
  }
}

// Blended samples come from the dataset Megatron's rule picks.
TEST(TokenLoaderTest, BlendsPickDatasetsByMegatronsRule) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ScratchDir dir;
  for (int k = 0; k < 3; ++k) testing::WriteMegatron(dir / std::to_string(k), DatasetDocuments(rng, k, 40));
  const Recipe recipe =
      MakeRecipe({"data.source=megatron", "train.seq_len=8", "data.eod_token_id=255",
                  "data.path=[5, " + dir / "0" + ", 3, " + dir / "1" + ", 2, " + dir / "2" + "]"});
  auto loader = Open(recipe, DataSplit::kTrain, 5);
  BlendSchedule blend({0.5, 0.3, 0.2});
  for (int64_t step = 0; step < 200; ++step) {
    const Batch got = FillRange(*loader, step, 0, 5);
    for (int64_t r = 0; r < 5; ++r) {
      const int k = blend.Lookup(step * 5 + r).first;
      for (int64_t t = 0; t < 8; ++t) {
        const int32_t token = got.input[static_cast<size_t>(r * 8 + t)];
        ASSERT_TRUE(token == 255 || token / 50 == k)
            << "sample " << step * 5 + r << " token " << token << " is not from dataset " << k;
      }
    }
  }
}

TEST(TokenLoaderTest, ResumesExactlyAndRefusesChangedData) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ScratchDir dir;
  // At least 20 tokens per document, so the 2-document valid split holds a window of 10 + 1.
  Documents docs = testing::RandomDocuments(rng, 70, 20, 90, 0, 49);
  testing::WriteMegatron(dir / "a", docs);
  const std::vector<std::string> base = {"data.source=megatron", "data.path=" + dir / "a",
                                         "train.seq_len=10"};
  const Recipe recipe = MakeRecipe(base);
  auto uninterrupted = Open(recipe, DataSplit::kTrain, 6);
  auto first = Open(recipe, DataSplit::kTrain, 6);
  for (int64_t step = 0; step < 7; ++step) FillRange(*first, step, 0, 6);
  // Through JSON, as a checkpoint stores it.
  const nlohmann::json saved = LoaderStateToJson(first->state(7));
  EXPECT_EQ(saved["consumed_samples"], 42);
  absl::StatusOr<LoaderState> state = LoaderStateFromJson(nlohmann::json::parse(saved.dump()));
  ASSERT_TRUE(state.ok()) << state.status();
  auto resumed = Open(recipe, DataSplit::kTrain, 6);
  ASSERT_TRUE(resumed->Restore(*state).ok());
  for (int64_t step = 7; step < 30; ++step) {
    ASSERT_EQ(FillRange(*resumed, step, 0, 6).input, FillRange(*uninterrupted, step, 0, 6).input) << step;
  }
  // A larger global batch after the resume continues at the consumed samples: step 7 reads samples 42..53.
  auto wider = Open(recipe, DataSplit::kTrain, 12);
  ASSERT_TRUE(wider->Restore(*state).ok());
  const Batch w = FillRange(*wider, 7, 0, 12);
  Batch expected = FillRange(*uninterrupted, 7, 0, 6);
  const Batch next = FillRange(*uninterrupted, 8, 0, 6);
  expected.input.insert(expected.input.end(), next.input.begin(), next.input.end());
  EXPECT_EQ(w.input, expected.input);
  EXPECT_EQ(wider->state(8).consumed_samples, 54);

  // What changed is named.
  auto restore_error = [&](const Recipe& r) {
    auto l = Open(r, DataSplit::kTrain, 6);
    absl::Status s = l->Restore(*state);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    return std::string(s.message());
  };
  std::vector<std::string> o = base;
  o.push_back("train.seq_len=12");
  EXPECT_THAT(restore_error(MakeRecipe(o)), HasSubstr("train.seq_len changed from '10' to '12'"));
  o = base;
  o.push_back("data.split=98,2");
  EXPECT_THAT(restore_error(MakeRecipe(o)), HasSubstr("data.split changed from '969,30,1' to '98,2'"));
  o = base;
  o.push_back("train.seed=99");
  EXPECT_THAT(restore_error(MakeRecipe(o)), HasSubstr("train.seed 99"));
  docs.push_back({1, 2, 3});
  testing::WriteMegatron(dir / "a", docs);
  EXPECT_THAT(restore_error(recipe), AllOf(HasSubstr("the files changed"), HasSubstr("70 documents -> "),
                                           HasSubstr("71 documents")));
  // A valid split's state is not a train split's.
  auto valid = Open(recipe, DataSplit::kValid, 6);
  EXPECT_THAT(std::string(valid->Restore(*state).message()),
              HasSubstr("the split changed from 'train' to 'valid'"));
  // Malformed JSON states name the field.
  nlohmann::json broken = saved;
  broken["fingerprint"].erase("seq_len");
  EXPECT_THAT(std::string(LoaderStateFromJson(broken).status().message()), HasSubstr("fingerprint.seq_len"));
  broken = saved;
  broken["next_step"] = "seven";
  EXPECT_THAT(std::string(LoaderStateFromJson(broken).status().message()),
              HasSubstr("'next_step' has the wrong type"));
}

TEST(TokenLoaderTest, BadDataIsRejectedAtOpenNamingTheFileOrKey) {
  ScratchDir dir;
  std::mt19937_64 rng(TestSeed());
  testing::WriteMegatron(dir / "five", DatasetDocuments(rng, 0, 5));
  testing::WriteMegatron(dir / "big", DatasetDocuments(rng, 0, 100));
  auto recipe = [&](std::vector<std::string> o) {
    o.insert(o.begin(), {"data.source=megatron", "train.seq_len=4"});
    return MakeRecipe(o);
  };
  // An empty valid split: 969/30/1 of 5 documents gives valid none.
  EXPECT_THAT(OpenError(recipe({"data.path=" + dir / "five"}), DataSplit::kValid),
              AllOf(HasSubstr(dir / "five.bin"),
                    HasSubstr("data.split '969,30,1' gives the valid split none of the 5"),
                    HasSubstr("train.eval_every")));
  // A blend names the dataset whose split is empty.
  EXPECT_THAT(
      OpenError(recipe({"data.path=[1, " + dir / "big" + ", 1, " + dir / "five" + "]"}), DataSplit::kValid),
      HasSubstr(dir / "five.bin (data.path entry 1, valid split)"));
  // Too few tokens for one window.
  EXPECT_THAT(OpenError(recipe({"data.path=" + dir / "five", "train.seq_len=4000"})),
              HasSubstr("one sample needs train.seq_len + 1 = 4001"));
  // Missing files.
  EXPECT_THAT(OpenError(recipe({"data.path=" + dir / "nothing"})),
              AllOf(HasSubstr(dir / "nothing.idx"), HasSubstr("no such file")));
  EXPECT_THAT(OpenError(MakeRecipe({"data.source=hdf5", "data.path=" + dir / "five"})),
              AllOf(HasSubstr(dir / "five"), HasSubstr("no such file")));
  // Token ids beyond the model's vocabulary: found at open with data.verify_tokens (the default) ...
  // (The bad id sits where every epoch's windows cover it, whichever document comes first: stream
  // position 2 or 7 of 16, and windows cover positions [0, 13).)
  testing::WriteMegatron(dir / "wide", {{1, 2, 300, 4, 5, 6, 7, 8, 9, 10}, {11, 12, 13, 14}},
                         IndexedDType::kInt32);
  const std::string expected = "token id 300 at position 2 of document 0";
  EXPECT_THAT(OpenError(recipe({"data.path=" + dir / "wide", "data.split=1"})),
              AllOf(HasSubstr(dir / "wide.bin"), HasSubstr(expected), HasSubstr("model.vocab_size = 256")));
  // ... and without it, by the Fill that reads them, with the same message.
  auto lazy = Open(recipe({"data.path=" + dir / "wide", "data.split=1", "data.verify_tokens=false"}),
                   DataSplit::kTrain, 1);
  ASSERT_NE(lazy, nullptr);
  absl::Status failed;
  std::vector<int32_t> in(4), lab(4);
  for (int64_t step = 0; step < 3 && failed.ok(); ++step)
    failed = lazy->Fill(step, 0, 1, in.data(), lab.data());
  EXPECT_THAT(std::string(failed.message()), HasSubstr(expected));
}

TEST(TokenLoaderTest, RecipeKeysAreValidatedWithTheirNames) {
  auto error = [](const std::vector<std::string>& overrides) {
    absl::StatusOr<Recipe> r = LoadRecipe(FATHOM_SOURCE_DIR "/recipes/tiny.yaml", overrides);
    EXPECT_FALSE(r.ok());
    return r.ok() ? std::string() : std::string(r.status().message());
  };
  EXPECT_THAT(error({"data.source=megatron"}), HasSubstr("data.path is required with data.source megatron"));
  EXPECT_THAT(error({"data.path=x"}), HasSubstr("data.path is read only with data.source megatron or hdf5"));
  EXPECT_THAT(error({"data.source=megatron", "data.path=[0.5, a, 0, b]"}),
              HasSubstr("data.path[2]: the weight of b must be > 0, got 0"));
  EXPECT_THAT(error({"data.source=megatron", "data.path=[0.5, a, -1, b]"}), HasSubstr("must be > 0, got -1"));
  EXPECT_THAT(error({"data.source=megatron", "data.path=[a, b]"}),
              HasSubstr("data.path[0] must be the weight of b"));
  EXPECT_THAT(error({"data.source=megatron", "data.path=[1, a, 2]"}), HasSubstr("needs an even number"));
  EXPECT_THAT(error({"data.source=megatron", "data.path=[1, 2, 3, b]"}),
              HasSubstr("data.path[1] must be a dataset prefix"));
  EXPECT_THAT(error({"data.split=90,x,1"}), HasSubstr("data.split '90,x,1': part 2 ('x') is not a number"));
  EXPECT_THAT(error({"data.split=1,2,3,4"}), HasSubstr("has 4 parts"));
  EXPECT_THAT(error({"data.split=0,0,0"}), HasSubstr("sums to 0"));
  EXPECT_THAT(error({"data.eod_token_id=256"}),
              HasSubstr("data.eod_token_id must be -1 (insert none) or a token id"));
  EXPECT_THAT(error({"data.eod_token_id=-2"}), HasSubstr("data.eod_token_id"));
  EXPECT_THAT(error({"train.eval_steps=0"}), HasSubstr("train.eval_steps must be >= 1"));
  EXPECT_THAT(error({"train.eval_every=-1"}), HasSubstr("train.eval_every"));

  const Recipe r = MakeRecipe({"data.source=megatron", "data.path=[3, a, 1, b]", "data.split=98/2",
                               "train.eval_every=100", "train.eval_steps=4", "train.log_dir=runs/x"});
  absl::StatusOr<std::vector<DataBlendEntry>> blend = r.data.Blend();
  ASSERT_TRUE(blend.ok());
  ASSERT_EQ(blend->size(), 2u);
  EXPECT_EQ((*blend)[0].prefix, "a");
  EXPECT_DOUBLE_EQ((*blend)[0].weight, 0.75);
  EXPECT_DOUBLE_EQ((*blend)[1].weight, 0.25);
  EXPECT_EQ(*r.data.SplitFractions(), (std::vector<double>{0.98, 0.02, 0.0}));
  EXPECT_EQ(r.train.eval_every, 100);
  EXPECT_EQ(r.train.eval_steps, 4);
  EXPECT_EQ(r.train.log_dir, "runs/x");
  // A bare prefix is a list of one.
  const Recipe bare = MakeRecipe({"data.source=hdf5", "data.path=tokens.h5"});
  EXPECT_EQ(bare.data.path, std::vector<std::string>{"tokens.h5"});
}

}  // namespace
}  // namespace fathom
