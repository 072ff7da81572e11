// TensorBoard event files: decoded here by an independent reader of the TFRecord framing and the
// protobuf wire format (frame CRCs, every field; tests/common/tensorboard_decoder.h), the way
// TensorBoard's reader sees them.
#include "framework/tensorboard.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "framework/file_io.h"
#include "tests/common/gradcheck.h"
#include "tests/common/tensorboard_decoder.h"

namespace fathom {
namespace {

using testing::DecodedEvent;
using testing::DecodeEvent;
using ::testing::HasSubstr;
using testing::ReadRecords;
using testing::TestSeed;

TEST(TensorBoardTest, MaskIsTheTfRecordOne) {
  // Crc32c("123456789") = 0xE3069283 (file_io_test pins it); masked by hand: rotate right 15, add the
  // constant.
  const uint32_t crc = 0xE3069283u;
  EXPECT_EQ(MaskedCrc32c("123456789", 9), ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
  const std::string frame = EncodeTfRecord("abc");
  ASSERT_EQ(frame.size(), 8u + 4 + 3 + 4);
  EXPECT_EQ(frame.substr(0, 8), std::string("\3\0\0\0\0\0\0\0", 8));
  EXPECT_EQ(frame.substr(12, 3), "abc");
}

TEST(TensorBoardTest, WritesDecodableEventsAndFlushesEachRecord) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 100.0);
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("fathom_tb_" + std::to_string(rng()))).string();
  std::filesystem::create_directories(dir);
  absl::StatusOr<std::unique_ptr<TensorBoardWriter>> w = TensorBoardWriter::Create(dir);
  ASSERT_TRUE(w.ok()) << w.status();
  const std::string name = std::filesystem::path((*w)->path()).filename().string();
  EXPECT_EQ(name.rfind("events.out.tfevents.", 0), 0u) << name;

  std::vector<std::vector<Scalar>> written;
  std::vector<int64_t> steps;
  for (int i = 0; i < 20; ++i) {
    std::vector<Scalar> scalars = {{"loss", nd(rng)}, {"phase_seconds/attention", std::abs(nd(rng))}};
    if (i % 3 == 0) scalars.push_back({"expert_load/layer_1/max", std::round(std::abs(nd(rng)))});
    const int64_t step = i == 7 ? int64_t{1} << 40 : i * 10;  // a step needing a long varint
    ASSERT_TRUE((*w)->WriteScalars(step, 1.7e9 + i, scalars).ok());
    written.push_back(scalars);
    steps.push_back(step);
    // Every record is on disk (in the page cache) as soon as WriteScalars returns.
    std::ifstream in((*w)->path(), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_EQ(ReadRecords(bytes).size(), static_cast<size_t>(i + 2));
  }
  std::ifstream in((*w)->path(), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::vector<std::string> records = ReadRecords(bytes);
  ASSERT_EQ(records.size(), 21u);
  const DecodedEvent first = DecodeEvent(records[0]);
  EXPECT_EQ(first.file_version, "brain.Event:2");
  EXPECT_GT(first.wall_time, 1.6e9);
  for (size_t i = 0; i < written.size(); ++i) {
    const DecodedEvent e = DecodeEvent(records[i + 1]);
    EXPECT_EQ(e.step, steps[i]);
    EXPECT_EQ(e.wall_time, 1.7e9 + static_cast<double>(i));
    ASSERT_EQ(e.values.size(), written[i].size());
    for (size_t k = 0; k < e.values.size(); ++k) {
      EXPECT_EQ(e.values[k].tag, written[i][k].first);
      // simple_value is a float: the nearest float to the double written.
      EXPECT_EQ(e.values[k].simple_value, static_cast<float>(written[i][k].second));
    }
  }
  w->reset();
  std::filesystem::remove_all(dir);
  EXPECT_THAT(std::string(TensorBoardWriter::Create(dir).status().message()), HasSubstr("not a directory"));
}

// A resumed run's SessionLog START: Event.session_log is field 7 (6 is the deprecated log_message) and
// SessionLog.status START is 1, or TensorBoard would not discard the abandoned continuation's events.
TEST(TensorBoardTest, SessionStartIsTheEventTensorBoardPurgesOn) {
  const std::string payload = EncodeSessionStartEvent(1.7e9, 6);
  // wall_time (field 1, fixed64), step (field 2, varint 6), session_log (field 7, 2 bytes: status = 1).
  EXPECT_EQ(payload.substr(9), std::string("\x10\x06\x3a\x02\x08\x01", 6));
  const DecodedEvent e = DecodeEvent(payload);
  EXPECT_EQ(e.wall_time, 1.7e9);
  EXPECT_EQ(e.step, 6);
  EXPECT_EQ(e.session_status, 1);
  EXPECT_TRUE(e.values.empty());

  const std::string dir =
      (std::filesystem::temp_directory_path() /
       ("fathom_tb_start_" + std::to_string(TestSeed()) + "_" + std::to_string(::getpid())))
          .string();
  std::filesystem::create_directories(dir);
  absl::StatusOr<std::unique_ptr<TensorBoardWriter>> w = TensorBoardWriter::Create(dir);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->WriteSessionStart(11, 1.8e9).ok());
  ASSERT_TRUE((*w)->WriteScalars(11, 1.8e9 + 1, {{"loss", 2.0}}).ok());
  const std::vector<DecodedEvent> events = testing::ReadEventFile((*w)->path());
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_EQ(events[0].session_status, -1);
  EXPECT_EQ(events[1].step, 11);
  EXPECT_EQ(events[1].session_status, 1);
  EXPECT_EQ(events[2].session_status, -1);
  ASSERT_EQ(events[2].values.size(), 1u);
  w->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fathom
