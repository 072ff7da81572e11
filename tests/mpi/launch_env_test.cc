// Launch environment: parsing launchers' variables (from a fake environment), and, under mpirun, that
// Open MPI's variables agree with what MPI itself reports.
#include "parallel/launch_env.h"

#include <map>
#include <string>

#include "gtest/gtest.h"

namespace fathom {
namespace {

EnvLookup FakeEnv(const std::map<std::string, std::string>& vars) {
  return [vars](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

TEST(LaunchEnv, ReadsOpenMpiVariables) {
  absl::StatusOr<LaunchEnv> env = LaunchEnvFromVariables(FakeEnv({{"OMPI_COMM_WORLD_SIZE", "8"},
                                                                  {"OMPI_COMM_WORLD_RANK", "5"},
                                                                  {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                                                  {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kOpenMpi);
  EXPECT_EQ(env->world_size, 8);
  EXPECT_EQ(env->world_rank, 5);
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->local_size, 4);
  EXPECT_EQ(env->Describe(), "Open MPI: rank 5 of 8, local rank 1 of 4");
}

TEST(LaunchEnv, OpenMpiWinsOverTheBatchStepsSlurmVariables) {
  absl::StatusOr<LaunchEnv> env = LaunchEnvFromVariables(FakeEnv({{"OMPI_COMM_WORLD_SIZE", "4"},
                                                                  {"OMPI_COMM_WORLD_RANK", "3"},
                                                                  {"OMPI_COMM_WORLD_LOCAL_RANK", "3"},
                                                                  {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
                                                                  {"SLURM_PROCID", "0"},
                                                                  {"SLURM_NTASKS", "4"},
                                                                  {"SLURM_STEP_NUM_TASKS", "1"},
                                                                  {"SLURM_LOCALID", "0"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kOpenMpi);
  EXPECT_EQ(env->world_rank, 3);
}

TEST(LaunchEnv, ReadsSlurmStepWithTasksPerNode) {
  std::map<std::string, std::string> vars = {{"SLURM_STEP_NUM_TASKS", "7"},
                                             {"SLURM_PROCID", "6"},
                                             {"SLURM_LOCALID", "0"},
                                             {"SLURM_NODEID", "3"},
                                             {"SLURM_STEP_TASKS_PER_NODE", "2(x3),1"}};
  absl::StatusOr<LaunchEnv> env = LaunchEnvFromVariables(FakeEnv(vars));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kSlurm);
  EXPECT_EQ(env->world_size, 7);
  EXPECT_EQ(env->world_rank, 6);
  EXPECT_EQ(env->local_size, 1);
  vars["SLURM_NODEID"] = "1";
  vars["SLURM_PROCID"] = "3";
  vars["SLURM_LOCALID"] = "1";
  env = LaunchEnvFromVariables(FakeEnv(vars));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->local_size, 2);
  vars.erase("SLURM_STEP_TASKS_PER_NODE");  // without the layout the local size is unknown
  env = LaunchEnvFromVariables(FakeEnv(vars));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->local_size, -1);
}

TEST(LaunchEnv, HydraAndNoLauncher) {
  absl::StatusOr<LaunchEnv> env = LaunchEnvFromVariables(
      FakeEnv({{"PMI_SIZE", "2"}, {"PMI_RANK", "1"}, {"MPI_LOCALRANKID", "1"}, {"MPI_LOCALNRANKS", "2"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kHydra);
  EXPECT_EQ(env->world_rank, 1);
  // No launcher at all: a single process.
  env = LaunchEnvFromVariables(FakeEnv({}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kNone);
  EXPECT_EQ(env->world_size, 1);
}

// srun --mpi=pmi2 sets Hydra's PMI_FD, PMI_RANK and PMI_SIZE next to Slurm's variables: it is Slurm.
TEST(LaunchEnv, SlurmPmi2IsSlurmNotHydra) {
  absl::StatusOr<LaunchEnv> env = LaunchEnvFromVariables(FakeEnv({{"SLURM_STEP_NUM_TASKS", "4"},
                                                                  {"SLURM_NTASKS", "4"},
                                                                  {"SLURM_PROCID", "3"},
                                                                  {"SLURM_LOCALID", "1"},
                                                                  {"SLURM_NODEID", "1"},
                                                                  {"SLURM_STEP_TASKS_PER_NODE", "2(x2)"},
                                                                  {"PMI_FD", "7"},
                                                                  {"PMI_RANK", "3"},
                                                                  {"PMI_SIZE", "4"},
                                                                  {"PMI_JOBID", "1234.0"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kSlurm);
  EXPECT_EQ(env->world_size, 4);
  EXPECT_EQ(env->world_rank, 3);
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->local_size, 2);
}

TEST(LaunchEnv, SlurmPmixIsSlurm) {
  absl::StatusOr<LaunchEnv> env = LaunchEnvFromVariables(FakeEnv({{"SLURM_STEP_NUM_TASKS", "2"},
                                                                  {"SLURM_NTASKS", "2"},
                                                                  {"SLURM_PROCID", "1"},
                                                                  {"SLURM_LOCALID", "1"},
                                                                  {"SLURM_NODEID", "0"},
                                                                  {"SLURM_STEP_TASKS_PER_NODE", "2"},
                                                                  {"PMIX_RANK", "1"},
                                                                  {"PMIX_NAMESPACE", "slurm.pmix.1234.0"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kSlurm);
  EXPECT_EQ(env->Describe(), "Slurm: rank 1 of 2, local rank 1 of 2");
}

// MPICH's mpiexec inside a Slurm allocation: MPI_LOCALRANKID marks Hydra, whose variables then win over
// the batch step's SLURM_*.
TEST(LaunchEnv, HydraInsideASlurmAllocationIsHydra) {
  absl::StatusOr<LaunchEnv> env = LaunchEnvFromVariables(FakeEnv({{"PMI_SIZE", "2"},
                                                                  {"PMI_RANK", "1"},
                                                                  {"MPI_LOCALRANKID", "1"},
                                                                  {"MPI_LOCALNRANKS", "2"},
                                                                  {"SLURM_NTASKS", "2"},
                                                                  {"SLURM_STEP_NUM_TASKS", "1"},
                                                                  {"SLURM_PROCID", "0"},
                                                                  {"SLURM_LOCALID", "0"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kHydra);
  EXPECT_EQ(env->world_size, 2);
  EXPECT_EQ(env->world_rank, 1);
}

// `sbatch -n 4 --wrap "fathom train ..."`: one process in a 4-task allocation is refused, naming
// SLURM_NTASKS and the two ways to launch; one task on purpose (srun -n 1 sets SLURM_NTASKS=1) and mpirun
// -np 1 inside the allocation are fine.
TEST(LaunchEnv, OneProcessInAMultiTaskAllocationIsRefused) {
  for (const std::map<std::string, std::string>& vars :
       {std::map<std::string, std::string>{
            {"SLURM_NTASKS", "4"}, {"SLURM_PROCID", "0"}, {"SLURM_JOB_ID", "7"}},
        std::map<std::string, std::string>{{"SLURM_NTASKS", "4"},
                                           {"SLURM_STEP_NUM_TASKS", "1"},
                                           {"SLURM_PROCID", "0"},
                                           {"SLURM_LOCALID", "0"}}}) {
    absl::StatusOr<LaunchEnv> env = LaunchEnvFromVariables(FakeEnv(vars));
    ASSERT_FALSE(env.ok());
    const std::string message(env.status().message());
    EXPECT_NE(message.find("SLURM_NTASKS=4"), std::string::npos) << message;
    EXPECT_NE(message.find("srun --mpi=pmix"), std::string::npos) << message;
    EXPECT_NE(message.find("mpirun"), std::string::npos) << message;
  }
  absl::StatusOr<LaunchEnv> one = LaunchEnvFromVariables(FakeEnv(
      {{"SLURM_NTASKS", "1"}, {"SLURM_STEP_NUM_TASKS", "1"}, {"SLURM_PROCID", "0"}, {"SLURM_LOCALID", "0"}}));
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->launcher, Launcher::kSlurm);
  absl::StatusOr<LaunchEnv> mpirun_one = LaunchEnvFromVariables(FakeEnv({{"OMPI_COMM_WORLD_SIZE", "1"},
                                                                         {"OMPI_COMM_WORLD_RANK", "0"},
                                                                         {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
                                                                         {"OMPI_COMM_WORLD_LOCAL_SIZE", "1"},
                                                                         {"SLURM_NTASKS", "4"}}));
  ASSERT_TRUE(mpirun_one.ok()) << mpirun_one.status();
  EXPECT_EQ(mpirun_one->launcher, Launcher::kOpenMpi);
}

TEST(LaunchEnv, MalformedVariablesAreNamed) {
  struct Case {
    std::map<std::string, std::string> vars;
    std::string needle;
  };
  const Case cases[] = {
      {{{"OMPI_COMM_WORLD_SIZE", "four"}}, "OMPI_COMM_WORLD_SIZE='four'"},
      {{{"OMPI_COMM_WORLD_SIZE", "4"},
        {"OMPI_COMM_WORLD_RANK", "4"},
        {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
        {"OMPI_COMM_WORLD_LOCAL_SIZE", "1"}},
       "OMPI_COMM_WORLD_RANK=4 is not below OMPI_COMM_WORLD_SIZE=4"},
      {{{"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_RANK", "1"}},
       "OMPI_COMM_WORLD_LOCAL_RANK is not set"},
      {{{"SLURM_STEP_NUM_TASKS", "4"},
        {"SLURM_PROCID", "1"},
        {"SLURM_LOCALID", "0"},
        {"SLURM_NODEID", "0"},
        {"SLURM_STEP_TASKS_PER_NODE", "2(y2)"}},
       "SLURM_STEP_TASKS_PER_NODE='2(y2)'"},
      {{{"SLURM_STEP_NUM_TASKS", "4"},
        {"SLURM_PROCID", "1"},
        {"SLURM_LOCALID", "0"},
        {"SLURM_NODEID", "2"},
        {"SLURM_STEP_TASKS_PER_NODE", "2(x2)"}},
       "SLURM_NODEID=2"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<LaunchEnv> env = LaunchEnvFromVariables(FakeEnv(c.vars));
    ASSERT_FALSE(env.ok()) << c.needle;
    EXPECT_NE(std::string(env.status().message()).find(c.needle), std::string::npos) << env.status();
  }
}

TEST(LaunchEnv, UnderMpirunTheLauncherAgreesWithMpi) {
  absl::StatusOr<LaunchEnv> launcher = LaunchEnvFromProcessEnvironment();
  ASSERT_TRUE(launcher.ok()) << launcher.status();
  LaunchEnv mpi = LaunchEnvFromMpi();
  EXPECT_EQ(launcher->launcher, Launcher::kOpenMpi) << "mpi_tests runs under Open MPI's mpirun";
  EXPECT_EQ(launcher->world_size, mpi.world_size);
  EXPECT_EQ(launcher->world_rank, mpi.world_rank);
  EXPECT_EQ(launcher->local_rank, mpi.local_rank);  // one node: the local rank is the world rank
  EXPECT_EQ(mpi.local_rank, mpi.world_rank);
  EXPECT_EQ(mpi.local_size, mpi.world_size);
  absl::Status ok = CheckEnvironment(*launcher, mpi);
  EXPECT_TRUE(ok.ok()) << ok;
}

TEST(LaunchEnv, CheckEnvironmentExplainsMismatches) {
  LaunchEnv mpi{Launcher::kMpi, 1, 0, 0, 1};
  LaunchEnv slurm{Launcher::kSlurm, 4, 2, 0, 2};
  absl::Status s = CheckEnvironment(slurm, mpi);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(
      std::string(s.message()).find("Slurm launched this process as rank 2 of 4, but MPI sees rank 0 of 1"),
      std::string::npos)
      << s;
  EXPECT_NE(std::string(s.message()).find("launch with `srun --mpi=pmix` or `mpirun`"), std::string::npos)
      << s;

  LaunchEnv ompi{Launcher::kOpenMpi, 4, 1, 1, 2};
  LaunchEnv mpi_local{Launcher::kMpi, 4, 1, 0, 1};
  s = CheckEnvironment(ompi, mpi_local);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("local rank 1 of 2"), std::string::npos) << s;
  EXPECT_TRUE(CheckEnvironment(LaunchEnv{}, LaunchEnv{Launcher::kMpi, 4, 3, 3, 4}).ok());
  EXPECT_TRUE(
      CheckEnvironment(LaunchEnv{Launcher::kSlurm, 4, 3, 1, -1}, LaunchEnv{Launcher::kMpi, 4, 3, 1, 2}).ok());
}

}  // namespace
}  // namespace fathom
