#include "checkpoint/safetensors_stream.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"

namespace fathom {
namespace {

std::string Where(const std::string& path) { return absl::StrCat("[safetensors] ", path, ": "); }
std::string Where(const std::string& path, const std::string& tensor) {
  return absl::StrCat("[safetensors] ", path, ": tensor '", tensor, "': ");
}

// Reads exactly `bytes` at `offset`; `shrunk` reports a short read (end of file).
absl::Status PreadAll(int fd, void* out, uint64_t bytes, uint64_t offset, bool* shrunk) {
  char* p = static_cast<char*>(out);
  *shrunk = false;
  while (bytes > 0) {
    const ssize_t n = ::pread(fd, p, bytes, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::InternalError(std::strerror(errno));
    if (n == 0) {
      *shrunk = true;
      return absl::OkStatus();
    }
    p += n;
    bytes -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsReader>> SafetensorsReader::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string message = absl::StrCat(Where(path), "cannot open: ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::InvalidArgumentError(message);
  }
  // Closes fd on every early return.
  auto fail = [fd](absl::Status s) -> absl::Status {
    ::close(fd);
    return s;
  };
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return fail(absl::InternalError(absl::StrCat(Where(path), "cannot stat: ", std::strerror(errno))));
  }
  if (!S_ISREG(st.st_mode)) return fail(absl::InvalidArgumentError(Where(path) + "not a regular file"));
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  char first8[8] = {};
  bool shrunk = false;
  if (size >= 8) {
    if (absl::Status s = PreadAll(fd, first8, 8, 0, &shrunk); !s.ok()) {
      return fail(absl::InternalError(absl::StrCat(Where(path), "read failed: ", s.message())));
    }
  }
  absl::StatusOr<uint64_t> header_len = CheckHeaderLength(path, first8, shrunk ? 0 : size);
  if (!header_len.ok()) return fail(header_len.status());
  std::string header_json(*header_len, '\0');
  if (absl::Status s = PreadAll(fd, header_json.data(), *header_len, 8, &shrunk); !s.ok() || shrunk) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat(Where(path), "cannot read the header", s.ok() ? " (file shrank)" : ": ", s.message())));
  }
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensorsHeader(path, header_json, size - 8 - *header_len);
  if (!header.ok()) return fail(header.status());
  return std::unique_ptr<SafetensorsReader>(new SafetensorsReader(path, fd, std::move(*header)));
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

const SafetensorsEntry* SafetensorsReader::Find(const std::string& name) const {
  auto it = header_.entries.find(name);
  return it == header_.entries.end() ? nullptr : &it->second;
}

absl::Status SafetensorsReader::ReadBytes(const std::string& name, const SafetensorsEntry& entry,
                                          uint64_t offset, uint64_t bytes, void* out) const {
  FATHOM_CHECK(offset + bytes <= entry.end - entry.begin, "[SafetensorsReader] bytes [", offset, ", ",
               offset + bytes, ") outside tensor ", name, " of ", entry.end - entry.begin, " bytes");
  bool shrunk = false;
  absl::Status s = PreadAll(fd_, out, bytes, header_.data_start + entry.begin + offset, &shrunk);
  if (!s.ok()) return absl::InternalError(absl::StrCat(Where(path_, name), "read failed: ", s.message()));
  if (shrunk) return absl::DataLossError(Where(path_, name) + "the file is shorter than when it was opened");
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Open(const std::string& path, const std::vector<SafetensorsDecl>& tensors,
                                     const std::map<std::string, std::string>& metadata) {
  FATHOM_CHECK(!file_.is_open(), "[SafetensorsWriter] Open called twice");
  // Validate everything before the first byte is written.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  ends_.clear();
  for (const SafetensorsDecl& t : tensors) {
    if (t.name == "__metadata__") return absl::InvalidArgumentError(Where(path, t.name) + "reserved name");
    if (!seen.insert(t.name).second)
      return absl::InvalidArgumentError(Where(path, t.name) + "duplicate name");
    const size_t element = SafetensorsDTypeSize(t.dtype);
    if (element == 0) {
      return absl::InvalidArgumentError(absl::StrCat(Where(path, t.name), "unknown dtype '", t.dtype, "'"));
    }
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) return absl::InvalidArgumentError(Where(path, t.name) + "negative dimension");
      numel *= d;
    }
    nlohmann::ordered_json entry;
    entry["dtype"] = t.dtype;
    entry["shape"] = t.shape;
    const uint64_t bytes = static_cast<uint64_t>(numel) * element;
    entry["data_offsets"] = {offset, offset + bytes};
    header[t.name] = std::move(entry);
    offset += bytes;
    ends_.emplace_back(t.name, offset);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& ex) {  // invalid UTF-8 in a name or in metadata
    return absl::InvalidArgumentError(absl::StrCat(Where(path), "cannot encode the header: ", ex.what()));
  }
  // Pad with spaces (valid JSON whitespace) so the data section starts 8-byte aligned, as the reference
  // writer does.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();
  path_ = path;
  data_start_ = 8 + header_len;
  data_bytes_ = offset;
  appended_ = 0;

  auto failed = [&path](const absl::Status& st, const std::string& what = "") {
    return absl::Status(st.code(), absl::StrCat(Where(path), what, st.message()));
  };
  if (absl::Status st = file_.Open(path); !st.ok()) return failed(st);
  char len_bytes[8];
  std::memcpy(len_bytes, &header_len, 8);
  if (absl::Status st = file_.Append(len_bytes, 8); !st.ok()) return failed(st, "writing the header: ");
  if (absl::Status st = file_.Append(text); !st.ok()) return failed(st, "writing the header: ");
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Append(const void* data, size_t bytes) {
  FATHOM_CHECK(file_.is_open(), "[SafetensorsWriter] Append without Open");
  if (appended_ + bytes > data_bytes_) {
    return absl::FailedPreconditionError(absl::StrCat(Where(path_), "appending ", bytes, " bytes after ",
                                                      appended_, " overruns the declared ", data_bytes_));
  }
  if (bytes == 0) return absl::OkStatus();
  if (absl::Status st = file_.Append(data, bytes); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat(Where(path_), "writing data: ", st.message()));
  }
  appended_ += bytes;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Commit() {
  FATHOM_CHECK(file_.is_open(), "[SafetensorsWriter] Commit without Open");
  if (appended_ != data_bytes_) {
    std::string pending = "?";
    for (const auto& [name, end] : ends_) {
      if (end > appended_) {
        pending = name;
        break;
      }
    }
    file_.Abandon();
    return absl::FailedPreconditionError(absl::StrCat(Where(path_), "only ", appended_, " of ", data_bytes_,
                                                      " data bytes were written (tensor '", pending,
                                                      "' is incomplete)"));
  }
  if (absl::Status st = file_.Commit(); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat(Where(path_), st.message()));
  }
  return absl::OkStatus();
}

}  // namespace fathom
