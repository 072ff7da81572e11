// Helpers for tests of recipe parsing and validation against recipes/tiny.yaml.
#ifndef FATHOM_TESTS_COMMON_RECIPE_TESTING_H_
#define FATHOM_TESTS_COMMON_RECIPE_TESTING_H_

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "framework/config.h"

namespace fathom::testing {

inline std::string TinyPath() { return std::string(FATHOM_SOURCE_DIR) + "/recipes/tiny.yaml"; }

// Loads tiny.yaml with `overrides` and expects InvalidArgument; returns the message ("" after a failed
// expectation when the overrides were accepted).
inline std::string TinyError(const std::vector<std::string>& overrides) {
  absl::StatusOr<Recipe> r = LoadRecipe(TinyPath(), overrides);
  EXPECT_FALSE(r.ok()) << "overrides accepted";
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  return std::string(r.status().message());
}

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_COMMON_RECIPE_TESTING_H_
