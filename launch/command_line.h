// The argument shape every fathom subcommand shares: one recipe path, repeatable `--set section.key=value`
// overrides, and named options that each take one value (`--cluster FILE`). Errors name the offending
// argument; the caller prints them with its usage and exits 2. `--help` (or `-h`) anywhere asks for the
// command's usage: the caller prints it to stdout and exits 0, whatever else was given.
#ifndef FATHOM_LAUNCH_COMMAND_LINE_H_
#define FATHOM_LAUNCH_COMMAND_LINE_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fathom {

struct CommandLine {
  std::string recipe;                          // the one positional argument
  std::vector<std::string> overrides;          // every --set value (also --set=value), in order
  std::map<std::string, std::string> options;  // "--cluster" -> "recipes/clusters/h800-2048.yaml"
  bool help = false;                           // --help or -h was given (nothing else is then checked)
  std::map<std::string, std::vector<std::string>> repeated;  // "--fix" -> every value given, in order
};

// `options`: the value-taking options this command accepts besides --set ("--cluster", "--out", ...).
// An option given twice keeps its last value. `recipe_required` false: a command without a recipe
// (fathom diagnose) accepts none being given. `repeatable`: value-taking options that collect every value
// (like --set), also written --option=value. `positional` names the one positional argument in messages
// (a checkpoint for `fathom export`); `takes_set` false: --set is an unknown option, and is not offered.
absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args,
                                             const std::set<std::string>& options,
                                             bool recipe_required = true,
                                             const std::set<std::string>& repeatable = {},
                                             const std::string& positional = "recipe", bool takes_set = true);

}  // namespace fathom

#endif  // FATHOM_LAUNCH_COMMAND_LINE_H_
