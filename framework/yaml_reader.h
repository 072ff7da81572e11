// Strict, typed reading of YAML configuration files (recipes, cluster descriptions).
//
// Every value is addressed by its key path ("model.rope_scaling.factor"). Every error is an
// InvalidArgument that names the key path, where the value came from ("recipes/tiny.yaml:12", or the
// command-line override that set it), the value found and what was expected. Keys that no reader asked
// for are reported as unknown, with the closest known key suggested when one is within edit distance 3.
//
// Typical use (config.cc):
//   absl::StatusOr<YamlDocument> doc = YamlDocument::Parse(text, "recipes/tiny.yaml");
//   if (!doc.ok()) return doc.status();
//   if (absl::Status s = doc->ApplyOverride("model.hidden_size=128", /*min_depth=*/2); !s.ok()) return s;
//   YamlMapReader root(*doc);
//   std::optional<YamlMapReader> model = root.Map("model");  // nullopt: absent (or an error recorded)
//   if (model) {
//     model->Count("hidden_size", &config.hidden_size);  // absent: config keeps its default
//     root.Merge(model->Finish());                       // its first type error, else first unknown key
//   }
//   return root.Finish();
//
// The same calls also write: YamlMapReader::Emitter makes a reader that, instead of reading, records
// "key: value" lines with the CURRENT values of the outputs it is handed. Running a parser over an already
// parsed config with an emitter therefore writes every key the parser knows, resolved (defaults included),
// without a second list of keys to keep in step (framework/config.h's ResolvedRecipeYaml).
//
// Not thread safe; a reader refers to its document, which must outlive it.
#ifndef FATHOM_FRAMEWORK_YAML_READER_H_
#define FATHOM_FRAMEWORK_YAML_READER_H_

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fathom {

// Levenshtein distance (insertions, deletions, substitutions, each of cost 1).
int EditDistance(const std::string& a, const std::string& b);

// One parsed YAML document and the command-line overrides applied to it (kept for error messages).
class YamlDocument {
 public:
  // Parses `text`. A syntax error gives InvalidArgument
  // "<origin>:<line>:<column>: YAML syntax error: <what>" (1-based line and column).
  static absl::StatusOr<YamlDocument> Parse(const std::string& text, const std::string& origin);

  // Applies one override "a.b.c=value" (whitespace around the key and the value is ignored). The value
  // is parsed as YAML (a scalar such as 4, 1e-3, yarn, null, or a flow collection such as [1, 2] or
  // {type: yarn, factor: 4}) and replaces, or adds, the value at the key path; missing or null maps along
  // the path are created. Keys are not checked here: an unknown key surfaces when the readers finish.
  // Errors (InvalidArgument naming the override): no '=', an empty key or key component, fewer than
  // `min_depth` components, a value that is not valid YAML, a value along the path that is not a map.
  absl::Status ApplyOverride(const std::string& override_text, int min_depth);

  const YAML::Node& root() const { return root_; }
  const std::string& origin() const { return origin_; }

  // Where the value at `path` came from, for messages: "<origin>, override '<text>'" when an override
  // set it (or one of its parents), else "<origin>:<line>" from `mark` (0-based), else "<origin>".
  std::string Locate(const std::string& path, const YAML::Mark& mark) const;

 private:
  YamlDocument(YAML::Node root, std::string origin) : root_(std::move(root)), origin_(std::move(origin)) {}

  YAML::Node root_;
  std::string origin_;
  std::vector<std::pair<std::string, std::string>> overrides_;  // (key path, override text), in order
};

// Reads the typed values of one YAML map. Reads of absent keys leave their output untouched. The first
// error sticks: once one is recorded, later reads do nothing and Finish() returns it.
class YamlMapReader {
 public:
  // Reads the document's root map, whose keys are reported as "sections". A null (empty) document reads
  // as an empty map.
  explicit YamlMapReader(const YamlDocument& doc);

  // An emitter. Typed reads record "key: value" from *out's current value (integers and booleans plain,
  // doubles in their shortest round-trip form, strings double-quoted, lists in flow style, a CountOrNull
  // equal to its null value as null); Map records "key:" and returns the emitter of that nested map, whose
  // lines appear under it (indented by two) wherever it was created, whenever they are recorded; Has is true
  // and IsNull false; Ignore and Require* record nothing (they carry no setting); Merge, Fail and Finish do
  // nothing and report OK. EmittedText() is the YAML recorded so far, which parses back to the same values.
  static YamlMapReader Emitter();
  bool emitting() const { return emitted_ != nullptr; }
  std::string EmittedText() const;

  // Typed reads. Each registers `key` as known (also when absent), sets *out when the key is present and
  // well typed, and records an error naming the key, the value found and the expected type otherwise.
  // Numbers must be plain (unquoted) scalars; null is an error unless the reader says otherwise.
  void Int(const std::string& key, int64_t* out);         // an integer: 1.5, 1e3 and "3" are errors
  void Count(const std::string& key, int64_t* out);       // an integer >= 0
  void Uint(const std::string& key, uint64_t* out);       // an integer >= 0 that fits 64 bits unsigned
  void Double(const std::string& key, double* out);       // a finite number; integers are accepted
  void Bool(const std::string& key, bool* out);           // true or false (also True, TRUE, False, FALSE)
  void String(const std::string& key, std::string* out);  // any scalar, quoted or plain
  void CountList(const std::string& key, std::vector<int64_t>* out);  // a list of integers >= 0
  // A list of scalars, each read as its text (quoted or plain), or one scalar read as a list of one
  // (data.path takes both `x` and `[0.7, x, 0.3, y]`).
  void ScalarList(const std::string& key, std::vector<std::string>* out);
  void DoubleList(const std::string& key, std::vector<double>* out);  // a list of finite numbers
  // A count, or null which reads as `null_value` (HF writes "q_lora_rank": null for "none").
  void CountOrNull(const std::string& key, int64_t null_value, int64_t* out);

  // Accepts `key` with any value and ignores it.
  void Ignore(const std::string& key);
  // Accepts `key` only with one value, e.g. hidden_act must be silu. When violated the error reads
  // "<where>: <path> must be <expected> (<why>), found <value>".
  void RequireString(const std::string& key, const std::string& expected, const std::string& why);
  void RequireNumber(const std::string& key, double expected, const std::string& why);
  void RequireBool(const std::string& key, bool expected, const std::string& why);

  // True when `key` is present (with any value, null included); registers it as known.
  bool Has(const std::string& key);
  // True when `key` is present with a null value; registers it as known.
  bool IsNull(const std::string& key);
  // The nested map at `key`: nullopt when absent; a reader over an empty map when null; an error (and
  // nullopt) when the value is not a map. Merge the nested reader's Finish() back with Merge().
  std::optional<YamlMapReader> Map(const std::string& key);

  // Records `status` unless it is OK or an error is already recorded.
  void Merge(const absl::Status& status);
  // Records an InvalidArgument "<where>: <message>" about `key` (which must be present, or the map's own
  // location is used).
  void Fail(const std::string& key, const std::string& message);

  // "model.hidden_size" for key "hidden_size" of the map at "model".
  std::string KeyPath(const std::string& key) const;

  // The first error recorded, else InvalidArgument for the first key (in document order) that no read
  // registered: "<where>: unknown key 'model.hiden_size'; did you mean 'model.hidden_size'?" (at the root:
  // "unknown section 'modle' (sections: model, ...)"), else OK.
  absl::Status Finish() const;
  const absl::Status& status() const { return status_; }
  // The first key (in document order) no read registered, as Finish reports it; nullopt when there is none
  // or an error was recorded first.
  std::optional<std::string> FirstUnknownKey() const;

 private:
  struct Entry {
    std::string key;
    YAML::Node value;
    YAML::Mark mark;  // of the key
    bool known = false;
  };

  YamlMapReader(const YamlDocument& doc, const YAML::Node& node, std::string path, const YAML::Mark& mark);
  struct EmittedMap;  // an emitter's recorded lines and nested maps, in order
  YamlMapReader(std::shared_ptr<EmittedMap> emitted, std::string path);
  // In an emitter: records "key: text" and returns true; a reader returns false.
  bool Emit(const std::string& key, const std::string& text);
  void Index(const YAML::Node& node);
  // Registers `key` as known; returns its entry, or nullptr when absent or after an error.
  Entry* Find(const std::string& key);
  void FailType(const Entry& entry, const std::string& path, const YAML::Node& value,
                const std::string& expected);
  std::string Where(const Entry* entry) const;

  const YamlDocument* doc_ = nullptr;    // null in an emitter
  std::shared_ptr<EmittedMap> emitted_;  // an emitter's record, else null
  std::string path_;                     // "" for the document root
  YAML::Mark mark_;                      // of the key that holds this map
  std::vector<Entry> entries_;
  std::vector<std::string> known_;  // every key a read asked for, in order, for suggestions
  absl::Status status_;
};

}  // namespace fathom

#endif  // FATHOM_FRAMEWORK_YAML_READER_H_
