#include "launch/job_start.h"

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/hf_export.h"
#include "framework/file_io.h"
#include "parallel/fault.h"
#include "parallel/mpi_communicator.h"
#include "parallel/rank_agreement.h"

namespace fathom {
namespace {

constexpr double kDefaultMpiInitTimeoutS = 600;

// FATHOM_MPI_INIT_TIMEOUT_S, or the default; InvalidArgument for anything but a positive number.
absl::StatusOr<double> MpiInitTimeoutSeconds() {
  const char* text = std::getenv("FATHOM_MPI_INIT_TIMEOUT_S");
  if (text == nullptr || *text == '\0') return kDefaultMpiInitTimeoutS;
  double seconds = 0;
  if (!absl::SimpleAtod(text, &seconds) || !(seconds > 0) || seconds > 1e9) {
    return absl::InvalidArgumentError(
        absl::StrCat("FATHOM_MPI_INIT_TIMEOUT_S='", text, "' must be a positive number of seconds"));
  }
  return seconds;
}

// MpiInit under a deadline: a thread waits for it and ends the process when it has not returned in time
// (a rank that cannot join leaves MPI_Init blocked with no way to interrupt it from inside).
void MpiInitWithDeadline(const std::string& command, double seconds) {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread deadline([&] {
    std::unique_lock<std::mutex> lock(mu);
    if (cv.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return done; })) return;
    const std::string message = absl::StrCat(
        command, ": MPI start-up did not complete within ", seconds,
        " s (FATHOM_MPI_INIT_TIMEOUT_S): a rank of the job did not start, or stalled before joining it; "
        "check that every node can start the job\n");
    [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, message.data(), message.size());
    std::_Exit(kExitFailure);
  });
  MpiInit(nullptr, nullptr);
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  cv.notify_one();
  deadline.join();
}

// `dir` made (mkdir -p) and writable, for the recipe key `key`.
absl::Status PrepareDirectory(const Recipe& recipe, const std::string& dir, const char* key) {
  if (absl::Status s = MakeDirectories(dir, key); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(recipe.path, ": ", s.message(), "; expected a directory path fathom may write to"));
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(recipe.path, ": ", key, " '", dir, "' is not writable: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

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
    absl::StatusOr<double> init_timeout = MpiInitTimeoutSeconds();
    if (!init_timeout.ok()) {
      std::cerr << command << ": " << init_timeout.status().message() << "\n";  // before MPI, as above
      std::exit(kExitInvalidInput);
    }
    MpiInitWithDeadline(command, *init_timeout);
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
  world.set_timeout_seconds(recipe->parallel.timeout_s, "parallel.timeout_s");
  return *std::move(recipe);
}

absl::Status PrepareRunPaths(const Recipe& recipe, Communicator& world) {
  absl::Status local;
  if (world.rank() == 0) {
    if (!recipe.checkpoint.dir.empty())
      local = PrepareDirectory(recipe, recipe.checkpoint.dir, "checkpoint.dir");
    if (local.ok() && !recipe.train.log_dir.empty()) {
      local = PrepareDirectory(recipe, recipe.train.log_dir, "train.log_dir");
    }
    if (local.ok() && !recipe.data.tokenizer_dir.empty()) {
      absl::StatusOr<std::vector<std::string>> files = TokenizerFiles(recipe.data.tokenizer_dir);
      if (!files.ok()) {
        local = absl::InvalidArgumentError(absl::StrCat(recipe.path,
                                                        ": data.tokenizer_dir: ", files.status().message(),
                                                        " (fathom export copies it beside the weights)"));
      }
    }
  }
  return AgreeOnStatus(world, local);
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
