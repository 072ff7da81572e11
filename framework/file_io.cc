#include "framework/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace fathom {
namespace {

namespace fs = std::filesystem;

absl::Status IoError(int err, const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

const char* KindOf(mode_t mode) {
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

}  // namespace

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

absl::Status CheckReplaceable(const std::string& path) {
  if (path.empty())
    return absl::InvalidArgumentError("an empty path was given where a file path is expected");
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOTDIR) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": a part of its directory ", DirectoryOf(path), " is a file, not a directory"));
    }
    if (errno != ENOENT) return IoError(errno, absl::StrCat("cannot inspect ", path));
    const std::string dir = DirectoryOf(path);
    struct stat ds {};
    if (::stat(dir.c_str(), &ds) != 0 || !S_ISDIR(ds.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": the directory ", dir, " does not exist; create it first"));
    }
    return absl::OkStatus();
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, " is ", KindOf(st.st_mode), "; fathom replaces only a regular file (or creates a new one)"));
  }
  return absl::OkStatus();
}

absl::Status MakeDirectories(const std::string& dir, const std::string& what) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  std::error_code is_dir_ec;
  if (fs::is_directory(dir, is_dir_ec)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " ", dir, " is not a directory and cannot be created",
                                                 ec ? absl::StrCat(" (", ec.message(), ")") : ""));
}

absl::Status CheckNotAnInput(const std::string& output, const std::vector<std::string>& inputs,
                             const std::string& what) {
  std::error_code ec;
  const fs::path out = fs::weakly_canonical(fs::absolute(output, ec), ec);
  if (ec) return absl::OkStatus();  // nothing to compare: the write itself reports the path
  for (const std::string& input : inputs) {
    if (input.empty()) continue;
    std::error_code ie;
    const fs::path in = fs::weakly_canonical(fs::absolute(input, ie), ie);
    if (ie) continue;
    // The same file (also through a symlink or a hard link), or a path inside an input directory.
    const bool same = out == in || (fs::exists(out, ie) && fs::equivalent(out, in, ie));
    const auto [end, rest] = std::mismatch(in.begin(), in.end(), out.begin(), out.end());
    const bool inside = !same && end == in.end() && rest != out.end() && fs::is_directory(in, ie);
    if (same || inside) {
      const char* verb = same ? " is " : " lies inside ";
      const char* harm = same ? "destroy that input" : "change that input";
      return absl::InvalidArgumentError(absl::StrCat(what, " ", output, verb, input,
                                                     ", an input of this command; writing it would ", harm,
                                                     ": choose another path"));
    }
  }
  return absl::OkStatus();
}

absl::Status FsyncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError(errno, absl::StrCat("cannot open directory ", dir));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  // Some file systems (tmpfs, some FUSE mounts) refuse fsync on a directory: the rename is then as durable
  // as the file system makes it.
  if (rc != 0 && err != EINVAL && err != ENOTSUP)
    return IoError(err, absl::StrCat("fsync of directory ", dir));
  return absl::OkStatus();
}

AtomicFileWriter::~AtomicFileWriter() { Abandon(); }

AtomicFileWriter::AtomicFileWriter(AtomicFileWriter&& other) noexcept
    : fd_(other.fd_), path_(std::move(other.path_)), tmp_(std::move(other.tmp_)), written_(other.written_) {
  other.fd_ = -1;
}

AtomicFileWriter& AtomicFileWriter::operator=(AtomicFileWriter&& other) noexcept {
  if (this != &other) {
    Abandon();
    fd_ = other.fd_;
    path_ = std::move(other.path_);
    tmp_ = std::move(other.tmp_);
    written_ = other.written_;
    other.fd_ = -1;
  }
  return *this;
}

absl::Status AtomicFileWriter::Open(const std::string& path) {
  Abandon();
  if (absl::Status s = CheckReplaceable(path); !s.ok()) return s;
  path_ = path;
  tmp_ = absl::StrCat(path, ".tmp.", ::getpid());
  written_ = 0;
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd_ < 0) {
    const int err = errno;
    if (err == EACCES || err == EROFS) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": cannot create a file in ", DirectoryOf(path), ": ", std::strerror(err)));
    }
    return IoError(err, absl::StrCat("cannot create ", tmp_));
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Append(const void* data, size_t bytes) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat("writing ", path_, ": no file is open"));
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t n = ::write(fd_, p, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      Abandon();
      return IoError(err, absl::StrCat("writing ", tmp_));
    }
    p += n;
    bytes -= static_cast<size_t>(n);
    written_ += n;
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat("committing ", path_, ": no file is open"));
  if (::fsync(fd_) != 0) {
    const int err = errno;
    Abandon();
    return IoError(err, absl::StrCat("fsync of ", tmp_));
  }
  if (::close(fd_) != 0) {
    const int err = errno;
    fd_ = -1;
    ::unlink(tmp_.c_str());
    return IoError(err, absl::StrCat("closing ", tmp_));
  }
  fd_ = -1;
  // The destination may have changed while the file was written (a symlink planted meanwhile).
  if (absl::Status s = CheckReplaceable(path_); !s.ok()) {
    ::unlink(tmp_.c_str());
    return s;
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    return IoError(err, absl::StrCat("renaming ", tmp_, " over ", path_));
  }
  return FsyncDirectory(DirectoryOf(path_));
}

void AtomicFileWriter::Abandon() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
    fd_ = -1;
  }
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  AtomicFileWriter w;
  if (absl::Status s = w.Open(path); !s.ok()) return s;
  if (absl::Status s = w.Append(contents); !s.ok()) return s;
  return w.Commit();
}

// ---- CRC-32C ----------------------------------------------------------------------------------------------

namespace {

constexpr uint32_t kCastagnoliReflected = 0x82F63B78u;

constexpr std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kCastagnoliReflected : c >> 1;
    t[i] = c;
  }
  return t;
}

constexpr std::array<uint32_t, 256> kCrcTable = MakeCrcTable();

uint32_t Crc32cTable(const unsigned char* p, size_t n, uint32_t state) {
  for (size_t i = 0; i < n; ++i) state = kCrcTable[(state ^ p[i]) & 0xFFu] ^ (state >> 8);
  return state;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(const unsigned char* p, size_t n, uint32_t state) {
  uint64_t c = state;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n > 0) {
    c32 = _mm_crc32_u8(c32, *p++);
    --n;
  }
  return c32;
}

bool HasSse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif

}  // namespace

uint32_t Crc32c(const void* data, size_t bytes, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t state = ~crc;
#if defined(__x86_64__)
  if (HasSse42()) return ~Crc32cHardware(p, bytes, state);
#endif
  return ~Crc32cTable(p, bytes, state);
}

}  // namespace fathom
