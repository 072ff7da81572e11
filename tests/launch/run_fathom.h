// Runs the fathom binary from the launch tests, the way a user does from a shell.
#ifndef FATHOM_TESTS_LAUNCH_RUN_FATHOM_H_
#define FATHOM_TESTS_LAUNCH_RUN_FATHOM_H_

#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <string>

namespace fathom::testing {

struct RunResult {
  int exit_code;       // -1 when the process did not exit normally
  std::string output;  // stdout and stderr together
  double seconds;      // wall time
};

// A shell command line, its stderr joined to its stdout.
inline RunResult RunShell(const std::string& command) {
  const std::string cmd = command + " 2>&1";
  auto start = std::chrono::steady_clock::now();
  FILE* pipe = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  int status = pclose(pipe);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out, s};
}

// `fathom <args>` (FATHOM_BINARY, defined by tests/CMakeLists.txt).
inline RunResult RunFathom(const std::string& args) {
  return RunShell(std::string(FATHOM_BINARY) + " " + args);
}

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_LAUNCH_RUN_FATHOM_H_
