#include "data/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "framework/check.h"

namespace fathom {
namespace {

constexpr int64_t kScanChunkBytes = 4 << 20;

absl::Status Invalid(const std::string& file, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}

// The .idx arrays start at offset 34, so their elements are unaligned: read them with memcpy.
template <class T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

bool IsIntegerCode(uint8_t code) { return (code >= 1 && code <= 5) || code == 8; }

// Calls fn(tag) with a value of the C++ type of `dtype`. REQUIRES: an integer dtype.
template <class Fn>
auto DispatchTokenType(IndexedDType dtype, Fn&& fn) {
  switch (dtype) {
    case IndexedDType::kUint8:
      return fn(uint8_t{});
    case IndexedDType::kInt8:
      return fn(int8_t{});
    case IndexedDType::kInt16:
      return fn(int16_t{});
    case IndexedDType::kInt32:
      return fn(int32_t{});
    case IndexedDType::kInt64:
      return fn(int64_t{});
    case IndexedDType::kUint16:
      return fn(uint16_t{});
    default:
      FATHOM_CHECK(false, "[indexed_dataset] not an integer dtype code ", static_cast<int>(dtype));
  }
  return fn(int32_t{});  // unreachable
}

// Index of the first token of src[0, count) outside [0, vocab), or -1. The min/max pass vectorises; the
// search runs only when it failed.
template <class T>
int64_t FirstBadToken(const uint8_t* src, int64_t count, int64_t vocab) {
  T lo = std::numeric_limits<T>::max(), hi = std::numeric_limits<T>::min();
  for (int64_t i = 0; i < count; ++i) {
    const T v = Load<T>(src + i * static_cast<int64_t>(sizeof(T)));
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (count == 0 ||
      (static_cast<int64_t>(lo) >= 0 && static_cast<uint64_t>(hi) < static_cast<uint64_t>(vocab))) {
    return -1;
  }
  for (int64_t i = 0; i < count; ++i) {
    const T v = Load<T>(src + i * static_cast<int64_t>(sizeof(T)));
    if (static_cast<int64_t>(v) < 0 || static_cast<uint64_t>(v) >= static_cast<uint64_t>(vocab)) return i;
  }
  return -1;
}

absl::Status MapFile(const std::string& path, int* fd_out, const uint8_t** data, int64_t* bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Invalid(path, errno == ENOENT
                             ? std::string("no such file (a Megatron dataset is PREFIX.idx and PREFIX.bin)")
                             : absl::StrCat("cannot open: ", std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Invalid(path, "not a regular file");
  }
  *bytes = static_cast<int64_t>(st.st_size);
  *data = nullptr;
  if (*bytes > 0) {
    void* p = ::mmap(nullptr, static_cast<size_t>(*bytes), PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return Invalid(path, absl::StrCat("mmap failed: ", std::strerror(err)));
    }
    *data = static_cast<const uint8_t*>(p);
  }
  if (fd_out != nullptr) {
    *fd_out = fd;
  } else {
    ::close(fd);  // the mapping stays valid
  }
  return absl::OkStatus();
}

}  // namespace

int64_t IndexedDTypeSize(IndexedDType dtype) {
  switch (dtype) {
    case IndexedDType::kUint8:
    case IndexedDType::kInt8:
      return 1;
    case IndexedDType::kInt16:
    case IndexedDType::kUint16:
      return 2;
    case IndexedDType::kInt32:
    case IndexedDType::kFloat32:
      return 4;
    case IndexedDType::kInt64:
    case IndexedDType::kFloat64:
      return 8;
  }
  FATHOM_CHECK(false, "[indexed_dataset] unknown dtype code ", static_cast<int>(dtype));
  return 0;
}

const char* IndexedDTypeName(IndexedDType dtype) {
  switch (dtype) {
    case IndexedDType::kUint8:
      return "uint8";
    case IndexedDType::kInt8:
      return "int8";
    case IndexedDType::kInt16:
      return "int16";
    case IndexedDType::kInt32:
      return "int32";
    case IndexedDType::kInt64:
      return "int64";
    case IndexedDType::kFloat64:
      return "float64";
    case IndexedDType::kFloat32:
      return "float32";
    case IndexedDType::kUint16:
      return "uint16";
  }
  return "unknown";
}

IndexedDType IndexedDTypeForVocab(int64_t vocab_size) {
  return vocab_size < 65500 ? IndexedDType::kUint16 : IndexedDType::kInt32;
}

// ---------------------------------------------------------------------------------------------------
// Reading

absl::StatusOr<std::unique_ptr<IndexedDataset>> IndexedDataset::Open(const std::string& prefix,
                                                                     int64_t vocab_size) {
  FATHOM_CHECK(vocab_size >= 1, "[indexed_dataset] vocab_size ", vocab_size);
  auto ds = std::unique_ptr<IndexedDataset>(new IndexedDataset());
  ds->vocab_size_ = vocab_size;
  if (absl::Status s = ds->Map(prefix); !s.ok()) return s;
  if (absl::Status s = ds->Validate(); !s.ok()) return s;
  return ds;
}

IndexedDataset::~IndexedDataset() {
  if (idx_ != nullptr) ::munmap(const_cast<uint8_t*>(idx_), static_cast<size_t>(idx_bytes_));
  if (bin_ != nullptr) ::munmap(const_cast<uint8_t*>(bin_), static_cast<size_t>(bin_bytes_));
  if (bin_fd_ >= 0) ::close(bin_fd_);
}

absl::Status IndexedDataset::Map(const std::string& prefix) {
  idx_path_ = prefix + ".idx";
  bin_path_ = prefix + ".bin";
  if (absl::Status s = MapFile(idx_path_, nullptr, &idx_, &idx_bytes_); !s.ok()) return s;
  // The .bin descriptor stays open for CheckTokenIds' preads.
  return MapFile(bin_path_, &bin_fd_, &bin_, &bin_bytes_);
}

absl::Status IndexedDataset::Validate() {
  const std::string& f = idx_path_;
  if (idx_bytes_ < kIndexHeaderBytes) {
    return Invalid(
        f, absl::StrCat("truncated: ", idx_bytes_, " bytes, the header alone needs ", kIndexHeaderBytes,
                        " (magic, version, dtype code, sequence and document counts)"));
  }
  if (std::memcmp(idx_, kIndexMagic, sizeof(kIndexMagic)) != 0) {
    return Invalid(f, "wrong magic: expected \"MMIDIDX\\0\\0\" (a Megatron MMap indexed dataset index)");
  }
  const uint64_t version = Load<uint64_t>(idx_ + 9);
  if (version != kIndexVersion) {
    return Invalid(f, absl::StrCat("version ", version, ", expected ", kIndexVersion));
  }
  const uint8_t code = idx_[17];
  if (!IsIntegerCode(code)) {
    return Invalid(
        f, absl::StrCat("dtype code ", static_cast<int>(code),
                        code == 6 || code == 7 ? " is a floating-point type, not token ids" : " is unknown",
                        "; expected an integer code: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16"));
  }
  const uint64_t s = Load<uint64_t>(idx_ + 18), d = Load<uint64_t>(idx_ + 26);
  // Bounds before arithmetic: 20 bytes per sequence and 8 per document index cannot overflow below 2^58.
  const uint64_t limit = uint64_t{1} << 58;
  const uint64_t expected = s < limit && d < limit ? kIndexHeaderBytes + 12 * s + 8 * d : UINT64_MAX;
  if (expected != static_cast<uint64_t>(idx_bytes_)) {
    if (expected == UINT64_MAX) {
      return Invalid(f, absl::StrCat("implausible counts: ", s, " sequences and ", d, " document indices"));
    }
    return Invalid(f, absl::StrCat(expected > static_cast<uint64_t>(idx_bytes_) ? "truncated: " : "",
                                   idx_bytes_, " bytes, expected exactly ", expected, " for ", s,
                                   " sequences and ", d, " document indices"));
  }
  if (d < 1) return Invalid(f, "0 document indices; expected at least one (the leading 0)");
  dtype_ = static_cast<IndexedDType>(code);
  itemsize_ = IndexedDTypeSize(dtype_);
  num_sequences_ = static_cast<int64_t>(s);
  num_document_indices_ = static_cast<int64_t>(d);
  for (int64_t i = 0; i < num_sequences_; ++i) {
    const int64_t len = sequence_length(i), ptr = sequence_pointer(i);
    if (len < 0) return Invalid(f, absl::StrCat("sequence ", i, " has length ", len, "; expected >= 0"));
    if (ptr < 0) {
      return Invalid(f, absl::StrCat("sequence ", i, " starts at byte offset ", ptr,
                                     "; expected an offset into ", bin_path_, " (the index is corrupt)"));
    }
    if (ptr < 0 || ptr > bin_bytes_ || len > (bin_bytes_ - ptr) / itemsize_) {
      return Invalid(bin_path_,
                     absl::StrCat("sequence ", i, " (", len, " ", IndexedDTypeName(dtype_),
                                  " tokens at byte ", ptr, ") ends past the end of the file (", bin_bytes_,
                                  " bytes); ", idx_path_, " and ", bin_path_, " do not match"));
    }
  }
  int64_t previous = 0;
  for (int64_t i = 0; i < num_document_indices_; ++i) {
    const int64_t v = document_index(i);
    if ((i == 0 && v != 0) || v < previous || v > num_sequences_) {
      return Invalid(
          f, absl::StrCat("document index ", i, " is ", v, "; expected non-decreasing sequence indices ",
                          "from 0 to the sequence count ", num_sequences_));
    }
    previous = v;
  }
  if (previous != num_sequences_) {
    return Invalid(f, absl::StrCat("the last document index is ", previous, "; expected the sequence count ",
                                   num_sequences_));
  }
  return absl::OkStatus();
}

int64_t IndexedDataset::sequence_length(int64_t seq) const {
  FATHOM_CHECK(seq >= 0 && seq < num_sequences_, "[indexed_dataset] sequence ", seq);
  return Load<int32_t>(idx_ + kIndexHeaderBytes + 4 * seq);
}

int64_t IndexedDataset::sequence_pointer(int64_t seq) const {
  FATHOM_CHECK(seq >= 0 && seq < num_sequences_, "[indexed_dataset] sequence ", seq);
  return Load<int64_t>(idx_ + kIndexHeaderBytes + 4 * num_sequences_ + 8 * seq);
}

int64_t IndexedDataset::document_index(int64_t i) const {
  FATHOM_CHECK(i >= 0 && i < num_document_indices_, "[indexed_dataset] document index ", i);
  return Load<int64_t>(idx_ + kIndexHeaderBytes + 12 * num_sequences_ + 8 * i);
}

int64_t IndexedDataset::document_length(int64_t doc) const {
  FATHOM_CHECK(doc >= 0 && doc < num_documents(), "[indexed_dataset] document ", doc);
  int64_t n = 0;
  for (int64_t q = document_index(doc); q < document_index(doc + 1); ++q) n += sequence_length(q);
  return n;
}

std::pair<int64_t, int64_t> IndexedDataset::Locate(int64_t seq) const {
  // The last document whose first sequence is <= seq (documents may be empty, hence the upper bound).
  int64_t lo = 0, hi = num_documents();  // invariant: document_index(lo) <= seq
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (document_index(mid) <= seq) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  int64_t position = 0;
  for (int64_t q = document_index(lo); q < seq; ++q) position += sequence_length(q);
  return {lo, position};
}

absl::Status IndexedDataset::BadToken(int64_t seq, int64_t position_in_seq, int64_t value) const {
  const auto [doc, start] = Locate(seq);
  return Invalid(bin_path_,
                 absl::StrCat("token id ", value, " at position ", start + position_in_seq, " of document ",
                              doc, " (sequence ", seq,
                              ") is outside the vocabulary [0, model.vocab_size = ", vocab_size_, ")"));
}

absl::Status IndexedDataset::ReadTokens(int64_t doc, int64_t begin, int64_t count, int32_t* out) {
  FATHOM_CHECK(begin >= 0 && count >= 0, "[indexed_dataset] begin ", begin, ", count ", count);
  int64_t seq = document_index(doc);
  const int64_t seq_end = document_index(doc + 1);
  while (count > 0) {
    FATHOM_CHECK(seq < seq_end, "[indexed_dataset] read past the end of document ", doc);
    const int64_t len = sequence_length(seq);
    if (begin >= len) {
      begin -= len;
      ++seq;
      continue;
    }
    const int64_t n = std::min(count, len - begin);
    const uint8_t* src = bin_ + sequence_pointer(seq) + begin * itemsize_;
    absl::Status status = DispatchTokenType(dtype_, [&](auto tag) -> absl::Status {
      using T = decltype(tag);
      if (const int64_t bad = FirstBadToken<T>(src, n, vocab_size_); bad >= 0) {
        return BadToken(seq, begin + bad, static_cast<int64_t>(Load<T>(src + bad * itemsize_)));
      }
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(Load<T>(src + i * itemsize_));
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
    out += n;
    count -= n;
    begin = 0;
    ++seq;
  }
  return absl::OkStatus();
}

absl::Status IndexedDataset::CheckTokenIds(int64_t doc_begin, int64_t doc_end) {
  FATHOM_CHECK(0 <= doc_begin && doc_begin <= doc_end && doc_end <= num_documents(),
               "[indexed_dataset] documents [", doc_begin, ", ", doc_end, ")");
  const int64_t seq_end = document_index(doc_end);
  std::vector<uint8_t> buffer;
  int64_t seq = document_index(doc_begin);
  while (seq < seq_end) {
    // A run of sequences that lie back to back in .bin (all of them, for files Megatron or fathom wrote) is
    // read in large pieces; pread rather than the mapping, so scanning leaves the process' memory alone.
    const int64_t run_begin = seq, byte_begin = sequence_pointer(seq);
    int64_t byte_end = byte_begin + sequence_length(seq) * itemsize_;
    for (++seq; seq < seq_end && sequence_pointer(seq) == byte_end; ++seq) {
      byte_end += sequence_length(seq) * itemsize_;
    }
    for (int64_t at = byte_begin; at < byte_end;) {
      const int64_t n = std::min(kScanChunkBytes, byte_end - at);
      buffer.resize(static_cast<size_t>(n));
      for (int64_t got = 0; got < n;) {
        const ssize_t r = ::pread(bin_fd_, buffer.data() + got, static_cast<size_t>(n - got), at + got);
        if (r <= 0) {
          if (r < 0 && errno == EINTR) continue;
          return Invalid(bin_path_, absl::StrCat("read failed at byte ", at + got, ": ",
                                                 r == 0 ? "unexpected end of file" : std::strerror(errno)));
        }
        got += r;
      }
      const int64_t bad = DispatchTokenType(dtype_, [&](auto tag) {
        return FirstBadToken<decltype(tag)>(buffer.data(), n / itemsize_, vocab_size_);
      });
      if (bad >= 0) {
        // Which sequence of the run holds byte at + bad * itemsize.
        const int64_t byte = at + bad * itemsize_;
        int64_t q = run_begin;
        while (sequence_pointer(q) + sequence_length(q) * itemsize_ <= byte) ++q;
        const int64_t value = DispatchTokenType(dtype_, [&](auto tag) {
          return static_cast<int64_t>(Load<decltype(tag)>(buffer.data() + bad * itemsize_));
        });
        return BadToken(q, (byte - sequence_pointer(q)) / itemsize_, value);
      }
      at += n;
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Writing

absl::StatusOr<std::unique_ptr<IndexedDatasetWriter>> IndexedDatasetWriter::Create(const std::string& prefix,
                                                                                   IndexedDType dtype) {
  if (!IsIntegerCode(static_cast<uint8_t>(dtype))) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, ".bin: token files hold an integer dtype, not ", IndexedDTypeName(dtype)));
  }
  if (absl::Status s = CheckReplaceable(prefix + ".idx"); !s.ok()) return s;
  auto w = std::unique_ptr<IndexedDatasetWriter>(new IndexedDatasetWriter(prefix, dtype));
  if (absl::Status s = w->bin_.Open(prefix + ".bin"); !s.ok()) return s;
  return w;
}

absl::Status IndexedDatasetWriter::AddSequence(std::span<const int32_t> tokens) {
  FATHOM_CHECK(bin_.is_open(), "[indexed_dataset_writer] AddSequence after Finish");
  if (tokens.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat(prefix_, ".bin: a sequence of ", tokens.size(),
                                                   " tokens; the index stores int32 lengths"));
  }
  const int64_t itemsize = IndexedDTypeSize(dtype_);
  scratch_.resize(tokens.size() * static_cast<size_t>(itemsize));
  absl::Status status = DispatchTokenType(dtype_, [&](auto tag) -> absl::Status {
    using T = decltype(tag);
    for (size_t i = 0; i < tokens.size(); ++i) {
      const int64_t v = tokens[i];
      if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
          v > static_cast<int64_t>(std::numeric_limits<T>::max())) {
        return absl::InvalidArgumentError(
            absl::StrCat(prefix_, ".bin: token id ", v, " does not fit ", IndexedDTypeName(dtype_)));
      }
      const T t = static_cast<T>(v);
      std::memcpy(scratch_.data() + i * sizeof(T), &t, sizeof(T));
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  if (absl::Status s = bin_.Append(scratch_); !s.ok()) return s;
  pointers_.push_back(tokens_ * itemsize);
  lengths_.push_back(static_cast<int32_t>(tokens.size()));
  tokens_ += static_cast<int64_t>(tokens.size());
  return absl::OkStatus();
}

void IndexedDatasetWriter::EndDocument() {
  document_indices_.push_back(static_cast<int64_t>(lengths_.size()));
}

absl::Status IndexedDatasetWriter::AddDocument(std::span<const int32_t> tokens) {
  if (absl::Status s = AddSequence(tokens); !s.ok()) return s;
  EndDocument();
  return absl::OkStatus();
}

absl::Status IndexedDatasetWriter::Finish() {
  FATHOM_CHECK(bin_.is_open(), "[indexed_dataset_writer] Finish called twice");
  if (document_indices_.back() != static_cast<int64_t>(lengths_.size())) {
    return absl::FailedPreconditionError(
        absl::StrCat(prefix_, ": ", static_cast<int64_t>(lengths_.size()) - document_indices_.back(),
                     " sequences after the last document; call EndDocument before Finish"));
  }
  std::string idx;
  const uint64_t s = lengths_.size(), d = document_indices_.size();
  idx.reserve(static_cast<size_t>(kIndexHeaderBytes) + 12 * s + 8 * d);
  auto put = [&idx](const void* p, size_t n) { idx.append(static_cast<const char*>(p), n); };
  put(kIndexMagic, sizeof(kIndexMagic));
  put(&kIndexVersion, 8);
  const uint8_t code = static_cast<uint8_t>(dtype_);
  put(&code, 1);
  put(&s, 8);
  put(&d, 8);
  put(lengths_.data(), 4 * s);
  put(pointers_.data(), 8 * s);
  put(document_indices_.data(), 8 * d);
  // The .idx's temporary file first: a PREFIX.idx that became unreplaceable since Create fails here, before
  // the .bin is renamed over an existing one.
  AtomicFileWriter idx_file;
  if (absl::Status st = idx_file.Open(prefix_ + ".idx"); !st.ok()) return st;
  if (absl::Status st = idx_file.Append(idx); !st.ok()) return st;
  if (absl::Status st = bin_.Commit(); !st.ok()) return st;
  return idx_file.Commit();
}

}  // namespace fathom
