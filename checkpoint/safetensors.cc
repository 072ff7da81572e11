#include "checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "checkpoint/safetensors_stream.h"
#include "framework/file_io.h"

namespace fathom {
namespace {

// The header length and the data are little-endian; fathom only targets little-endian hosts.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

// Every dtype of the format with a whole-byte element. `dtype` is what Get() returns; `readable` false
// for dtypes fathom cannot hold (the file still opens, Get fails).
struct DTypeRow {
  const char* name;
  size_t size;
  bool readable;
  DType dtype;
};

constexpr DTypeRow kDTypes[] = {
    {"F64", 8, true, DType::kF64},        {"F32", 4, true, DType::kF32},
    {"BF16", 2, true, DType::kBF16},      {"F8_E4M3", 1, true, DType::kF8E4M3},
    {"F8_E5M2", 1, true, DType::kF8E5M2}, {"I64", 8, true, DType::kI64},
    {"I32", 4, true, DType::kI32},        {"U8", 1, true, DType::kI32},  // widened on read
    {"F16", 2, false, DType::kF32},       {"I8", 1, false, DType::kF32},
    {"I16", 2, false, DType::kF32},       {"U16", 2, false, DType::kF32},
    {"U32", 4, false, DType::kF32},       {"U64", 8, false, DType::kF32},
    {"BOOL", 1, false, DType::kF32},      {"F8_E8M0", 1, false, DType::kF32},
};

const DTypeRow* FindDType(const std::string& name) {
  for (const DTypeRow& row : kDTypes) {
    if (name == row.name) return &row;
  }
  return nullptr;
}

const char* DTypeNameInFormat(DType t) {
  switch (t) {
    case DType::kF64:
      return "F64";
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF8E4M3:
      return "F8_E4M3";
    case DType::kF8E5M2:
      return "F8_E5M2";
    case DType::kI64:
      return "I64";
    case DType::kI32:
      return "I32";
  }
  return "?";
}

std::string Where(const std::string& path) { return absl::StrCat("[safetensors] ", path, ": "); }
std::string Where(const std::string& path, const std::string& tensor) {
  return absl::StrCat("[safetensors] ", path, ": tensor '", tensor, "': ");
}

absl::Status IoError(int err, const std::string& message) {
  std::string full = absl::StrCat(message, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(full);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(full);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(full);
    default:
      return absl::InternalError(full);
  }
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return IoError(errno, Where(path) + "cannot open");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return IoError(err, Where(path) + "cannot stat");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(Where(path) + "not a regular file");
  }
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : 0;
      ::close(fd);
      if (err) return IoError(err, Where(path) + "read failed");
      return absl::InvalidArgumentError(
          absl::StrCat(Where(path), "file shrank while being read (", done, " of ", bytes.size(), " bytes)"));
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return bytes;
}

// Reads a JSON array of non-negative integers (shape or offsets).
bool ReadUnsignedArray(const nlohmann::json& j, std::vector<uint64_t>& out) {
  if (!j.is_array()) return false;
  out.clear();
  for (const nlohmann::json& v : j) {
    if (!v.is_number_unsigned()) return false;
    out.push_back(v.get<uint64_t>());
  }
  return true;
}

}  // namespace

const char* SafetensorsDTypeName(DType dtype) { return DTypeNameInFormat(dtype); }

size_t SafetensorsDTypeSize(std::string_view dtype) {
  const DTypeRow* row = FindDType(std::string(dtype));
  return row == nullptr ? 0 : row->size;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const std::string& path,
                                                         std::string_view header_json, uint64_t data_len) {
  nlohmann::json header = nlohmann::json::parse(header_json.begin(), header_json.end(), nullptr,
                                                /*allow_exceptions=*/false);
  if (header.is_discarded()) return absl::InvalidArgumentError(Where(path) + "header is not valid JSON");
  if (!header.is_object()) return absl::InvalidArgumentError(Where(path) + "header is not a JSON object");

  SafetensorsHeader file;
  file.data_start = 8 + header_json.size();
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object())
        return absl::InvalidArgumentError(Where(path) + "__metadata__ is not an object");
      for (const auto& [key, v] : value.items()) {
        if (!v.is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(Where(path), "__metadata__ value of '", key, "' is not a string"));
        }
        file.metadata[key] = v.get<std::string>();
      }
      continue;
    }
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") ||
        !value.contains("data_offsets")) {
      return absl::InvalidArgumentError(Where(path, name) +
                                        "expected an object with \"dtype\", \"shape\" and \"data_offsets\"");
    }
    SafetensorsEntry e;
    if (!value["dtype"].is_string())
      return absl::InvalidArgumentError(Where(path, name) + "dtype is not a string");
    e.dtype = value["dtype"].get<std::string>();
    const DTypeRow* row = FindDType(e.dtype);
    if (row == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(path, name), "unknown or unsupported dtype '", e.dtype, "'"));
    }
    std::vector<uint64_t> dims, offsets;
    if (!ReadUnsignedArray(value["shape"], dims)) {
      return absl::InvalidArgumentError(Where(path, name) + "shape is not an array of non-negative integers");
    }
    if (!ReadUnsignedArray(value["data_offsets"], offsets) || offsets.size() != 2) {
      return absl::InvalidArgumentError(Where(path, name) +
                                        "data_offsets is not a pair of non-negative integers");
    }
    uint64_t numel = 1;
    for (uint64_t d : dims) {
      if (d > (uint64_t{1} << 62) || __builtin_mul_overflow(numel, d, &numel)) {
        return absl::InvalidArgumentError(Where(path, name) + "shape overflows");
      }
      e.shape.push_back(static_cast<int64_t>(d));
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, row->size, &nbytes)) {
      return absl::InvalidArgumentError(Where(path, name) + "shape overflows");
    }
    e.begin = offsets[0];
    e.end = offsets[1];
    if (e.begin > e.end || e.end > data_len) {
      return absl::InvalidArgumentError(absl::StrCat(Where(path, name), "data_offsets [", e.begin, ", ",
                                                     e.end, ") out of range: the data section has ", data_len,
                                                     " bytes"));
    }
    if (e.end - e.begin != nbytes) {
      return absl::InvalidArgumentError(absl::StrCat(Where(path, name), "shape ", ShapeString(e.shape),
                                                     " of ", e.dtype, " needs ", nbytes,
                                                     " bytes, data_offsets give ", e.end - e.begin));
    }
    file.entries.emplace(name, std::move(e));
  }

  // The tensors must tile the data section: sorted by start, each starts where the previous ended.
  std::vector<std::pair<const std::string*, const SafetensorsEntry*>> order;
  for (const auto& [name, e] : file.entries) order.emplace_back(&name, &e);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::pair(a.second->begin, a.second->end) < std::pair(b.second->begin, b.second->end);
  });
  uint64_t covered = 0;
  const std::string* previous = nullptr;
  for (const auto& [name, e] : order) {
    if (e->begin < covered) {
      return absl::InvalidArgumentError(absl::StrCat(Where(path, *name), "data_offsets [", e->begin, ", ",
                                                     e->end, ") overlap tensor '", *previous, "' (ends at ",
                                                     covered, ")"));
    }
    if (e->begin > covered) {
      return absl::InvalidArgumentError(absl::StrCat(Where(path, *name), "data_offsets [", e->begin, ", ",
                                                     e->end, ") leave the bytes [", covered, ", ", e->begin,
                                                     ") of the data section unused"));
    }
    covered = e->end;
    previous = name;
  }
  if (covered != data_len) {
    return absl::InvalidArgumentError(absl::StrCat(Where(path), "tensors cover ", covered,
                                                   " bytes of a data section of ", data_len,
                                                   " bytes (trailing bytes or truncated tensors)"));
  }
  return file;
}

absl::StatusOr<uint64_t> CheckHeaderLength(const std::string& path, const char* first8, uint64_t size) {
  if (size < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(path), "truncated: ", size, " bytes, shorter than the 8-byte header length"));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, first8, 8);
  if (header_len < 2 || header_len > size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(Where(path), "bad header length ", header_len,
                                                   " (the file has ", size - 8,
                                                   " bytes after the length field)"));
  }
  return header_len;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  absl::StatusOr<std::string> read = ReadWholeFile(path);
  if (!read.ok()) return read.status();
  auto bytes = std::make_shared<const std::string>(std::move(*read));
  const uint64_t size = bytes->size();
  absl::StatusOr<uint64_t> header_len = CheckHeaderLength(path, bytes->data(), size);
  if (!header_len.ok()) return header_len.status();
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensorsHeader(path, std::string_view(bytes->data() + 8, *header_len), size - 8 - *header_len);
  if (!header.ok()) return header.status();
  SafetensorsFile file;
  file.path_ = path;
  file.data_start_ = header->data_start;
  file.entries_ = std::move(header->entries);
  file.metadata_ = std::move(header->metadata);
  file.bytes_ = std::move(bytes);
  return file;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

absl::StatusOr<SafetensorsInfo> SafetensorsFile::Info(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) return absl::NotFoundError(Where(path_, name) + "not in the file");
  return SafetensorsInfo{it->second.dtype, it->second.shape};
}

absl::StatusOr<Tensor> SafetensorsFile::Get(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) return absl::NotFoundError(Where(path_, name) + "not in the file");
  const SafetensorsEntry& e = it->second;
  const DTypeRow* row = FindDType(e.dtype);
  if (!row->readable) {
    return absl::UnimplementedError(
        absl::StrCat(Where(path_, name), "dtype ", e.dtype, " has no fathom dtype"));
  }
  const char* src = bytes_->data() + data_start_ + e.begin;
  Tensor t = Tensor::Empty(e.shape, row->dtype);
  if (e.dtype == "U8") {
    int32_t* dst = t.data<int32_t>();
    for (int64_t i = 0; i < t.numel(); ++i) dst[i] = static_cast<uint8_t>(src[i]);
  } else if (e.end > e.begin) {
    std::memcpy(t.raw(), src, e.end - e.begin);
  }
  return t;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  // Validate the tensors before the writer creates anything; it validates names and encodes the header.
  std::vector<SafetensorsDecl> decls;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) return absl::InvalidArgumentError(Where(path, name) + "undefined tensor");
    if (t.device() != Device::kCPU) {
      return absl::InvalidArgumentError(absl::StrCat(
          Where(path, name), "on ", std::string(DeviceName(t.device())), "; copy it to the CPU first"));
    }
    decls.push_back({name, DTypeNameInFormat(t.dtype()), t.shape()});
  }
  SafetensorsWriter writer;
  if (absl::Status st = writer.Open(path, decls, metadata); !st.ok()) return st;
  for (const auto& [name, t] : tensors) {
    if (absl::Status st = writer.Append(t.raw(), t.nbytes()); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat("tensor '", name, "': ", st.message()));
    }
  }
  return writer.Commit();
}

}  // namespace fathom
