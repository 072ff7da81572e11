#include "optim/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <random>
#include <string>

#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

OptimConfig Schedule(const std::string& style, int64_t warmup, int64_t constant, int64_t decay) {
  OptimConfig cfg;
  cfg.lr = 3e-3;
  cfg.min_lr = 2e-4;
  cfg.warmup_steps = warmup;
  cfg.constant_steps = constant;
  cfg.decay_steps = decay;
  cfg.decay_style = style;
  return cfg;
}

TEST(LrScheduleTest, WarmupIsLinearAndMonotoneUpToThePeak) {
  OptimConfig cfg = Schedule("cosine", 20, 0, -1);
  EXPECT_DOUBLE_EQ(LearningRate(cfg, 0, 300), cfg.lr / 20);
  for (int64_t s = 1; s < 20; ++s) {
    EXPECT_GT(LearningRate(cfg, s, 300), LearningRate(cfg, s - 1, 300)) << s;
    EXPECT_DOUBLE_EQ(LearningRate(cfg, s, 300), cfg.lr * static_cast<double>(s + 1) / 20) << s;
  }
  EXPECT_DOUBLE_EQ(LearningRate(cfg, 19, 300), cfg.lr);
  for (int64_t s = 20; s < 300; ++s) EXPECT_LT(LearningRate(cfg, s, 300), cfg.lr) << s;
}

TEST(LrScheduleTest, CosineHitsMidpointAndEndsAtMinLr) {
  // warmup 10, constant 30, decay until the end: decay window [40, 240) of length 200.
  OptimConfig cfg = Schedule("cosine", 10, 30, -1);
  const int64_t total = 240;
  for (int64_t s = 10; s < 40; ++s) EXPECT_EQ(LearningRate(cfg, s, total), cfg.lr) << s;
  // q = (step - 40 + 1) / 200 = 1/2 at step 139.
  EXPECT_NEAR(LearningRate(cfg, 139, total), (cfg.lr + cfg.min_lr) / 2, 1e-15);
  EXPECT_NEAR(LearningRate(cfg, total - 1, total), cfg.min_lr, 1e-15);
  EXPECT_EQ(LearningRate(cfg, total + 5, total), cfg.min_lr);
  for (int64_t s = 41; s < total; ++s) {
    EXPECT_LT(LearningRate(cfg, s, total), LearningRate(cfg, s - 1, total)) << s;
  }
  // A quarter of the way: min + (lr - min) * (1 + cos(pi / 4)) / 2.
  EXPECT_NEAR(LearningRate(cfg, 89, total),
              cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 + std::cos(std::numbers::pi / 4)) / 2, 1e-15);
}

TEST(LrScheduleTest, LinearDecayAndExplicitDecaySteps) {
  OptimConfig cfg = Schedule("linear", 4, 0, 100);  // window [4, 104), then min_lr
  const int64_t total = 1000;                       // decay_steps given: total_steps does not matter
  std::mt19937_64 rng(testing::TestSeed());
  for (int i = 0; i < 20; ++i) {
    int64_t s = std::uniform_int_distribution<int64_t>(4, 103)(rng);
    double q = static_cast<double>(s - 4 + 1) / 100;
    EXPECT_NEAR(LearningRate(cfg, s, total), cfg.lr + (cfg.min_lr - cfg.lr) * q, 1e-15) << s;
  }
  EXPECT_NEAR(LearningRate(cfg, 53, total), (cfg.lr + cfg.min_lr) / 2, 1e-15);
  EXPECT_NEAR(LearningRate(cfg, 103, total), cfg.min_lr, 1e-15);
  for (int64_t s = 104; s < total; s += 37) EXPECT_EQ(LearningRate(cfg, s, total), cfg.min_lr) << s;
}

// Megatron-LM's constant style returns the peak before it looks at the decay steps: it never drops to
// min_lr (fathom did, after the decay window, while its header said Megatron does the same).
TEST(LrScheduleTest, ConstantStyleHoldsThePeakForGood) {
  OptimConfig whole = Schedule("constant", 5, 0, -1);
  for (int64_t s = 5; s < 50; ++s) EXPECT_EQ(LearningRate(whole, s, 50), whole.lr) << s;
  OptimConfig windowed = Schedule("constant", 5, 10, 20);  // a window [15, 35) changes nothing
  EXPECT_EQ(LearningRate(windowed, 34, 100), windowed.lr);
  EXPECT_EQ(LearningRate(windowed, 35, 100), windowed.lr);
  EXPECT_EQ(LearningRate(windowed, 99, 100), windowed.lr);
  EXPECT_LT(LearningRate(windowed, 0, 100), windowed.lr);  // the warmup still applies
}

TEST(LrScheduleTest, NoWarmupStartsAtThePeak) {
  OptimConfig cfg = Schedule("cosine", 0, 3, -1);
  EXPECT_EQ(LearningRate(cfg, 0, 50), cfg.lr);
  EXPECT_EQ(LearningRate(cfg, 2, 50), cfg.lr);
  EXPECT_LT(LearningRate(cfg, 3, 50), cfg.lr);
  EXPECT_NEAR(LearningRate(cfg, 49, 50), cfg.min_lr, 1e-15);
}

}  // namespace
}  // namespace fathom
