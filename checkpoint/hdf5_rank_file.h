// One rank's HDF5 file of a checkpoint: named 1-D datasets of f32, f64 or bf16 elements, written and read
// by element ranges through the HDF5 C API (Debian libhdf5, 1.10).
//
// Storage: contiguous datasets, allocated when created and never pre-filled. f32 and f64 are stored as
// IEEE little-endian floats; bf16 as an HDF5 floating-point type of 16 bits (sign bit 15, 8 exponent bits
// at 7 with bias 127, 7 mantissa bits at 0), so h5py and h5dump read it as the floats it holds. Elements
// move without conversion: the buffers hold the stored dtype. No timestamps are stored, so equal contents
// make byte-identical files.
//
// Errors are absl::Status (Internal, naming the file, the dataset and HDF5's own description); HDF5's
// automatic error printing is silenced for the calls made here. An object is used by one thread at a
// time; distinct objects may be used from distinct threads when the HDF5 library is thread safe
// (Debian's is: H5is_library_threadsafe), see Hdf5IsThreadSafe.
#ifndef FATHOM_CHECKPOINT_HDF5_RANK_FILE_H_
#define FATHOM_CHECKPOINT_HDF5_RANK_FILE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framework/dtype.h"

namespace fathom {

// True when the HDF5 library serialises concurrent calls itself (built with --enable-threadsafe).
bool Hdf5IsThreadSafe();

class Hdf5RankFile {
 public:
  // A new file at `path`; fails if something exists there.
  static absl::StatusOr<std::unique_ptr<Hdf5RankFile>> Create(const std::string& path);
  // An existing file, read only.
  static absl::StatusOr<std::unique_ptr<Hdf5RankFile>> OpenReadOnly(const std::string& path);
  ~Hdf5RankFile();  // closes whatever is open, ignoring errors (Close() reports them)
  Hdf5RankFile(const Hdf5RankFile&) = delete;
  Hdf5RankFile& operator=(const Hdf5RankFile&) = delete;

  // REQUIRES: a file made by Create; dtype f32, f64 or bf16; elements >= 0; `name` new.
  absl::Status CreateDataset(const std::string& name, DType dtype, int64_t elements);
  // Elements [offset, offset + count) of a dataset this object created or opened, from/to host memory in
  // the dataset's dtype.
  absl::Status Write(const std::string& name, int64_t offset, int64_t count, const void* data);
  absl::Status Read(const std::string& name, int64_t offset, int64_t count, void* out);
  // Opens dataset `name` for Read and returns its dtype and element count. Errors: the dataset is absent,
  // is not 1-D, or its type is none of the three.
  struct DatasetInfo {
    DType dtype;
    int64_t elements;
  };
  absl::StatusOr<DatasetInfo> OpenDataset(const std::string& name);

  // Closes the datasets and the file (flushing what HDF5 buffers); the data is then in the OS's page
  // cache, not necessarily on disk (the caller fsyncs the file).
  absl::Status Close();
  const std::string& path() const { return path_; }

 private:
  struct Dataset {
    int64_t id;  // hid_t
    DType dtype;
    int64_t elements;
  };
  explicit Hdf5RankFile(std::string path, int64_t file_id) : path_(std::move(path)), file_(file_id) {}
  absl::StatusOr<Dataset*> Find(const std::string& name);
  absl::Status Transfer(const std::string& name, int64_t offset, int64_t count, void* buffer, bool write);

  std::string path_;
  int64_t file_ = -1;  // hid_t, -1 when closed
  std::map<std::string, Dataset> datasets_;
};

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_HDF5_RANK_FILE_H_
