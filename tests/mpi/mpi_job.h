// Runs an mpirun job from a GoogleTest binary that is not itself under mpirun (tests/mpi/fault_probe.cc,
// tests/mpi/watchdog_probe.cc): the job runs in a fresh process group, its stdout and stderr are read
// together, and a job still running at the deadline is killed whole and reported as hung.
#ifndef FATHOM_TESTS_MPI_MPI_JOB_H_
#define FATHOM_TESTS_MPI_MPI_JOB_H_

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace fathom::testing {

struct JobResult {
  int exit_code = -1;  // the launcher's exit status; -1 when killed at the deadline
  bool hung = false;
  double seconds = 0;
  std::string output;  // stdout and stderr, interleaved
};

// The path of the running binary, so that a probe binary can start itself under mpirun.
inline std::string SelfPath() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// `mpirun --oversubscribe --allow-run-as-root -np <np> <mpirun_args...> <command...>` (FATHOM_MPIRUN),
// killed at `deadline_seconds`.
inline JobResult RunMpiJob(int np, const std::vector<std::string>& mpirun_args,
                           const std::vector<std::string>& command, double deadline_seconds) {
  std::vector<std::string> args = {FATHOM_MPIRUN, "--oversubscribe", "--allow-run-as-root", "-np",
                                   std::to_string(np)};
  args.insert(args.end(), mpirun_args.begin(), mpirun_args.end());
  args.insert(args.end(), command.begin(), command.end());

  JobResult result;
  int fds[2];
  if (pipe(fds) != 0) {
    result.output = std::string("pipe: ") + std::strerror(errno);
    return result;
  }
  auto start = std::chrono::steady_clock::now();
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);  // its own process group, so a hung job can be killed whole
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    std::perror("execv mpirun");
    _exit(127);
  }
  close(fds[1]);
  setpgid(pid, pid);
  auto deadline = start + std::chrono::duration<double>(deadline_seconds);
  char buf[4096];
  while (true) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.hung = true;
      kill(-pid, SIGKILL);
      break;
    }
    pollfd pfd{fds[0], POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left.count(), 200))) > 0) {
      ssize_t n = read(fds[0], buf, sizeof(buf));
      if (n <= 0) break;  // every writer closed: the job is over
      result.output.append(buf, static_cast<size_t>(n));
    }
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  // Whether or not mpirun ended by itself, nothing of the job (a stopped rank, say) may outlive the test.
  kill(-pid, SIGKILL);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!result.hung && WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

inline size_t CountOccurrences(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_MPI_MPI_JOB_H_
