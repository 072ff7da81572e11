// Which dataset of a weighted blend each global sample comes from: Megatron's rule
// (megatron/core/datasets/helpers.cpp build_blending_indices). Sample g goes to the dataset i maximising
// weight_i * max(g, 1) - count_i(g), where count_i(g) is how many of samples 0..g-1 dataset i received
// (ties: the lowest i), i.e. the dataset whose realised share is furthest below its weight; it is that
// dataset's sample count_i(g). Deterministic and independent of the mesh.
//
// Evaluating the rule needs the counts before g, so the schedule keeps them every kBlock samples
// (k * 8 bytes per 4096 samples) and walks forward from the nearest one recorded: sequential lookups cost
// O(k) each, a random lookup O(4096 k). Thread safety: none (the cursor and the checkpoints); one thread at a
// time.
#ifndef FATHOM_DATA_BLEND_H_
#define FATHOM_DATA_BLEND_H_

#include <cstdint>
#include <utility>
#include <vector>

namespace fathom {

class BlendSchedule {
 public:
  static constexpr int64_t kBlock = 4096;

  // REQUIRES: at least one weight, every weight > 0 (they are used as given: normalise them first).
  explicit BlendSchedule(std::vector<double> weights);

  // (dataset, that dataset's sample index) of global sample g. REQUIRES: g >= 0.
  std::pair<int, int64_t> Lookup(int64_t g);

  int num_datasets() const { return static_cast<int>(weights_.size()); }

 private:
  // The dataset that sample g goes to given the counts before it.
  int Choose(int64_t g, const std::vector<int64_t>& counts) const;
  // Assigns sample cursor_ and moves the cursor past it, recording a checkpoint at each new block.
  void Advance();

  std::vector<double> weights_;
  std::vector<std::vector<int64_t>> checkpoints_;  // checkpoints_[b]: counts before sample b * kBlock
  int64_t cursor_ = 0;                             // cursor_counts_ are the counts before sample cursor_
  std::vector<int64_t> cursor_counts_;
};

}  // namespace fathom

#endif  // FATHOM_DATA_BLEND_H_
