#include "data/sampler.h"

#include "absl/strings/str_cat.h"
#include "framework/check.h"

namespace fathom {
uint64_t UniformBelow(uint64_t hash, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(hash) * n) >> 64);
}

uint64_t SplitMix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

absl::StatusOr<SequenceSampler> SequenceSampler::Create(const std::vector<int32_t>* tokens, int64_t seq_len,
                                                        uint64_t seed) {
  if (tokens == nullptr) return absl::InvalidArgumentError("[sampler] no token stream");
  if (seq_len < 1) {
    return absl::InvalidArgumentError(absl::StrCat("[sampler] seq_len must be >= 1, got ", seq_len));
  }
  if (static_cast<int64_t>(tokens->size()) < seq_len + 1) {
    return absl::InvalidArgumentError(absl::StrCat("[sampler] the token stream has ", tokens->size(),
                                                   " tokens; a window of seq_len + 1 = ", seq_len + 1,
                                                   " tokens needs at least that many"));
  }
  return SequenceSampler(tokens, seq_len, seed);
}

SequenceSampler::SequenceSampler(const std::vector<int32_t>* tokens, int64_t seq_len, uint64_t seed)
    : tokens_(tokens),
      seq_len_(seq_len),
      num_windows_(static_cast<int64_t>(tokens->size()) - seq_len),
      seed_(seed) {}

int64_t SequenceSampler::Offset(int64_t step, int64_t index) const {
  FATHOM_CHECK(step >= 0 && index >= 0, "[sampler] step ", step, ", index ", index);
  // Chained hashing rather than one hash of a sum, so (step, index) pairs never collide by arithmetic.
  uint64_t h =
      SplitMix64(SplitMix64(SplitMix64(seed_) ^ static_cast<uint64_t>(step)) ^ static_cast<uint64_t>(index));
  return static_cast<int64_t>(UniformBelow(h, static_cast<uint64_t>(num_windows_)));
}

void SequenceSampler::Sample(int64_t step, int64_t index, int32_t* input, int32_t* labels) const {
  FATHOM_CHECK(static_cast<int64_t>(tokens_->size()) == num_windows_ + seq_len_,
               "[sampler] the token stream changed size after Create");
  const int32_t* w = tokens_->data() + Offset(step, index);
  for (int64_t t = 0; t < seq_len_; ++t) {
    input[t] = w[t];
    labels[t] = w[t + 1];
  }
}

void SequenceSampler::SampleBatch(int64_t step, int64_t index_begin, int64_t count, int32_t* input,
                                  int32_t* labels) const {
  FATHOM_CHECK(count >= 0, "[sampler] count ", count);
  for (int64_t r = 0; r < count; ++r) {
    Sample(step, index_begin + r, input + r * seq_len_, labels + r * seq_len_);
  }
}

std::vector<int32_t> SyntheticTokens(int64_t n, int64_t vocab, uint64_t seed) {
  FATHOM_CHECK(n >= 0 && vocab >= 1 && vocab <= INT32_MAX, "[synthetic_tokens] n ", n, ", vocab ", vocab);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  const uint64_t base = SplitMix64(seed);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t h = SplitMix64(base + static_cast<uint64_t>(i));
    ids[static_cast<size_t>(i)] = static_cast<int32_t>(UniformBelow(h, static_cast<uint64_t>(vocab)));
  }
  return ids;
}

}  // namespace fathom
