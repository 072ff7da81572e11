#include "checkpoint/hdf5_rank_file.h"

#include <hdf5.h>

#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "framework/check.h"

namespace fathom {

static_assert(std::is_same_v<hid_t, int64_t>, "hdf5_rank_file.h stores hid_t as int64_t (HDF5 >= 1.10)");

namespace {

// HDF5 prints its error stack to stderr on every failed call unless told otherwise; fathom reports errors
// itself (a missing dataset is an answer, not a crash), so the automatic printing is off during our calls
// and restored afterwards (the setting is per thread in thread-safe builds).
class SilenceHdf5Errors {
 public:
  SilenceHdf5Errors() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~SilenceHdf5Errors() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }
  SilenceHdf5Errors(const SilenceHdf5Errors&) = delete;
  SilenceHdf5Errors& operator=(const SilenceHdf5Errors&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// The innermost description on HDF5's error stack (the most specific reason), or "" when empty.
std::string Hdf5Reason() {
  std::string reason;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* err, void* out) -> herr_t {
        if (n == 0 && err->desc != nullptr) *static_cast<std::string*>(out) = err->desc;
        return 0;
      },
      &reason);
  H5Eclear2(H5E_DEFAULT);
  return reason;
}

absl::Status Hdf5Error(const std::string& what) {
  std::string reason = Hdf5Reason();
  return absl::InternalError(reason.empty() ? what : absl::StrCat(what, " (HDF5: ", reason, ")"));
}

// bf16 as an HDF5 float: the top half of an IEEE f32 (1 sign, 8 exponent, 7 mantissa bits), created once.
hid_t Bf16Type() {
  static const hid_t type = [] {
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    bool ok = t >= 0 && H5Tset_fields(t, 15, 7, 8, 0, 7) >= 0 && H5Tset_offset(t, 0) >= 0 &&
              H5Tset_precision(t, 16) >= 0 && H5Tset_size(t, 2) >= 0 && H5Tset_ebias(t, 127) >= 0;
    FATHOM_CHECK(ok, "[hdf5] cannot define the bf16 type");
    return t;
  }();
  return type;
}

hid_t StoredType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return H5T_IEEE_F32LE;
    case DType::kF64:
      return H5T_IEEE_F64LE;
    case DType::kBF16:
      return Bf16Type();
    default:
      FATHOM_CHECK(false, "[hdf5] checkpoints store f32, f64 or bf16, not ", std::string(DTypeName(dtype)));
  }
  return -1;
}

// The stored dtype whose HDF5 type equals `type`, if any.
absl::StatusOr<DType> DTypeOfHdf5(hid_t type) {
  for (DType d : {DType::kF32, DType::kF64, DType::kBF16}) {
    if (H5Tequal(type, StoredType(d)) > 0) return d;
  }
  return absl::InvalidArgumentError("its element type is not f32, f64 or bf16 as fathom stores them");
}

// File access without HDF5's file locks: a rank file is written by one rank inside a temporary directory
// and read only after the directory's rename, so locks protect nothing, while parallel file systems that
// refuse flock (some Lustre and NFS mounts) would make every open fail.
hid_t UnlockedAccess() {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl >= 0 && H5Pset_file_locking(fapl, false, true) < 0) {
    H5Pclose(fapl);
    return -1;
  }
  return fapl;
}

}  // namespace

bool Hdf5IsThreadSafe() {
  hbool_t safe = false;
  return H5is_library_threadsafe(&safe) >= 0 && safe;
}

absl::StatusOr<std::unique_ptr<Hdf5RankFile>> Hdf5RankFile::Create(const std::string& path) {
  SilenceHdf5Errors silence;
  hid_t fapl = UnlockedAccess();
  hid_t f = fapl >= 0 ? H5Fcreate(path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl) : -1;
  if (fapl >= 0) H5Pclose(fapl);
  if (f < 0) return Hdf5Error(absl::StrCat("cannot create the HDF5 file ", path));
  return std::unique_ptr<Hdf5RankFile>(new Hdf5RankFile(path, f));
}

absl::StatusOr<std::unique_ptr<Hdf5RankFile>> Hdf5RankFile::OpenReadOnly(const std::string& path) {
  SilenceHdf5Errors silence;
  hid_t fapl = UnlockedAccess();
  hid_t f = fapl >= 0 ? H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl) : -1;
  if (fapl >= 0) H5Pclose(fapl);
  if (f < 0) return Hdf5Error(absl::StrCat(path, " is not a readable HDF5 file"));
  return std::unique_ptr<Hdf5RankFile>(new Hdf5RankFile(path, f));
}

Hdf5RankFile::~Hdf5RankFile() { Close().IgnoreError(); }

absl::Status Hdf5RankFile::Close() {
  SilenceHdf5Errors silence;
  absl::Status status;
  for (auto& [name, d] : datasets_) {
    if (H5Dclose(d.id) < 0 && status.ok())
      status = Hdf5Error(absl::StrCat(path_, ": closing dataset ", name));
  }
  datasets_.clear();
  if (file_ >= 0) {
    if (H5Fclose(file_) < 0 && status.ok()) status = Hdf5Error(absl::StrCat("closing ", path_));
    file_ = -1;
  }
  return status;
}

absl::Status Hdf5RankFile::CreateDataset(const std::string& name, DType dtype, int64_t elements) {
  FATHOM_CHECK(file_ >= 0 && !datasets_.count(name) && elements >= 0, "[hdf5] CreateDataset(", name, ") on ",
               path_);
  SilenceHdf5Errors silence;
  const hsize_t dims[1] = {static_cast<hsize_t>(elements)};
  hid_t space = H5Screate_simple(1, dims, nullptr);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  // Contiguous, allocated now, never filled: every element is written exactly once by the caller, so a
  // fill pass would double the I/O. No modification times: equal contents give byte-identical files.
  bool ok = space >= 0 && dcpl >= 0 && H5Pset_layout(dcpl, H5D_CONTIGUOUS) >= 0 &&
            H5Pset_obj_track_times(dcpl, false) >= 0 && H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) >= 0 &&
            H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) >= 0;
  hid_t d =
      ok ? H5Dcreate2(file_, name.c_str(), StoredType(dtype), space, H5P_DEFAULT, dcpl, H5P_DEFAULT) : -1;
  absl::Status status =
      d < 0 ? Hdf5Error(absl::StrCat(path_, ": cannot create dataset ", name, " of ", elements, " ",
                                     std::string(DTypeName(dtype)), " elements"))
            : absl::OkStatus();
  if (dcpl >= 0) H5Pclose(dcpl);
  if (space >= 0) H5Sclose(space);
  if (d >= 0) datasets_[name] = Dataset{d, dtype, elements};
  return status;
}

absl::StatusOr<Hdf5RankFile::DatasetInfo> Hdf5RankFile::OpenDataset(const std::string& name) {
  FATHOM_CHECK(file_ >= 0, "[hdf5] OpenDataset(", name, ") on closed ", path_);
  if (auto it = datasets_.find(name); it != datasets_.end())
    return DatasetInfo{it->second.dtype, it->second.elements};
  SilenceHdf5Errors silence;
  if (H5Lexists(file_, name.c_str(), H5P_DEFAULT) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return absl::InvalidArgumentError(absl::StrCat(path_, " has no dataset '", name, "'"));
  }
  hid_t d = H5Dopen2(file_, name.c_str(), H5P_DEFAULT);
  if (d < 0) return Hdf5Error(absl::StrCat(path_, ": cannot open dataset '", name, "'"));
  hid_t space = H5Dget_space(d);
  hid_t type = H5Dget_type(d);
  hsize_t dims[1] = {0};
  const bool one_dim = space >= 0 && H5Sget_simple_extent_ndims(space) == 1 &&
                       H5Sget_simple_extent_dims(space, dims, nullptr) == 1;
  absl::StatusOr<DType> dtype = type >= 0 ? DTypeOfHdf5(type) : absl::InvalidArgumentError("no type");
  if (type >= 0) H5Tclose(type);
  if (space >= 0) H5Sclose(space);
  if (!one_dim || !dtype.ok()) {
    H5Dclose(d);
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": dataset '", name,
                     "' is not what fathom writes: ", one_dim ? dtype.status().message() : "it is not 1-D"));
  }
  datasets_[name] = Dataset{d, *dtype, static_cast<int64_t>(dims[0])};
  return DatasetInfo{*dtype, static_cast<int64_t>(dims[0])};
}

absl::StatusOr<Hdf5RankFile::Dataset*> Hdf5RankFile::Find(const std::string& name) {
  auto it = datasets_.find(name);
  if (it == datasets_.end()) {
    absl::StatusOr<DatasetInfo> info = OpenDataset(name);
    if (!info.ok()) return info.status();
    it = datasets_.find(name);
  }
  return &it->second;
}

absl::Status Hdf5RankFile::Transfer(const std::string& name, int64_t offset, int64_t count, void* buffer,
                                    bool write) {
  absl::StatusOr<Dataset*> d = Find(name);
  if (!d.ok()) return d.status();
  FATHOM_CHECK(offset >= 0 && count >= 0 && offset + count <= (*d)->elements, "[hdf5] ",
               write ? "write" : "read", " of [", offset, ", ", offset + count, ") outside dataset ", name,
               " of ", (*d)->elements, " elements in ", path_);
  if (count == 0) return absl::OkStatus();
  SilenceHdf5Errors silence;
  const hsize_t start[1] = {static_cast<hsize_t>(offset)}, n[1] = {static_cast<hsize_t>(count)};
  hid_t file_space = H5Dget_space((*d)->id);
  hid_t mem_space = H5Screate_simple(1, n, nullptr);
  bool ok = file_space >= 0 && mem_space >= 0 &&
            H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, nullptr, n, nullptr) >= 0;
  const hid_t type = StoredType((*d)->dtype);
  if (ok) {
    ok = (write ? H5Dwrite((*d)->id, type, mem_space, file_space, H5P_DEFAULT, buffer)
                : H5Dread((*d)->id, type, mem_space, file_space, H5P_DEFAULT, buffer)) >= 0;
  }
  absl::Status status =
      ok ? absl::OkStatus()
         : Hdf5Error(absl::StrCat(path_, ": ", write ? "writing" : "reading", " elements [", offset, ", ",
                                  offset + count, ") of dataset '", name, "'"));
  if (mem_space >= 0) H5Sclose(mem_space);
  if (file_space >= 0) H5Sclose(file_space);
  return status;
}

absl::Status Hdf5RankFile::Write(const std::string& name, int64_t offset, int64_t count, const void* data) {
  return Transfer(name, offset, count, const_cast<void*>(data), /*write=*/true);
}

absl::Status Hdf5RankFile::Read(const std::string& name, int64_t offset, int64_t count, void* out) {
  return Transfer(name, offset, count, out, /*write=*/false);
}

}  // namespace fathom
