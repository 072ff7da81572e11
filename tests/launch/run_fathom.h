// Runs the fathom binary from the launch tests, the way a user does from a shell.
#ifndef FATHOM_TESTS_LAUNCH_RUN_FATHOM_H_
#define FATHOM_TESTS_LAUNCH_RUN_FATHOM_H_

#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
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

// `args` under `mpirun -np np` (oversubscribed, as root); `timeout` bounds a hang: a job that does not end
// by itself in 60 s fails with exit 124. `fathom` false: `args` is the whole command mpirun starts (a
// wrapper), not fathom's arguments. `env` is prepended (VAR=value ...).
inline RunResult MpiRun(int np, const std::string& args, const std::string& env = "", bool fathom = true) {
  return RunShell(env +
                  " OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 60 mpirun "
                  "--oversubscribe -np " +
                  std::to_string(np) + " " + (fathom ? std::string(FATHOM_BINARY) + " " : std::string()) +
                  args);
}

// An empty directory <temp>/<name> (whatever was there removed), for one test's files. The name also lets
// a test find its own processes (pgrep -f).
inline std::string FreshTempDir(const std::string& name) {
  const std::string dir = std::filesystem::temp_directory_path() / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// How often `what` occurs in `text`.
inline size_t CountOf(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_LAUNCH_RUN_FATHOM_H_
