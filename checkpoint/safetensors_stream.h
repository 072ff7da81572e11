// Streaming safetensors I/O for HF model directories of any size (checkpoint/safetensors.h has the format).
//
// SafetensorsReader reads and validates only the header when it opens a file (the same checks as
// SafetensorsFile::Open, against the file's size), then reads any byte range of any tensor with pread: a
// 5 GB shard costs its header in memory, and a reader pulls what it needs in blocks of its choosing.
//
// SafetensorsWriter writes a file tensor by tensor: the caller declares every tensor (name, dtype, shape)
// up front, which fixes the header, then appends the data in declaration order in pieces of any size. The
// bytes go to a temporary file beside the destination (framework/file_io.h's AtomicFileWriter) and appear
// under the final name only at Commit, which checks that exactly the declared bytes arrived; a writer
// destroyed before Commit removes its temporary file. Peak memory is whatever the caller appends at once.
//
// Errors are absl::Status naming the file and, where one is to blame, the tensor. Thread safety: a reader's
// const methods may be called from several threads (pread has no shared file position); a writer is used
// by one thread at a time.
#ifndef FATHOM_CHECKPOINT_SAFETENSORS_STREAM_H_
#define FATHOM_CHECKPOINT_SAFETENSORS_STREAM_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/safetensors.h"
#include "framework/file_io.h"

namespace fathom {

class SafetensorsReader {
 public:
  // Opens `path` and validates its header. Errors: NotFound when the file does not exist; InvalidArgument
  // for a file that is not a regular file, is truncated or has a malformed header (as SafetensorsFile).
  static absl::StatusOr<std::unique_ptr<SafetensorsReader>> Open(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  // The tensor's entry, or nullptr when the file has no tensor of that name.
  const SafetensorsEntry* Find(const std::string& name) const;
  // Bytes [offset, offset + bytes) of `entry`'s data (an entry of this file) into `out`. REQUIRES:
  // offset + bytes <= entry.end - entry.begin. Errors: Internal naming the file and the tensor when the
  // read fails, DataLoss when the file has shrunk since it was opened.
  absl::Status ReadBytes(const std::string& name, const SafetensorsEntry& entry, uint64_t offset,
                         uint64_t bytes, void* out) const;

 private:
  SafetensorsReader(std::string path, int fd, SafetensorsHeader header)
      : path_(std::move(path)), fd_(fd), header_(std::move(header)) {}

  std::string path_;
  int fd_ = -1;
  SafetensorsHeader header_;
};

// One tensor a SafetensorsWriter will write.
struct SafetensorsDecl {
  std::string name;
  std::string dtype;  // the format's name: "F32", "BF16", "F8_E4M3", ...
  Shape shape;
};

class SafetensorsWriter {
 public:
  SafetensorsWriter() = default;
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Validates the declarations (names unique, not "__metadata__", valid UTF-8; dtypes of the format) before
  // anything is created, then creates the temporary file and writes the header. Errors: InvalidArgument for
  // a bad declaration or a `path` that must not be replaced (a directory, a symlink, ...), Internal for I/O.
  absl::Status Open(const std::string& path, const std::vector<SafetensorsDecl>& tensors,
                    const std::map<std::string, std::string>& metadata = {});
  // The next `bytes` of the data section (the tensors' bytes in declaration order, back to back).
  // FailedPrecondition when more than the declared bytes are appended; Internal for I/O.
  absl::Status Append(const void* data, size_t bytes);
  // Checks that every declared byte arrived (FailedPrecondition naming the tensor being written
  // otherwise), fsyncs and renames the file into place.
  absl::Status Commit();
  // Removes the temporary file (no-op when nothing is open).
  void Abandon() { file_.Abandon(); }

  // The data section's size, fixed by the declarations.
  uint64_t data_bytes() const { return data_bytes_; }
  // The whole file's size: 8 + header + data.
  uint64_t file_bytes() const { return data_start_ + data_bytes_; }

 private:
  std::string path_;
  AtomicFileWriter file_;
  std::vector<std::pair<std::string, uint64_t>> ends_;  // each tensor's end offset in the data section
  uint64_t data_start_ = 0, data_bytes_ = 0, appended_ = 0;
};

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_SAFETENSORS_STREAM_H_
