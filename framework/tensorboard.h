// TensorBoard event files, written without TensorFlow or protobuf: scalars only.
//
// A file is a sequence of TFRecords, each
//   u64 length (little-endian) | u32 masked CRC-32C of those 8 bytes | payload | u32 masked CRC-32C of it
// with mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32). Each payload is a serialized
// tensorflow.Event protobuf (hand-encoded here, proto3 wire format):
//   Event      { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
//                SessionLog session_log = 7; }   (6 is the deprecated log_message)
//   Summary    { repeated Value value = 1; }
//   Value      { string tag = 1; float simple_value = 2; }
//   SessionLog { SessionStatus status = 1; }  (START = 1)
// The first record carries file_version "brain.Event:2"; a resumed run's file then has a SessionLog START
// at the first step it writes (what PyTorch's SummaryWriter(purge_step=...) writes: TensorBoard discards
// the earlier files' events from that step on, the records of a continuation that was abandoned); every
// later record is a Summary of scalars. TensorBoard (EventAccumulator, `tensorboard --logdir`) reads these
// files; tests/data/check_tensorboard.py checks it.
#ifndef FATHOM_FRAMEWORK_TENSORBOARD_H_
#define FATHOM_FRAMEWORK_TENSORBOARD_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fathom {

// One scalar of a record: its tag and value.
using Scalar = std::pair<std::string, double>;

// mask(Crc32c(data)) as above.
uint32_t MaskedCrc32c(const void* data, size_t bytes);
// `payload` framed as one TFRecord.
std::string EncodeTfRecord(std::string_view payload);
// The Event payloads.
std::string EncodeFileVersionEvent(double wall_time);
// simple_value is a float: values are rounded to the nearest float.
std::string EncodeScalarsEvent(double wall_time, int64_t step, const std::vector<Scalar>& scalars);
// An Event with session_log { status: START } at `step`.
std::string EncodeSessionStartEvent(double wall_time, int64_t step);

// Appends events to a new file "<dir>/events.out.tfevents.<unix seconds>.<hostname>.<pid>" (then ".1",
// ".2", ... when the process already made one this second). Every record
// is one write(2) of the whole frame, with no buffering in the process, so a killed job keeps every record
// written (no fsync: a crash of the machine may lose the last ones). An event log is appended to while the
// run lives, so it is the one kind of file not written through AtomicFileWriter: it is created new
// (O_EXCL), never replaces anything, and readers stop at the last whole record.
// Thread safety: none; one thread at a time.
class TensorBoardWriter {
 public:
  // Creates the file in `dir` (which must exist) and writes the file_version record.
  // Errors: InvalidArgument for a missing directory, Internal for I/O failures (naming the path).
  static absl::StatusOr<std::unique_ptr<TensorBoardWriter>> Create(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One Event with the scalars (at least one) of `step`.
  absl::Status WriteScalars(int64_t step, double wall_time, const std::vector<Scalar>& scalars);
  // The SessionLog START Event of a run resumed at `step` (the first step it will write).
  absl::Status WriteSessionStart(int64_t step, double wall_time);
  const std::string& path() const { return path_; }

 private:
  TensorBoardWriter(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  absl::Status WriteRecord(std::string_view payload);

  int fd_;
  std::string path_;
};

}  // namespace fathom

#endif  // FATHOM_FRAMEWORK_TENSORBOARD_H_
