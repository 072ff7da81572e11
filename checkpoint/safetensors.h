// safetensors: the tensor file format of HF checkpoints.
//
// Layout: an 8-byte little-endian u64 N, N bytes of JSON header, then the data section. The header maps
// each tensor name to {"dtype", "shape", "data_offsets": [begin, end)} (offsets relative to the data
// section) and may hold "__metadata__", a map of strings to strings. As the reference implementation
// demands, the tensors tile the data section exactly: no overlaps, no holes, no trailing bytes.
//
// Element types: F64, F32, BF16, F8_E4M3, F8_E5M2, I64, I32 map to fathom's DType one to one; U8 is read
// as an I32 copy (fathom has no u8 dtype; the fp8 cast tables of tests/golden use it). The other dtypes
// of the format (F16, I8, I16, U16, U32, U64, BOOL, F8_E8M0, ...) are recognised, so such a file opens,
// but Get() on those tensors fails with Unimplemented. A dtype string outside the format is an error.
//
// SafetensorsFile reads a file whole into memory (golden data, small files); HF model directories of any
// size stream through checkpoint/safetensors_stream.h, which shares the header parsing below. Every malformed
// input is an absl::Status naming the file, and the tensor where one is to blame; nothing here aborts on bad
// input.
#ifndef FATHOM_CHECKPOINT_SAFETENSORS_H_
#define FATHOM_CHECKPOINT_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framework/tensor.h"

namespace fathom {

// What the header says about one tensor.
struct SafetensorsInfo {
  std::string dtype;  // as written in the file: "F32", "BF16", "F8_E4M3", "U8", ...
  Shape shape;
};

// One tensor of a header: its dtype as written, its shape, and its bytes [begin, end) in the data section.
struct SafetensorsEntry {
  std::string dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

// A parsed and validated header.
struct SafetensorsHeader {
  uint64_t data_start = 0;  // 8 + header length: the data section's first byte in the file
  std::map<std::string, SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
};

// The header length stored in a file's first 8 bytes (`first8`), checked against the file's `size`:
// InvalidArgument naming `path` for a file shorter than 8 bytes or a length outside [2, size - 8].
absl::StatusOr<uint64_t> CheckHeaderLength(const std::string& path, const char* first8, uint64_t size);
// Parses the header's JSON (`header_json`, the bytes after the length field) of a file whose data section
// has `data_len` bytes, and validates it as Open does (every error an InvalidArgument naming `path` and
// the tensor). Shared by SafetensorsFile and the streaming reader (checkpoint/safetensors_stream.h).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const std::string& path,
                                                         std::string_view header_json, uint64_t data_len);
// The format's name of a fathom dtype ("F32", "BF16", "F8_E4M3", ...).
const char* SafetensorsDTypeName(DType dtype);
// Bytes per element of a dtype of the format ("F32" -> 4, "F8_E4M3" -> 1); 0 for a string outside it.
size_t SafetensorsDTypeSize(std::string_view dtype);

// An opened, fully validated safetensors file. Cheap to copy (the bytes are shared, immutable).
// Thread safety: const methods may be called concurrently.
class SafetensorsFile {
 public:
  // Reads and validates `path`. Errors: NotFound when the file cannot be opened; InvalidArgument for a
  // truncated file, a bad header length, a header that is not a JSON object of the expected form, an
  // unknown dtype, a shape that disagrees with the byte size, or offsets that overlap, leave holes or
  // reach past the end. Messages name the file and the tensor.
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  // dtype and shape without copying data. NotFound for an absent name.
  absl::StatusOr<SafetensorsInfo> Info(const std::string& name) const;
  // A fresh CPU tensor holding a copy of the data, in its own dtype (U8 becomes I32). NotFound for an
  // absent name; Unimplemented for a dtype fathom cannot hold.
  absl::StatusOr<Tensor> Get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  std::shared_ptr<const std::string> bytes_;  // the whole file
  uint64_t data_start_ = 0;                   // 8 + header length
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (CPU, any fathom dtype, names unique and not "__metadata__") in the given order,
// with `metadata`, the safe way (framework/file_io.h's AtomicFileWriter): the bytes go to a temporary file
// beside `path`, which is fsynced and renamed over it, so a failure never damages an existing file at
// `path` (the temporary is removed on failure), and only a regular file (or nothing) is replaced: a
// symlink, directory or device at `path` is refused (InvalidArgument) and left untouched. Errors name the
// file and, for a bad tensor, the tensor.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_SAFETENSORS_H_
