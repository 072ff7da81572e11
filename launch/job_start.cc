#include "launch/job_start.h"

#include <iostream>

#include "absl/strings/str_cat.h"
#include "parallel/fault.h"
#include "parallel/mpi_communicator.h"
#include "parallel/rank_agreement.h"

namespace fathom {

Job StartJob(const std::string& command) {
  Job job;
  absl::StatusOr<LaunchEnv> launcher = LaunchEnvFromProcessEnvironment();
  if (!launcher.ok()) {
    // Before MPI: no world to agree in; every process sees the same environment problem and says it.
    std::cerr << command << ": " << launcher.status().message() << "\n";
    std::exit(kExitInvalidInput);
  }
  job.launcher = *launcher;
  job.mpi = job.launcher.launcher != Launcher::kNone;
  job.node.local_rank = 0;
  job.node.local_size = 1;
  if (job.mpi) {
    MpiInit(nullptr, nullptr);
    job.node = LaunchEnvFromMpi();
    // A mismatch typically leaves every process alone in a world of one: each of them is its world's
    // rank 0 and says it, which is the honest picture of such a launch.
    if (absl::Status s = CheckEnvironment(job.launcher, job.node); !s.ok()) {
      ExitAllRanks(kExitInvalidInput, absl::StrCat(command, ": ", s.message()));
    }
  }
  absl::StatusOr<std::unique_ptr<Communicator>> world =
      CreateWorldCommunicator(job.mpi ? CommBackend::kMpi : CommBackend::kLocal);
  if (!world.ok()) ExitAllRanks(kExitInvalidInput, absl::StrCat(command, ": ", world.status().message()));
  job.world = *std::move(world);
  if (absl::Status s = CheckTestFault(job.world->size()); !s.ok()) {
    ExitAllRanks(kExitInvalidInput, absl::StrCat(command, ": ", s.message()));
  }
  return job;
}

Recipe LoadRecipeOnAllRanks(const std::string& command, const CommandLine& cl, Communicator& world) {
  absl::StatusOr<Recipe> recipe = LoadRecipe(cl.recipe, cl.overrides);
  if (absl::Status s = AgreeOnStatus(world, recipe.status()); !s.ok()) {
    ExitAllRanks(kExitInvalidInput, absl::StrCat(command, ": ", s.message()));
  }
  if (absl::Status s = CheckSameRecipeOnAllRanks(*recipe, world); !s.ok()) {
    ExitAllRanks(kExitInvalidInput, absl::StrCat(command, ": ", s.message()));
  }
  world.set_timeout_seconds(recipe->parallel.timeout_s);
  return *std::move(recipe);
}

std::string FormatResolvedRecipe(const Recipe& recipe) {
  return absl::StrCat("# recipe as run (", recipe.path, " after --set, defaults filled in):\n",
                      ResolvedRecipeYaml(recipe), "# end of recipe\n");
}

void FinishJob(Job& job) {
  job.world.reset();
  if (job.mpi) MpiFinalize();
}

}  // namespace fathom
