#include "framework/file_io.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <vector>

#include "gtest/gtest.h"

namespace fathom {
namespace {

std::string TempDir() {
  std::string dir = std::filesystem::temp_directory_path() / ("fathom_file_io_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(Crc32c, KnownVectors) {
  // The check value of CRC-32C (RFC 3720 appendix B.4 and the catalogue of CRC algorithms).
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(Crc32c("", 0), 0u);
  std::vector<unsigned char> zeros(32, 0);
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720 B.4: 32 bytes of zeros
}

TEST(Crc32c, PiecewiseEqualsWhole) {
  std::mt19937 rng(7);
  std::vector<unsigned char> buf(1000 + rng() % 1000);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  const uint32_t whole = Crc32c(buf.data(), buf.size());
  for (size_t cut : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{513}, buf.size()}) {
    EXPECT_EQ(Crc32c(buf.data() + cut, buf.size() - cut, Crc32c(buf.data(), cut)), whole) << cut;
  }
  buf[buf.size() / 2] ^= 1;  // one flipped bit changes it
  EXPECT_NE(Crc32c(buf.data(), buf.size()), whole);
}

TEST(AtomicFile, WritesAndReplacesRegularFile) {
  const std::string dir = TempDir(), path = dir + "/a.txt";
  ASSERT_TRUE(WriteFileAtomically(path, "first").ok());
  EXPECT_EQ(ReadAll(path), "first");
  ASSERT_TRUE(WriteFileAtomically(path, "second, longer").ok());
  EXPECT_EQ(ReadAll(path), "second, longer");
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  }
  std::filesystem::remove_all(dir);
}

TEST(AtomicFile, RefusesSymlinkDirectoryAndDevice) {
  const std::string dir = TempDir(), target = dir + "/target", link = dir + "/link";
  ASSERT_TRUE(WriteFileAtomically(target, "keep").ok());
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  absl::Status s = WriteFileAtomically(link, "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("symbolic link"), std::string::npos) << s;
  struct stat st {};
  ASSERT_EQ(::lstat(link.c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_EQ(ReadAll(target), "keep");

  s = WriteFileAtomically(dir, "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("directory"), std::string::npos) << s;

  s = WriteFileAtomically("/dev/null", "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("device"), std::string::npos) << s;
  ASSERT_EQ(::stat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));

  s = WriteFileAtomically(dir + "/missing/dir/file", "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  std::filesystem::remove_all(dir);
}

// An output that is an input (the same path, through a symlink, a hard link) or lies inside an input
// directory is refused; another path, or one that does not exist yet beside the input, is fine.
TEST(CheckNotAnInput, RefusesTheSameFileAndPathsInsideInputDirectories) {
  const std::string dir = TempDir() + "/not_an_input";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir + "/model");
  const std::string input = dir + "/recipe.yaml";
  std::ofstream(input) << "model: {}\n";
  std::filesystem::create_symlink("recipe.yaml", dir + "/alias.yaml");
  ASSERT_EQ(::link(input.c_str(), (dir + "/hard.yaml").c_str()), 0);
  for (const std::string& out :
       std::vector<std::string>{input, dir + "/./recipe.yaml", dir + "/alias.yaml", dir + "/hard.yaml",
                                dir + "/model/config.json", dir + "/model/new/x"}) {
    SCOPED_TRACE(out);
    absl::Status s = CheckNotAnInput(out, {input, dir + "/model"}, "--out");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(s.message()).find("an input of this command"), std::string::npos) << s;
    EXPECT_EQ(std::string(s.message()).rfind("--out " + out, 0), 0u) << s;
  }
  EXPECT_TRUE(CheckNotAnInput(dir + "/plan.yaml", {input, dir + "/model"}, "--out").ok());
  EXPECT_TRUE(CheckNotAnInput(dir + "/modelx", {dir + "/model"}, "--out").ok());
  EXPECT_TRUE(CheckNotAnInput(input, {}, "--out").ok());
}

// A path under a regular file is the user's mistake (InvalidArgument), not an I/O failure.
TEST(AtomicFile, PathUnderARegularFileIsInvalidArgument) {
  const std::string file = TempDir() + "/plain_file";
  std::ofstream(file) << "x";
  absl::Status s = CheckReplaceable(file + "/out.json");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(std::string(s.message()).find("is a file, not a directory"), std::string::npos) << s;
}

TEST(AtomicFile, AbandonedWriterLeavesOldFile) {
  const std::string dir = TempDir(), path = dir + "/b.bin";
  ASSERT_TRUE(WriteFileAtomically(path, "old").ok());
  {
    AtomicFileWriter w;
    ASSERT_TRUE(w.Open(path).ok());
    ASSERT_TRUE(w.Append("new contents").ok());
    EXPECT_EQ(w.bytes_written(), 12);
  }  // destroyed uncommitted
  EXPECT_EQ(ReadAll(path), "old");
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fathom
