// The fathom binary end to end: bad input gives one message naming the key and exit code 2; the tiny recipe
// trains and its loss falls well below ln(vocab).
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "framework/check.h"
#include "gtest/gtest.h"
#include "tests/launch/run_fathom.h"

namespace {

using fathom::testing::RunFathom;
using fathom::testing::RunResult;

std::string WriteRecipe(const std::string& name, const std::string& text) {
  std::string path = ::testing::TempDir() + "/" + name + ".yaml";
  std::ofstream(path) << text;
  return path;
}

const char* kTiny = FATHOM_SOURCE_DIR "/recipes/tiny.yaml";

TEST(Cli, UnknownKeyNamesTheKeyAndExits2) {
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set model.n_expert=4");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.n_expert"), std::string::npos) << r.output;
}

TEST(Cli, WrongTypeNamesTheKeyAndExits2) {
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set train.steps=many");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.steps"), std::string::npos) << r.output;
}

TEST(Cli, TopkGroupAboveNGroupExits2) {
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set model.topk_group=5");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.topk_group"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("model.n_group"), std::string::npos) << r.output;
}

TEST(Cli, ExpertsNotDivisibleByGroupsExits2) {
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set model.n_routed_experts=9");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.n_routed_experts"), std::string::npos) << r.output;
}

TEST(Cli, TooManyExpertsPerTokenExits2) {
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set model.num_experts_per_tok=9");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.num_experts_per_tok"), std::string::npos) << r.output;
}

// A stated global batch that one process with tiny.yaml's micro-batching would not run: exit 2 naming both.
TEST(Cli, DisagreeingGlobalBatchExits2) {
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set train.global_batch_size=999");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.global_batch_size (999"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("parallel.micro_batches"), std::string::npos) << r.output;
}

TEST(Cli, MissingRecipeFileExits2) {
  RunResult r = RunFathom("train /nonexistent/recipe.yaml");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("/nonexistent/recipe.yaml"), std::string::npos) << r.output;
}

TEST(Cli, UnknownSectionInFileExits2) {
  std::string path = WriteRecipe("bad_section", "model:\n  vocab_size: 256\nmodle:\n  hidden_size: 8\n");
  RunResult r = RunFathom("train " + path);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("modle"), std::string::npos) << r.output;
}

TEST(Cli, UnknownCommandAndMissingArgumentsExit2) {
  EXPECT_EQ(RunFathom("trian").exit_code, 2);
  EXPECT_EQ(RunFathom("train").exit_code, 2);
  EXPECT_EQ(RunFathom(std::string("train ") + kTiny + " --set").exit_code, 2);
}

TEST(Cli, HelpAfterEveryCommandPrintsItsUsageAndExits0) {
  for (const std::string command : {"train", "plan", "simulate", "bench", "diagnose"}) {
    for (const std::string flag : {"--help", "-h"}) {
      RunResult r = RunFathom(command + " " + flag);
      EXPECT_EQ(r.exit_code, 0) << command << " " << flag << ":\n" << r.output;
      EXPECT_NE(r.output.find("usage: fathom " + command), std::string::npos) << r.output;
    }
  }
  // Help wins over everything else on the line, even a broken one.
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(RunFathom("--help").exit_code, 0);
}

// Issue 17: no silent default model. Each case exits 2 naming what is missing.
TEST(Cli, RecipeWithoutAModelExits2NamingTheKeys) {
  struct Case {
    std::string name, text, needle;
  };
  std::string tiny_without_layers;
  {
    std::ifstream in(kTiny);
    std::string line;
    while (std::getline(in, line)) {
      if (line.find("num_hidden_layers:") == std::string::npos) tiny_without_layers += line + "\n";
    }
  }
  const Case cases[] = {
      {"empty", "", "the recipe states no model"},
      {"no_model", "train:\n  steps: 3\n", "the recipe states no model"},
      {"missing_key", tiny_without_layers, "model.num_hidden_layers is not stated"},
  };
  for (const Case& c : cases) {
    RunResult r = RunFathom("train " + WriteRecipe(c.name, c.text));
    EXPECT_EQ(r.exit_code, 2) << c.name << ":\n" << r.output;
    EXPECT_NE(r.output.find(c.needle), std::string::npos) << c.name << ":\n" << r.output;
  }
}

// Runs `command` through /bin/sh, returning its exit code, output and the peak resident memory (KiB) of
// the process tree it waited for (wait4's rusage of the shell, which includes its waited-for children).
struct MeasuredRun {
  int exit_code = -1;
  std::string output;
  long max_rss_kib = 0;
  double seconds = 0;
};
MeasuredRun RunMeasured(const std::string& command) {
  MeasuredRun m;
  int out[2];
  FATHOM_CHECK(::pipe(out) == 0, "pipe");
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  FATHOM_CHECK(pid >= 0, "fork");
  if (pid == 0) {
    ::dup2(out[1], 1);
    ::dup2(out[1], 2);
    ::close(out[0]);
    ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(out[1]);
  char buf[4096];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;) m.output.append(buf, static_cast<size_t>(n));
  ::close(out[0]);
  int status = 0;
  struct rusage usage {};
  ::wait4(pid, &status, 0, &usage);
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  m.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  m.max_rss_kib = usage.ru_maxrss;
  return m;
}

// Issue 17: huge but well-typed values exit 2 with the bytes needed and available, before any large
// allocation: the peak resident memory of the process stays under 400 MB (any attempt to touch what these
// recipes imply would go far past it, or crash). Times and peaks are printed.
TEST(Cli, HugeValuesExit2WithNeededAndAvailableBytes) {
  for (const std::string override :
       {"model.hidden_size=1000000000000000000", "model.vocab_size=2000000000",
        "train.micro_batch_size=100000000000", "model.num_hidden_layers=100000000"}) {
    // exec: the shell becomes fathom, so the rusage is fathom's own.
    MeasuredRun r = RunMeasured("exec " + std::string(FATHOM_BINARY) + " train " + kTiny + " --set " + override);
    std::printf("%s: exit %d in %.2f s, peak RSS %ld KiB\n", override.c_str(), r.exit_code, r.seconds,
                r.max_rss_kib);
    EXPECT_EQ(r.exit_code, 2) << override << ":\n" << r.output;
    EXPECT_LT(r.max_rss_kib, 400 * 1024) << override;
    EXPECT_NE(r.output.find("the recipe needs more host memory than this machine has"), std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find(" needs "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("available: "), std::string::npos) << r.output;
  }
  // A vocabulary beyond 32-bit token ids is refused by the recipe's own limits, naming the key.
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set model.vocab_size=100000000000");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.vocab_size must be <= 2147483647"), std::string::npos) << r.output;
}

// Issue 17: --trace replaces only a regular file; a symlink and a device node are refused and untouched.
TEST(Cli, TraceOntoASymlinkOrADeviceIsRefusedAndUntouched) {
  const std::string dir = ::testing::TempDir();
  const std::string target = dir + "/trace_target.txt", link = dir + "/trace_link.json";
  std::ofstream(target) << "keep me";
  std::remove(link.c_str());
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  const std::string simulate = std::string("simulate ") + kTiny +
                               " --cluster " FATHOM_SOURCE_DIR "/recipes/clusters/h100-8.yaml --trace ";
  RunResult r = RunFathom(simulate + link);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("is a symbolic link"), std::string::npos) << r.output;
  struct stat st {};
  ASSERT_EQ(::lstat(link.c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  std::ifstream in(target);
  std::string kept((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(kept, "keep me");
  r = RunFathom(simulate + "/dev/null");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("/dev/null is a character device"), std::string::npos) << r.output;
  ASSERT_EQ(::stat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  // A regular file (or none) is written.
  const std::string fine = dir + "/trace_fine.json";
  r = RunFathom(simulate + fine);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(::stat(fine.c_str(), &st), 0);
}

// Issue 17: a fault test must never run without its fault.
// An output path that is one of the command's inputs is refused before any work, and the input is kept:
// the recipe, the cluster file, the token file of `fathom logits`.
TEST(Cli, OutputOntoAnInputIsRefusedAndTheInputKept) {
  const std::string dir = ::testing::TempDir() + "/out_onto_input";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string recipe = dir + "/tiny.yaml", cluster = dir + "/cluster.yaml";
  std::filesystem::copy_file(kTiny, recipe);
  std::filesystem::copy_file(FATHOM_SOURCE_DIR "/recipes/clusters/h100-8.yaml", cluster);
  std::filesystem::create_symlink("tiny.yaml", dir + "/alias.yaml");
  auto read = [](const std::string& path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  const std::string recipe_text = read(recipe), cluster_text = read(cluster);
  const std::vector<std::string> commands = {
      "plan " + recipe + " --set train.global_batch_size=16 --cluster " + cluster + " --out " + recipe,
      "plan " + recipe + " --set train.global_batch_size=16 --cluster " + cluster + " --out " + dir +
          "/alias.yaml",
      "simulate " + recipe + " --cluster " + cluster + " --trace " + cluster,
      "train " + recipe + " --set train.steps=2 --set train.trace=" + recipe,
      "logits " + dir + " --tokens " + recipe + " --out " + recipe,
  };
  for (const std::string& command : commands) {
    SCOPED_TRACE(command);
    RunResult r = RunFathom(command);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("an input of this command"), std::string::npos) << r.output;
    EXPECT_EQ(read(recipe), recipe_text);
    EXPECT_EQ(read(cluster), cluster_text);
  }
}

// The directories a run writes to late, and the tokenizer `fathom export` copies, are checked at start-up:
// exit 2 before the first step, not exit 1 at the first checkpoint after hours of training.
TEST(Cli, UnusableRunPathsExit2AtStartUp) {
  const std::string dir = ::testing::TempDir() + "/run_paths";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/afile") << "a file";
  const std::string train = std::string("train ") + kTiny + " --set train.steps=50 --set ";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"checkpoint.dir=" + dir + "/afile/sub --set checkpoint.save_every=40",
       "checkpoint.dir " + dir + "/afile/sub is not a directory and cannot be created"},
      {"train.log_dir=" + dir + "/afile",
       "train.log_dir " + dir + "/afile is not a directory and cannot be created"},
      {"data.tokenizer_dir=" + dir + "/no_such_dir", "data.tokenizer_dir: tokenizer directory"},
      {"data.tokenizer_dir=" + dir, "holds none of tokenizer.json"},
  };
  for (const auto& [set, expect] : cases) {
    SCOPED_TRACE(set);
    RunResult r = RunFathom(train + set);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(expect), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("| lm "), std::string::npos) << "trained before refusing:\n" << r.output;
  }
  // A directory that does not exist yet is made.
  RunResult r = RunFathom(std::string("train ") + kTiny + " --set train.steps=1 --set train.log_dir=" + dir +
                          "/new/logs");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::is_directory(dir + "/new/logs"));
}

// Commands whose argument is not a recipe name it in their messages, and do not offer --set when it does
// not apply.
TEST(Cli, PositionalArgumentIsNamedPerCommand) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"export a b --out x",
       "one checkpoint (a step directory or a checkpoint.dir) expected, got 'a' and 'b'"},
      {"import a b --out x", "one HF directory expected, got 'a' and 'b'"},
      {"logits a b --tokens t --out o", "one SOURCE (a checkpoint or an HF directory) expected"},
      {"export a --out x --set train.steps=1", "unknown option '--set'; expected one of --dtype"},
      {"train a b", "one recipe expected, got 'a' and 'b'"},
  };
  for (const auto& [args, expect] : cases) {
    SCOPED_TRACE(args);
    RunResult r = RunFathom(args);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(expect), std::string::npos) << r.output;
  }
  RunResult r = RunFathom("diagnose --bogus");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output.find("--set"), std::string::npos) << r.output;
}

TEST(Cli, BadTestFaultValuesAreRefused) {
  for (const auto& [value, needle] : std::vector<std::pair<std::string, std::string>>{
           {"7:1", "FATHOM_TEST_FAULT='7:1' names rank 7, but the world has 1 rank(s)"},
           {"0:0", "steps count from 1"},
           {"two", "FATHOM_TEST_FAULT='two' is not 'rank:step'"}}) {
    RunResult r =
        fathom::testing::RunShell("FATHOM_TEST_FAULT=" + value + " " + FATHOM_BINARY + " train " + kTiny);
    EXPECT_EQ(r.exit_code, 2) << value << ":\n" << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos) << r.output;
  }
}

// Issue 17: launches under Slurm that would run the wrong world are refused with one hint.
TEST(Cli, SlurmLaunchMistakesAreRefused) {
  // sbatch -n 4 without srun: one process in a 4-task allocation.
  RunResult r = fathom::testing::RunShell("SLURM_NTASKS=4 SLURM_PROCID=0 SLURM_JOB_ID=7 " +
                                          std::string(FATHOM_BINARY) + " train " + kTiny);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("SLURM_NTASKS=4"), std::string::npos) << r.output;
  // srun --mpi=none (or a PMI this MPI does not speak): Slurm says rank 2 of 4, MPI sees a world of one.
  r = fathom::testing::RunShell(
      "SLURM_STEP_NUM_TASKS=4 SLURM_NTASKS=4 SLURM_PROCID=2 SLURM_LOCALID=0 PMI_RANK=2 PMI_SIZE=4 timeout "
      "60 " +
      std::string(FATHOM_BINARY) + " train " + kTiny);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("Slurm launched this process as rank 2 of 4, but MPI sees rank 0 of 1"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("launch with `srun --mpi=pmix` or `mpirun`"), std::string::npos) << r.output;
}

TEST(Cli, DiagnoseOnOneCpuRankPrintsItsTableAndExits0) {
  RunResult r = RunFathom("diagnose --device cpu --repeat 3");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("fathom diagnose: 1 rank(s) on CPU"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("verdict: all 1 rank(s) agree bitwise"), std::string::npos) << r.output;
  r = RunFathom("diagnose --device tpu");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--device must be auto, cpu or cuda"), std::string::npos) << r.output;
}

// The acceptance run of issue 2: 300 steps of the tiny recipe; the loss must fall well below ln(256).
TEST(Cli, TinyRecipeTrainsWellBelowLnVocab) {
  RunResult r = RunFathom(std::string("train ") + kTiny);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex(R"(lm loss ([0-9.]+) -> ([0-9.]+))"))) << r.output;
  double first = std::stod(m[1]), last = std::stod(m[2]);
  std::printf("tiny recipe: lm loss %.4f -> %.4f, ln(256) = %.4f\n", first, last, std::log(256.0));
  EXPECT_GT(first, 0.9 * std::log(256.0));
  EXPECT_LT(last, 0.4 * std::log(256.0));
  EXPECT_NE(r.output.find("step   300/300"), std::string::npos);
}

}  // namespace
