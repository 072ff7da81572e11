#include "parallel/launch_env.h"

#include <mpi.h>

#include <cstdlib>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "parallel/fault.h"

namespace fathom {

namespace {

// The names of one launcher's four variables (local_size may be empty: derived otherwise).
struct LauncherVariables {
  Launcher launcher;
  const char* size;
  const char* rank;
  const char* local_rank;
  const char* local_size;
};

absl::StatusOr<int> ReadCount(const EnvLookup& lookup, const char* name, int min_value) {
  const char* v = lookup(name);
  if (v == nullptr) return absl::InvalidArgumentError(absl::StrCat(name, " is not set"));
  int out = 0;
  if (!absl::SimpleAtoi(v, &out) || out < min_value) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, "='", std::string(v), "' is not an integer >= ", min_value));
  }
  return out;
}

// Slurm's compressed tasks-per-node list: "2(x3),1" means nodes 0-2 run 2 tasks each and node 3 runs 1.
absl::StatusOr<std::vector<int>> ParseSlurmTasksPerNode(const std::string& text) {
  std::vector<int> out;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    int tasks = 0, repeat = 1;
    size_t paren = item.find('(');
    bool ok = true;
    if (paren == absl::string_view::npos) {
      ok = absl::SimpleAtoi(item, &tasks);
    } else {
      absl::string_view rep = item.substr(paren + 1);
      ok = absl::SimpleAtoi(item.substr(0, paren), &tasks) && rep.size() > 2 && rep[0] == 'x' &&
           rep.back() == ')' && absl::SimpleAtoi(rep.substr(1, rep.size() - 2), &repeat);
    }
    if (!ok || tasks < 1 || repeat < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("SLURM_STEP_TASKS_PER_NODE='", text, "' is not a list like '2(x3),1'"));
    }
    out.insert(out.end(), static_cast<size_t>(repeat), tasks);
  }
  return out;
}

absl::StatusOr<LaunchEnv> ReadLauncher(const EnvLookup& lookup, const LauncherVariables& vars) {
  LaunchEnv env;
  env.launcher = vars.launcher;
  absl::StatusOr<int> size = ReadCount(lookup, vars.size, 1);
  if (!size.ok()) return size.status();
  absl::StatusOr<int> rank = ReadCount(lookup, vars.rank, 0);
  if (!rank.ok()) return rank.status();
  absl::StatusOr<int> local_rank = ReadCount(lookup, vars.local_rank, 0);
  if (!local_rank.ok()) return local_rank.status();
  env.world_size = *size;
  env.world_rank = *rank;
  env.local_rank = *local_rank;
  if (vars.local_size != nullptr) {
    absl::StatusOr<int> local_size = ReadCount(lookup, vars.local_size, 1);
    if (!local_size.ok()) return local_size.status();
    env.local_size = *local_size;
  } else {  // Slurm: the step's tasks per node, indexed by this node's id
    env.local_size = -1;
    const char* per_node = lookup("SLURM_STEP_TASKS_PER_NODE");
    if (per_node != nullptr) {
      absl::StatusOr<std::vector<int>> counts = ParseSlurmTasksPerNode(per_node);
      if (!counts.ok()) return counts.status();
      absl::StatusOr<int> node = ReadCount(lookup, "SLURM_NODEID", 0);
      if (!node.ok()) return node.status();
      if (*node >= static_cast<int>(counts->size())) {
        return absl::InvalidArgumentError(
            absl::StrCat("SLURM_NODEID=", *node, " but SLURM_STEP_TASKS_PER_NODE='", std::string(per_node),
                         "' lists ", counts->size(), " nodes"));
      }
      env.local_size = (*counts)[static_cast<size_t>(*node)];
    }
  }
  if (env.world_rank >= env.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(vars.rank, "=", env.world_rank, " is not below ", vars.size, "=", env.world_size));
  }
  if (env.local_size != -1 && (env.local_rank >= env.local_size || env.local_size > env.world_size)) {
    return absl::InvalidArgumentError(absl::StrCat(vars.local_rank, "=", env.local_rank,
                                                   " and a local size of ", env.local_size,
                                                   " do not fit a world of ", env.world_size));
  }
  return env;
}

}  // namespace

std::string LauncherName(Launcher launcher) {
  switch (launcher) {
    case Launcher::kNone:
      return "none";
    case Launcher::kOpenMpi:
      return "Open MPI";
    case Launcher::kHydra:
      return "MPICH Hydra";
    case Launcher::kSlurm:
      return "Slurm";
    case Launcher::kMpi:
      return "MPI";
  }
  return "?";
}

std::string LaunchEnv::Describe() const {
  std::string local = local_size < 0 ? absl::StrCat("local rank ", local_rank)
                                     : absl::StrCat("local rank ", local_rank, " of ", local_size);
  return absl::StrCat(LauncherName(launcher), ": rank ", world_rank, " of ", world_size, ", ", local);
}

absl::StatusOr<LaunchEnv> LaunchEnvFromVariables(const EnvLookup& lookup) {
  static const LauncherVariables kOpenMpi = {Launcher::kOpenMpi, "OMPI_COMM_WORLD_SIZE",
                                             "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
                                             "OMPI_COMM_WORLD_LOCAL_SIZE"};
  static const LauncherVariables kSlurm = {Launcher::kSlurm, "SLURM_STEP_NUM_TASKS", "SLURM_PROCID",
                                           "SLURM_LOCALID", nullptr};
  static const LauncherVariables kHydra = {Launcher::kHydra, "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID",
                                           "MPI_LOCALNRANKS"};
  if (lookup(kOpenMpi.size) != nullptr) return ReadLauncher(lookup, kOpenMpi);
  absl::StatusOr<LaunchEnv> env = LaunchEnv{};
  const bool hydra_started_it = lookup("MPI_LOCALRANKID") != nullptr;
  if (lookup(kSlurm.size) != nullptr && !hydra_started_it) {
    env = ReadLauncher(lookup, kSlurm);
  } else if (lookup(kHydra.size) != nullptr) {
    env = ReadLauncher(lookup, kHydra);
  }
  if (!env.ok()) return env;
  // One process alone in an allocation of several tasks: a launch mistake, not a one-rank job.
  const char* ntasks = lookup("SLURM_NTASKS");
  int tasks = 0;
  if (env->world_size == 1 && (env->launcher == Launcher::kNone || env->launcher == Launcher::kSlurm) &&
      ntasks != nullptr && absl::SimpleAtoi(ntasks, &tasks) && tasks > 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "SLURM_NTASKS=", tasks, ": this process runs alone inside a Slurm allocation of ", tasks,
        " tasks (started without srun, or by an srun step of one task), so it would train as one process "
        "while the allocation waits for ",
        tasks,
        ". Launch it with `srun --mpi=pmix fathom ...` or `mpirun fathom ...` inside the allocation (for one "
        "process on purpose: `srun -n 1 fathom ...`)"));
  }
  return env;
}

absl::StatusOr<LaunchEnv> LaunchEnvFromProcessEnvironment() {
  return LaunchEnvFromVariables([](const char* name) -> const char* { return std::getenv(name); });
}

LaunchEnv LaunchEnvFromMpi() {
  LaunchEnv env;
  env.launcher = Launcher::kMpi;
  MpiCheck(MPI_Comm_size(MPI_COMM_WORLD, &env.world_size), "MPI_Comm_size", "world");
  MpiCheck(MPI_Comm_rank(MPI_COMM_WORLD, &env.world_rank), "MPI_Comm_rank", "world");
  MPI_Comm node = MPI_COMM_NULL;
  MpiCheck(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, env.world_rank, MPI_INFO_NULL, &node),
           "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)", "world");
  MpiCheck(MPI_Comm_size(node, &env.local_size), "MPI_Comm_size", "node");
  MpiCheck(MPI_Comm_rank(node, &env.local_rank), "MPI_Comm_rank", "node");
  MpiCheck(MPI_Comm_free(&node), "MPI_Comm_free", "node");
  return env;
}

absl::Status CheckEnvironment(const LaunchEnv& launcher, const LaunchEnv& mpi) {
  if (launcher.launcher == Launcher::kNone) return absl::OkStatus();
  std::string who = LauncherName(launcher.launcher);
  if (launcher.world_size != mpi.world_size || launcher.world_rank != mpi.world_rank) {
    std::string hint =
        launcher.launcher == Launcher::kSlurm
            ? "srun started the tasks without connecting them through a PMI this Open MPI speaks (srun "
              "--mpi=none, or --mpi=pmi2 with an Open MPI built for PMIx): launch with `srun --mpi=pmix` or "
              "`mpirun` inside the allocation"
            : "the MPI library is not the one the launcher belongs to, or the process was not started by "
              "the launcher: launch with `srun --mpi=pmix` or the `mpirun` of the Open MPI fathom was built "
              "with";
    return absl::FailedPreconditionError(
        absl::StrFormat("%s launched this process as rank %d of %d, but MPI sees rank %d of %d: %s", who,
                        launcher.world_rank, launcher.world_size, mpi.world_rank, mpi.world_size, hint));
  }
  if (launcher.local_rank != mpi.local_rank ||
      (launcher.local_size != -1 && launcher.local_size != mpi.local_size)) {
    std::string launcher_local = launcher.local_size < 0
                                     ? std::to_string(launcher.local_rank)
                                     : absl::StrCat(launcher.local_rank, " of ", launcher.local_size);
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s gives rank %d local rank %s, but MPI's shared-memory split puts it at local rank %d of %d: the "
        "launcher's node layout does not match the processes MPI sees sharing this node (GPU binding by "
        "local "
        "rank would be wrong)",
        who, launcher.world_rank, launcher_local, mpi.local_rank, mpi.local_size));
  }
  return absl::OkStatus();
}

}  // namespace fathom
