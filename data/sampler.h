// Deterministic, resumable sampling of training windows from a token stream.
//
// Every window's position is a pure function of (seed, step, index): no sampler state advances, so a run
// resumed at step s draws exactly the windows it would have drawn without the interruption, and
// data-parallel ranks that take disjoint `index` ranges of a step's global batch draw disjoint samples of
// the same global batch whatever the number of ranks. Windows are drawn with replacement (uniform over all
// n - seq_len start offsets), which is what a demo corpus of a few hundred KB wants.
#ifndef FATHOM_DATA_SAMPLER_H_
#define FATHOM_DATA_SAMPLER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace fathom {

// The splitmix64 output for state x: (x + 0x9E3779B97F4A7C15) through the splitmix64 finalizer. A
// counter-based hash: SplitMix64(seed + i) for i = 0, 1, ... is the splitmix64 sequence.
uint64_t SplitMix64(uint64_t x);

// floor(hash * n / 2^64): a uniform 64-bit hash mapped onto [0, n) without the bias of hash % n.
uint64_t UniformBelow(uint64_t hash, uint64_t n);

class SequenceSampler {
 public:
  // `tokens` is borrowed and must outlive the sampler (and must not change while it is used).
  // Errors (InvalidArgument): tokens null, seq_len < 1, or fewer than seq_len + 1 tokens.
  static absl::StatusOr<SequenceSampler> Create(const std::vector<int32_t>* tokens, int64_t seq_len,
                                                uint64_t seed);

  // Window w = tokens[o, o + seq_len + 1) with o = Offset(step, index); writes
  // input = w[0, seq_len) and labels = w[1, seq_len + 1). REQUIRES: step >= 0, index >= 0;
  // input, labels: (seq_len) i32 each.
  void Sample(int64_t step, int64_t index, int32_t* input, int32_t* labels) const;

  // Sample() for indices [index_begin, index_begin + count) into row-major buffers:
  // input, labels: (count, seq_len) i32.
  void SampleBatch(int64_t step, int64_t index_begin, int64_t count, int32_t* input, int32_t* labels) const;

  // Start of the window of (step, index), in [0, num_windows()): the 128-bit product
  // SplitMix64(SplitMix64(SplitMix64(seed) ^ step) ^ index) * num_windows() >> 64.
  int64_t Offset(int64_t step, int64_t index) const;

  int64_t seq_len() const { return seq_len_; }
  int64_t num_windows() const { return num_windows_; }  // tokens->size() - seq_len
  uint64_t seed() const { return seed_; }

 private:
  SequenceSampler(const std::vector<int32_t>* tokens, int64_t seq_len, uint64_t seed);

  const std::vector<int32_t>* tokens_;
  int64_t seq_len_;
  int64_t num_windows_;
  uint64_t seed_;
};

// n token ids drawn uniformly from [0, vocab) (for benchmarks and the `synthetic` data source); token i is
// SplitMix64(SplitMix64(seed) + i) * vocab >> 64, so the same (n, vocab, seed) always gives the same ids and
// a longer stream extends a shorter one. REQUIRES: n >= 0, 1 <= vocab <= 2^31 - 1.
std::vector<int32_t> SyntheticTokens(int64_t n, int64_t vocab, uint64_t seed);

}  // namespace fathom

#endif  // FATHOM_DATA_SAMPLER_H_
