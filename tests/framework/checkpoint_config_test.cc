// The recipe's `checkpoint:` section: its five keys parse (from the file and from --set), defaults mean
// "no checkpoints, resume auto", and bad values name the key.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "framework/config.h"
#include "tests/common/recipe_testing.h"

namespace fathom {
namespace {

using ::testing::HasSubstr;

using testing::TinyError;
using testing::TinyPath;

TEST(CheckpointConfigTest, DefaultsSaveNothingAndResumeAuto) {
  absl::StatusOr<Recipe> r = LoadRecipe(TinyPath());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->checkpoint.dir, "");
  EXPECT_EQ(r->checkpoint.save_every, 0);
  EXPECT_EQ(r->checkpoint.keep_last, 0);
  EXPECT_EQ(r->checkpoint.resume, "auto");
  EXPECT_FALSE(r->checkpoint.async);
}

TEST(CheckpointConfigTest, EveryKeyFromOverrides) {
  absl::StatusOr<Recipe> r =
      LoadRecipe(TinyPath(), {"checkpoint.dir=/scratch/run 7", "checkpoint.save_every=50",
                              "checkpoint.keep_last=3", "checkpoint.resume=none", "checkpoint.async=true"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->checkpoint.dir, "/scratch/run 7");
  EXPECT_EQ(r->checkpoint.save_every, 50);
  EXPECT_EQ(r->checkpoint.keep_last, 3);
  EXPECT_EQ(r->checkpoint.resume, "none");
  EXPECT_TRUE(r->checkpoint.async);
}

TEST(CheckpointConfigTest, SectionInTheFile) {
  // The tiny recipe (a recipe must state its model) with a checkpoint section of its own.
  std::ifstream tiny(TinyPath());
  std::string yaml((std::istreambuf_iterator<char>(tiny)), std::istreambuf_iterator<char>());
  yaml = yaml.substr(0, yaml.find("\ncheckpoint:"));  // tiny's own (empty) section, replaced
  yaml += "\ncheckpoint:\n  dir: ckpts\n  save_every: 10\n  resume: ckpts/step_00000020\n  async: false\n";
  absl::StatusOr<Recipe> r = ParseRecipe(yaml, "inline.yaml");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->checkpoint.dir, "ckpts");
  EXPECT_EQ(r->checkpoint.save_every, 10);
  EXPECT_EQ(r->checkpoint.resume, "ckpts/step_00000020");
}

TEST(CheckpointConfigTest, BadValuesNameTheKey) {
  EXPECT_THAT(TinyError({"checkpoint.save_every=5"}),
              HasSubstr("checkpoint.save_every (5) needs checkpoint.dir"));
  EXPECT_THAT(TinyError({"checkpoint.save_every=-1"}), HasSubstr("checkpoint.save_every"));
  EXPECT_THAT(TinyError({"checkpoint.keep_last=1.5"}), HasSubstr("checkpoint.keep_last"));
  EXPECT_THAT(TinyError({"checkpoint.async=sometimes"}), HasSubstr("checkpoint.async"));
  EXPECT_THAT(TinyError({"checkpoint.resume=''"}), HasSubstr("checkpoint.resume must be auto"));
  EXPECT_THAT(TinyError({"checkpoint.every=5"}), HasSubstr("unknown key 'checkpoint.every'"));
}

}  // namespace
}  // namespace fathom
