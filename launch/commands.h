// The fathom subcommands. Each takes the arguments after its name and returns the process exit code:
// 0 success, 2 bad input (recipe, file, command line, environment), 1 anything else. `--help` (or -h)
// anywhere among the arguments prints the command's usage to stdout and returns 0.
#ifndef FATHOM_LAUNCH_COMMANDS_H_
#define FATHOM_LAUNCH_COMMANDS_H_

#include <string>
#include <vector>

namespace fathom {

int RunTrain(const std::vector<std::string>& args);
int RunPlan(const std::vector<std::string>& args);        // launch/plan_command.cc
int RunSimulate(const std::vector<std::string>& args);    // launch/simulate_command.cc
int RunBench(const std::vector<std::string>& args);       // launch/bench_command.cc
int RunPreprocess(const std::vector<std::string>& args);  // launch/preprocess_command.cc
int RunDiagnose(const std::vector<std::string>& args);    // launch/diagnose_command.cc
int RunExport(const std::vector<std::string>& args);      // launch/export_command.cc
int RunImport(const std::vector<std::string>& args);      // launch/import_command.cc
int RunLogits(const std::vector<std::string>& args);      // launch/logits_command.cc

}  // namespace fathom

#endif  // FATHOM_LAUNCH_COMMANDS_H_
