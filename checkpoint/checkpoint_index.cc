#include "checkpoint/checkpoint_index.h"

#include <algorithm>
#include <cstdio>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#ifndef FATHOM_VERSION
#define FATHOM_VERSION "unknown"
#endif

namespace fathom {

using nlohmann::json;

std::string FathomVersion() { return FATHOM_VERSION; }

std::string RankFileName(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "rank_%05d.h5", rank);
  return buf;
}

bool IsValidKindName(std::string_view kind) {
  if (kind.empty()) return false;
  for (char c : kind) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

bool IsStorableDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF64 || dtype == DType::kBF16;
}

namespace {

int64_t CrcChunks(int64_t elements, int64_t chunk) { return (elements + chunk - 1) / chunk; }

// ---- reading JSON fields with messages that name the field ------------------------------------------------

// The value at `key` of object `obj` (at JSON path `where`), or an error naming what was expected.
absl::StatusOr<const json*> Field(const json& obj, const char* key, const std::string& where) {
  if (!obj.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " must be an object"));
  auto it = obj.find(key);
  if (it == obj.end()) return absl::InvalidArgumentError(absl::StrCat(where, ".", key, " is missing"));
  return &*it;
}

std::string Shown(const json& v) {
  std::string s = v.dump();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

absl::Status TypeError(const std::string& where, const char* key, const char* expected, const json& v) {
  return absl::InvalidArgumentError(
      absl::StrCat(where, ".", key, " must be ", expected, ", found ", Shown(v)));
}

absl::Status GetInt(const json& obj, const char* key, const std::string& where, int64_t* out) {
  absl::StatusOr<const json*> v = Field(obj, key, where);
  if (!v.ok()) return v.status();
  if (!(*v)->is_number_integer()) return TypeError(where, key, "an integer", **v);
  if ((*v)->is_number_unsigned() && (*v)->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    return TypeError(where, key, "an integer below 2^63", **v);
  *out = (*v)->get<int64_t>();
  return absl::OkStatus();
}

absl::Status GetCount(const json& obj, const char* key, const std::string& where, int64_t* out) {
  if (absl::Status s = GetInt(obj, key, where, out); !s.ok()) return s;
  if (*out < 0) return TypeError(where, key, "an integer >= 0", obj.at(key));
  return absl::OkStatus();
}

absl::Status GetString(const json& obj, const char* key, const std::string& where, std::string* out) {
  absl::StatusOr<const json*> v = Field(obj, key, where);
  if (!v.ok()) return v.status();
  if (!(*v)->is_string()) return TypeError(where, key, "a string", **v);
  *out = (*v)->get<std::string>();
  return absl::OkStatus();
}

absl::Status GetDType(const json& obj, const char* key, const std::string& where, DType* out) {
  std::string name;
  if (absl::Status s = GetString(obj, key, where, &name); !s.ok()) return s;
  absl::StatusOr<DType> d = ParseDType(name);
  if (!d.ok() || !IsStorableDType(*d))
    return TypeError(where, key, "one of \"f32\", \"f64\", \"bf16\"", obj.at(key));
  *out = *d;
  return absl::OkStatus();
}

absl::StatusOr<const json*> GetTyped(const json& obj, const char* key, const std::string& where, bool array) {
  absl::StatusOr<const json*> v = Field(obj, key, where);
  if (!v.ok()) return v.status();
  if (array ? !(*v)->is_array() : !(*v)->is_object())
    return TypeError(where, key, array ? "an array" : "an object", **v);
  return v;
}

// ---- JSON <-> records -------------------------------------------------------------------------------------

json SliceToJson(const SliceRecord& s) {
  return json{{"file", s.file},   {"dataset", s.dataset}, {"offset", s.dataset_offset},
              {"begin", s.begin}, {"end", s.end},         {"crc32c", s.crc32c}};
}

absl::Status SliceFromJson(const json& j, const std::string& where, SliceRecord* s) {
  int64_t file = 0;
  absl::Status st = GetCount(j, "file", where, &file);
  if (st.ok()) st = GetString(j, "dataset", where, &s->dataset);
  if (st.ok()) st = GetCount(j, "offset", where, &s->dataset_offset);
  if (st.ok()) st = GetCount(j, "begin", where, &s->begin);
  if (st.ok()) st = GetCount(j, "end", where, &s->end);
  if (!st.ok()) return st;
  if (file > INT32_MAX) return TypeError(where, "file", "a file index", j.at("file"));
  s->file = static_cast<int>(file);
  absl::StatusOr<const json*> crcs = GetTyped(j, "crc32c", where, /*array=*/true);
  if (!crcs.ok()) return crcs.status();
  s->crc32c.clear();
  for (const json& c : **crcs) {
    if (!c.is_number_unsigned() || c.get<uint64_t>() > UINT32_MAX)
      return TypeError(where, "crc32c", "an array of 32-bit unsigned integers", **crcs);
    s->crc32c.push_back(c.get<uint32_t>());
  }
  return absl::OkStatus();
}

json FileToJson(const FileRecord& f) {
  json datasets = json::array();
  for (const DatasetRecord& d : f.datasets) {
    datasets.push_back(
        {{"name", d.name}, {"dtype", std::string(DTypeName(d.dtype))}, {"elements", d.elements}});
  }
  return json{{"name", f.name}, {"bytes", f.bytes}, {"datasets", std::move(datasets)}};
}

absl::Status FileFromJson(const json& j, const std::string& where, FileRecord* f) {
  absl::Status st = GetString(j, "name", where, &f->name);
  if (st.ok()) st = GetCount(j, "bytes", where, &f->bytes);
  if (!st.ok()) return st;
  absl::StatusOr<const json*> datasets = GetTyped(j, "datasets", where, /*array=*/true);
  if (!datasets.ok()) return datasets.status();
  for (size_t i = 0; i < (*datasets)->size(); ++i) {
    const std::string w = absl::StrCat(where, ".datasets[", i, "]");
    DatasetRecord d;
    st = GetString((**datasets)[i], "name", w, &d.name);
    if (st.ok()) st = GetDType((**datasets)[i], "dtype", w, &d.dtype);
    if (st.ok()) st = GetCount((**datasets)[i], "elements", w, &d.elements);
    if (!st.ok()) return st;
    f->datasets.push_back(std::move(d));
  }
  return absl::OkStatus();
}

json ShapeToJson(const Shape& shape) { return json(shape); }

absl::Status ShapeFromJson(const json& obj, const char* key, const std::string& where, Shape* shape) {
  absl::StatusOr<const json*> v = GetTyped(obj, key, where, /*array=*/true);
  if (!v.ok()) return v.status();
  shape->clear();
  for (const json& d : **v) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      return TypeError(where, key, "an array of integers >= 0", **v);
    shape->push_back(d.get<int64_t>());
  }
  return absl::OkStatus();
}

json MetadataToJson(const CheckpointMetadata& m) {
  return json{{"step", m.step},
              {"lr_schedule_step", m.lr_schedule_step},
              {"seed", m.seed},
              {"rng", m.rng},
              {"data_loader", m.data_loader},
              {"extra", m.extra},
              {"recipe", m.recipe},
              {"model", m.model}};
}

absl::Status MetadataFromJson(const json& j, const std::string& where, CheckpointMetadata* m) {
  absl::Status st = GetCount(j, "step", where, &m->step);
  if (st.ok()) st = GetCount(j, "lr_schedule_step", where, &m->lr_schedule_step);
  if (st.ok()) st = GetString(j, "recipe", where, &m->recipe);
  if (!st.ok()) return st;
  absl::StatusOr<const json*> seed = Field(j, "seed", where);
  if (!seed.ok()) return seed.status();
  if (!(*seed)->is_number_unsigned() && !((*seed)->is_number_integer() && (*seed)->get<int64_t>() >= 0))
    return TypeError(where, "seed", "an unsigned integer", **seed);
  m->seed = (*seed)->get<uint64_t>();
  for (auto [key, out] : {std::pair<const char*, json*>{"rng", &m->rng},
                          {"data_loader", &m->data_loader},
                          {"extra", &m->extra},
                          {"model", &m->model}}) {
    absl::StatusOr<const json*> v = GetTyped(j, key, where, /*array=*/false);
    if (!v.ok()) return v.status();
    *out = **v;
  }
  return absl::OkStatus();
}

// ---- validation shared by the writer's merge and the reader -----------------------------------------------

// Every slice refers to an existing dataset of the right dtype and fits in it and in its tensor; every
// (tensor, kind) is covered. Messages without a location prefix: the callers add theirs.
absl::Status ValidateIndex(const CheckpointIndex& index) {
  if (index.crc_chunk_elements <= 0)
    return absl::InvalidArgumentError(
        absl::StrCat("crc_chunk_elements must be > 0, found ", index.crc_chunk_elements));
  std::set<std::string> names;
  for (const FileRecord& f : index.files) {
    if (f.name.empty() || f.name.find('/') != std::string::npos || f.name == "." || f.name == "..")
      return absl::InvalidArgumentError(absl::StrCat("file name '", f.name, "' is not a plain file name"));
    if (!names.insert(f.name).second)
      return absl::InvalidArgumentError(absl::StrCat("file '", f.name, "' is listed twice"));
    for (const DatasetRecord& d : f.datasets) {
      if (!IsValidKindName(d.name))
        return absl::InvalidArgumentError(
            absl::StrCat("file '", f.name, "': dataset name '", d.name, "' is not [a-z0-9_]+"));
    }
  }
  for (const auto& [name, tensor] : index.tensors) {
    const int64_t numel = NumElements(tensor.shape);
    for (const auto& [kind, rec] : tensor.kinds) {
      const std::string what = absl::StrCat("tensor '", name, "' (", kind, ")");
      if (!IsValidKindName(kind))
        return absl::InvalidArgumentError(absl::StrCat(what, ": kind name is not [a-z0-9_]+"));
      int64_t covered = 0;  // [0, covered) is covered by the slices seen so far (sorted by begin)
      for (const SliceRecord& s : rec.slices) {
        if (s.file < 0 || s.file >= static_cast<int>(index.files.size()))
          return absl::InvalidArgumentError(
              absl::StrCat(what, ": a slice names file ", s.file, " of ", index.files.size()));
        const FileRecord& f = index.files[static_cast<size_t>(s.file)];
        const DatasetRecord* d = nullptr;
        for (const DatasetRecord& c : f.datasets) {
          if (c.name == s.dataset) d = &c;
        }
        if (d == nullptr)
          return absl::InvalidArgumentError(absl::StrCat(what, ": a slice names dataset '", s.dataset,
                                                         "', which ", f.name, " does not list"));
        if (d->dtype != rec.dtype)
          return absl::InvalidArgumentError(absl::StrCat(what, " is ", std::string(DTypeName(rec.dtype)),
                                                         " but dataset '", s.dataset, "' of ", f.name, " is ",
                                                         std::string(DTypeName(d->dtype))));
        if (!(0 <= s.begin && s.begin < s.end && s.end <= numel))
          return absl::InvalidArgumentError(absl::StrCat(what, ": slice [", s.begin, ", ", s.end,
                                                         ") is not a non-empty range inside its ", numel,
                                                         " elements ", ShapeString(tensor.shape)));
        if (s.dataset_offset < 0 || s.dataset_offset > d->elements - (s.end - s.begin))
          return absl::InvalidArgumentError(absl::StrCat(
              what, ": slice at offset ", s.dataset_offset, " of ", s.end - s.begin,
              " elements overruns dataset '", s.dataset, "' of ", f.name, " (", d->elements, " elements)"));
        const int64_t chunks = CrcChunks(s.end - s.begin, index.crc_chunk_elements);
        if (static_cast<int64_t>(s.crc32c.size()) != chunks)
          return absl::InvalidArgumentError(absl::StrCat(what, ": slice [", s.begin, ", ", s.end, ") has ",
                                                         s.crc32c.size(), " checksums, expected ", chunks));
        if (s.begin > covered)
          return absl::InvalidArgumentError(
              absl::StrCat(what, ": elements [", covered, ", ", s.begin, ") of ", numel, " are in no slice"));
        covered = std::max(covered, s.end);
      }
      if (covered < numel)
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": elements [", covered, ", ", numel, ") of ", numel, " are in no slice"));
    }
  }
  return absl::OkStatus();
}

void SortSlices(CheckpointIndex& index) {
  for (auto& [name, tensor] : index.tensors) {
    for (auto& [kind, rec] : tensor.kinds) {
      std::sort(rec.slices.begin(), rec.slices.end(), [](const SliceRecord& a, const SliceRecord& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.file < b.file;
      });
    }
  }
}

}  // namespace

std::string RankWriteRecordToJson(const RankWriteRecord& record) {
  json pieces = json::array();
  for (const PieceRecord& p : record.pieces) {
    pieces.push_back({{"name", p.name},
                      {"shape", ShapeToJson(p.shape)},
                      {"kind", p.kind},
                      {"dtype", std::string(DTypeName(p.dtype))},
                      {"slice", SliceToJson(p.slice)}});
  }
  return json{{"file", FileToJson(record.file)}, {"pieces", std::move(pieces)}}.dump();
}

absl::StatusOr<RankWriteRecord> RankWriteRecordFromJson(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InternalError("a rank's write record is not valid JSON");
  RankWriteRecord r;
  absl::StatusOr<const json*> file = GetTyped(j, "file", "record", /*array=*/false);
  if (!file.ok()) return file.status();
  if (absl::Status s = FileFromJson(**file, "record.file", &r.file); !s.ok()) return s;
  absl::StatusOr<const json*> pieces = GetTyped(j, "pieces", "record", /*array=*/true);
  if (!pieces.ok()) return pieces.status();
  for (size_t i = 0; i < (*pieces)->size(); ++i) {
    const json& pj = (**pieces)[i];
    const std::string w = absl::StrCat("record.pieces[", i, "]");
    PieceRecord p;
    absl::Status s = GetString(pj, "name", w, &p.name);
    if (s.ok()) s = ShapeFromJson(pj, "shape", w, &p.shape);
    if (s.ok()) s = GetString(pj, "kind", w, &p.kind);
    if (s.ok()) s = GetDType(pj, "dtype", w, &p.dtype);
    absl::StatusOr<const json*> slice = s.ok() ? GetTyped(pj, "slice", w, false) : s;
    if (s.ok() && slice.ok()) s = SliceFromJson(**slice, w + ".slice", &p.slice);
    if (s.ok() && !slice.ok()) s = slice.status();
    if (!s.ok()) return s;
    r.pieces.push_back(std::move(p));
  }
  return r;
}

absl::StatusOr<CheckpointIndex> MergeRankRecords(const std::vector<RankWriteRecord>& records,
                                                 CheckpointMetadata metadata) {
  CheckpointIndex index;
  index.fathom_version = FathomVersion();
  index.metadata = std::move(metadata);
  for (size_t r = 0; r < records.size(); ++r) {
    index.files.push_back(records[r].file);
    for (const PieceRecord& p : records[r].pieces) {
      auto [it, fresh] = index.tensors.try_emplace(p.name);
      TensorRecord& t = it->second;
      if (fresh) t.shape = p.shape;
      if (t.shape != p.shape) {
        return absl::InternalError(absl::StrCat("checkpoint writers disagree: tensor '", p.name, "' is ",
                                                ShapeString(t.shape), " on one rank and ",
                                                ShapeString(p.shape), " on rank ", r));
      }
      auto [kit, kind_fresh] = t.kinds.try_emplace(p.kind);
      if (kind_fresh) kit->second.dtype = p.dtype;
      if (kit->second.dtype != p.dtype) {
        return absl::InternalError(absl::StrCat("checkpoint writers disagree: tensor '", p.name, "' (",
                                                p.kind, ") is ", std::string(DTypeName(kit->second.dtype)),
                                                " on one rank and ", std::string(DTypeName(p.dtype)),
                                                " on rank ", r));
      }
      SliceRecord slice = p.slice;
      slice.file = static_cast<int>(r);
      kit->second.slices.push_back(std::move(slice));
    }
  }
  SortSlices(index);
  if (absl::Status s = ValidateIndex(index); !s.ok()) {
    return absl::InternalError(absl::StrCat("the ranks' pieces do not make a checkpoint: ", s.message()));
  }
  return index;
}

std::string IndexToJson(const CheckpointIndex& index) {
  json files = json::array();
  for (const FileRecord& f : index.files) files.push_back(FileToJson(f));
  json tensors = json::object();
  for (const auto& [name, t] : index.tensors) {
    json kinds = json::object();
    for (const auto& [kind, rec] : t.kinds) {
      json slices = json::array();
      for (const SliceRecord& s : rec.slices) slices.push_back(SliceToJson(s));
      kinds[kind] = {{"dtype", std::string(DTypeName(rec.dtype))}, {"slices", std::move(slices)}};
    }
    tensors[name] = {{"shape", ShapeToJson(t.shape)}, {"kinds", std::move(kinds)}};
  }
  json j = {{"format", std::string(kCheckpointFormat)},
            {"format_version", index.format_version},
            {"fathom_version", index.fathom_version},
            {"crc_chunk_elements", index.crc_chunk_elements},
            {"metadata", MetadataToJson(index.metadata)},
            {"files", std::move(files)},
            {"tensors", std::move(tensors)}};
  // Compact: at 671B scale the index holds about two million checksums.
  return j.dump() + "\n";
}

absl::StatusOr<CheckpointIndex> IndexFromJson(std::string_view text, const std::string& path) {
  auto fail = [&](const absl::Status& s) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
  };
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object (a damaged or foreign index)"));
  CheckpointIndex index;
  std::string format;
  int64_t version = 0;
  absl::Status s = GetString(j, "format", "index", &format);
  if (s.ok() && format != kCheckpointFormat)
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": index.format is '", format, "', expected '", kCheckpointFormat, "'"));
  if (s.ok()) s = GetInt(j, "format_version", "index", &version);
  if (!s.ok()) return fail(s);
  if (version != kCheckpointFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": checkpoint format_version ", version,
                                                   " is not supported; this fathom (", FathomVersion(),
                                                   ") reads format_version ", kCheckpointFormatVersion));
  }
  index.format_version = static_cast<int>(version);
  s = GetString(j, "fathom_version", "index", &index.fathom_version);
  if (s.ok()) s = GetInt(j, "crc_chunk_elements", "index", &index.crc_chunk_elements);
  absl::StatusOr<const json*> meta = s.ok() ? GetTyped(j, "metadata", "index", false) : s;
  if (s.ok() && !meta.ok()) s = meta.status();
  if (s.ok()) s = MetadataFromJson(**meta, "index.metadata", &index.metadata);
  if (!s.ok()) return fail(s);

  absl::StatusOr<const json*> files = GetTyped(j, "files", "index", /*array=*/true);
  if (!files.ok()) return fail(files.status());
  for (size_t i = 0; i < (*files)->size(); ++i) {
    FileRecord f;
    s = FileFromJson((**files)[i], absl::StrCat("index.files[", i, "]"), &f);
    if (!s.ok()) return fail(s);
    index.files.push_back(std::move(f));
  }
  absl::StatusOr<const json*> tensors = GetTyped(j, "tensors", "index", /*array=*/false);
  if (!tensors.ok()) return fail(tensors.status());
  for (const auto& [name, tj] : (*tensors)->items()) {
    const std::string w = absl::StrCat("index.tensors[\"", name, "\"]");
    TensorRecord t;
    s = ShapeFromJson(tj, "shape", w, &t.shape);
    absl::StatusOr<const json*> kinds = s.ok() ? GetTyped(tj, "kinds", w, false) : s;
    if (s.ok() && !kinds.ok()) s = kinds.status();
    if (!s.ok()) return fail(s);
    for (const auto& [kind, kj] : (*kinds)->items()) {
      const std::string kw = absl::StrCat(w, ".kinds.", kind);
      TensorKindRecord rec;
      s = GetDType(kj, "dtype", kw, &rec.dtype);
      absl::StatusOr<const json*> slices = s.ok() ? GetTyped(kj, "slices", kw, true) : s;
      if (s.ok() && !slices.ok()) s = slices.status();
      if (!s.ok()) return fail(s);
      for (size_t i = 0; i < (*slices)->size(); ++i) {
        SliceRecord slice;
        s = SliceFromJson((**slices)[i], absl::StrCat(kw, ".slices[", i, "]"), &slice);
        if (!s.ok()) return fail(s);
        rec.slices.push_back(std::move(slice));
      }
      t.kinds[kind] = std::move(rec);
    }
    index.tensors[name] = std::move(t);
  }
  SortSlices(index);
  if (absl::Status v = ValidateIndex(index); !v.ok()) return fail(v);
  return index;
}

}  // namespace fathom
