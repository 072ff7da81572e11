// Launch environment: who started this process, how many ranks there are, and which one this is, in the
// world and on its node (the local rank picks the GPU).
//
// Two views that must agree:
//   - the launcher's, from its environment variables (available before MPI_Init);
//   - MPI's, from MPI_COMM_WORLD and a shared-memory split (MPI_Comm_split_type(MPI_COMM_TYPE_SHARED):
//     the ranks sharing this node's memory, ordered by world rank).
// When they disagree, MPI was not started the way the launcher thinks (the classic case: `srun` without a
// PMI plugin starts N singleton MPI worlds of size 1) and CheckEnvironment says so.
#ifndef FATHOM_PARALLEL_LAUNCH_ENV_H_
#define FATHOM_PARALLEL_LAUNCH_ENV_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fathom {

enum class Launcher { kNone, kOpenMpi, kHydra, kSlurm, kMpi };
std::string LauncherName(Launcher launcher);  // "none", "Open MPI", "MPICH Hydra", "Slurm", "MPI"

struct LaunchEnv {
  Launcher launcher = Launcher::kNone;
  int world_size = 1;
  int world_rank = 0;
  int local_rank = 0;  // rank among the processes of this node
  int local_size = 1;  // processes on this node; -1 when the launcher does not say
  // "Open MPI: rank 3 of 4, local rank 1 of 2".
  std::string Describe() const;
};

// Returns the value of an environment variable, or nullptr when unset.
using EnvLookup = std::function<const char*(const char* name)>;

// The launcher's view; the first launcher whose variables are present wins, in this order:
//   Open MPI (mpirun)  OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_LOCAL_RANK,
//                      OMPI_COMM_WORLD_LOCAL_SIZE
//   Slurm (srun step)  SLURM_STEP_NUM_TASKS, SLURM_PROCID, SLURM_LOCALID, and for the local size
//                      SLURM_STEP_TASKS_PER_NODE (e.g. "2(x3),1") indexed by SLURM_NODEID; whatever PMI
//                      plugin srun used (--mpi=pmix sets PMIX_*, --mpi=pmi2 sets PMI_FD, PMI_RANK and
//                      PMI_SIZE as Hydra does), unless MPI_LOCALRANKID says MPICH's Hydra started it
//   MPICH Hydra        PMI_SIZE, PMI_RANK, MPI_LOCALRANKID, MPI_LOCALNRANKS
// Open MPI comes first because mpirun inside a Slurm allocation leaves the batch step's SLURM_* variables
// (SLURM_PROCID=0 on every rank) in each rank's environment. Slurm comes before Hydra because srun's PMI-2
// plugin sets Hydra's PMI_* variables too, but never Hydra's MPI_LOCALRANKID; Hydra's mpiexec inside a
// Slurm allocation does set it, so it is still recognised there. Slurm counts only for an srun step
// (SLURM_STEP_NUM_TASKS set).
// Without any launcher: {kNone, 1, 0, 0, 1} - unless the process sits in a Slurm allocation of several
// tasks (SLURM_NTASKS > 1) as a world of one (no launcher, or an srun step of one task while SLURM_NTASKS
// says more): that is `sbatch -n 4 --wrap "fathom train ..."` without srun, which would silently train as
// one process, and it is an error naming SLURM_NTASKS and how to launch (srun --mpi=pmix, or mpirun).
// Errors: a launcher's variable missing, not a number, or inconsistent (rank >= size), naming the variable.
absl::StatusOr<LaunchEnv> LaunchEnvFromVariables(const EnvLookup& lookup);
// The same over this process's environment (std::getenv).
absl::StatusOr<LaunchEnv> LaunchEnvFromProcessEnvironment();

// MPI's view, launcher kMpi. REQUIRES MPI active (MpiInit). Collective over MPI_COMM_WORLD.
LaunchEnv LaunchEnvFromMpi();

// The launch check: OK when `launcher` (LaunchEnvFromVariables) and `mpi` (LaunchEnvFromMpi) agree on the
// world size and rank, and on the local rank and size where the launcher states them. kNone (no launcher
// variables) has nothing to disagree with. The error says what the launcher and MPI each saw and gives one
// hint: launch with `srun --mpi=pmix` or `mpirun` (the usual cause under Slurm: srun --mpi=none, or a PMI
// plugin this Open MPI does not speak, leaves every task a singleton world). Every command that trains,
// benches or diagnoses runs it right after MPI_Init (launch/job_start.h).
absl::Status CheckEnvironment(const LaunchEnv& launcher, const LaunchEnv& mpi);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_LAUNCH_ENV_H_
