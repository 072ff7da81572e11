// fathom train RECIPE.yaml [--set section.key=value ...]
#include <iostream>
#include <string>
#include <vector>

#include "launch/command_line.h"
#include "launch/commands.h"
#include "launch/job_start.h"
#include "launch/memory_check.h"
#include "launch/trainer.h"
#include "parallel/fault.h"

namespace fathom {
namespace {

constexpr char kUsage[] =
    "usage: fathom train RECIPE.yaml [--set section.key=value ...]\n"
    "  Trains the recipe's model. Under mpirun or srun (--mpi=pmix) it runs one rank per process on MPI\n"
    "  (world = parallel.pp x dp, dp = parallel.ep x edp); otherwise as one process.\n"
    "  --set section.key=value   override a recipe key (repeatable), e.g. --set optim.lr=1e-3\n"
    "  --help                    print this and exit\n"
    "  Exit codes: 0 trained, 2 bad input (recipe, command line, launch, memory; or met while training:\n"
    "  data, a checkpoint.dir entry a save may not replace), 1 a failure while training.\n";

// Every rank reaches the same verdict on its input; ExitAllRanks prints it once and exits every rank.
[[noreturn]] void Reject(const absl::Status& status) {
  ExitAllRanks(kExitInvalidInput, "fathom train: " + std::string(status.message()));
}

}  // namespace

// Under mpirun or srun (the launcher's variables are set) it runs on MPI with one rank per process;
// otherwise as a single process on the local communicator. The checks before Trainer::Create are the
// launch (StartJob), the recipe on every rank (LoadRecipeOnAllRanks), the mesh and the memory the recipe
// needs (CheckMemory): all before anything large is allocated.
int RunTrain(const std::vector<std::string>& args) {
  absl::StatusOr<CommandLine> parsed = ParseCommandLine(args, {});
  if (parsed.ok() && parsed->help) {
    if (ProcessRank() == 0) std::cout << kUsage;
    return 0;
  }
  Job job = StartJob("fathom train");
  if (!parsed.ok()) {
    Reject(absl::InvalidArgumentError(std::string(parsed.status().message()) +
                                      "; usage: fathom train RECIPE.yaml [--set section.key=value ...]"));
  }
  const Recipe recipe = LoadRecipeOnAllRanks("fathom train", *parsed, *job.world);
  const bool logs = job.world->rank() == 0;
  if (logs) std::cout << FormatResolvedRecipe(recipe) << std::flush;
  if (absl::Status s = PrepareRunPaths(recipe, *job.world); !s.ok()) Reject(s);
  absl::StatusOr<MeshLayout> layout =
      MeshLayout::Create(job.world->size(), recipe.parallel.pp, recipe.parallel.ep);
  if (!layout.ok()) Reject(layout.status());  // names parallel.pp / parallel.ep and the world size
  if (absl::Status s = CheckMemory(recipe, *layout, *job.world, job.node.local_rank, job.node.local_size);
      !s.ok()) {
    Reject(s);
  }
  absl::StatusOr<std::unique_ptr<DeviceMesh>> mesh =
      DeviceMesh::Create(std::move(job.world), recipe.parallel.pp, recipe.parallel.ep);
  if (!mesh.ok()) Reject(mesh.status());  // names parallel.pp / parallel.ep and the world size
  if (absl::Status s = CheckGlobalBatch(recipe, (*mesh)->layout().dp()); !s.ok()) Reject(s);
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(recipe, **mesh);
  if (!trainer.ok()) Reject(trainer.status());
  if (logs) std::cout << (*mesh)->layout().Describe() << " [" << job.launcher.Describe() << "]\n";
  absl::StatusOr<std::vector<StepStats>> run = (*trainer)->Run(std::cout);
  // Every rank sees the same all-reduced norm, so a divergence is reported by all ranks alike; a save's
  // verdict is agreed too. Input met only while training (a save, e.g. a preemption's at an unscheduled
  // step, that would replace what is not fathom's checkpoint; a data file) is still bad input.
  if (!run.ok()) {
    ExitAllRanks(run.status().code() == absl::StatusCode::kInvalidArgument ? kExitInvalidInput : kExitFailure,
                 "fathom train: " + std::string(run.status().message()));
  }
  trainer->reset();
  mesh->reset();
  FinishJob(job);
  return 0;
}

}  // namespace fathom
