#include <iostream>
#include <string>
#include <vector>

#include "launch/commands.h"
#include "launch/trainer.h"

namespace fathom {

// fathom train RECIPE.yaml [--set section.key=value ...]
int RunTrain(const std::vector<std::string>& args) {
  std::string recipe_path;
  std::vector<std::string> overrides;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--set") {
      if (i + 1 == args.size()) {
        std::cerr << "fathom train: --set needs a value: --set section.key=value\n";
        return 2;
      }
      overrides.push_back(args[++i]);
    } else if (args[i].rfind("--set=", 0) == 0) {
      overrides.push_back(args[i].substr(6));
    } else if (!args[i].empty() && args[i][0] == '-') {
      std::cerr << "fathom train: unknown option '" << args[i] << "'; expected --set section.key=value\n";
      return 2;
    } else if (recipe_path.empty()) {
      recipe_path = args[i];
    } else {
      std::cerr << "fathom train: one recipe expected, got '" << recipe_path << "' and '" << args[i] << "'\n";
      return 2;
    }
  }
  if (recipe_path.empty()) {
    std::cerr << "usage: fathom train RECIPE.yaml [--set section.key=value ...]\n";
    return 2;
  }
  absl::StatusOr<Recipe> recipe = LoadRecipe(recipe_path, overrides);
  if (!recipe.ok()) {
    std::cerr << "fathom train: " << recipe.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(*recipe);
  if (!trainer.ok()) {
    std::cerr << "fathom train: " << trainer.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<std::vector<StepStats>> run = (*trainer)->Run(std::cout);
  if (!run.ok()) {
    std::cerr << "fathom train: " << run.status().message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace fathom
