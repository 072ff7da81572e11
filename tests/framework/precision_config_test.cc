// train.precision (issue 14): bf16 by default, fp8 accepted on the CPU (emulated, f32/f64), and on cuda only
// with train.dtype bf16 and FP8-friendly weight shapes; bad values name the key and what was expected.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "framework/config.h"
#include "tests/common/recipe_testing.h"

namespace fathom {
namespace {

using ::testing::HasSubstr;

using testing::TinyError;
using testing::TinyPath;

TEST(PrecisionConfigTest, DefaultsToBf16AndAcceptsFp8OnTheCpu) {
  absl::StatusOr<Recipe> r = LoadRecipe(TinyPath());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->train.precision, "bf16");
  for (const char* dtype : {"f32", "f64"}) {
    r = LoadRecipe(TinyPath(), {"train.precision=fp8", std::string("train.dtype=") + dtype});
    ASSERT_TRUE(r.ok()) << dtype << ": " << r.status();
    EXPECT_EQ(r->train.precision, "fp8");
  }
}

TEST(PrecisionConfigTest, TheExpertKernelChoiceIsOneOfThree) {
  absl::StatusOr<Recipe> r = LoadRecipe(TinyPath());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->train.fp8_expert_gemm, "own_all");
  for (const char* which : {"own", "own_all", "cublaslt"}) {
    r = LoadRecipe(TinyPath(), {"train.precision=fp8", std::string("train.fp8_expert_gemm=") + which});
    ASSERT_TRUE(r.ok()) << which << ": " << r.status();
    EXPECT_EQ(r->train.fp8_expert_gemm, which);
  }
  const std::string e = TinyError({"train.fp8_expert_gemm=cutlass"});
  EXPECT_THAT(e, HasSubstr("train.fp8_expert_gemm"));
  EXPECT_THAT(e, HasSubstr("cublaslt"));
}

// train.expert_gemm: the bf16 routed experts' kernels on cuda; own is refused wherever it cannot run (the CPU,
// f32 compute, fp8), naming what it needs.
TEST(PrecisionConfigTest, TheBf16ExpertKernelChoiceNeedsCudaBf16) {
  absl::StatusOr<Recipe> r = LoadRecipe(TinyPath());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->train.expert_gemm, "cublaslt");
  for (const char* which : {"own", "own_wgrad"}) {
    r = LoadRecipe(TinyPath(), {"train.device=cuda", "train.dtype=bf16", std::string("train.expert_gemm=") + which});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->train.expert_gemm, which);
  }
  EXPECT_THAT(TinyError({"train.expert_gemm=own_wgrad"}), HasSubstr("train.expert_gemm own_wgrad"));
  EXPECT_THAT(TinyError({"train.expert_gemm=cutlass"}), HasSubstr("train.expert_gemm"));
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"train.expert_gemm=own"},  // the tiny recipe trains on the CPU
        std::vector<std::string>{"train.device=cuda", "train.dtype=f32", "train.expert_gemm=own"}}) {
    const std::string e = TinyError(bad);
    EXPECT_THAT(e, HasSubstr("train.expert_gemm own"));
    EXPECT_THAT(e, HasSubstr("train.device cuda, train.dtype bf16"));
  }
}

TEST(PrecisionConfigTest, TheTiledKernelLaunchKeysNeedTheTiledKernels) {
  absl::StatusOr<Recipe> r = LoadRecipe(TinyPath());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->train.expert_gemm_cluster, 1);
  EXPECT_TRUE(r->train.expert_gemm_tma_store);  // measured faster in every form that has the epilogue
  r = LoadRecipe(TinyPath(), {"train.device=cuda", "train.dtype=bf16", "train.expert_gemm=own",
                              "train.expert_gemm_cluster=2", "train.expert_gemm_tma_store=false"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->train.expert_gemm_cluster, 2);
  EXPECT_FALSE(r->train.expert_gemm_tma_store);
  EXPECT_THAT(TinyError({"train.device=cuda", "train.dtype=bf16", "train.expert_gemm=own",
                         "train.expert_gemm_cluster=4"}),
              HasSubstr("train.expert_gemm_cluster must be 1 or 2"));
  // The store mode is an epilogue choice of the tiled kernels wherever they run, accepted either way.
  EXPECT_TRUE(LoadRecipe(TinyPath(), {"train.expert_gemm_tma_store=false"}).ok());
  // Clusters of two without a tiled expert kernel to shape (the CPU; cuBLASLt's experts) are refused, not
  // ignored.
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"train.expert_gemm_cluster=2"},
        std::vector<std::string>{"train.device=cuda", "train.dtype=bf16", "train.expert_gemm_cluster=2"}}) {
    const std::string e = TinyError(bad);
    EXPECT_THAT(e, HasSubstr("train.expert_gemm_cluster shapes fathom's tiled expert kernels"));
    EXPECT_THAT(e, HasSubstr("expert_gemm cublaslt"));
  }
}

// train.deterministic: off by default, a boolean, accepted on either device (the CPU is deterministic
// anyway), and written into the recipe as run so a log says whether its run can be repeated bit for bit.
TEST(PrecisionConfigTest, DeterministicIsABooleanKeptInTheRecipeAsRun) {
  absl::StatusOr<Recipe> r = LoadRecipe(TinyPath());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->train.deterministic);
  EXPECT_THAT(ResolvedRecipeYaml(*r), HasSubstr("deterministic: false"));
  for (const char* device : {"cpu", "cuda"}) {
    r = LoadRecipe(TinyPath(), {std::string("train.device=") + device, "train.deterministic=true"});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->train.deterministic);
    EXPECT_THAT(ResolvedRecipeYaml(*r), HasSubstr("deterministic: true"));
  }
  EXPECT_THAT(TinyError({"train.deterministic=sometimes"}), HasSubstr("train.deterministic"));
}

TEST(PrecisionConfigTest, BadValuesNameTheKey) {
  EXPECT_THAT(TinyError({"train.precision=fp16"}), HasSubstr("train.precision"));
  // On cuda: f32 compute is refused under fp8; the tiny model's kv_a projection (32 + 8 = 40 outputs) is not
  // a multiple of 16, which cuBLASLt's FP8 kernels need.
  EXPECT_THAT(TinyError({"train.precision=fp8", "train.device=cuda", "train.dtype=f32"}),
              HasSubstr("needs train.dtype bf16"));
  EXPECT_THAT(TinyError({"train.precision=fp8", "train.device=cuda", "train.dtype=bf16"}),
              HasSubstr("model.kv_lora_rank + model.qk_rope_head_dim is 40"));
  // A model whose shapes fit is accepted on cuda.
  absl::StatusOr<Recipe> small = LoadRecipe(std::string(FATHOM_SOURCE_DIR) + "/recipes/small.yaml",
                                            {"train.precision=fp8", "train.device=cuda", "train.dtype=bf16"});
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->train.precision, "fp8");
}

}  // namespace
}  // namespace fathom
