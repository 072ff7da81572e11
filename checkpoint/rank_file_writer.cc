#include "checkpoint/rank_file_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "checkpoint/hdf5_rank_file.h"
#include "framework/file_io.h"

namespace fathom {
namespace {

std::string BaseName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// fsync of a file written through another handle (HDF5's): a descriptor opened afterwards flushes the same
// inode's dirty pages.
absl::Status FsyncPath(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return absl::InternalError(absl::StrCat("cannot open ", path, " to fsync it: ", std::strerror(errno)));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return absl::InternalError(absl::StrCat("fsync of ", path, ": ", std::strerror(err)));
  return absl::OkStatus();
}

void CheckSource(const ShardSource& s) {
  FATHOM_CHECK(IsValidKindName(s.kind), "[WriteRankFile] kind '", s.kind, "' is not [a-z0-9_]+");
  FATHOM_CHECK(s.data.defined() && s.data.device() == Device::kCPU, "[WriteRankFile] kind ", s.kind,
               ": the data must be a host tensor");
  FATHOM_CHECK(IsStorableDType(s.data.dtype()), "[WriteRankFile] kind ", s.kind, ": dtype ",
               std::string(DTypeName(s.data.dtype())), " is not f32, f64 or bf16");
  for (const TensorPiece& p : s.pieces) {
    FATHOM_CHECK(p.begin >= 0 && p.begin <= p.end && p.table_offset >= s.table_begin &&
                     p.table_offset + p.numel() <= s.table_begin + s.data.numel(),
                 "[WriteRankFile] kind ", s.kind, ": piece ", p.name, " [", p.begin, ", ", p.end,
                 ") at table offset ", p.table_offset, " lies outside the data [", s.table_begin, ", ",
                 s.table_begin + s.data.numel(), ")");
  }
}

// Closes the file, fsyncs it and its directory, and records its name and size.
absl::Status FinishFile(Hdf5RankFile& file, RankWriteRecord& record) {
  const std::string path = file.path();
  if (absl::Status st = file.Close(); !st.ok()) return st;
  if (absl::Status st = FsyncPath(path); !st.ok()) return st;
  if (absl::Status st = FsyncDirectory(DirectoryOf(path)); !st.ok()) return st;
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0)
    return absl::InternalError(
        absl::StrCat("cannot stat ", path, " after writing it: ", std::strerror(errno)));
  record.file.name = BaseName(path);
  record.file.bytes = static_cast<int64_t>(info.st_size);
  return absl::OkStatus();
}

}  // namespace

int64_t SourceBytes(const std::vector<ShardSource>& sources) {
  int64_t bytes = 0;
  for (const ShardSource& s : sources) {
    bytes += PieceElements(s.pieces) * static_cast<int64_t>(DTypeSize(s.data.dtype()));
  }
  return bytes;
}

absl::StatusOr<RankWriteRecord> WriteRankFile(const std::string& path,
                                              const std::vector<ShardSource>& sources,
                                              const std::function<void()>& after_first_write) {
  // One dataset per kind, its sources' pieces one after another (a ZeRO rank holds its moments in one
  // buffer per parameter group).
  std::vector<std::string> kinds;  // in order of first appearance
  std::map<std::string, std::vector<const ShardSource*>> by_kind;
  for (const ShardSource& s : sources) {
    CheckSource(s);
    std::vector<const ShardSource*>& same = by_kind[s.kind];
    if (same.empty()) kinds.push_back(s.kind);
    FATHOM_CHECK(same.empty() || same.front()->data.dtype() == s.data.dtype(), "[WriteRankFile] kind ",
                 s.kind, " given as ", DTypeName(same.front()->data.dtype()), " and as ",
                 DTypeName(s.data.dtype()));
    same.push_back(&s);
  }
  absl::StatusOr<std::unique_ptr<Hdf5RankFile>> file = Hdf5RankFile::Create(path);
  if (!file.ok()) return file.status();

  RankWriteRecord record;
  bool first_write = true;
  for (const std::string& kind : kinds) {
    int64_t elements = 0;
    for (const ShardSource* s : by_kind[kind]) elements += PieceElements(s->pieces);
    if (elements == 0) continue;  // no dataset for a kind this rank holds nothing of
    const DType dtype = by_kind[kind].front()->data.dtype();
    const size_t esize = DTypeSize(dtype);
    if (absl::Status st = (*file)->CreateDataset(kind, dtype, elements); !st.ok()) return st;
    record.file.datasets.push_back(DatasetRecord{kind, dtype, elements});
    int64_t offset = 0;  // in the dataset
    for (const ShardSource* s : by_kind[kind]) {
      const char* base = static_cast<const char*>(s->data.raw());
      for (const TensorPiece& p : s->pieces) {
        if (p.numel() == 0) continue;
        PieceRecord rec;
        rec.name = p.name;
        rec.shape = p.shape;
        rec.kind = kind;
        rec.dtype = dtype;
        rec.slice.dataset = kind;
        rec.slice.dataset_offset = offset;
        rec.slice.begin = p.begin;
        rec.slice.end = p.end;
        const char* src = base + static_cast<size_t>(p.table_offset - s->table_begin) * esize;
        // Blocks of whole checksum chunks (chunks count from the slice's begin, as readers expect).
        for (int64_t done = 0; done < p.numel();) {
          const int64_t n = std::min(p.numel() - done, kWriteBlockChunks * kCrcChunkElements);
          const char* block = src + static_cast<size_t>(done) * esize;
          for (int64_t c = 0; c < n; c += kCrcChunkElements) {
            const int64_t m = std::min(kCrcChunkElements, n - c);
            rec.slice.crc32c.push_back(
                Crc32c(block + static_cast<size_t>(c) * esize, static_cast<size_t>(m) * esize));
          }
          if (absl::Status st = (*file)->Write(kind, offset + done, n, block); !st.ok()) return st;
          done += n;
          if (first_write && after_first_write) after_first_write();
          first_write = false;
        }
        offset += p.numel();
        record.pieces.push_back(std::move(rec));
      }
    }
  }
  if (absl::Status st = FinishFile(**file, record); !st.ok()) return st;
  return record;
}

absl::StatusOr<RankWriteRecord> WriteStreamedRankFile(const std::string& path, const std::string& kind,
                                                      DType dtype, const std::vector<StreamedPiece>& pieces) {
  FATHOM_CHECK(IsValidKindName(kind), "[WriteStreamedRankFile] kind '", kind, "' is not [a-z0-9_]+");
  FATHOM_CHECK(IsStorableDType(dtype), "[WriteStreamedRankFile] dtype ", DTypeName(dtype),
               " is not f32, f64 or bf16");
  int64_t elements = 0;
  for (const StreamedPiece& p : pieces) {
    FATHOM_CHECK(0 <= p.begin && p.begin <= p.end && p.fill, "[WriteStreamedRankFile] piece ", p.name);
    elements += p.end - p.begin;
  }
  absl::StatusOr<std::unique_ptr<Hdf5RankFile>> file = Hdf5RankFile::Create(path);
  if (!file.ok()) return file.status();
  RankWriteRecord record;
  if (elements > 0) {
    if (absl::Status st = (*file)->CreateDataset(kind, dtype, elements); !st.ok()) return st;
    record.file.datasets.push_back(DatasetRecord{kind, dtype, elements});
  }
  const size_t esize = DTypeSize(dtype);
  const int64_t block_elements = std::min(elements, kWriteBlockChunks * kCrcChunkElements);
  Tensor block = Tensor::Empty({block_elements}, dtype);
  int64_t offset = 0;  // in the dataset
  for (const StreamedPiece& p : pieces) {
    if (p.end == p.begin) continue;
    PieceRecord rec{p.name, p.shape, kind, dtype, SliceRecord{0, kind, offset, p.begin, p.end, {}}};
    // Blocks of whole checksum chunks counted from the slice's begin, as readers expect.
    for (int64_t done = 0; done < p.end - p.begin;) {
      const int64_t n = std::min(p.end - p.begin - done, block_elements);
      const Tensor view = block.Rows(0, n);
      if (absl::Status st = p.fill(p.begin + done, view); !st.ok()) return st;
      const char* bytes = static_cast<const char*>(view.raw());
      for (int64_t c = 0; c < n; c += kCrcChunkElements) {
        const int64_t m = std::min(kCrcChunkElements, n - c);
        rec.slice.crc32c.push_back(
            Crc32c(bytes + static_cast<size_t>(c) * esize, static_cast<size_t>(m) * esize));
      }
      if (absl::Status st = (*file)->Write(kind, offset + done, n, bytes); !st.ok()) return st;
      done += n;
    }
    offset += p.end - p.begin;
    record.pieces.push_back(std::move(rec));
  }
  if (absl::Status st = FinishFile(**file, record); !st.ok()) return st;
  return record;
}

}  // namespace fathom
