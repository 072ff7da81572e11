#include <iostream>
#include <string>
#include <vector>

#include "launch/command_line.h"
#include "launch/commands.h"
#include "launch/trainer.h"
#include "parallel/fault.h"
#include "parallel/launch_env.h"
#include "parallel/mpi_communicator.h"

namespace fathom {
namespace {

// Every rank reaches the same verdict on its input; ExitAllRanks prints it once and exits every rank.
[[noreturn]] void Reject(const absl::Status& status) {
  ExitAllRanks(kExitInvalidInput, "fathom train: " + std::string(status.message()));
}

}  // namespace

// fathom train RECIPE.yaml [--set section.key=value ...]
// Under mpirun or srun (the launcher's variables are set) it runs on MPI with one rank per process;
// otherwise as a single process on the local communicator.
int RunTrain(const std::vector<std::string>& args) {
  absl::StatusOr<LaunchEnv> env = LaunchEnvFromProcessEnvironment();
  if (!env.ok()) {
    std::cerr << "fathom train: " << env.status().message() << "\n";
    return kExitInvalidInput;
  }
  const bool mpi = env->launcher != Launcher::kNone;
  if (mpi) MpiInit(nullptr, nullptr);
  absl::StatusOr<std::unique_ptr<Communicator>> world =
      CreateWorldCommunicator(mpi ? CommBackend::kMpi : CommBackend::kLocal);
  if (!world.ok()) Reject(world.status());
  const bool logs = (*world)->rank() == 0;

  absl::StatusOr<CommandLine> parsed = ParseCommandLine(args, {});
  if (!parsed.ok()) {
    Reject(absl::InvalidArgumentError(std::string(parsed.status().message()) +
                                      "; usage: fathom train RECIPE.yaml [--set section.key=value ...]"));
  }
  absl::StatusOr<Recipe> recipe = LoadRecipe(parsed->recipe, parsed->overrides);
  if (!recipe.ok()) Reject(recipe.status());
  absl::StatusOr<std::unique_ptr<DeviceMesh>> mesh =
      DeviceMesh::Create(*std::move(world), recipe->parallel.pp, recipe->parallel.ep);
  if (!mesh.ok()) Reject(mesh.status());  // names parallel.pp / parallel.ep and the world size
  if (absl::Status s = CheckGlobalBatch(*recipe, (*mesh)->layout().dp()); !s.ok()) Reject(s);
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(*recipe, **mesh);
  if (!trainer.ok()) Reject(trainer.status());
  if (logs) std::cout << (*mesh)->layout().Describe() << " [" << env->Describe() << "]\n";
  absl::StatusOr<std::vector<StepStats>> run = (*trainer)->Run(std::cout);
  // Every rank sees the same all-reduced norm, so a divergence is reported by all ranks alike.
  if (!run.ok()) ExitAllRanks(kExitFailure, "fathom train: " + std::string(run.status().message()));
  trainer->reset();
  mesh->reset();
  if (mpi) MpiFinalize();
  return 0;
}

}  // namespace fathom
