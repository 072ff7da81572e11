#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "framework/check.h"

namespace fathom {

double LearningRate(const OptimConfig& cfg, int64_t step, int64_t total_steps) {
  FATHOM_CHECK(step >= 0, "[lr_schedule] negative step ", step);
  FATHOM_CHECK(cfg.warmup_steps >= 0 && cfg.constant_steps >= 0 && cfg.decay_steps >= -1,
               "[lr_schedule] warmup_steps ", cfg.warmup_steps, ", constant_steps ", cfg.constant_steps,
               ", decay_steps ", cfg.decay_steps);
  const int64_t warmup = cfg.warmup_steps;
  if (step < warmup) return cfg.lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const int64_t decay_start = warmup + cfg.constant_steps;
  if (step < decay_start) return cfg.lr;
  const int64_t decay =
      cfg.decay_steps >= 0 ? cfg.decay_steps : std::max<int64_t>(0, total_steps - decay_start);
  if (cfg.decay_style == "constant") return cfg.lr;
  if (step >= decay_start + decay) return cfg.min_lr;
  // Progress counts the step being taken, so the window's last step lands exactly on min_lr (mirrors the
  // warmup, whose last step lands exactly on lr).
  const double q = static_cast<double>(step - decay_start + 1) / static_cast<double>(decay);
  if (cfg.decay_style == "cosine") {
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * q));
  }
  if (cfg.decay_style == "linear") return cfg.lr + (cfg.min_lr - cfg.lr) * q;
  FATHOM_CHECK(cfg.decay_style == "constant", "[lr_schedule] decay_style '", cfg.decay_style,
               "' (expected cosine, linear or constant; OptimConfig::Validate should have caught it)");
  return cfg.lr;
}

}  // namespace fathom
