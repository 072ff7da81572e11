#include "data/packed_split.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "data/sampler.h"
#include "framework/check.h"

namespace fathom {
namespace {

// A permutation of [0, n) drawn from `key` (Fisher-Yates with counter-based draws, so it is the same on
// every platform and standard library).
std::vector<int64_t> Permutation(int64_t n, uint64_t key) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), int64_t{0});
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(UniformBelow(SplitMix64(key + static_cast<uint64_t>(i)), i + 1));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

// Keys of an epoch's two orders; chained hashes so that (seed, epoch, which) never collide by arithmetic.
uint64_t OrderKey(uint64_t seed, int64_t epoch, uint64_t which) {
  return SplitMix64(SplitMix64(seed ^ SplitMix64(static_cast<uint64_t>(epoch))) ^ which);
}

}  // namespace

const char* DataSplitName(DataSplit split) {
  switch (split) {
    case DataSplit::kTrain:
      return "train";
    case DataSplit::kValid:
      return "valid";
    case DataSplit::kTest:
      return "test";
  }
  return "unknown";
}

std::array<int64_t, 4> SplitBoundaries(const std::vector<double>& fractions, int64_t num_documents) {
  FATHOM_CHECK(fractions.size() == 3 && num_documents >= 0, "[split] ", fractions.size(), " fractions, ",
               num_documents, " documents");
  std::array<int64_t, 4> b{0, 0, 0, 0};
  for (size_t i = 0; i < 3; ++i) {
    // nearbyint in the default rounding mode rounds half to even, as Python's round() in Megatron.
    b[i + 1] = b[i] + static_cast<int64_t>(std::nearbyint(fractions[i] * static_cast<double>(num_documents)));
  }
  const int64_t excess = b[3] - num_documents;
  for (size_t i = 1; i < 4; ++i) {
    // Megatron's shift; the clamp only matters where rounding would push a boundary outside [0, n] or
    // below its predecessor (where Megatron's indices would be invalid).
    b[i] = std::clamp(b[i] - excess, b[i - 1], num_documents);
  }
  return b;
}

absl::StatusOr<std::unique_ptr<PackedSplit>> PackedSplit::Create(TokenDocuments* docs, int64_t doc_begin,
                                                                 int64_t doc_end, int64_t seq_len,
                                                                 int64_t eod_token_id, uint64_t seed,
                                                                 const std::string& name) {
  FATHOM_CHECK(docs != nullptr && 0 <= doc_begin && doc_begin <= doc_end &&
                   doc_end <= docs->num_documents() && seq_len >= 1 && eod_token_id >= -1,
               "[packed_split] documents [", doc_begin, ", ", doc_end, "), seq_len ", seq_len, ", eod ",
               eod_token_id);
  if (doc_begin == doc_end) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": no documents"));
  }
  auto split =
      std::unique_ptr<PackedSplit>(new PackedSplit(docs, doc_begin, doc_end, seq_len, eod_token_id, seed));
  int64_t total = 0;
  for (int64_t d = doc_begin; d < doc_end; ++d) total += split->PackedLength(d);
  if (total < seq_len + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": ", doc_end - doc_begin, " documents pack into ", total,
                     " tokens (EODs included); one sample needs train.seq_len + 1 = ", seq_len + 1));
  }
  split->tokens_per_epoch_ = total;
  split->samples_per_epoch_ = (total - 1) / seq_len;
  return split;
}

int64_t PackedSplit::PackedLength(int64_t doc) const {
  const int64_t n = docs_->document_length(doc);
  return n + (n > 0 && eod_token_id_ >= 0 ? 1 : 0);
}

const PackedSplit::Epoch& PackedSplit::EpochLayout(int64_t epoch) {
  for (const Epoch& e : cache_) {
    if (e.epoch == epoch) return e;
  }
  Epoch& e = cache_[static_cast<size_t>(next_slot_)];
  next_slot_ = 1 - next_slot_;
  e.epoch = epoch;
  e.documents = Permutation(num_documents(), OrderKey(seed_, epoch, 0));
  e.starts.resize(e.documents.size() + 1);
  e.starts[0] = 0;
  for (size_t i = 0; i < e.documents.size(); ++i) {
    e.documents[i] += doc_begin_;
    e.starts[i + 1] = e.starts[i] + PackedLength(e.documents[i]);
  }
  FATHOM_CHECK(e.starts.back() == tokens_per_epoch_, "[packed_split] epoch ", epoch, " packs ",
               e.starts.back(), " tokens, expected ", tokens_per_epoch_,
               " (the documents changed under the loader)");
  e.sample_order = Permutation(samples_per_epoch_, OrderKey(seed_, epoch, 1));
  return e;
}

int64_t PackedSplit::WindowStart(int64_t sample) {
  FATHOM_CHECK(sample >= 0, "[packed_split] sample ", sample);
  const Epoch& e = EpochLayout(sample / samples_per_epoch_);
  return e.sample_order[static_cast<size_t>(sample % samples_per_epoch_)] * seq_len_;
}

std::vector<int64_t> PackedSplit::DocumentOrder(int64_t epoch) { return EpochLayout(epoch).documents; }

absl::Status PackedSplit::Window(int64_t sample, int32_t* window) {
  const int64_t start = WindowStart(sample);
  const Epoch& e = EpochLayout(sample / samples_per_epoch_);
  // The document holding stream position `start`: the last one starting at or before it (empty documents
  // share their successor's start, so the last of equal starts is the non-empty one).
  size_t i =
      static_cast<size_t>(std::upper_bound(e.starts.begin(), e.starts.end(), start) - e.starts.begin()) - 1;
  int64_t at = start - e.starts[i];  // position inside document i's packed tokens
  for (int64_t filled = 0; filled < seq_len_ + 1;) {
    FATHOM_CHECK(i < e.documents.size(), "[packed_split] window of sample ", sample, " runs past the epoch");
    const int64_t doc = e.documents[i];
    const int64_t length = docs_->document_length(doc);
    if (at < length) {
      const int64_t n = std::min(length - at, seq_len_ + 1 - filled);
      if (absl::Status s = docs_->ReadTokens(doc, at, n, window + filled); !s.ok()) return s;
      filled += n;
      at += n;
    } else if (at == length && length > 0 && eod_token_id_ >= 0) {
      window[filled++] = static_cast<int32_t>(eod_token_id_);
      ++at;
    } else {
      ++i;
      at = 0;
    }
  }
  return absl::OkStatus();
}

}  // namespace fathom
