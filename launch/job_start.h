// The start-up every command that runs on all ranks of a job shares (train, bench, diagnose): who launched
// the process, MPI, the launch check, the world communicator, the test-fault flag, and the recipe every
// rank must agree on. Each step that finds a problem ends the job the same way on every rank: one message
// (rank 0's), exit code 2 (ExitAllRanks, parallel/fault.h) - bad input never hangs a job or prints N times.
#ifndef FATHOM_LAUNCH_JOB_START_H_
#define FATHOM_LAUNCH_JOB_START_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "framework/config.h"
#include "launch/command_line.h"
#include "parallel/communicator.h"
#include "parallel/launch_env.h"

namespace fathom {

struct Job {
  LaunchEnv launcher;  // the launcher's view (parallel/launch_env.h)
  LaunchEnv node;      // where this rank sits on its node: MPI's shared-memory view under MPI, else 0 of 1
  bool mpi = false;    // MPI initialised (a launcher started the process)
  std::unique_ptr<Communicator> world;
};

// In this order: the launcher's variables (LaunchEnvFromProcessEnvironment: an inconsistent environment,
// or one process alone in a multi-task Slurm allocation, is refused before MPI starts: the message is
// printed by every process, exit 2); MpiInit when a launcher started the process; the launch check
// (CheckEnvironment: the launcher's and MPI's views of the world agree, else one hint: use `srun
// --mpi=pmix` or `mpirun`); the world communicator ("local" without a launcher); FATHOM_TEST_FAULT
// against the world size (CheckTestFault). `command` ("fathom train") prefixes every message. Returns
// only when all passed.
// MPI's start-up has a deadline of its own, outside the communicators' watchdog: a rank that never starts
// or stalls before joining would otherwise leave every other rank waiting in MPI_Init forever. Past
// FATHOM_MPI_INIT_TIMEOUT_S seconds (default 600; a malformed value is refused, exit 2) a waiting rank
// says so and exits 1, and the launcher ends the job.
Job StartJob(const std::string& command);

// Loads the recipe of `cl` on every rank (LoadRecipe), agrees on the outcome (AgreeOnStatus: a rank that
// could not load its recipe is named on every rank), checks that every rank got the same recipe
// (CheckSameRecipeOnAllRanks), and sets the world's watchdog deadline to parallel.timeout_s. Ends the job
// with exit 2 on any failure.
Recipe LoadRecipeOnAllRanks(const std::string& command, const CommandLine& cl, Communicator& world);

// The places a training run writes to, or reads only late, checked at start-up so that a path that cannot
// work is bad input (exit 2) before the model is built, not a failure after the first hours of training:
// checkpoint.dir and train.log_dir are created (as `mkdir -p` does) and must be writable directories;
// data.tokenizer_dir (copied by `fathom export`) must hold a tokenizer. Rank 0 checks (the directories
// are shared by the job) and every rank returns its verdict (AgreeOnStatus).
absl::Status PrepareRunPaths(const Recipe& recipe, Communicator& world);

// The resolved recipe, framed for a log: "# recipe as run (PATH after --set, defaults filled in):",
// ResolvedRecipeYaml, "# end of recipe". Rank 0 prints it at start-up so that a run documents itself.
std::string FormatResolvedRecipe(const Recipe& recipe);

// Ends a command that started with StartJob: destroys the world communicator and finalizes MPI.
void FinishJob(Job& job);

}  // namespace fathom

#endif  // FATHOM_LAUNCH_JOB_START_H_
