#include "checkpoint/safetensors.h"

#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// A fresh directory per test, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "safetensors_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    ::chmod(dir_.c_str(), 0755);
    fs::remove_all(dir_);
  }
  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // Writes raw bytes: the 8-byte length of `header`, `header`, then `data`.
  std::string WriteRaw(const std::string& name, const std::string& header, const std::string& data,
                       uint64_t header_len_override = UINT64_MAX) {
    std::string path = Path(name);
    uint64_t len = header_len_override == UINT64_MAX ? header.size() : header_len_override;
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(&len), 8);
    out << header << data;
    return path;
  }

  std::string dir_;
};

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A tensor of `dtype` with random bytes (floats drawn so that they are finite).
Tensor RandomOfDType(const Shape& shape, DType dtype, std::mt19937_64& rng) {
  Tensor t = Tensor::Empty(shape, dtype);
  std::normal_distribution<double> nd(0.0, 3.0);
  for (int64_t i = 0; i < t.numel(); ++i) {
    // Integers take raw random bits (their whole range); floats a finite normal value, rounded by SetItem.
    if (dtype == DType::kI64) {
      t.data<int64_t>()[i] = static_cast<int64_t>(rng());
    } else if (dtype == DType::kI32) {
      t.data<int32_t>()[i] = static_cast<int32_t>(rng());
    } else {
      t.SetItem(i, nd(rng));
    }
  }
  return t;
}

void ExpectSameBytes(const Tensor& a, const Tensor& b, const std::string& name) {
  SCOPED_TRACE(name);
  ASSERT_EQ(a.dtype(), b.dtype());
  ASSERT_EQ(a.shape(), b.shape());
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
}

TEST_F(SafetensorsTest, RoundTripsEveryDtypeAndMetadata) {
  uint64_t seed = testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"z.f64", RandomOfDType({3, 5}, DType::kF64, rng)},
      {"a.f32", RandomOfDType({2, 3, 4}, DType::kF32, rng)},
      {"m.bf16", RandomOfDType({7}, DType::kBF16, rng)},
      {"e4m3", RandomOfDType({5, 3}, DType::kF8E4M3, rng)},
      {"e5m2", RandomOfDType({9}, DType::kF8E5M2, rng)},
      {"ids.i64", RandomOfDType({2, 6}, DType::kI64, rng)},
      {"ids.i32", RandomOfDType({11}, DType::kI32, rng)},
      {"scalar", RandomOfDType({}, DType::kF64, rng)},
      {"empty", Tensor::Empty({0, 4}, DType::kF32)},
  };
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"seed", std::to_string(seed)}};
  const std::string path = Path("all.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, meta).ok());
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  // The data section starts 8-byte aligned, as the reference writer pads it.
  std::string raw = ReadBytes(path);
  uint64_t header_len;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);

  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metadata(), meta);
  std::vector<std::string> names = f->names();
  ASSERT_EQ(names.size(), tensors.size());
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(f->contains(name)) << name;
    absl::StatusOr<Tensor> got = f->Get(name);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSameBytes(*got, t, name);
  }
  absl::StatusOr<SafetensorsInfo> info = f->Info("e4m3");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->dtype, "F8_E4M3");
  EXPECT_EQ(info->shape, (Shape{5, 3}));
  EXPECT_FALSE(f->contains("nope"));
  EXPECT_EQ(f->Get("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(f->Get("nope").status().message()), HasSubstr("nope"));
}

TEST_F(SafetensorsTest, ReadsHandWrittenFileWithU8AsI32) {
  // As another writer would lay it out: unsorted header keys, metadata last, U8 and F32 tensors.
  std::string data;
  const uint8_t u8[5] = {0, 1, 127, 128, 255};
  data.append(reinterpret_cast<const char*>(u8), 5);
  const float f32[2] = {1.5f, -2.25f};
  data.append(reinterpret_cast<const char*>(f32), 8);
  std::string header = R"({"w":{"dtype":"F32","shape":[1,2],"data_offsets":[5,13]},)"
                       R"("codes":{"dtype":"U8","shape":[5],"data_offsets":[0,5]},"__metadata__":{"k":"v"}})";
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(WriteRaw("u8.safetensors", header, data));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metadata().at("k"), "v");
  absl::StatusOr<Tensor> codes = f->Get("codes");
  ASSERT_TRUE(codes.ok());
  ASSERT_EQ(codes->dtype(), DType::kI32);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(codes->data<int32_t>()[i], u8[i]);
  EXPECT_EQ(f->Info("codes")->dtype, "U8");
  absl::StatusOr<Tensor> w = f->Get("w");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->shape(), (Shape{1, 2}));
  EXPECT_EQ(w->data<float>()[1], -2.25f);
}

TEST_F(SafetensorsTest, FormatDtypeWithoutFathomDtypeOpensButGetFails) {
  std::string header = R"({"half":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})";
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(WriteRaw("f16.safetensors", header, "abcd"));
  ASSERT_TRUE(f.ok()) << f.status();
  absl::Status s = f->Get("half").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), HasSubstr("half"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("F16"));
}

struct Malformed {
  std::string what;
  std::string header;
  std::string data;
  uint64_t header_len = UINT64_MAX;  // UINT64_MAX: the header's real length
  std::string expect;                // a piece of the message besides the file name
};

TEST_F(SafetensorsTest, MalformedFilesGiveErrorsNamingFileAndTensor) {
  const std::string ok_entry = R"("good":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<Malformed> cases = {
      {"header length beyond the file", "{}", "", 1000, "bad header length 1000"},
      {"header length too small", "{}", "", 1, "bad header length 1"},
      {"not json", "{\"a\": ", "", UINT64_MAX, "not valid JSON"},
      {"not an object", "[1, 2]", "", UINT64_MAX, "not a JSON object"},
      {"unknown dtype", R"({"bad":{"dtype":"F7","shape":[2],"data_offsets":[0,2]}})", "xx", UINT64_MAX,
       "tensor 'bad': unknown or unsupported dtype 'F7'"},
      {"shape vs bytes", R"({"bad":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "01234567",
       UINT64_MAX, "tensor 'bad': shape (3) of F32 needs 12 bytes, data_offsets give 8"},
      {"offsets past the end",
       "{" + ok_entry + R"(,"bad":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", "01234567",
       UINT64_MAX, "tensor 'bad': data_offsets [8, 12) out of range"},
      {"offsets reversed", R"({"bad":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", "0123", UINT64_MAX,
       "tensor 'bad': data_offsets [4, 0) out of range"},
      {"overlap", "{" + ok_entry + R"(,"bad":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "01234567",
       UINT64_MAX, "overlap tensor"},
      {"hole", R"({"bad":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "01234567", UINT64_MAX,
       "tensor 'bad': data_offsets [4, 8) leave the bytes [0, 4)"},
      {"trailing bytes", "{" + ok_entry + "}", "0123456789", UINT64_MAX,
       "tensors cover 8 bytes of a data section of 10"},
      {"truncated data", "{" + ok_entry + "}", "0123", UINT64_MAX,
       "tensor 'good': data_offsets [0, 8) out of range"},
      {"negative dim", R"({"bad":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", "", UINT64_MAX,
       "tensor 'bad': shape is not an array of non-negative integers"},
      {"missing field", R"({"bad":{"dtype":"F32","shape":[1]}})", "0123", UINT64_MAX,
       "tensor 'bad': expected an object"},
      {"bad offsets", R"({"bad":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "0123", UINT64_MAX,
       "tensor 'bad': data_offsets is not a pair"},
      {"metadata not strings", R"({"__metadata__":{"n":3}})", "", UINT64_MAX, "__metadata__ value of 'n'"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Malformed& c = cases[i];
    SCOPED_TRACE(c.what);
    std::string path = WriteRaw("bad" + std::to_string(i) + ".safetensors", c.header, c.data, c.header_len);
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(f.status().message()), HasSubstr(path));
    EXPECT_THAT(std::string(f.status().message()), HasSubstr(c.expect));
  }
}

TEST_F(SafetensorsTest, TruncatedAndMissingFiles) {
  std::string path = Path("short.safetensors");
  std::ofstream(path, std::ios::binary) << "abc";
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("truncated: 3 bytes"));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(path));

  // A valid file cut short anywhere is refused.
  std::mt19937_64 rng(testing::TestSeed());
  std::string full = Path("full.safetensors");
  ASSERT_TRUE(WriteSafetensors(full, {{"x", RandomOfDType({4, 4}, DType::kF32, rng)}}).ok());
  std::string bytes = ReadBytes(full);
  for (size_t keep : {size_t{7}, size_t{8}, size_t{20}, bytes.size() - 1}) {
    SCOPED_TRACE("kept " + std::to_string(keep) + " bytes");
    std::string cut = Path("cut.safetensors");
    std::ofstream(cut, std::ios::binary | std::ios::trunc) << bytes.substr(0, keep);
    EXPECT_FALSE(SafetensorsFile::Open(cut).ok());
  }

  absl::StatusOr<SafetensorsFile> missing = SafetensorsFile::Open(Path("absent.safetensors"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("absent.safetensors"));
  EXPECT_FALSE(SafetensorsFile::Open(dir_).ok());  // a directory
}

TEST_F(SafetensorsTest, WriterRejectsBadInputWithoutCreatingAFile) {
  std::mt19937_64 rng(testing::TestSeed());
  Tensor t = RandomOfDType({2}, DType::kF32, rng);
  const std::string path = Path("w.safetensors");
  struct Case {
    std::vector<std::pair<std::string, Tensor>> tensors;
    std::string expect;
  };
  float device_bytes[2] = {1, 2};
  const std::vector<Case> cases = {
      {{{"a", t}, {"a", t}}, "tensor 'a': duplicate name"},
      {{{"__metadata__", t}}, "tensor '__metadata__': reserved name"},
      {{{"u", Tensor()}}, "tensor 'u': undefined tensor"},
      {{{"d", Tensor::Wrap(device_bytes, {2}, DType::kF32, Device::kCUDA, nullptr)}}, "tensor 'd': on cuda"},
      {{{std::string("bad\xff"), t}}, "cannot encode the header"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expect);
    absl::Status s = WriteSafetensors(path, c.tensors);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.expect));
    EXPECT_THAT(std::string(s.message()), HasSubstr(path));
    EXPECT_FALSE(fs::exists(path));
    EXPECT_FALSE(fs::exists(path + ".tmp"));
  }
}

// Writes an "old" file, makes the next write fail through `sabotage`, and checks the old file survives.
class AtomicWriteTest : public SafetensorsTest {
 protected:
  void ExpectOldFileIntactAfterFailedWrite(const std::function<void(const std::string&)>& sabotage) {
    uint64_t seed = testing::TestSeed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const std::string path = Path("ckpt.safetensors");
    Tensor old_t = RandomOfDType({3, 3}, DType::kF32, rng);
    ASSERT_TRUE(WriteSafetensors(path, {{"w", old_t}}, {{"version", "old"}}).ok());
    const std::string old_bytes = ReadBytes(path);
    sabotage(path);
    Tensor new_t = RandomOfDType({64, 64}, DType::kF64, rng);
    absl::Status s = WriteSafetensors(path, {{"w", new_t}}, {{"version", "new"}});
    EXPECT_FALSE(s.ok());
    EXPECT_THAT(std::string(s.message()), HasSubstr(path));
    EXPECT_TRUE(ReadBytes(path) == old_bytes) << "the old file changed";
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->metadata().at("version"), "old");
    ExpectSameBytes(*f->Get("w"), old_t, "w");
  }
};

// The writer's temporary beside `path` (framework/file_io.h: "<path>.tmp.<pid>").
std::string TemporaryOf(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

TEST_F(AtomicWriteTest, CreateFailureLeavesExistingFileIntact) {
  // The temporary cannot be created: its name is taken by a directory.
  ExpectOldFileIntactAfterFailedWrite(
      [](const std::string& path) { fs::create_directory(TemporaryOf(path)); });
}

TEST_F(AtomicWriteTest, WriteFailureLeavesExistingFileIntact) {
  // Writes fail mid-way: a file-size limit below the new file's size makes write(2) fail with EFBIG (the
  // signal it would raise is ignored). The temporary is removed afterwards.
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto previous = std::signal(SIGXFSZ, SIG_IGN);
  ExpectOldFileIntactAfterFailedWrite([](const std::string&) {
    rlimit small{};
    ::getrlimit(RLIMIT_FSIZE, &small);
    small.rlim_cur = 4096;  // the new file holds 32 KiB of tensor data
    ::setrlimit(RLIMIT_FSIZE, &small);
  });
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, previous);
  EXPECT_FALSE(fs::exists(fs::symlink_status(TemporaryOf(Path("ckpt.safetensors")))));
}

TEST_F(AtomicWriteTest, DirectoryAtThePathIsRefusedAndKept) {
  const std::string path = Path("target.safetensors");
  fs::create_directory(path);
  std::ofstream(path + "/keep") << "x";
  std::mt19937_64 rng(testing::TestSeed());
  absl::Status s = WriteSafetensors(path, {{"w", RandomOfDType({2}, DType::kF32, rng)}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr(path), HasSubstr("is a directory")));
  EXPECT_FALSE(fs::exists(TemporaryOf(path)));
  EXPECT_TRUE(fs::exists(path + "/keep"));
}

TEST_F(AtomicWriteTest, SymlinkAtThePathIsRefusedAndItsTargetKept) {
  const std::string target = Path("elsewhere.bin"), link = Path("link.safetensors");
  std::ofstream(target) << "precious";
  fs::create_symlink(target, link);
  std::mt19937_64 rng(testing::TestSeed());
  absl::Status s = WriteSafetensors(link, {{"w", RandomOfDType({2}, DType::kF32, rng)}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("is a symbolic link"));
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(ReadBytes(target), "precious");
}

TEST_F(AtomicWriteTest, DeviceAtThePathIsRefused) {
  if (!fs::is_character_file("/dev/null")) GTEST_SKIP() << "/dev/null is not a character device here";
  std::mt19937_64 rng(testing::TestSeed());
  absl::Status s = WriteSafetensors("/dev/null", {{"w", RandomOfDType({2}, DType::kF32, rng)}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("/dev/null is a character device"));
  EXPECT_TRUE(fs::is_character_file("/dev/null"));
}

TEST_F(AtomicWriteTest, UnwritableDirectoryLeavesExistingFileIntact) {
  if (::geteuid() == 0) {
    GTEST_SKIP() << "running as root, whom directory permissions do not stop; the other AtomicWriteTest "
                    "cases cover the failure path";
  }
  ExpectOldFileIntactAfterFailedWrite([this](const std::string&) { ::chmod(dir_.c_str(), 0555); });
}

}  // namespace
}  // namespace fathom
