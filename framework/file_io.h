// Files fathom writes (checkpoints, exports, traces, logs, datasets) and the checksum it stores with them.
//
// Safe replacement (DESIGN.md "Files are written the safe way"): a file is written to a temporary file in
// the same directory ("<path>.tmp.<pid>"), flushed and fsynced, then renamed over `path`, and the
// directory is fsynced, so a crash leaves either the old file or the new one, never a torn one. Only a
// regular file (or nothing) is ever replaced: a symlink, a directory, a device node, a FIFO or a socket at
// `path` is refused with InvalidArgument naming it, and is left untouched.
//
// Errors are absl::Status: InvalidArgument for a path that must not be replaced, a missing directory or
// an unwritable one (the user's input), Internal for I/O failures (naming the path and strerror). On any
// error the temporary file is removed and `path` is untouched.
// Thread safety: functions are thread-compatible (distinct paths from distinct threads are fine).
#ifndef FATHOM_FRAMEWORK_FILE_IO_H_
#define FATHOM_FRAMEWORK_FILE_IO_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace fathom {

// OK when `path` does not exist or is a regular file; InvalidArgument (naming the path and what is there)
// otherwise. Symlinks are not followed: a symlink is refused even when it points to a regular file.
absl::Status CheckReplaceable(const std::string& path);

// OK unless the output path `output` of a command is one of its `inputs` (the same file, also through a
// symlink or a hard link) or lies inside an input directory: InvalidArgument naming both, `what` ("--out",
// "train.trace") first. Paths that cannot be resolved are left to the write itself to report.
absl::Status CheckNotAnInput(const std::string& output, const std::vector<std::string>& inputs,
                             const std::string& what);

// Writes `contents` to `path` the safe way (see above).
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);

// Streams a file to `path` the safe way: Open creates the temporary file, Append writes to it, Commit
// fsyncs and renames it into place. Destroying an uncommitted writer removes the temporary file.
// Move-only; one thread at a time.
class AtomicFileWriter {
 public:
  AtomicFileWriter() = default;
  ~AtomicFileWriter();
  AtomicFileWriter(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  // CheckReplaceable(path), then creates "<path>.tmp.<pid>" (mode 0644).
  absl::Status Open(const std::string& path);
  absl::Status Append(const void* data, size_t bytes);
  absl::Status Append(std::string_view s) { return Append(s.data(), s.size()); }
  // fsync, close, rename over the destination (re-checked: still replaceable), fsync the directory.
  absl::Status Commit();
  // Removes the temporary file (no-op when nothing is open).
  void Abandon();

  bool is_open() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }
  int64_t bytes_written() const { return written_; }

 private:
  int fd_ = -1;
  std::string path_, tmp_;
  int64_t written_ = 0;
};

// `dir` and its missing parents created (mkdir -p); InvalidArgument "<what> <dir> is not a directory and
// cannot be created (<reason>)" when it does not end up a directory (a regular file in the way, no
// permission).
absl::Status MakeDirectories(const std::string& dir, const std::string& what);

// fsync of a directory (after a rename into it, so the new entry is durable).
absl::Status FsyncDirectory(const std::string& dir);

// The directory part of `path` ("." for a bare file name).
std::string DirectoryOf(const std::string& path);

// CRC-32C (Castagnoli, the polynomial of iSCSI, ext4, TFRecord): Crc32c(data, n) of the whole buffer, or
// continued over several pieces with Crc32c(next, m, Crc32c(first, n)). Uses the SSE4.2 crc32 instruction
// when the CPU has it (several GB/s), else a table; both give the same value. Crc32c("123456789") is
// 0xE3069283.
uint32_t Crc32c(const void* data, size_t bytes, uint32_t crc = 0);

}  // namespace fathom

#endif  // FATHOM_FRAMEWORK_FILE_IO_H_
