// The fathom subcommands. Each takes the arguments after its name and returns the process exit code:
// 0 success, 2 bad input (recipe, file, command line, environment), 1 anything else.
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

}  // namespace fathom

#endif  // FATHOM_LAUNCH_COMMANDS_H_
