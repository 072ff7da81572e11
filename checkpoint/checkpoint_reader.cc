#include "checkpoint/checkpoint_reader.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/hdf5_rank_file.h"
#include "checkpoint/hf_layout.h"
#include "checkpoint/model_config_json.h"
#include "framework/file_io.h"
#include "framework/numeric.h"

namespace fathom {
namespace {

// Chunks read per HDF5 call when they go straight into the caller's buffer, and when they go through the
// scratch buffer (a partial chunk at a range's end, or a dtype conversion).
constexpr int64_t kDirectReadChunks = 16;
constexpr int64_t kScratchReadChunks = 4;

template <class From, class To>
void ConvertLoop(const void* src, void* dst, int64_t n, To (*f)(From)) {
  const From* s = static_cast<const From*>(src);
  To* d = static_cast<To*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = f(s[i]);
}

// n elements from `sd` to `dd` (f32, f64, bf16). f64 -> bf16 rounds through f32, as AdamW stores moments.
void ConvertElements(const void* src, DType sd, void* dst, DType dd, int64_t n) {
  if (sd == dd) {
    std::memcpy(dst, src, static_cast<size_t>(n) * DTypeSize(sd));
    return;
  }
  using K = DType;
  if (sd == K::kF32 && dd == K::kF64)
    return ConvertLoop<float, double>(src, dst, n, [](float v) { return double{v}; });
  if (sd == K::kF64 && dd == K::kF32)
    return ConvertLoop<double, float>(src, dst, n, [](double v) { return static_cast<float>(v); });
  if (sd == K::kBF16 && dd == K::kF32) return ConvertLoop<Bf16, float>(src, dst, n, Bf16ToFloat);
  if (sd == K::kF32 && dd == K::kBF16) return ConvertLoop<float, Bf16>(src, dst, n, FloatToBf16);
  if (sd == K::kBF16 && dd == K::kF64)
    return ConvertLoop<Bf16, double>(src, dst, n, [](Bf16 v) { return double{Bf16ToFloat(v)}; });
  if (sd == K::kF64 && dd == K::kBF16)
    return ConvertLoop<double, Bf16>(src, dst, n,
                                     [](double v) { return FloatToBf16(static_cast<float>(v)); });
  FATHOM_CHECK(false, "[checkpoint] no conversion from ", std::string(DTypeName(sd)), " to ",
               std::string(DTypeName(dd)));
}

absl::StatusOr<std::string> ReadIndexText(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return absl::NotFoundError(
        absl::StrCat("checkpoint directory ", dir, " does not exist (or is not a directory)"));
  const std::string path = absl::StrCat(dir, "/", kIndexFileName);
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat(
        dir, " has no ", kIndexFileName, ": it is not a complete checkpoint (a save that never finished?)"));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) return absl::InternalError(absl::StrCat("cannot read ", path));
  return text.str();
}

}  // namespace

CheckpointReader::CheckpointReader(std::string dir, CheckpointIndex index)
    : dir_(std::move(dir)), index_(std::move(index)) {}

CheckpointReader::~CheckpointReader() = default;

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(const std::string& dir) {
  absl::StatusOr<std::string> text = ReadIndexText(dir);
  if (!text.ok()) return text.status();
  absl::StatusOr<CheckpointIndex> index = IndexFromJson(*text, absl::StrCat(dir, "/", kIndexFileName));
  if (!index.ok()) return index.status();
  for (const FileRecord& f : index->files) {
    const std::string path = absl::StrCat(dir, "/", f.name);
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
      if (errno == ENOENT)
        return absl::NotFoundError(
            absl::StrCat("checkpoint file ", path, " is missing (", kIndexFileName, " lists it)"));
      return absl::InternalError(absl::StrCat("cannot inspect ", path, ": ", std::strerror(errno)));
    }
    if (!S_ISREG(st.st_mode))
      return absl::InvalidArgumentError(absl::StrCat("checkpoint file ", path, " is not a regular file"));
    if (static_cast<int64_t>(st.st_size) != f.bytes) {
      return absl::DataLossError(
          absl::StrCat("checkpoint file ", path, " is ", st.st_size, " bytes, ", kIndexFileName, " recorded ",
                       f.bytes, st.st_size < f.bytes ? " (truncated)" : " (replaced or appended to)"));
    }
  }
  return std::unique_ptr<CheckpointReader>(new CheckpointReader(dir, *std::move(index)));
}

const TensorRecord* CheckpointReader::Find(const std::string& name) const {
  auto it = index_.tensors.find(name);
  return it == index_.tensors.end() ? nullptr : &it->second;
}

std::string CheckpointReader::FilePath(int file) const {
  return absl::StrCat(dir_, "/", index_.files[static_cast<size_t>(file)].name);
}

absl::Status CheckpointReader::CheckModel(const ModelConfig& model, std::vector<std::string>* notes) const {
  ModelConfigDifferences diff = CompareModelConfig(index_.metadata.model, model);
  if (notes != nullptr) *notes = diff.other_keys;
  if (!diff.shape_keys.empty()) {
    return absl::InvalidArgumentError(
      absl::StrCat("checkpoint ", dir_, " was saved by another model (", diff.shape_keys.size(),
                     " shape key(s) differ): ", absl::StrJoin(diff.shape_keys, "; ")));
  }
  if (notes == nullptr) return absl::OkStatus();
  // Tensors the model has no use for (an index.json edited by hand, or written by a newer fathom) are not
  // loaded: said, not refused (what a load by name does; the model's own tensors are checked as read).
  std::set<std::string> known;
  for (const HfTensorSpec& t : HfModelTensors(model)) {
    if (!t.mtp_copy) known.insert(t.name);
  }
  std::vector<std::string> unused;
  for (const auto& [name, record] : index_.tensors) {
    if (!known.count(name)) unused.push_back(absl::StrCat("'", name, "'"));
  }
  if (!unused.empty()) {
    const size_t listed = std::min<size_t>(unused.size(), 5);
    notes->push_back(absl::StrCat(
        "the checkpoint holds ", unused.size(), " tensor(s) the model does not have, not loaded: ",
        absl::StrJoin(unused.begin(), unused.begin() + static_cast<std::ptrdiff_t>(listed), ", "),
        unused.size() > listed ? absl::StrCat(" and ", unused.size() - listed, " more") : ""));
  }
  return absl::OkStatus();
}

absl::StatusOr<Hdf5RankFile*> CheckpointReader::File(int file) {
  auto it = open_files_.find(file);
  if (it != open_files_.end()) return it->second.get();
  const std::string path = FilePath(file);
  absl::StatusOr<std::unique_ptr<Hdf5RankFile>> f = Hdf5RankFile::OpenReadOnly(path);
  if (!f.ok()) return absl::DataLossError(absl::StrCat("checkpoint file ", f.status().message()));
  for (const DatasetRecord& d : index_.files[static_cast<size_t>(file)].datasets) {
    absl::StatusOr<Hdf5RankFile::DatasetInfo> info = (*f)->OpenDataset(d.name);
    if (!info.ok()) return absl::DataLossError(absl::StrCat("checkpoint file ", info.status().message()));
    if (info->dtype != d.dtype || info->elements != d.elements) {
      return absl::DataLossError(absl::StrCat("checkpoint file ", path, ": dataset '", d.name, "' holds ",
                                              info->elements, " ", std::string(DTypeName(info->dtype)),
                                              " elements, ", kIndexFileName, " recorded ", d.elements, " ",
                                              std::string(DTypeName(d.dtype))));
    }
  }
  Hdf5RankFile* raw = f->get();
  open_files_[file] = *std::move(f);
  return raw;
}

absl::Status CheckpointReader::CheckFiles() {
  for (int f = 0; f < static_cast<int>(index_.files.size()); ++f) {
    if (absl::StatusOr<Hdf5RankFile*> file = File(f); !file.ok()) return file.status();
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::ReadFromSlice(const std::string& name, const std::string& kind,
                                             const SliceRecord& slice, DType stored, int64_t lo, int64_t hi,
                                             char* out_bytes, DType out_dtype) {
  absl::StatusOr<Hdf5RankFile*> file = File(slice.file);
  if (!file.ok()) return file.status();
  const int64_t chunk = index_.crc_chunk_elements;
  const size_t ssize = DTypeSize(stored), osize = DTypeSize(out_dtype);
  // Chunks c of the slice cover tensor elements [slice.begin + c * chunk, ...), the last one shorter.
  auto chunk_begin = [&](int64_t c) { return slice.begin + c * chunk; };
  auto chunk_end = [&](int64_t c) { return std::min(slice.end, slice.begin + (c + 1) * chunk); };
  // A chunk that lies wholly inside [lo, hi) in the stored dtype is read straight into the output.
  auto direct = [&](int64_t c) { return stored == out_dtype && chunk_begin(c) >= lo && chunk_end(c) <= hi; };
  const int64_t first = (lo - slice.begin) / chunk, last = (hi - 1 - slice.begin) / chunk;
  for (int64_t c = first; c <= last;) {
    const bool is_direct = direct(c);
    int64_t run = 1;
    while (c + run <= last && run < (is_direct ? kDirectReadChunks : kScratchReadChunks) &&
           direct(c + run) == is_direct) {
      ++run;
    }
    const int64_t rb = chunk_begin(c), re = chunk_end(c + run - 1);
    char* buffer;
    if (is_direct) {
      buffer = out_bytes + static_cast<size_t>(rb - lo) * osize;
    } else {
      scratch_.resize(static_cast<size_t>(re - rb) * ssize);
      buffer = scratch_.data();
    }
    if (absl::Status s =
            (*file)->Read(slice.dataset, slice.dataset_offset + (rb - slice.begin), re - rb, buffer);
        !s.ok()) {
      return absl::DataLossError(
          absl::StrCat("checkpoint file ", s.message(), " for tensor '", name, "' (", kind, ")"));
    }
    for (int64_t k = c; k < c + run; ++k) {
      const char* bytes = buffer + static_cast<size_t>(chunk_begin(k) - rb) * ssize;
      const uint32_t crc = Crc32c(bytes, static_cast<size_t>(chunk_end(k) - chunk_begin(k)) * ssize);
      const uint32_t want = slice.crc32c[static_cast<size_t>(k)];
      if (crc != want) {
        return absl::DataLossError(absl::StrFormat(
            "checkpoint file %s is corrupt: tensor '%s' (%s) elements [%d, %d) (dataset '%s' at offset %d) "
            "have "
            "CRC-32C 0x%08x, %s recorded 0x%08x",
            FilePath(slice.file), name, kind, chunk_begin(k), chunk_end(k), slice.dataset,
            slice.dataset_offset + (chunk_begin(k) - slice.begin), crc, kIndexFileName, want));
      }
    }
    if (!is_direct) {
      const int64_t a = std::max(lo, rb), b = std::min(hi, re);
      ConvertElements(buffer + static_cast<size_t>(a - rb) * ssize, stored,
                      out_bytes + static_cast<size_t>(a - lo) * osize, out_dtype, b - a);
    }
    c += run;
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::Read(const std::string& name, const std::string& kind, int64_t begin,
                                    int64_t end, const Tensor& out) {
  FATHOM_CHECK(out.defined() && out.device() == Device::kCPU && IsStorableDType(out.dtype()) &&
                   out.numel() == end - begin,
               "[CheckpointReader::Read] ", name, ": out must be a CPU f32/f64/bf16 tensor of ", end - begin,
               " elements, got ", out.defined() ? out.shape_str() : "undefined");
  const TensorRecord* t = Find(name);
  if (t == nullptr)
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", dir_, " has no tensor '", name, "'"));
  auto k = t->kinds.find(kind);
  if (k == t->kinds.end()) {
    std::vector<std::string> have;
    for (const auto& [n, rec] : t->kinds) have.push_back(n);
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", dir_, ": tensor '", name, "' has no ", kind,
                                                   " state (it has: ", absl::StrJoin(have, ", "), ")"));
  }
  const int64_t numel = NumElements(t->shape);
  if (!(0 <= begin && begin <= end && end <= numel)) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", dir_, ": elements [", begin, ", ", end,
                                                   ") of tensor '", name, "' asked for, it has ", numel, " ",
                                                   ShapeString(t->shape)));
  }
  char* out_bytes = static_cast<char*>(out.raw());
  const size_t osize = DTypeSize(out.dtype());
  int64_t cursor = begin;
  for (const SliceRecord& s : k->second.slices) {  // sorted by begin: the first slice holding an element wins
    if (cursor >= end) break;
    if (s.end <= cursor) continue;
    if (s.begin > cursor) break;  // a gap; the index's validation makes this unreachable
    const int64_t hi = std::min(end, s.end);
    absl::Status st = ReadFromSlice(name, kind, s, k->second.dtype, cursor, hi,
                                    out_bytes + static_cast<size_t>(cursor - begin) * osize, out.dtype());
    if (!st.ok()) return st;
    cursor = hi;
  }
  if (cursor < end) {
    return absl::DataLossError(absl::StrCat("checkpoint ", dir_, ": elements [", cursor, ", ", end,
                                            ") of tensor '", name, "' (", kind, ") are in no slice"));
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::CheckPieces(const std::string& kind,
                                           const std::vector<TensorPiece>& pieces) const {
  constexpr size_t kMaxListed = 20;
  std::vector<std::string> problems;
  size_t count = 0;
  std::string last;  // pieces of one tensor come in a row: report it once
  for (const TensorPiece& p : pieces) {
    if (p.name == last) continue;
    last = p.name;
    std::string problem;
    const TensorRecord* t = Find(p.name);
    if (t == nullptr) {
      problem = absl::StrCat("tensor '", p.name, "' is missing");
    } else if (t->shape != p.shape) {
      problem = absl::StrCat("tensor '", p.name, "' is ", ShapeString(t->shape), ", the model's is ",
                             ShapeString(p.shape));
    } else if (!t->kinds.count(kind)) {
      problem = absl::StrCat("tensor '", p.name, "' has no ", kind, " state");
    }
    if (problem.empty()) continue;
    ++count;
    if (problems.size() < kMaxListed) problems.push_back(std::move(problem));
  }
  if (count == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "checkpoint ", dir_, " does not fit the model (", kind, "): ", absl::StrJoin(problems, "; "),
      count > problems.size() ? absl::StrCat("; and ", count - problems.size(), " more") : ""));
}

absl::Status CheckpointReader::ReadPieces(const std::string& kind, const std::vector<TensorPiece>& pieces,
                                          const Tensor& dst, int64_t dst_table_begin) {
  FATHOM_CHECK(dst.defined() && dst.device() == Device::kCPU && IsStorableDType(dst.dtype()),
               "[CheckpointReader::ReadPieces] dst must be a CPU f32/f64/bf16 tensor");
  if (absl::Status s = CheckPieces(kind, pieces); !s.ok()) return s;
  const Tensor flat = dst.Reshape({dst.numel()});
  for (const TensorPiece& p : pieces) {
    const int64_t at = p.table_offset - dst_table_begin;
    FATHOM_CHECK(at >= 0 && at + p.numel() <= flat.numel(), "[CheckpointReader::ReadPieces] piece ", p.name,
                 " at table offset ", p.table_offset, " outside dst [", dst_table_begin, ", ",
                 dst_table_begin + flat.numel(), ")");
    if (p.numel() == 0) continue;
    if (absl::Status s = Read(p.name, kind, p.begin, p.end, flat.Rows(at, at + p.numel())); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace fathom
