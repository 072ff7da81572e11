#include "launch/command_line.h"

#include "absl/status/status.h"

namespace fathom {

absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args,
                                             const std::set<std::string>& options, bool recipe_required,
                                             const std::set<std::string>& repeatable,
                                             const std::string& positional, bool takes_set) {
  CommandLine out;
  // A request for help wins over every mistake around it ("fathom train --set --help").
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      out.help = true;
      return out;
    }
  }
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const size_t eq = a.find('=');
    if (eq != std::string::npos && repeatable.count(a.substr(0, eq))) {
      out.repeated[a.substr(0, eq)].push_back(a.substr(eq + 1));
    } else if (repeatable.count(a)) {
      if (i + 1 == args.size()) return absl::InvalidArgumentError(a + " needs a value");
      out.repeated[a].push_back(args[++i]);
    } else if (takes_set && a.rfind("--set=", 0) == 0) {
      out.overrides.push_back(a.substr(6));
    } else if ((takes_set && a == "--set") || options.count(a)) {
      if (i + 1 == args.size()) {
        return absl::InvalidArgumentError(a == "--set" ? "--set needs a value: --set section.key=value"
                                                       : a + " needs a value");
      }
      if (a == "--set") {
        out.overrides.push_back(args[++i]);
      } else {
        out.options[a] = args[++i];
      }
    } else if (!a.empty() && a[0] == '-') {
      std::string known;
      if (takes_set) known += "--set, ";
      for (const std::string& o : options) known += o + ", ";
      for (const std::string& o : repeatable) known += o + ", ";
      known += "--help";
      return absl::InvalidArgumentError("unknown option '" + a + "'; expected one of " + known);
    } else if (out.recipe.empty()) {
      out.recipe = a;
    } else {
      return absl::InvalidArgumentError("one " + positional + " expected, got '" + out.recipe + "' and '" +
                                        a + "'");
    }
  }
  if (out.recipe.empty() && recipe_required) return absl::InvalidArgumentError("no " + positional + " given");
  return out;
}

}  // namespace fathom
