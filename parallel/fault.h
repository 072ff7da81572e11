// Faults: a failing rank brings the whole job down, never hangs it (DESIGN.md, "Errors").
//
// Three ways out, by who knows what:
//   FailJob       one rank hit something fatal (an MPI error, a broken peer, a failed check): it prints
//                 "[rank R] <what>" once and MPI_Abort(MPI_COMM_WORLD, code) makes the runtime kill every
//                 rank, wherever they are blocked.
//   ExitAllRanks  every rank found the same problem (a recipe rejected identically on each): rank 0 prints
//   the
//                 message once, and every rank exits with `code`: cleanly through MPI_Finalize when all ranks
//                 reach the exit within a short wait, by MPI_Abort(code) otherwise (see fault.cc for why).
//   InjectFault   test only: the rank named by FATHOM_TEST_FAULT dies abruptly, as a crashed process would.
//
// MPI errors never reach callers as codes: InstallMpiErrorHandling sets MPI_ERRORS_RETURN on the world, and
// every call's return code goes through MpiCheck, which turns a failure into FailJob naming the call and
// the group. Exit codes: kExitInvalidInput (2) for rejected input, kExitFailure (1) for runtime failures.
//
// Under Slurm, launch with `srun --kill-on-bad-exit=1` (or mpirun inside the allocation) so that a rank that
// dies without MPI_Abort still ends the step.
#ifndef FATHOM_PARALLEL_FAULT_H_
#define FATHOM_PARALLEL_FAULT_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace fathom {

inline constexpr int kExitFailure = 1;
inline constexpr int kExitInvalidInput = 2;
inline constexpr int kExitInjectedFault = 3;

// How long ExitAllRanks waits for every rank before it aborts instead.
inline constexpr double kExitAllRanksWaitSeconds = 10.0;

// Collective over MPI_COMM_WORLD, once, right after MPI_Init (MpiInit calls it): MPI_ERRORS_RETURN on
// MPI_COMM_WORLD and MPI_COMM_SELF, and the private communicator ExitAllRanks synchronises on.
void InstallMpiErrorHandling();
// Frees what InstallMpiErrorHandling created; MpiFinalize calls it before MPI_Finalize.
void ReleaseMpiErrorHandling();

// This process's rank in MPI_COMM_WORLD; before MPI_Init (or after MPI_Finalize) the launcher's rank from
// the environment (parallel/launch_env.h), 0 without one.
int ProcessRank();

// Prints "[rank R] msg" to stderr (once per process, even if called again or from another thread) and ends
// the job: MPI_Abort(MPI_COMM_WORLD, code) when MPI is active, exit(code) otherwise.
[[noreturn]] void FailJob(int code, const std::string& msg);
// The first half of FailJob, for a failure that must clean up before ending the job (the NCCL watchdog
// aborts its communicator): prints "[rank R] msg" now, once per process; a later FailJob prints nothing.
void AnnounceFailure(const std::string& msg);

// rc == MPI_SUCCESS, or FailJob(kExitFailure, "<call> on group <group> failed: <MPI's error string>").
void MpiCheck(int rc, const char* call, const std::string& group);

// Every rank calls it with the same message: rank 0 prints `msg` (no rank prefix: it is the job's answer,
// not one rank's), and every rank exits with `code` without hanging. Without MPI: prints and exits.
[[noreturn]] void ExitAllRanks(int code, const std::string& msg);
// The same, with the wait before aborting instead of finalising (tests shorten it).
[[noreturn]] void ExitAllRanks(int code, const std::string& msg, double wait_seconds);

// The test-only fault flag: FATHOM_TEST_FAULT="rank:step" makes world rank `rank` fail at step `step`;
// "rank:step:save" makes it fail in the middle of writing the checkpoint of step `step` (after the first
// block of its file is written, before the save commits). Steps count from 1, as the training log prints
// them ("step     3/300" is step 3).
struct FaultSpec {
  int rank = 0;
  int64_t step = 1;
  bool in_save = false;  // the ":save" suffix
};
// "" -> nullopt; "R:S" or "R:S:save" with R >= 0, S >= 1 -> {R, S, in_save}; anything else is
// InvalidArgument naming the variable.
absl::StatusOr<std::optional<FaultSpec>> ParseTestFault(const std::string& value);
// The start-up check every command that trains calls (a fault test must never silently run without its
// fault): OK when FATHOM_TEST_FAULT is unset or empty, or well formed and naming a rank of a world of
// `world_size`; otherwise InvalidArgument naming the variable, its value and the world's ranks. The same
// verdict on every rank (they read the same variable), so the caller exits with ExitAllRanks.
absl::Status CheckTestFault(int world_size);
// The same over a given value (tests).
absl::Status CheckTestFaultValue(const std::string& value, int world_size);
// True when FATHOM_TEST_FAULT names (rank, step), `step` being the 1-BASED step number as logged (a loop
// over 0-based indices passes index + 1). The trainer calls it once per step and rank, and on true calls
// InjectFault. A malformed FATHOM_TEST_FAULT ends the job (ExitAllRanks, kExitInvalidInput); CheckTestFault
// at start-up catches it earlier.
bool ShouldInjectFault(int rank, int64_t step);
// The silent-data-corruption test hook: FATHOM_TEST_FLIP_BIT="rank:step" (1-based step) makes that rank
// change one parameter value after that step, before the replica check. A malformed value ends the job
// (ExitAllRanks, kExitInvalidInput), like FATHOM_TEST_FAULT's.
bool ShouldFlipParameterBit(int rank, int64_t step);
// True when FATHOM_TEST_FAULT is "rank:step:save" for this (rank, step): the checkpoint writer calls it
// once per save, mid-write, and on true calls InjectFault. A malformed value ends the job as above.
bool ShouldInjectSaveFault(int rank, int64_t step);
// Prints "[rank R] FATHOM_TEST_FAULT: injected failure at step S" (S 1-based, as logged) and terminates this
// process at once with kExitInjectedFault, without MPI_Abort or MPI_Finalize: the other ranks learn of it
// from the runtime, as they would of a crash.
[[noreturn]] void InjectFault(int rank, int64_t step);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_FAULT_H_
