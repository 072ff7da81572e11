// `fathom preprocess` end to end: the files it writes hold exactly the documents given (demo corpus
// chapters, JSON lines, with and without EOD, uint16 and int32, Megatron and HDF5), the loaders train on
// them, and bad input exits 2 with one message, writing nothing and damaging nothing.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "data/demo_corpus.h"
#include "data/hdf5_dataset.h"
#include "data/indexed_dataset.h"
#include "data/token_loader.h"
#include "data/tokenizer.h"
#include "tests/common/gradcheck.h"
#include "tests/data/data_test_support.h"
#include "tests/launch/run_fathom.h"

namespace fathom {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::CountOf;
using testing::RunFathom;
using testing::RunResult;
using testing::ScratchDir;

// Every document of `docs` as a token vector.
std::vector<std::vector<int32_t>> AllDocuments(TokenDocuments& docs) {
  std::vector<std::vector<int32_t>> out;
  for (int64_t d = 0; d < docs.num_documents(); ++d) {
    std::vector<int32_t> t(static_cast<size_t>(docs.document_length(d)));
    EXPECT_TRUE(docs.ReadTokens(d, 0, static_cast<int64_t>(t.size()), t.data()).ok());
    out.push_back(std::move(t));
  }
  return out;
}

std::set<std::string> Listing(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

TEST(PreprocessTest, HelpExitsZero) {
  RunResult r = RunFathom("preprocess --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output,
              AllOf(HasSubstr("--output-prefix"), HasSubstr("--demo-corpus"), HasSubstr("--append-eod")));
}

TEST(PreprocessTest, DemoCorpusBecomesOneDocumentPerChapterAndTrainsWithAValidSplit) {
  ScratchDir dir;
  RunResult r = RunFathom("preprocess --demo-corpus --output-prefix " + dir / "demo");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto ds = IndexedDataset::Open(dir / "demo", 256);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->dtype(), IndexedDType::kUint16);  // Megatron's choice for 256 ids
  const std::vector<std::string_view> chapters = DemoCorpusChapters(DemoCorpus());
  ASSERT_EQ((*ds)->num_documents(), static_cast<int64_t>(chapters.size()));
  EXPECT_GT(chapters.size(), 500u);
  std::string joined;
  const auto docs = AllDocuments(**ds);
  for (size_t d = 0; d < docs.size(); ++d) {
    EXPECT_EQ(DecodeBytes(docs[d]), chapters[d]);
    EXPECT_EQ(DecodeBytes(docs[d]).rfind("Chapter ", 0), 0u) << "document " << d;
    joined += DecodeBytes(docs[d]);
  }
  EXPECT_EQ(joined, DemoCorpus());  // nothing lost, nothing added
  // The tiny recipe's model opens train and valid loaders on it (969/30/1 of the chapters).
  absl::StatusOr<Recipe> tiny = LoadRecipe(std::string(FATHOM_SOURCE_DIR) + "/recipes/tiny.yaml",
                                           {"data.source=megatron", "data.path=" + dir / "demo"});
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  for (DataSplit split : {DataSplit::kTrain, DataSplit::kValid}) {
    absl::StatusOr<std::unique_ptr<TokenLoader>> loader = OpenTokenLoader(*tiny, split, 8);
    ASSERT_TRUE(loader.ok()) << loader.status();
    std::vector<int32_t> in(8 * 64), labels(8 * 64);
    ASSERT_TRUE((*loader)->Fill(0, 0, 8, in.data(), labels.data()).ok());
  }
}

// The tiny recipe trains on what preprocess made of the demo corpus, with validation and the run log.
TEST(PreprocessTest, TinyTrainsOnPreprocessedDemoWithValidationAndRunLog) {
  ScratchDir dir;
  ASSERT_EQ(RunFathom("preprocess --demo-corpus --output-prefix " + dir / "demo").exit_code, 0);
  RunResult r = RunFathom(
      "train " + std::string(FATHOM_SOURCE_DIR) +
      "/recipes/tiny.yaml --set train.steps=12 --set data.source=megatron --set data.path=" + dir / "demo" +
      " --set data.split=90,10 --set train.eval_every=6 --set train.eval_steps=2" +
      " --set train.log_dir=" + dir / "logs");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("data: megatron, train split"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("eval      6/12 | valid lm"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("eval     12/12 | valid lm"), std::string::npos) << r.output;
  std::ifstream metrics(dir / "logs/metrics.jsonl");
  std::string line;
  int lines = 0, markers = 0, with_valid = 0;
  while (std::getline(metrics, line)) {
    ++lines;
    markers += line.rfind("{\"event\":\"start\",", 0) == 0;  // the run's start marker
    with_valid += line.find("\"valid_loss\"") != std::string::npos;
  }
  EXPECT_EQ(markers, 1);
  EXPECT_EQ(lines, 1 + 12);
  EXPECT_EQ(with_valid, 2);
  EXPECT_EQ(r.output.find("test "), std::string::npos) << "data.split 90,10 gives no test split:\n" << r.output;
}

// Documents that already end with their EOD (--append-eod) get a second one when data.eod_token_id names
// it too: the start-up says so, once, and not when data.eod_token_id is -1 or the documents lack it.
TEST(PreprocessTest, ADoubledEodIsNamedAtStartUp) {
  ScratchDir dir;
  ASSERT_EQ(RunFathom("preprocess --demo-corpus --append-eod --output-prefix " + dir / "eod").exit_code, 0);
  ASSERT_EQ(RunFathom("preprocess --demo-corpus --output-prefix " + dir / "plain").exit_code, 0);
  const std::string train = "train " + std::string(FATHOM_SOURCE_DIR) +
                            "/recipes/tiny.yaml --set train.steps=1 --set data.source=megatron --set data.path=";
  const std::string warning = "documents all end with token 0, and data.eod_token_id 0 appends another";
  RunResult r = RunFathom(train + dir / "eod");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(CountOf(r.output, warning), 1u) << r.output;
  EXPECT_NE(r.output.find("warning: " + dir / "eod.bin (data.path entry 0, train split): its first 32"),
            std::string::npos)
      << r.output;
  for (const std::string& args : {dir / "eod --set data.eod_token_id=-1", dir / "plain"}) {
    r = RunFathom(train + args);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(r.output.find("appends another"), std::string::npos) << args << ":\n" << r.output;
  }
}

// Megatron's test loss: at the end of a run with evaluation, train.eval_steps batches of the test split
// when data.split gives it a share; a share of no documents is named, and the run still succeeds.
TEST(PreprocessTest, TheTestSplitIsEvaluatedAtTheEnd) {
  ScratchDir dir;
  ASSERT_EQ(RunFathom("preprocess --demo-corpus --output-prefix " + dir / "demo").exit_code, 0);
  const std::string train = "train " + std::string(FATHOM_SOURCE_DIR) +
                            "/recipes/tiny.yaml --set train.steps=4 --set data.source=megatron --set data.path=" +
                            dir / "demo" + " --set train.eval_every=4 --set train.eval_steps=2";
  RunResult r = RunFathom(train + " --set data.split=80,10,10 --set train.log_dir=" + dir / "logs");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const size_t valid = r.output.find("eval      4/4 | valid lm "), test = r.output.find("test      4/4 | test lm ");
  ASSERT_NE(test, std::string::npos) << r.output;
  EXPECT_LT(valid, test) << r.output;
  EXPECT_NE(r.output.find("(2 batches of the test split)"), std::string::npos) << r.output;
  // The valid and test losses are of different documents: different numbers.
  const std::string test_loss = r.output.substr(test + 24, 6);
  EXPECT_NE(r.output.substr(valid + 25, 6), test_loss) << r.output;
  // The run log has it in the last step's record only.
  std::ifstream metrics(dir / "logs/metrics.jsonl");
  std::string line, last;
  int with_test = 0;
  while (std::getline(metrics, line)) {
    with_test += line.find("\"test_loss\":") != std::string::npos;
    last = line;
  }
  EXPECT_EQ(with_test, 1);
  EXPECT_NE(last.find("\"step\":4,"), std::string::npos) << last;
  const size_t at = last.find("\"test_loss\":");
  ASSERT_NE(at, std::string::npos) << last;
  EXPECT_NEAR(std::stod(last.substr(at + 12)), std::stod(test_loss), 5e-5) << last;  // printed to 4 places

  r = RunFathom(train + " --set data.split=98,1.95,0.05");  // 575 documents: none for the test split
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("test: not evaluated: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("gives the test split none of the 575 documents"), std::string::npos) << r.output;
}

TEST(PreprocessTest, JsonLinesWithEodInt32AndHdf5HoldTheDocuments) {
  std::mt19937_64 rng(testing::TestSeed());
  ScratchDir dir;
  // Random printable and non-ASCII (UTF-8) texts, blank lines and an empty document between them.
  std::vector<std::string> texts;
  std::ofstream jsonl(dir / "in.jsonl");
  for (int i = 0; i < 30; ++i) {
    std::string t;
    const size_t n = 1 + rng() % 60;
    for (size_t k = 0; k < n; ++k) t += static_cast<char>(' ' + rng() % 95);
    if (i % 5 == 0) t += "\xc3\xa9\n\"quoted\"";
    texts.push_back(t);
    jsonl << nlohmann::json{{"id", i}, {"content", t}}.dump() << "\n";
    if (i == 10) jsonl << "\n" << nlohmann::json{{"content", ""}}.dump() << "\n";
  }
  jsonl.close();
  RunResult r = RunFathom("preprocess --input " + dir / "in.jsonl" + " --json-key content --output-prefix " +
                          dir / "m" + " --append-eod --eod-id 3 --dtype int32");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, AllOf(HasSubstr("30 documents"), HasSubstr("skipped 1 empty")));
  r = RunFathom("preprocess --input " + dir / "in.jsonl" + " --json-key content --output-prefix " +
                dir / "h" + " --format hdf5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto m = IndexedDataset::Open(dir / "m", 256);
  auto h = Hdf5TokenDataset::Open(dir / "h.h5", 256);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ((*m)->dtype(), IndexedDType::kInt32);
  const auto md = AllDocuments(**m), hd = AllDocuments(**h);
  ASSERT_EQ(md.size(), texts.size());
  ASSERT_EQ(hd.size(), texts.size());
  for (size_t d = 0; d < texts.size(); ++d) {
    std::vector<int32_t> want = EncodeBytes(texts[d]);
    EXPECT_EQ(hd[d], want) << "hdf5 document " << d;
    want.push_back(3);
    EXPECT_EQ(md[d], want) << "megatron document " << d;
  }
}

// Megatron's way of reading the files (tests/data/read_megatron.py: numpy views of the memory-mapped
// index, as MMapIndexedDataset) finds the documents of the JSON lines. Runs where python3 has numpy.
TEST(PreprocessTest, MegatronsReaderReadsTheOutput) {
  if (testing::RunShell("python3 -c 'import numpy'").exit_code != 0) {
    GTEST_SKIP() << "python3 cannot import numpy here; the GPU machine has it";
  }
  ScratchDir dir;
  std::ofstream(dir / "in.jsonl")
      << "{\"text\": \"first document\"}\n{\"text\": \"caf\xc3\xa9\"}\n\n{\"text\": \"x\"}\n";
  const std::string script = std::string(FATHOM_SOURCE_DIR) + "/tests/data/read_megatron.py ";
  for (const std::string& flags : {std::string(" --append-eod --eod-id 7"), std::string(" --dtype int32")}) {
    SCOPED_TRACE(flags);
    ASSERT_EQ(RunFathom("preprocess --input " + dir / "in.jsonl" + " --output-prefix " + dir / "m" + flags)
                  .exit_code,
              0);
    const std::string check = flags.find("eod") != std::string::npos ? " --append-eod --eod-id 7" : "";
    testing::RunResult r =
        testing::RunShell("python3 " + script + dir / "m" + " --jsonl " + dir / "in.jsonl" + check);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_THAT(r.output, HasSubstr("OK: all 3 documents match"));
  }
  ASSERT_EQ(RunFathom("preprocess --demo-corpus --output-prefix " + dir / "demo").exit_code, 0);
  testing::RunResult r = testing::RunShell("python3 " + script + dir / "demo" + " --decode-bytes --show 1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, AllOf(HasSubstr("uint16"), HasSubstr("document 0"), HasSubstr("Chapter 1")));
}

TEST(PreprocessTest, BadInputExits2WritesNothingAndKeepsOldOutput) {
  ScratchDir dir;
  std::ofstream(dir / "good.jsonl") << "{\"text\": \"abc\"}\n";
  std::ofstream(dir / "bad_json.jsonl") << "{\"text\": \"abc\"}\n{\"text\": oops}\n";
  std::ofstream(dir / "no_key.jsonl") << "{\"body\": \"abc\"}\n";
  std::ofstream(dir / "not_string.jsonl") << "{\"text\": 12}\n";
  std::ofstream(dir / "empty.jsonl") << "\n{\"text\": \"\"}\n";
  std::ofstream(dir / "doc.bin") << "{\"text\": \"a JSON-lines file with an unlucky name\"}\n";
  ASSERT_EQ(
      RunFathom("preprocess --input " + dir / "good.jsonl" + " --output-prefix " + dir / "out").exit_code, 0);
  const std::string old_bin = testing::ReadFileBytes(dir / "out.bin"),
                    old_idx = testing::ReadFileBytes(dir / "out.idx");
  const std::set<std::string> before = Listing(dir.path());
  const std::string out = " --output-prefix " + dir / "out";
  struct Case {
    std::string args;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {"--input " + dir / "bad_json.jsonl" + out, {dir / "bad_json.jsonl:2:", "not a JSON object"}},
      {"--input " + dir / "no_key.jsonl" + out, {dir / "no_key.jsonl:1:", "the key \"text\""}},
      {"--input " + dir / "not_string.jsonl" + out, {"\"text\" must be a string, found number"}},
      {"--input " + dir / "empty.jsonl" + out, {"no non-empty documents; nothing written"}},
      {"--input " + dir / "missing.jsonl" + out, {dir / "missing.jsonl", "does not exist"}},
      {"--input " + dir / "good.jsonl" + " --output-prefix " + dir / "no/such/dir/x", {"does not exist"}},
      {"--input " + dir / "good.jsonl", {"--output-prefix is required"}},
      {"--demo-corpus --input " + dir / "good.jsonl" + out, {"exactly one of --input"}},
      {"--demo-corpus" + out + " --eod-id 300", {"--eod-id must be a token id"}},
      {"--demo-corpus" + out + " --dtype float32", {"--dtype must be auto, uint16 or int32"}},
      {"--demo-corpus" + out + " --format parquet", {"--format must be megatron or hdf5"}},
      {"--demo-corpus" + out + " --shuffle", {"unknown argument '--shuffle'"}},
      {"--demo-corpus --output-prefix", {"--output-prefix needs a value"}},
      {"--input " + dir.path() + out, {"is not a regular file", "expected a JSON-lines file"}},
      {"--input " + dir / "good.jsonl" + " --output-prefix " + dir / "good.jsonl/x",
       {"is a file, not a directory"}},
      {"--demo-corpus --output-prefix " + dir.path() + "/", {"names a directory; give a file prefix"}},
      {"--demo-corpus" + out + " --eod-id 5", {"add --append-eod"}},
      {"--input " + dir / "doc.bin" + " --output-prefix " + dir / "doc", {"an input of this command"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    RunResult r = RunFathom("preprocess " + c.args);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    for (const std::string& e : c.expect) EXPECT_THAT(r.output, HasSubstr(e));
    EXPECT_EQ(Listing(dir.path()), before) << "a failed run left files behind";
  }
  EXPECT_EQ(testing::ReadFileBytes(dir / "out.bin"), old_bin);
  EXPECT_EQ(testing::ReadFileBytes(dir / "out.idx"), old_idx);
}

// PREFIX.idx that cannot be replaced (a symlink) is found before PREFIX.bin is touched: the existing dataset
// stays whole (it used to lose its .bin to the new corpus, leaving a .bin/.idx pair that did not match).
TEST(PreprocessTest, UnreplaceableIdxLeavesTheExistingBinUntouched) {
  ScratchDir dir;
  std::ofstream(dir / "good.jsonl") << "{\"text\": \"abc\"}\n";
  ASSERT_EQ(RunFathom("preprocess --demo-corpus --output-prefix " + dir / "ds").exit_code, 0);
  const std::string old_bin = testing::ReadFileBytes(dir / "ds.bin");
  std::filesystem::rename(dir / "ds.idx", dir / "real.idx");
  std::filesystem::create_symlink("real.idx", dir / "ds.idx");
  RunResult r = RunFathom("preprocess --input " + dir / "good.jsonl" + " --output-prefix " + dir / "ds");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("ds.idx is a symbolic link"));
  EXPECT_EQ(testing::ReadFileBytes(dir / "ds.bin"), old_bin);
  EXPECT_TRUE(std::filesystem::is_symlink(dir / "ds.idx"));
}

}  // namespace
}  // namespace fathom
