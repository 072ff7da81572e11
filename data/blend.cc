#include "data/blend.h"

#include <algorithm>

#include "framework/check.h"

namespace fathom {

BlendSchedule::BlendSchedule(std::vector<double> weights) : weights_(std::move(weights)) {
  FATHOM_CHECK(!weights_.empty(), "[blend] no datasets");
  for (double w : weights_) FATHOM_CHECK(w > 0, "[blend] weight ", w);
  checkpoints_.push_back(std::vector<int64_t>(weights_.size(), 0));
  cursor_counts_ = checkpoints_[0];
}

int BlendSchedule::Choose(int64_t g, const std::vector<int64_t>& counts) const {
  // Megatron computes in double with max(g, 1) and a strict '>' (the first maximum wins); same here, so
  // the choices match its blending index bit for bit.
  const double at = std::max(static_cast<double>(g), 1.0);
  int best = 0;
  double best_error = weights_[0] * at - static_cast<double>(counts[0]);
  for (size_t i = 1; i < weights_.size(); ++i) {
    const double error = weights_[i] * at - static_cast<double>(counts[i]);
    if (error > best_error) {
      best_error = error;
      best = static_cast<int>(i);
    }
  }
  return best;
}

void BlendSchedule::Advance() {
  ++cursor_counts_[static_cast<size_t>(Choose(cursor_, cursor_counts_))];
  ++cursor_;
  if (cursor_ % kBlock == 0 && cursor_ / kBlock == static_cast<int64_t>(checkpoints_.size())) {
    checkpoints_.push_back(cursor_counts_);
  }
}

std::pair<int, int64_t> BlendSchedule::Lookup(int64_t g) {
  FATHOM_CHECK(g >= 0, "[blend] sample ", g);
  if (weights_.size() == 1) return {0, g};
  if (g < cursor_ || g - cursor_ > kBlock) {
    // Restart from the latest checkpoint at or before g (walking forward records the missing ones).
    const int64_t block = std::min(g / kBlock, static_cast<int64_t>(checkpoints_.size()) - 1);
    cursor_ = block * kBlock;
    cursor_counts_ = checkpoints_[static_cast<size_t>(block)];
  }
  while (cursor_ < g) Advance();
  const int dataset = Choose(g, cursor_counts_);
  const int64_t index = cursor_counts_[static_cast<size_t>(dataset)];
  Advance();
  return {dataset, index};
}

}  // namespace fathom
