#include "framework/tensorboard.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "framework/check.h"
#include "framework/file_io.h"

namespace fathom {
namespace {

// Protobuf wire types.
constexpr uint32_t kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5;

void PutVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void PutTag(std::string& out, uint32_t field, uint32_t wire_type) {
  PutVarint(out, (field << 3) | wire_type);
}

template <class T>
void PutLittleEndian(std::string& out, T v) {
  static_assert(std::is_trivially_copyable_v<T>);
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));  // x86-64 and aarch64 are little-endian, as the wire format
  out.append(bytes, sizeof(T));
}

void PutBytes(std::string& out, uint32_t field, std::string_view bytes) {
  PutTag(out, field, kLengthDelimited);
  PutVarint(out, bytes.size());
  out.append(bytes);
}

std::string EventHeader(double wall_time) {
  std::string event;
  PutTag(event, 1, kFixed64);
  PutLittleEndian(event, wall_time);
  return event;
}

absl::Status IoError(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

}  // namespace

uint32_t MaskedCrc32c(const void* data, size_t bytes) {
  const uint32_t crc = Crc32c(data, bytes);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string EncodeTfRecord(std::string_view payload) {
  std::string frame;
  frame.reserve(payload.size() + 16);
  PutLittleEndian(frame, static_cast<uint64_t>(payload.size()));
  PutLittleEndian(frame, MaskedCrc32c(frame.data(), 8));
  frame.append(payload);
  PutLittleEndian(frame, MaskedCrc32c(payload.data(), payload.size()));
  return frame;
}

std::string EncodeFileVersionEvent(double wall_time) {
  std::string event = EventHeader(wall_time);
  PutBytes(event, 3, "brain.Event:2");
  return event;
}

std::string EncodeScalarsEvent(double wall_time, int64_t step, const std::vector<Scalar>& scalars) {
  std::string summary;
  for (const auto& [tag, value] : scalars) {
    std::string v;
    PutBytes(v, 1, tag);
    PutTag(v, 2, kFixed32);
    PutLittleEndian(v, static_cast<float>(value));
    PutBytes(summary, 1, v);
  }
  std::string event = EventHeader(wall_time);
  PutTag(event, 2, kVarint);
  PutVarint(event, static_cast<uint64_t>(step));  // int64 varints carry negatives as 10 bytes
  PutBytes(event, 5, summary);
  return event;
}

std::string EncodeSessionStartEvent(double wall_time, int64_t step) {
  constexpr uint64_t kStart = 1;  // tensorflow.SessionLog.SessionStatus.START
  std::string session_log;
  PutTag(session_log, 1, kVarint);
  PutVarint(session_log, kStart);
  std::string event = EventHeader(wall_time);
  PutTag(event, 2, kVarint);
  PutVarint(event, static_cast<uint64_t>(step));
  PutBytes(event, 7, session_log);  // Event.session_log (tensorboard/compat/proto/event.proto)
  return event;
}

absl::StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Create(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": not a directory (TensorBoard event files go there)"));
  }
  char host[256] = "localhost";
  if (::gethostname(host, sizeof(host) - 1) != 0) std::strcpy(host, "localhost");
  host[sizeof(host) - 1] = '\0';
  const double now = static_cast<double>(std::time(nullptr));
  const std::string base = absl::StrCat(dir, "/events.out.tfevents.", static_cast<int64_t>(now), ".", host,
                                        ".", static_cast<int64_t>(::getpid()));
  // A second log opened by the same process within the same second gets a counter suffix.
  std::string path = base;
  int fd = -1;
  for (int n = 1; fd < 0; ++n) {
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 && (errno != EEXIST || n > 1000)) return IoError(absl::StrCat("cannot create ", path));
    if (fd < 0) path = absl::StrCat(base, ".", n);
  }
  auto writer = std::unique_ptr<TensorBoardWriter>(new TensorBoardWriter(fd, path));
  if (absl::Status s = writer->WriteRecord(EncodeFileVersionEvent(now)); !s.ok()) return s;
  return writer;
}

TensorBoardWriter::~TensorBoardWriter() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status TensorBoardWriter::WriteScalars(int64_t step, double wall_time,
                                             const std::vector<Scalar>& scalars) {
  FATHOM_CHECK(!scalars.empty(), "[tensorboard] an event without scalars at step ", step);
  return WriteRecord(EncodeScalarsEvent(wall_time, step, scalars));
}

absl::Status TensorBoardWriter::WriteSessionStart(int64_t step, double wall_time) {
  return WriteRecord(EncodeSessionStartEvent(wall_time, step));
}

absl::Status TensorBoardWriter::WriteRecord(std::string_view payload) {
  const std::string frame = EncodeTfRecord(payload);
  for (size_t done = 0; done < frame.size();) {
    const ssize_t n = ::write(fd_, frame.data() + done, frame.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError(absl::StrCat("write to ", path_));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace fathom
