#include "parallel/fault.h"

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "parallel/launch_env.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_watchdog.h"

namespace fathom {

namespace {

// Process-wide because MPI itself is: the world exists once per process, and so does the communicator the
// exit path synchronises on. It is a private duplicate of the world so that the exit's barrier can never be
// matched against a collective that other ranks are blocked in on the world or on a group.
MPI_Comm g_exit_comm = MPI_COMM_NULL;
std::atomic<bool> g_failing{false};

void PrintLine(const std::string& line) {
  std::fflush(stdout);
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

}  // namespace

void InstallMpiErrorHandling() {
  // The world's error handler must be ERRORS_RETURN before anything else can fail, so set it first; the
  // communicators created later (dup, split) inherit it, and MpiCommunicator sets it again explicitly.
  MpiCheck(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", "world");
  MpiCheck(MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", "self");
  if (g_exit_comm == MPI_COMM_NULL) {
    MpiCheck(MPI_Comm_dup(MPI_COMM_WORLD, &g_exit_comm), "MPI_Comm_dup", "world");
    MpiCheck(MPI_Comm_set_errhandler(g_exit_comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", "exit");
  }
}

void ReleaseMpiErrorHandling() {
  if (g_exit_comm != MPI_COMM_NULL && MpiIsActive()) {
    MpiCheck(MPI_Comm_free(&g_exit_comm), "MPI_Comm_free", "exit");
  }
  g_exit_comm = MPI_COMM_NULL;
}

int ProcessRank() {
  if (MpiIsActive()) {
    int rank = 0;
    if (MPI_Comm_rank(MPI_COMM_WORLD, &rank) == MPI_SUCCESS) return rank;
  }
  absl::StatusOr<LaunchEnv> env = LaunchEnvFromProcessEnvironment();
  return env.ok() ? env->world_rank : 0;
}

void AnnounceFailure(const std::string& msg) {
  // Only the first failure of a process speaks; a second one (another thread, or a failure while
  // failing) goes straight to the abort.
  if (!g_failing.exchange(true)) PrintLine(absl::StrCat("[rank ", ProcessRank(), "] ", msg));
}

void FailJob(int code, const std::string& msg) {
  AnnounceFailure(msg);
  if (MpiIsActive()) MPI_Abort(MPI_COMM_WORLD, code);
  std::fflush(nullptr);
  std::_Exit(code);  // MPI_Abort does not return; without MPI there is nobody else to take down
}

void MpiCheck(int rc, const char* call, const std::string& group) {
  if (rc == MPI_SUCCESS) [[likely]]
    return;
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) std::snprintf(text, sizeof(text), "error code %d", rc);
  FailJob(kExitFailure, absl::StrCat(call, " on group ", group, " failed: ", std::string(text)));
}

void ExitAllRanks(int code, const std::string& msg) { ExitAllRanks(code, msg, kExitAllRanksWaitSeconds); }

// Why not simply MPI_Finalize + exit on every rank: MPI_Finalize synchronises the ranks (Open MPI fences
// through its runtime), so a rank that never arrives - one that did not see the problem, or is stuck in a
// collective - would leave every other rank hanging in MPI_Finalize forever. And why not simply MPI_Abort:
// it works, but turns an ordinary rejected input into an "MPI_ABORT was invoked" banner from the runtime.
// So the ranks first meet in a non-blocking barrier on a private communicator, polled against a deadline.
// If every rank arrives, all of them are known to be on this path and MPI_Finalize cannot hang; exit(code)
// then gives the launcher the code from every rank. If the deadline passes, this rank cannot know the
// others will ever come, and aborts with the same code; it prints the message itself because rank 0 may be
// the one missing. Either way the job ends with `code` within the deadline (plus the runtime's teardown).
void ExitAllRanks(int code, const std::string& msg, double wait_seconds) {
  if (!MpiIsActive()) {
    PrintLine(msg);
    std::exit(code);
  }
  int rank = ProcessRank();
  if (rank == 0) PrintLine(msg);
  if (g_exit_comm == MPI_COMM_NULL) {  // error handling never installed: there is nothing safe to wait on
    FailJob(code, msg);
  }
  MPI_Request request = MPI_REQUEST_NULL;
  MpiCheck(MPI_Ibarrier(g_exit_comm, &request), "MPI_Ibarrier", "exit");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(wait_seconds);
  int done = 0;
  while (true) {
    MpiCheck(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test", "exit");
    if (done || std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!done) {
    std::string note =
        absl::StrCat("not every rank reached the exit within ", wait_seconds, " s; aborting the job");
    FailJob(code, rank == 0 ? note : absl::StrCat(msg, " (", note, ")"));  // rank 0 printed `msg` already
  }
  WatchdogRelease();
  ReleaseMpiErrorHandling();
  MpiCheck(MPI_Finalize(), "MPI_Finalize", "world");
  std::exit(code);
}

absl::StatusOr<std::optional<FaultSpec>> ParseTestFault(const std::string& value) {
  if (value.empty()) return std::optional<FaultSpec>();
  constexpr std::string_view kSaveSuffix = ":save";
  std::string rank_step = value;
  FaultSpec spec;
  if (rank_step.size() > kSaveSuffix.size() &&
      rank_step.compare(rank_step.size() - kSaveSuffix.size(), kSaveSuffix.size(), kSaveSuffix) == 0) {
    spec.in_save = true;
    rank_step.resize(rank_step.size() - kSaveSuffix.size());
  }
  size_t colon = rank_step.find(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(rank_step.substr(0, colon), &spec.rank) ||
      !absl::SimpleAtoi(rank_step.substr(colon + 1), &spec.step) || spec.rank < 0 || spec.step < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("FATHOM_TEST_FAULT='", value,
                     "' is not 'rank:step' or 'rank:step:save' with a rank >= 0 and a step >= 1 (steps "
                     "count from 1, as the log prints them)"));
  }
  return std::optional<FaultSpec>(spec);
}

absl::Status CheckTestFaultValue(const std::string& value, int world_size) {
  absl::StatusOr<std::optional<FaultSpec>> spec = ParseTestFault(value);
  if (!spec.ok()) return spec.status();
  if (spec->has_value() && (*spec)->rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("FATHOM_TEST_FAULT='", value, "' names rank ", (*spec)->rank, ", but the world has ",
                     world_size, " rank(s) (0-", world_size - 1, "); the fault would never happen"));
  }
  return absl::OkStatus();
}

absl::Status CheckTestFault(int world_size) {
  const char* value = std::getenv("FATHOM_TEST_FAULT");
  return value == nullptr ? absl::OkStatus() : CheckTestFaultValue(value, world_size);
}

namespace {

// The parsed FATHOM_TEST_FAULT (nullopt when unset or empty). Every rank reads the same variable at the
// same step, so a malformed value is rejected by every rank: one message, code 2.
std::optional<FaultSpec> TestFaultFromEnvironment() {
  const char* value = std::getenv("FATHOM_TEST_FAULT");
  if (value == nullptr) return std::nullopt;
  absl::StatusOr<std::optional<FaultSpec>> spec = ParseTestFault(value);
  if (!spec.ok()) ExitAllRanks(kExitInvalidInput, std::string(spec.status().message()));
  return *spec;
}

}  // namespace

bool ShouldInjectFault(int rank, int64_t step) {
  std::optional<FaultSpec> spec = TestFaultFromEnvironment();
  return spec.has_value() && !spec->in_save && spec->rank == rank && spec->step == step;
}

bool ShouldFlipParameterBit(int rank, int64_t step) {
  const char* value = std::getenv("FATHOM_TEST_FLIP_BIT");
  if (value == nullptr || *value == 0) return false;
  absl::StatusOr<std::optional<FaultSpec>> spec = ParseTestFault(value);
  if (!spec.ok() || (*spec)->in_save) {
    ExitAllRanks(kExitInvalidInput, absl::StrCat("FATHOM_TEST_FLIP_BIT='", value,
                                                 "' is not 'rank:step' with a rank >= 0 and a step >= 1"));
  }
  return (*spec)->rank == rank && (*spec)->step == step;
}

bool ShouldInjectSaveFault(int rank, int64_t step) {
  std::optional<FaultSpec> spec = TestFaultFromEnvironment();
  return spec.has_value() && spec->in_save && spec->rank == rank && spec->step == step;
}

void InjectFault(int rank, int64_t step) {
  PrintLine(absl::StrCat("[rank ", rank, "] FATHOM_TEST_FAULT: injected failure at step ", step));
  std::_Exit(kExitInjectedFault);
}

}  // namespace fathom
