#include "data/hdf5_dataset.h"

#include <hdf5.h>
#include <sys/stat.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "framework/check.h"
#include "framework/file_io.h"

namespace fathom {
namespace {

static_assert(std::is_same_v<hid_t, int64_t>, "hid_t is stored as int64_t in hdf5_dataset.h");

constexpr int64_t kScanChunkTokens = 1 << 20;

absl::Status Invalid(const std::string& file, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}

// Silences HDF5's automatic error printing for the life of the object (fathom reports errors itself).
class QuietHdf5Errors {
 public:
  QuietHdf5Errors() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietHdf5Errors() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }
  QuietHdf5Errors(const QuietHdf5Errors&) = delete;
  QuietHdf5Errors& operator=(const QuietHdf5Errors&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// Closes an HDF5 handle with the right H5?close when it goes out of scope.
class Handle {
 public:
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Handle() {
    if (id_ >= 0) close_(id_);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }
  hid_t release() {
    hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// The extent of a 1-D integer dataset, or an error naming it.
absl::StatusOr<int64_t> IntegerVectorLength(const std::string& file, hid_t dataset, const char* name) {
  Handle type(H5Dget_type(dataset), H5Tclose);
  if (!type.ok() || H5Tget_class(type.get()) != H5T_INTEGER) {
    return Invalid(file, absl::StrCat(name, " must hold integers"));
  }
  Handle space(H5Dget_space(dataset), H5Sclose);
  if (!space.ok() || H5Sget_simple_extent_ndims(space.get()) != 1) {
    return Invalid(file, absl::StrCat(name, " must be one-dimensional"));
  }
  hsize_t dims[1] = {0};
  H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  return static_cast<int64_t>(dims[0]);
}

// Reads dataset[begin, begin + count) as int64 into out. False on an HDF5 failure.
bool ReadInt64(hid_t dataset, int64_t begin, int64_t count, int64_t* out) {
  if (count == 0) return true;
  Handle file_space(H5Dget_space(dataset), H5Sclose);
  const hsize_t start[1] = {static_cast<hsize_t>(begin)}, n[1] = {static_cast<hsize_t>(count)};
  Handle mem_space(H5Screate_simple(1, n, nullptr), H5Sclose);
  if (!file_space.ok() || !mem_space.ok() ||
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, n, nullptr) < 0) {
    return false;
  }
  return H5Dread(dataset, H5T_NATIVE_INT64, mem_space.get(), file_space.get(), H5P_DEFAULT, out) >= 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Hdf5TokenDataset>> Hdf5TokenDataset::Open(const std::string& path,
                                                                         int64_t vocab_size) {
  FATHOM_CHECK(vocab_size >= 1, "[hdf5_dataset] vocab_size ", vocab_size);
  auto ds = std::unique_ptr<Hdf5TokenDataset>(new Hdf5TokenDataset());
  ds->vocab_size_ = vocab_size;
  if (absl::Status s = ds->OpenAndValidate(path); !s.ok()) return s;
  return ds;
}

Hdf5TokenDataset::~Hdf5TokenDataset() {
  QuietHdf5Errors quiet;
  if (tokens_ >= 0) H5Dclose(tokens_);
  if (file_ >= 0) H5Fclose(file_);
}

absl::Status Hdf5TokenDataset::OpenAndValidate(const std::string& path) {
  path_ = path;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return Invalid(path, "no such file (data.source hdf5 expects an HDF5 file)");
  if (!S_ISREG(st.st_mode)) return Invalid(path, "not a regular file");
  file_bytes_ = static_cast<int64_t>(st.st_size);
  QuietHdf5Errors quiet;
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  if (!fapl.ok())
    return absl::InternalError(absl::StrCat(path, ": HDF5 failed to create a file access list"));
#if H5_VERSION_GE(1, 10, 7)
  // Reading needs no lock, and file systems without flock (some NFS and Lustre mounts) would refuse one.
  H5Pset_file_locking(fapl.get(), false, true);
#endif
#if H5_VERSION_GE(1, 12, 0)
  const htri_t is_hdf5 = H5Fis_accessible(path.c_str(), fapl.get());
#else
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
#endif
  if (is_hdf5 <= 0) return Invalid(path, "not an HDF5 file (or not readable)");
  file_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
  if (file_ < 0) return Invalid(path, "HDF5 could not open the file (truncated or damaged?)");
  for (const char* name : {kHdf5TokensDataset, kHdf5DocumentOffsetsDataset}) {
    if (H5Lexists(file_, name, H5P_DEFAULT) <= 0) {
      return Invalid(path, absl::StrCat("no dataset ", name, "; a token file holds ", kHdf5TokensDataset,
                                        " (1-D token ids) and ", kHdf5DocumentOffsetsDataset,
                                        " (documents + 1 offsets into it)"));
    }
  }
  tokens_ = H5Dopen2(file_, kHdf5TokensDataset, H5P_DEFAULT);
  if (tokens_ < 0) return Invalid(path, absl::StrCat(kHdf5TokensDataset, " could not be opened"));
  absl::StatusOr<int64_t> num_tokens = IntegerVectorLength(path, tokens_, kHdf5TokensDataset);
  if (!num_tokens.ok()) return num_tokens.status();
  Handle offsets(H5Dopen2(file_, kHdf5DocumentOffsetsDataset, H5P_DEFAULT), H5Dclose);
  if (!offsets.ok()) return Invalid(path, absl::StrCat(kHdf5DocumentOffsetsDataset, " could not be opened"));
  absl::StatusOr<int64_t> num_offsets = IntegerVectorLength(path, offsets.get(), kHdf5DocumentOffsetsDataset);
  if (!num_offsets.ok()) return num_offsets.status();
  if (*num_offsets < 1) {
    return Invalid(path, absl::StrCat(kHdf5DocumentOffsetsDataset,
                                      " is empty; expected documents + 1 offsets ", "starting with 0"));
  }
  offsets_.resize(static_cast<size_t>(*num_offsets));
  if (!ReadInt64(offsets.get(), 0, *num_offsets, offsets_.data())) {
    return Invalid(path, absl::StrCat(kHdf5DocumentOffsetsDataset, " could not be read (truncated file?)"));
  }
  for (size_t i = 0; i < offsets_.size(); ++i) {
    const int64_t previous = i == 0 ? 0 : offsets_[i - 1];
    if ((i == 0 && offsets_[i] != 0) || offsets_[i] < previous || offsets_[i] > *num_tokens) {
      return Invalid(path, absl::StrCat(kHdf5DocumentOffsetsDataset, "[", i, "] is ", offsets_[i],
                                        "; expected non-decreasing offsets from 0 to the length of ",
                                        kHdf5TokensDataset, " (", *num_tokens, ")"));
    }
  }
  if (offsets_.back() != *num_tokens) {
    return Invalid(path,
                   absl::StrCat("the last of ", kHdf5DocumentOffsetsDataset, " is ", offsets_.back(),
                                "; expected the length of ", kHdf5TokensDataset, " (", *num_tokens, ")"));
  }
  return absl::OkStatus();
}

int64_t Hdf5TokenDataset::document_length(int64_t doc) const {
  FATHOM_CHECK(doc >= 0 && doc < num_documents(), "[hdf5_dataset] document ", doc);
  return offsets_[static_cast<size_t>(doc) + 1] - offsets_[static_cast<size_t>(doc)];
}

absl::Status Hdf5TokenDataset::ReadRange(int64_t begin, int64_t count) {
  scratch_.resize(static_cast<size_t>(count));
  QuietHdf5Errors quiet;
  if (!ReadInt64(tokens_, begin, count, scratch_.data())) {
    return absl::InternalError(absl::StrCat(path_, ": reading ", kHdf5TokensDataset, "[", begin, ", ",
                                            begin + count, ") failed (truncated or damaged file?)"));
  }
  return absl::OkStatus();
}

absl::Status Hdf5TokenDataset::BadToken(int64_t token, int64_t value) const {
  // The document holding token `token`: the last offset <= token (skipping empty documents).
  const auto it = std::upper_bound(offsets_.begin(), offsets_.end(), token) - 1;
  const int64_t doc = it - offsets_.begin();
  return Invalid(path_,
                 absl::StrCat("token id ", value, " at position ", token - *it, " of document ", doc, " (",
                              kHdf5TokensDataset, "[", token, "]) is outside the vocabulary [0, ",
                              "model.vocab_size = ", vocab_size_, ")"));
}

absl::Status Hdf5TokenDataset::ReadTokens(int64_t doc, int64_t begin, int64_t count, int32_t* out) {
  FATHOM_CHECK(begin >= 0 && count >= 0 && begin + count <= document_length(doc), "[hdf5_dataset] document ",
               doc, " begin ", begin, " count ", count);
  const int64_t first = offsets_[static_cast<size_t>(doc)] + begin;
  if (absl::Status s = ReadRange(first, count); !s.ok()) return s;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t v = scratch_[static_cast<size_t>(i)];
    if (v < 0 || v >= vocab_size_) return BadToken(first + i, v);
    out[i] = static_cast<int32_t>(v);
  }
  return absl::OkStatus();
}

absl::Status Hdf5TokenDataset::CheckTokenIds(int64_t doc_begin, int64_t doc_end) {
  FATHOM_CHECK(0 <= doc_begin && doc_begin <= doc_end && doc_end <= num_documents(),
               "[hdf5_dataset] documents [", doc_begin, ", ", doc_end, ")");
  const int64_t end = offsets_[static_cast<size_t>(doc_end)];
  for (int64_t at = offsets_[static_cast<size_t>(doc_begin)]; at < end;) {
    const int64_t n = std::min(kScanChunkTokens, end - at);
    if (absl::Status s = ReadRange(at, n); !s.ok()) return s;
    const auto [lo, hi] = std::minmax_element(scratch_.begin(), scratch_.end());
    if (*lo < 0 || *hi >= vocab_size_) {
      for (int64_t i = 0; i < n; ++i) {
        const int64_t v = scratch_[static_cast<size_t>(i)];
        if (v < 0 || v >= vocab_size_) return BadToken(at + i, v);
      }
    }
    at += n;
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Writing

absl::Status WriteHdf5TokenFile(const std::string& path, std::span<const int32_t> tokens,
                                std::span<const int64_t> document_offsets, IndexedDType dtype) {
  if (dtype != IndexedDType::kUint16 && dtype != IndexedDType::kInt32) {
    return Invalid(
        path, absl::StrCat("HDF5 token files are written as uint16 or int32, not ", IndexedDTypeName(dtype)));
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (document_offsets.empty() || document_offsets.front() != 0 || document_offsets.back() != n ||
      !std::is_sorted(document_offsets.begin(), document_offsets.end())) {
    return Invalid(path, absl::StrCat("document offsets must rise from 0 to the token count ", n));
  }
  if (dtype == IndexedDType::kUint16) {
    for (int64_t i = 0; i < n; ++i) {
      if (tokens[static_cast<size_t>(i)] < 0 || tokens[static_cast<size_t>(i)] > 65535) {
        return Invalid(path, absl::StrCat("token id ", tokens[static_cast<size_t>(i)], " (position ", i,
                                          ") does not fit uint16"));
      }
    }
  }
  QuietHdf5Errors quiet;
  const auto failed = [&path](const char* what) {
    return absl::InternalError(absl::StrCat(path, ": HDF5 failed to ", what));
  };
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  // In memory only (backing_store 0): the image is written atomically below.
  if (!fapl.ok() || H5Pset_fapl_core(fapl.get(), 64 << 20, 0) < 0) return failed("set up an in-memory file");
  // A name of its own: HDF5 refuses to create a file under the name of one it has open (a loader may be
  // reading the file being replaced), and nothing is written under this name.
  const std::string memory_name = path + ".fathom-in-memory";
  Handle file(H5Fcreate(memory_name.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
  if (!file.ok()) return failed("create the in-memory file");
  const auto write = [&](const char* name, hid_t file_type, hid_t mem_type, const void* data,
                         int64_t count) -> bool {
    const hsize_t dims[1] = {static_cast<hsize_t>(count)};
    Handle space(H5Screate_simple(1, dims, nullptr), H5Sclose);
    if (!space.ok()) return false;
    Handle ds(H5Dcreate2(file.get(), name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
              H5Dclose);
    if (!ds.ok()) return false;
    return count == 0 || H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0;
  };
  const hid_t token_type = dtype == IndexedDType::kUint16 ? H5T_STD_U16LE : H5T_STD_I32LE;
  if (!write(kHdf5TokensDataset, token_type, H5T_NATIVE_INT32, tokens.data(), n)) {
    return failed("write /tokens");
  }
  if (!write(kHdf5DocumentOffsetsDataset, H5T_STD_I64LE, H5T_NATIVE_INT64, document_offsets.data(),
             static_cast<int64_t>(document_offsets.size()))) {
    return failed("write /document_offsets");
  }
  if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0) return failed("flush");
  const ssize_t bytes = H5Fget_file_image(file.get(), nullptr, 0);
  if (bytes <= 0) return failed("size the file image");
  std::string image(static_cast<size_t>(bytes), '\0');
  if (H5Fget_file_image(file.get(), image.data(), static_cast<size_t>(bytes)) != bytes) {
    return failed("copy the file image");
  }
  return WriteFileAtomically(path, image);
}

}  // namespace fathom
