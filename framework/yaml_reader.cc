#include "framework/yaml_reader.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <limits>
#include <ranges>
#include <sstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace fathom {
namespace {

constexpr char kInteger[] = "an integer";
constexpr char kCount[] = "a non-negative integer (a count)";
constexpr char kNumber[] = "a finite number";
constexpr char kBool[] = "a boolean (true or false)";
constexpr char kString[] = "a string";

// yaml-cpp tags a plain (unquoted, untagged) scalar "?" and a quoted one "!". Only plain scalars are
// numbers or booleans: "64" in quotes is a string, and accepting it as an integer would hide a typo'd
// recipe written by a program that quotes everything.
bool IsPlainScalar(const YAML::Node& node) { return node.IsScalar() && node.Tag() == "?"; }

bool ParseInt(const YAML::Node& node, int64_t* out) {
  int64_t v = 0;
  if (!IsPlainScalar(node) || !absl::SimpleAtoi(node.Scalar(), &v)) return false;
  *out = v;
  return true;
}

bool ParseCount(const YAML::Node& node, int64_t* out) {
  int64_t v = 0;
  if (!ParseInt(node, &v) || v < 0) return false;
  *out = v;
  return true;
}

bool ParseUint(const YAML::Node& node, uint64_t* out) {
  uint64_t v = 0;
  // SimpleAtoi into an unsigned type rejects a leading '-', so -1 is not read as 2^64 - 1.
  if (!IsPlainScalar(node) || !absl::SimpleAtoi(node.Scalar(), &v)) return false;
  *out = v;
  return true;
}

bool ParseDouble(const YAML::Node& node, double* out) {
  double v = 0;
  if (!IsPlainScalar(node) || !absl::SimpleAtod(node.Scalar(), &v) || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

bool ParseBool(const YAML::Node& node, bool* out) {
  if (!IsPlainScalar(node)) return false;
  const std::string& s = node.Scalar();
  // YAML 1.2 core schema booleans only; yaml-cpp would also take yes/no/on/off, which YAML 1.2 and JSON
  // read as strings.
  if (s == "true" || s == "True" || s == "TRUE") {
    *out = true;
    return true;
  }
  if (s == "false" || s == "False" || s == "FALSE") {
    *out = false;
    return true;
  }
  return false;
}

bool ParseString(const YAML::Node& node, std::string* out) {
  if (!node.IsScalar()) return false;
  *out = node.Scalar();
  return true;
}

// The value as a message shows it.
std::string Describe(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return "null";
  if (node.IsMap()) return "a map";
  if (node.IsSequence()) return "a list";
  if (IsPlainScalar(node)) return absl::StrCat("'", node.Scalar(), "'");
  return absl::StrCat("\"", node.Scalar(), "\" (a quoted string)");
}

std::string FormatNumber(double v) { return absl::StrCat(v); }

// The shortest text that reads back as exactly `v` (3e-3 -> "0.003", 1e-6 -> "1e-06").
std::string RoundTripNumber(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return ec == std::errc() ? std::string(buf, end) : absl::StrCat(v);
}

// A YAML double-quoted scalar.
std::string Quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\x%02x", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

int EditDistance(const std::string& a, const std::string& b) {
  // One row of the dynamic-programming table at a time.
  std::vector<int> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    int diagonal = row[0];
    row[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// ---------------------------------------------------------------------------------------------------
// YamlDocument

absl::StatusOr<YamlDocument> YamlDocument::Parse(const std::string& text, const std::string& origin) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(text);
  } catch (const YAML::ParserException& e) {
    // The most common cause of yaml-cpp's terse messages in hand-written files: a tab among the indentation.
    std::string hint;
    if (e.mark.line >= 0) {
      std::istringstream lines(text);
      std::string line;
      for (int i = 0; i <= e.mark.line && std::getline(lines, line); ++i) {
      }
      if (line.find('\t') != std::string::npos)
        hint = " (this line holds a tab: YAML indents with spaces only)";
    }
    return absl::InvalidArgumentError(absl::StrCat(origin, ":", e.mark.line + 1, ":", e.mark.column + 1,
                                                   ": YAML syntax error: ", e.msg, hint));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": YAML error: ", std::string(e.what())));
  }
  // YAML::Load would silently keep the first of several documents; a config file is one document.
  if (docs.size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": holds ", docs.size(), " YAML documents (separated by '---'); expected one"));
  }
  YAML::Node root = docs.empty() ? YAML::Node(YAML::NodeType::Null) : docs[0];
  return YamlDocument(root, origin);
}

absl::Status YamlDocument::ApplyOverride(const std::string& override_text, int min_depth) {
  const size_t eq = override_text.find('=');
  if (eq == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed override '", override_text, "': expected key=value, e.g. parallel.pp=2"));
  }
  const std::string key(absl::StripAsciiWhitespace(override_text.substr(0, eq)));
  const std::string value(absl::StripAsciiWhitespace(override_text.substr(eq + 1)));
  if (key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("malformed override '", override_text,
                                                   "': empty key; expected key=value, e.g. parallel.pp=2"));
  }
  const std::vector<std::string> parts = absl::StrSplit(key, '.');
  for (const std::string& part : parts) {
    if (part.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed override '", override_text, "': empty component in key '", key, "'"));
    }
  }
  if (static_cast<int>(parts.size()) < min_depth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "malformed override '", override_text, "': key '", key, "' has ", parts.size(),
        " component(s), expected at least ", min_depth, " (section.key=value, e.g. parallel.pp=2)"));
  }
  try {
    YAML::Node parsed;
    try {
      parsed = YAML::Load(value);
    } catch (const YAML::ParserException& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("override '", override_text, "': value '", value, "' is not valid YAML: ", e.msg));
    }
    if (!(root_.IsMap() || root_.IsNull())) {
      return absl::InvalidArgumentError(
          absl::StrCat("override '", override_text, "': ", origin_, " is not a map of sections"));
    }
    // reset() rebinds a handle; plain assignment between yaml-cpp handles would overwrite the node the
    // left one refers to, i.e. the document itself.
    YAML::Node map;
    map.reset(root_);
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      YAML::Node child = map[parts[i]];
      if (!child.IsDefined() || child.IsNull()) {
        map[parts[i]] = YAML::Node(YAML::NodeType::Map);
        child.reset(map[parts[i]]);
      } else if (!child.IsMap()) {
        const std::string prefix =
            absl::StrJoin(parts.begin(), parts.begin() + static_cast<std::ptrdiff_t>(i) + 1, ".");
        return absl::InvalidArgumentError(absl::StrCat("override '", override_text, "': ", prefix, " holds ",
                                                       Describe(child), ", not a map"));
      }
      map.reset(child);
    }
    map[parts.back()] = parsed;
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("override '", override_text, "': ", std::string(e.what())));
  }
  overrides_.emplace_back(key, override_text);
  return absl::OkStatus();
}

std::string YamlDocument::Locate(const std::string& path, const YAML::Mark& mark) const {
  // The latest override wins, as it does in the tree.
  for (const auto& [p, text] : std::views::reverse(overrides_)) {
    if (path == p || absl::StartsWith(path, p + ".") || absl::StartsWith(path, p + "[")) {
      return absl::StrCat(origin_, ", override '", text, "'");
    }
  }
  if (mark.line >= 0) return absl::StrCat(origin_, ":", mark.line + 1);
  return origin_;
}

// ---------------------------------------------------------------------------------------------------
// YamlMapReader

YamlMapReader::YamlMapReader(const YamlDocument& doc) : doc_(&doc) {
  mark_ = doc.root().Mark();
  Index(doc.root());
}

YamlMapReader::YamlMapReader(const YamlDocument& doc, const YAML::Node& node, std::string path,
                             const YAML::Mark& mark)
    : doc_(&doc), path_(std::move(path)), mark_(mark) {
  Index(node);
}

// One item per recorded key: a scalar line, or a nested map (its own EmittedMap), in recording order.
struct YamlMapReader::EmittedMap {
  struct Item {
    std::string key, text;              // text: the value of a scalar line
    std::shared_ptr<EmittedMap> child;  // a nested map instead
  };
  std::vector<Item> items;
  void Render(const std::string& indent, std::string* out) const {
    for (const Item& item : items) {
      if (item.child) {
        absl::StrAppend(out, indent, item.key, ":\n");
        item.child->Render(indent + "  ", out);
      } else {
        absl::StrAppend(out, indent, item.key, ": ", item.text, "\n");
      }
    }
  }
};

YamlMapReader YamlMapReader::Emitter() { return YamlMapReader(std::make_shared<EmittedMap>(), ""); }

YamlMapReader::YamlMapReader(std::shared_ptr<EmittedMap> emitted, std::string path)
    : emitted_(std::move(emitted)), path_(std::move(path)) {}

std::string YamlMapReader::EmittedText() const {
  std::string out;
  if (emitted_) emitted_->Render("", &out);
  return out;
}

bool YamlMapReader::Emit(const std::string& key, const std::string& text) {
  if (!emitted_) return false;
  emitted_->items.push_back({key, text, nullptr});
  return true;
}

void YamlMapReader::Index(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return;
  if (!node.IsMap()) {
    const std::string what = path_.empty() ? "the document" : path_;
    status_ = absl::InvalidArgumentError(
        absl::StrCat(Where(nullptr), ": ", what, ": expected a map, found ", Describe(node)));
    return;
  }
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node& key = it->first;
    if (!key.IsScalar()) {
      status_ = absl::InvalidArgumentError(absl::StrCat(doc_->Locate(path_, key.Mark()), ": a key of ",
                                                        path_.empty() ? "the document" : path_, " is ",
                                                        Describe(key), "; keys must be names"));
      return;
    }
    for (const Entry& e : entries_) {
      if (e.key == key.Scalar()) {
        status_ = absl::InvalidArgumentError(absl::StrCat(doc_->Locate(KeyPath(e.key), key.Mark()),
                                                          ": duplicate key '", KeyPath(e.key),
                                                          "' (first given at line ", e.mark.line + 1, ")"));
        return;
      }
    }
    entries_.push_back(Entry{key.Scalar(), it->second, key.Mark(), false});
  }
}

YamlMapReader::Entry* YamlMapReader::Find(const std::string& key) {
  if (std::find(known_.begin(), known_.end(), key) == known_.end()) known_.push_back(key);
  if (!status_.ok()) return nullptr;
  for (Entry& e : entries_) {
    if (e.key == key) {
      e.known = true;
      return &e;
    }
  }
  return nullptr;
}

std::string YamlMapReader::KeyPath(const std::string& key) const {
  return path_.empty() ? key : absl::StrCat(path_, ".", key);
}

std::string YamlMapReader::Where(const Entry* entry) const {
  if (entry == nullptr) return doc_->Locate(path_, mark_);
  return doc_->Locate(KeyPath(entry->key), entry->mark);
}

void YamlMapReader::FailType(const Entry& entry, const std::string& path, const YAML::Node& value,
                             const std::string& expected) {
  if (!status_.ok()) return;
  status_ = absl::InvalidArgumentError(
      absl::StrCat(Where(&entry), ": ", path, ": expected ", expected, ", found ", Describe(value)));
}

void YamlMapReader::Merge(const absl::Status& status) {
  if (!emitting() && status_.ok() && !status.ok()) status_ = status;
}

void YamlMapReader::Fail(const std::string& key, const std::string& message) {
  if (emitting() || !status_.ok()) return;
  const Entry* entry = nullptr;
  for (const Entry& e : entries_) {
    if (e.key == key) entry = &e;
  }
  status_ = absl::InvalidArgumentError(absl::StrCat(Where(entry), ": ", message));
}

void YamlMapReader::Int(const std::string& key, int64_t* out) {
  if (Emit(key, absl::StrCat(*out))) return;
  if (Entry* e = Find(key); e != nullptr && !ParseInt(e->value, out)) {
    FailType(*e, KeyPath(key), e->value, kInteger);
  }
}

void YamlMapReader::Count(const std::string& key, int64_t* out) {
  if (Emit(key, absl::StrCat(*out))) return;
  if (Entry* e = Find(key); e != nullptr && !ParseCount(e->value, out)) {
    FailType(*e, KeyPath(key), e->value, kCount);
  }
}

void YamlMapReader::Uint(const std::string& key, uint64_t* out) {
  if (Emit(key, absl::StrCat(*out))) return;
  if (Entry* e = Find(key); e != nullptr && !ParseUint(e->value, out)) {
    FailType(*e, KeyPath(key), e->value, "a non-negative integer below 2^64");
  }
}

void YamlMapReader::Double(const std::string& key, double* out) {
  if (Emit(key, RoundTripNumber(*out))) return;
  if (Entry* e = Find(key); e != nullptr && !ParseDouble(e->value, out)) {
    FailType(*e, KeyPath(key), e->value, kNumber);
  }
}

void YamlMapReader::Bool(const std::string& key, bool* out) {
  if (Emit(key, *out ? "true" : "false")) return;
  if (Entry* e = Find(key); e != nullptr && !ParseBool(e->value, out)) {
    FailType(*e, KeyPath(key), e->value, kBool);
  }
}

void YamlMapReader::String(const std::string& key, std::string* out) {
  if (Emit(key, Quoted(*out))) return;
  if (Entry* e = Find(key); e != nullptr && !ParseString(e->value, out)) {
    FailType(*e, KeyPath(key), e->value, kString);
  }
}

void YamlMapReader::CountList(const std::string& key, std::vector<int64_t>* out) {
  if (Emit(key, absl::StrCat("[", absl::StrJoin(*out, ", "), "]"))) return;
  Entry* e = Find(key);
  if (e == nullptr) return;
  if (!e->value.IsSequence()) {
    FailType(*e, KeyPath(key), e->value, "a list of non-negative integers");
    return;
  }
  std::vector<int64_t> values;
  for (size_t i = 0; i < e->value.size(); ++i) {
    const YAML::Node item = e->value[i];
    int64_t v = 0;
    if (!ParseCount(item, &v)) {
      const std::string path = absl::StrCat(KeyPath(key), "[", i, "]");
      status_ = absl::InvalidArgumentError(absl::StrCat(doc_->Locate(path, item.Mark()), ": ", path,
                                                        ": expected ", kCount, ", found ", Describe(item)));
      return;
    }
    values.push_back(v);
  }
  *out = std::move(values);
}

void YamlMapReader::ScalarList(const std::string& key, std::vector<std::string>* out) {
  if (emitting()) {
    std::vector<std::string> quoted;
    for (const std::string& v : *out) quoted.push_back(Quoted(v));
    if (Emit(key, absl::StrCat("[", absl::StrJoin(quoted, ", "), "]"))) return;
  }
  Entry* e = Find(key);
  if (e == nullptr) return;
  if (e->value.IsScalar()) {
    *out = {e->value.Scalar()};
    return;
  }
  if (!e->value.IsSequence()) {
    FailType(*e, KeyPath(key), e->value, "a scalar or a list of scalars");
    return;
  }
  std::vector<std::string> values;
  for (size_t i = 0; i < e->value.size(); ++i) {
    const YAML::Node item = e->value[i];
    std::string v;
    if (!ParseString(item, &v)) {
      const std::string path = absl::StrCat(KeyPath(key), "[", i, "]");
      status_ = absl::InvalidArgumentError(absl::StrCat(doc_->Locate(path, item.Mark()), ": ", path,
                                                        ": expected a scalar, found ", Describe(item)));
      return;
    }
    values.push_back(std::move(v));
  }
  *out = std::move(values);
}

void YamlMapReader::DoubleList(const std::string& key, std::vector<double>* out) {
  if (emitting()) {
    std::vector<std::string> numbers;
    for (double v : *out) numbers.push_back(RoundTripNumber(v));
    if (Emit(key, absl::StrCat("[", absl::StrJoin(numbers, ", "), "]"))) return;
  }
  Entry* e = Find(key);
  if (e == nullptr) return;
  if (!e->value.IsSequence()) {
    FailType(*e, KeyPath(key), e->value, "a list of numbers");
    return;
  }
  std::vector<double> values;
  for (size_t i = 0; i < e->value.size(); ++i) {
    const YAML::Node item = e->value[i];
    double v = 0;
    if (!ParseDouble(item, &v)) {
      const std::string path = absl::StrCat(KeyPath(key), "[", i, "]");
      status_ = absl::InvalidArgumentError(absl::StrCat(doc_->Locate(path, item.Mark()), ": ", path,
                                                        ": expected ", kNumber, ", found ", Describe(item)));
      return;
    }
    values.push_back(v);
  }
  *out = std::move(values);
}

void YamlMapReader::CountOrNull(const std::string& key, int64_t null_value, int64_t* out) {
  if (Emit(key, *out == null_value ? "null" : absl::StrCat(*out))) return;
  Entry* e = Find(key);
  if (e == nullptr) return;
  if (e->value.IsNull()) {
    *out = null_value;
  } else if (!ParseCount(e->value, out)) {
    FailType(*e, KeyPath(key), e->value, "a non-negative integer (a count) or null");
  }
}

void YamlMapReader::Ignore(const std::string& key) {
  if (!emitting()) Find(key);
}

void YamlMapReader::RequireString(const std::string& key, const std::string& expected,
                                  const std::string& why) {
  if (emitting()) return;
  Entry* e = Find(key);
  if (e == nullptr) return;
  std::string v;
  if (!ParseString(e->value, &v)) {
    FailType(*e, KeyPath(key), e->value, absl::StrCat("the string ", expected));
  } else if (v != expected) {
    Fail(key, absl::StrCat(KeyPath(key), " must be ", expected, " (", why, "), found ", Describe(e->value)));
  }
}

void YamlMapReader::RequireNumber(const std::string& key, double expected, const std::string& why) {
  if (emitting()) return;
  Entry* e = Find(key);
  if (e == nullptr) return;
  double v = 0;
  if (!ParseDouble(e->value, &v)) {
    FailType(*e, KeyPath(key), e->value, absl::StrCat("the number ", FormatNumber(expected)));
  } else if (v != expected) {
    Fail(key, absl::StrCat(KeyPath(key), " must be ", FormatNumber(expected), " (", why, "), found ",
                           Describe(e->value)));
  }
}

void YamlMapReader::RequireBool(const std::string& key, bool expected, const std::string& why) {
  if (emitting()) return;
  Entry* e = Find(key);
  if (e == nullptr) return;
  bool v = false;
  const char* name = expected ? "true" : "false";
  if (!ParseBool(e->value, &v)) {
    FailType(*e, KeyPath(key), e->value, absl::StrCat("the boolean ", name));
  } else if (v != expected) {
    Fail(key, absl::StrCat(KeyPath(key), " must be ", name, " (", why, "), found ", Describe(e->value)));
  }
}

bool YamlMapReader::Has(const std::string& key) { return emitting() || Find(key) != nullptr; }

bool YamlMapReader::IsNull(const std::string& key) {
  if (emitting()) return false;
  const Entry* e = Find(key);
  return e != nullptr && e->value.IsNull();
}

std::optional<YamlMapReader> YamlMapReader::Map(const std::string& key) {
  if (emitting()) {
    auto child = std::make_shared<EmittedMap>();
    emitted_->items.push_back({key, "", child});
    return YamlMapReader(child, KeyPath(key));
  }
  Entry* e = Find(key);
  if (e == nullptr) return std::nullopt;
  if (!e->value.IsNull() && !e->value.IsMap()) {
    FailType(*e, KeyPath(key), e->value, "a map");
    return std::nullopt;
  }
  return YamlMapReader(*doc_, e->value, KeyPath(key), e->mark);
}

std::optional<std::string> YamlMapReader::FirstUnknownKey() const {
  if (!status_.ok()) return std::nullopt;
  for (const Entry& e : entries_) {
    if (!e.known) return e.key;
  }
  return std::nullopt;
}

absl::Status YamlMapReader::Finish() const {
  if (!status_.ok()) return status_;
  for (const Entry& e : entries_) {
    if (e.known) continue;
    const std::string* best = nullptr;
    int best_distance = std::numeric_limits<int>::max();
    for (const std::string& k : known_) {
      const int d = EditDistance(e.key, k);
      if (d < best_distance) {
        best_distance = d;
        best = &k;
      }
    }
    std::string message;
    if (path_.empty()) {
      message = absl::StrCat(Where(&e), ": unknown section '", e.key,
                             "' (sections: ", absl::StrJoin(known_, ", "), ")");
    } else {
      message = absl::StrCat(Where(&e), ": unknown key '", KeyPath(e.key), "'");
    }
    if (best != nullptr && best_distance <= 3)
      absl::StrAppend(&message, "; did you mean '", KeyPath(*best), "'?");
    return absl::InvalidArgumentError(message);
  }
  return absl::OkStatus();
}

}  // namespace fathom
