// An independent reader of TensorBoard event files for tests: the TFRecord framing (both CRCs of every
// frame checked) and the protobuf wire format of the Event fields fathom writes (tensorboard/compat/proto/
// event.proto), the way TensorBoard's reader sees them. Failures are gtest expectations.
#ifndef FATHOM_TESTS_COMMON_TENSORBOARD_DECODER_H_
#define FATHOM_TESTS_COMMON_TENSORBOARD_DECODER_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "framework/file_io.h"

namespace fathom::testing {

struct DecodedValue {
  std::string tag;
  float simple_value = 0;
};
struct DecodedEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  std::vector<DecodedValue> values;
  int session_status = -1;  // SessionLog.status when the event has a session_log (START = 1), else -1
};

inline uint64_t ReadVarint(std::string_view& s) {
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
inline T ReadFixed(std::string_view& s) {
  T v{};
  EXPECT_GE(s.size(), sizeof(T));
  std::memcpy(&v, s.data(), sizeof(T));
  s.remove_prefix(sizeof(T));
  return v;
}

inline std::string_view ReadBytes(std::string_view& s) {
  const uint64_t n = ReadVarint(s);
  EXPECT_LE(n, s.size());
  std::string_view b = s.substr(0, n);
  s.remove_prefix(n);
  return b;
}

inline DecodedValue DecodeValue(std::string_view s) {
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

inline DecodedEvent DecodeEvent(std::string_view s) {
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
      case (7 << 3) | 2: {  // Event.session_log (6 is the deprecated log_message)
        std::string_view session_log = ReadBytes(s);
        e.session_status = 0;  // proto3: an absent status is STATUS_UNSPECIFIED
        while (!session_log.empty()) {
          EXPECT_EQ(ReadVarint(session_log), (1u << 3) | 0) << "SessionLog.status";
          e.session_status = static_cast<int>(ReadVarint(session_log));
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

inline uint32_t Mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

// Splits a file into its TFRecord payloads, checking both CRCs of every frame.
inline std::vector<std::string> ReadRecords(const std::string& bytes) {
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

// Every record of the event file at `path`, decoded.
inline std::vector<DecodedEvent> ReadEventFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<DecodedEvent> events;
  for (const std::string& record : ReadRecords(bytes)) events.push_back(DecodeEvent(record));
  return events;
}

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_COMMON_TENSORBOARD_DECODER_H_
