// fathom preprocess: text documents -> token datasets that data.source megatron (or hdf5) trains on, with
// the byte tokenizer (data/tokenizer.h). The .bin/.idx layout is Megatron's own (data/indexed_dataset.h),
// so Megatron's reader reads the output too (tests/data/read_megatron.py checks it the way Megatron does).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "data/demo_corpus.h"
#include "data/hdf5_dataset.h"
#include "data/indexed_dataset.h"
#include "data/tokenizer.h"
#include "framework/file_io.h"
#include "launch/commands.h"
#include "parallel/fault.h"

namespace fathom {
namespace {

constexpr char kUsage[] =
    "usage: fathom preprocess (--input FILE.jsonl | --demo-corpus) --output-prefix PREFIX [options]\n"
    "  Tokenizes documents with the byte tokenizer (vocabulary 256: token id = byte value) and writes\n"
    "  PREFIX.bin + PREFIX.idx (Megatron's MMap indexed dataset, one sequence per document) or PREFIX.h5.\n"
    "\n"
    "  --input FILE.jsonl     one JSON object per line; its --json-key string is a document (blank lines\n"
    "                         are skipped, empty documents dropped as Megatron drops them)\n"
    "  --demo-corpus          the embedded demo corpus instead, one document per chapter\n"
    "  --output-prefix P      where to write (the directory must exist); files are replaced atomically\n"
    "  --json-key KEY         the text field (default: text)\n"
    "  --format megatron|hdf5 PREFIX.bin/.idx (default) or PREFIX.h5 (/tokens, /document_offsets; built in\n"
    "                         memory, so for corpora that fit it)\n"
    "  --dtype auto|uint16|int32\n"
    "                         token storage; auto (default) is Megatron's rule: uint16 below 65500 ids\n"
    "  --append-eod           append the EOD token to every document (then train with\n"
    "                         data.eod_token_id: -1, the documents carry their separator)\n"
    "  --eod-id N             the EOD token id (default 0, the byte tokenizer's NUL)\n"
    "  --help                 this text\n"
    "Exit codes: 0 written, 2 bad input (nothing written), 1 an I/O failure (nothing replaced).\n";

struct Options {
  std::string input;
  bool demo_corpus = false;
  std::string output_prefix;
  std::string json_key = "text";
  std::string format = "megatron";
  std::string dtype = "auto";
  bool append_eod = false;
  int64_t eod_id = 0;
  bool help = false;
};

absl::StatusOr<Options> ParseOptions(const std::vector<std::string>& args) {
  Options o;
  const std::map<std::string, std::string*> valued = {{"--input", &o.input},
                                                      {"--output-prefix", &o.output_prefix},
                                                      {"--json-key", &o.json_key},
                                                      {"--format", &o.format},
                                                      {"--dtype", &o.dtype}};
  std::string eod_text;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      o.help = true;
    } else if (a == "--demo-corpus") {
      o.demo_corpus = true;
    } else if (a == "--append-eod") {
      o.append_eod = true;
    } else if (valued.count(a) || a == "--eod-id") {
      if (i + 1 == args.size()) return absl::InvalidArgumentError(a + " needs a value");
      *(a == "--eod-id" ? &eod_text : valued.at(a)) = args[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown argument '", a, "'"));
    }
  }
  if (o.help) return o;
  if (o.demo_corpus == !o.input.empty()) {
    return absl::InvalidArgumentError("give exactly one of --input FILE.jsonl and --demo-corpus");
  }
  if (o.output_prefix.empty()) return absl::InvalidArgumentError("--output-prefix is required");
  if (o.output_prefix.back() == '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        "--output-prefix '", o.output_prefix, "' names a directory; give a file prefix inside it, e.g. '",
        o.output_prefix, "corpus' for corpus.bin and corpus.idx"));
  }
  if (o.format != "megatron" && o.format != "hdf5") {
    return absl::InvalidArgumentError(
        absl::StrCat("--format must be megatron or hdf5, got '", o.format, "'"));
  }
  if (o.dtype != "auto" && o.dtype != "uint16" && o.dtype != "int32") {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype must be auto, uint16 or int32, got '", o.dtype, "'"));
  }
  if (!eod_text.empty() &&
      (!absl::SimpleAtoi(eod_text, &o.eod_id) || o.eod_id < 0 || o.eod_id >= kByteVocab)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--eod-id must be a token id of the byte tokenizer, in [0, ", kByteVocab, "); got '", eod_text, "'"));
  }
  if (!eod_text.empty() && !o.append_eod) {
    return absl::InvalidArgumentError("--eod-id chooses the token --append-eod appends; add --append-eod");
  }
  if (o.json_key.empty()) return absl::InvalidArgumentError("--json-key must not be empty");
  if (!o.input.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(o.input, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--input ", o.input,
                       std::filesystem::exists(o.input, ec) ? " is not a regular file" : " does not exist",
                       "; expected a JSON-lines file (one {\"", o.json_key, "\": ...} object per line)"));
    }
    const std::vector<std::string> suffixes =
        o.format == "hdf5" ? std::vector<std::string>{".h5"} : std::vector<std::string>{".bin", ".idx"};
    for (const std::string& suffix : suffixes) {
      if (absl::Status s = CheckNotAnInput(o.output_prefix + suffix, {o.input}, "--output-prefix"); !s.ok()) {
        return s;
      }
    }
  }
  return o;
}

// Where documents go: PREFIX.bin/.idx streamed, or PREFIX.h5 gathered then written.
class DocumentSink {
 public:
  static absl::StatusOr<std::unique_ptr<DocumentSink>> Create(const Options& o, IndexedDType dtype) {
    auto sink = std::unique_ptr<DocumentSink>(new DocumentSink(o, dtype));
    if (o.format == "megatron") {
      absl::StatusOr<std::unique_ptr<IndexedDatasetWriter>> w =
          IndexedDatasetWriter::Create(o.output_prefix, dtype);
      if (!w.ok()) return w.status();
      sink->writer_ = *std::move(w);
    }
    return sink;
  }

  absl::Status Add(std::vector<int32_t> tokens) {
    ++documents_;
    tokens_ += static_cast<int64_t>(tokens.size());
    if (writer_) return writer_->AddDocument(tokens);
    all_tokens_.insert(all_tokens_.end(), tokens.begin(), tokens.end());
    offsets_.push_back(static_cast<int64_t>(all_tokens_.size()));
    return absl::OkStatus();
  }

  absl::Status Finish() {
    if (writer_) return writer_->Finish();
    return WriteHdf5TokenFile(path(), all_tokens_, offsets_, dtype_);
  }

  std::string path() const {
    return format_ == "megatron" ? absl::StrCat(prefix_, ".bin and ", prefix_, ".idx") : prefix_ + ".h5";
  }
  int64_t documents() const { return documents_; }
  int64_t tokens() const { return tokens_; }

 private:
  DocumentSink(const Options& o, IndexedDType dtype)
      : prefix_(o.output_prefix), format_(o.format), dtype_(dtype) {}

  std::string prefix_, format_;
  IndexedDType dtype_;
  std::unique_ptr<IndexedDatasetWriter> writer_;
  std::vector<int32_t> all_tokens_;
  std::vector<int64_t> offsets_{0};
  int64_t documents_ = 0, tokens_ = 0;
};

// Tokenizes one document into the sink; empty texts are dropped (counted in *skipped).
absl::Status AddText(const Options& o, std::string_view text, DocumentSink& sink, int64_t* skipped) {
  if (text.empty()) {
    ++*skipped;
    return absl::OkStatus();
  }
  std::vector<int32_t> tokens = EncodeBytes(text);
  if (o.append_eod) tokens.push_back(static_cast<int32_t>(o.eod_id));
  return sink.Add(std::move(tokens));
}

absl::Status ReadJsonLines(const Options& o, DocumentSink& sink, int64_t* skipped) {
  std::ifstream in(o.input, std::ios::binary);
  if (!in.is_open()) return absl::InvalidArgumentError(absl::StrCat(o.input, ": cannot open the input file"));
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = absl::StrCat(o.input, ":", number, ": ");
    nlohmann::json doc;
    try {
      doc = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      return absl::InvalidArgumentError(absl::StrCat(where, "not a JSON object: ", e.what()));
    }
    if (!doc.is_object() || !doc.contains(o.json_key)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "expected a JSON object with the key \"", o.json_key, "\" (--json-key)"));
    }
    if (!doc.at(o.json_key).is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(where, "\"", o.json_key, "\" must be a string, found ",
                                                     doc.at(o.json_key).type_name()));
    }
    if (absl::Status s = AddText(o, doc.at(o.json_key).get_ref<const std::string&>(), sink, skipped);
        !s.ok()) {
      return s;
    }
  }
  if (in.bad()) return absl::InternalError(absl::StrCat(o.input, ": read failed"));
  return absl::OkStatus();
}

int Fail(const absl::Status& s) {
  std::cerr << "fathom preprocess: " << s.message() << "\n";
  return s.code() == absl::StatusCode::kInvalidArgument ? kExitInvalidInput : kExitFailure;
}

}  // namespace

int RunPreprocess(const std::vector<std::string>& args) {
  absl::StatusOr<Options> o = ParseOptions(args);
  if (!o.ok()) {
    std::cerr << "fathom preprocess: " << o.status().message() << "\n" << kUsage;
    return kExitInvalidInput;
  }
  if (o->help) {
    std::cout << kUsage;
    return 0;
  }
  const IndexedDType dtype = o->dtype == "uint16"  ? IndexedDType::kUint16
                             : o->dtype == "int32" ? IndexedDType::kInt32
                                                   : IndexedDTypeForVocab(kByteVocab);
  absl::StatusOr<std::unique_ptr<DocumentSink>> sink = DocumentSink::Create(*o, dtype);
  if (!sink.ok()) return Fail(sink.status());
  int64_t skipped = 0;
  if (o->demo_corpus) {
    for (std::string_view chapter : DemoCorpusChapters(DemoCorpus())) {
      if (absl::Status s = AddText(*o, chapter, **sink, &skipped); !s.ok()) return Fail(s);
    }
  } else if (absl::Status s = ReadJsonLines(*o, **sink, &skipped); !s.ok()) {
    return Fail(s);
  }
  if ((*sink)->documents() == 0) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(o->demo_corpus ? "the demo corpus" : o->input,
                                                        ": no non-empty documents; nothing written")));
  }
  if (absl::Status s = (*sink)->Finish(); !s.ok()) return Fail(s);
  std::cout << "fathom preprocess: wrote " << (*sink)->path() << ": " << (*sink)->documents()
            << " documents, " << (*sink)->tokens() << " tokens (" << IndexedDTypeName(dtype)
            << ", byte tokenizer, vocabulary " << kByteVocab
            << (o->append_eod ? absl::StrCat(", EOD ", o->eod_id, " appended") : "") << ")";
  if (skipped > 0) std::cout << "; skipped " << skipped << " empty documents";
  std::cout << "\n";
  return 0;
}

}  // namespace fathom
