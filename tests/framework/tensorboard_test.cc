// TensorBoard event files: decoded here by an independent reader of the TFRecord framing and the
// protobuf wire format (frame CRCs, every field), the way TensorBoard's reader sees them.
#include "framework/tensorboard.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "framework/file_io.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using ::testing::HasSubstr;
using testing::TestSeed;

// --- an independent decoder ---

struct DecodedValue {
  std::string tag;
  float simple_value = 0;
};
struct DecodedEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  std::vector<DecodedValue> values;
};

uint64_t ReadVarint(std::string_view& s) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    EXPECT_FALSE(s.empty()) << "truncated varint";
    if (s.empty()) return v;
    const uint8_t b = static_cast<uint8_t>(s[0]);
    s.remove_prefix(1);
    v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if ((b & 0x80) == 0) return v;
  }
}

template <class T>
T ReadFixed(std::string_view& s) {
  T v{};
  EXPECT_GE(s.size(), sizeof(T));
  std::memcpy(&v, s.data(), sizeof(T));
  s.remove_prefix(sizeof(T));
  return v;
}

std::string_view ReadBytes(std::string_view& s) {
  const uint64_t n = ReadVarint(s);
  EXPECT_LE(n, s.size());
  std::string_view b = s.substr(0, n);
  s.remove_prefix(n);
  return b;
}

DecodedValue DecodeValue(std::string_view s) {
  DecodedValue v;
  while (!s.empty()) {
    const uint64_t key = ReadVarint(s);
    if (key == ((1 << 3) | 2)) {
      v.tag = std::string(ReadBytes(s));
    } else if (key == ((2 << 3) | 5)) {
      v.simple_value = ReadFixed<float>(s);
    } else {
      ADD_FAILURE() << "unexpected Summary.Value field key " << key;
      return v;
    }
  }
  return v;
}

DecodedEvent DecodeEvent(std::string_view s) {
  DecodedEvent e;
  while (!s.empty()) {
    const uint64_t key = ReadVarint(s);
    switch (key) {
      case (1 << 3) | 1:
        e.wall_time = ReadFixed<double>(s);
        break;
      case (2 << 3) | 0:
        e.step = static_cast<int64_t>(ReadVarint(s));
        break;
      case (3 << 3) | 2:
        e.file_version = std::string(ReadBytes(s));
        break;
      case (5 << 3) | 2: {
        std::string_view summary = ReadBytes(s);
        while (!summary.empty()) {
          EXPECT_EQ(ReadVarint(summary), (1u << 3) | 2) << "Summary.value";
          e.values.push_back(DecodeValue(ReadBytes(summary)));
        }
        break;
      }
      default:
        ADD_FAILURE() << "unexpected Event field key " << key;
        return e;
    }
  }
  return e;
}

uint32_t Mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

// Splits a file into its TFRecord payloads, checking both CRCs of every frame.
std::vector<std::string> ReadRecords(const std::string& bytes) {
  std::vector<std::string> records;
  std::string_view s = bytes;
  while (!s.empty()) {
    EXPECT_GE(s.size(), 12u) << "truncated frame header";
    if (s.size() < 12) break;
    const uint64_t length = ReadFixed<uint64_t>(s);
    const uint32_t length_crc = ReadFixed<uint32_t>(s);
    EXPECT_EQ(length_crc, Mask(Crc32c(bytes.data() + (bytes.size() - s.size() - 12), 8))) << "length CRC";
    EXPECT_GE(s.size(), length + 4) << "truncated frame";
    if (s.size() < length + 4) break;
    const std::string payload(s.substr(0, length));
    s.remove_prefix(length);
    EXPECT_EQ(ReadFixed<uint32_t>(s), Mask(Crc32c(payload.data(), payload.size()))) << "payload CRC";
    records.push_back(payload);
  }
  return records;
}

// --- tests ---

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

}  // namespace
}  // namespace fathom
