// Packing the documents of one split of one dataset into training windows, epoch by epoch, as a pure
// function of the sample index (the data half of "every mesh sees the same global batch").
//
// Split (Megatron's rule, megatron/core/datasets/utils.py get_split_indices): for fractions f (train,
// valid, test) summing to 1 and n documents, boundaries b0 = 0, b_{i+1} = b_i + round(f_i * n) (round half
// to even, as Python's round), then every boundary after the first is shifted by b3 - n so that b3 = n.
// Split i is documents [b_i, b_{i+1}).
//
// Packing: an epoch visits every document of the split once, in an order drawn from (seed, epoch); their
// tokens are concatenated with `eod_token_id` after every non-empty document (none when it is -1) into one
// stream of T tokens (the same T every epoch). Sample k of the stream is the window
// [k * seq_len, k * seq_len + seq_len + 1): input = its first seq_len tokens, labels = its last seq_len, so
// consecutive windows share one token, as Megatron's GPTDataset does, and no label is missing. An epoch has
// S = (T - 1) / seq_len samples (the last T - 1 - S * seq_len tokens of an epoch are not trained), visited
// in an order also drawn from (seed, epoch). Global sample g of the split is sample g % S of epoch g / S.
// Windows cross document boundaries; nothing masks attention across them (the DeepSeek-V3 report packs
// without cross-document masking).
//
// Cost: Create walks the split's document lengths once (O(documents), no token read). The first window of
// an epoch builds that epoch's orders: 16 bytes per document and 8 per sample, O(documents + samples) time;
// the two most recent epochs are kept. A window then costs a binary search and a copy of seq_len + 1
// tokens.
// Thread safety: none (the epoch cache); one thread at a time.
#ifndef FATHOM_DATA_PACKED_SPLIT_H_
#define FATHOM_DATA_PACKED_SPLIT_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/token_documents.h"

namespace fathom {

enum class DataSplit { kTrain = 0, kValid = 1, kTest = 2 };
const char* DataSplitName(DataSplit split);  // "train", "valid", "test"

// Megatron's split boundaries (see above). REQUIRES: 3 fractions >= 0 summing to 1 (to rounding),
// num_documents >= 0.
std::array<int64_t, 4> SplitBoundaries(const std::vector<double>& fractions, int64_t num_documents);

class PackedSplit {
 public:
  // Documents [doc_begin, doc_end) of `docs` (borrowed: must outlive the PackedSplit). `name` prefixes
  // error messages (e.g. "data.path[2] web (valid split)").
  // Errors (InvalidArgument): no documents, or fewer than seq_len + 1 packed tokens (not one window).
  // REQUIRES: 0 <= doc_begin <= doc_end <= docs->num_documents(), seq_len >= 1, eod_token_id >= -1.
  static absl::StatusOr<std::unique_ptr<PackedSplit>> Create(TokenDocuments* docs, int64_t doc_begin,
                                                             int64_t doc_end, int64_t seq_len,
                                                             int64_t eod_token_id, uint64_t seed,
                                                             const std::string& name);

  int64_t num_documents() const { return doc_end_ - doc_begin_; }
  int64_t tokens_per_epoch() const { return tokens_per_epoch_; }    // T, EODs included
  int64_t samples_per_epoch() const { return samples_per_epoch_; }  // S
  int64_t seq_len() const { return seq_len_; }

  // The seq_len + 1 tokens of global sample `sample` into window[0, seq_len + 1). Errors: the documents'
  // read errors (a token id outside the vocabulary names its file, document and position).
  // REQUIRES: sample >= 0.
  absl::Status Window(int64_t sample, int32_t* window);

  // Introspection for tests: the documents of `epoch` in visiting order (ids of `docs`), and where the
  // window of global sample `sample` starts in its epoch's stream.
  std::vector<int64_t> DocumentOrder(int64_t epoch);
  int64_t WindowStart(int64_t sample);

 private:
  struct Epoch {
    int64_t epoch = -1;
    std::vector<int64_t> documents;     // visiting order, ids of docs_
    std::vector<int64_t> starts;        // starts[i]: stream offset of documents[i]; starts.back() = T
    std::vector<int64_t> sample_order;  // sample j of the epoch is window sample_order[j]
  };

  PackedSplit(TokenDocuments* docs, int64_t doc_begin, int64_t doc_end, int64_t seq_len, int64_t eod_token_id,
              uint64_t seed)
      : docs_(docs),
        doc_begin_(doc_begin),
        doc_end_(doc_end),
        seq_len_(seq_len),
        eod_token_id_(eod_token_id),
        seed_(seed) {}
  const Epoch& EpochLayout(int64_t epoch);
  int64_t PackedLength(int64_t doc) const;  // its tokens, plus the EOD after it when inserted

  TokenDocuments* docs_;
  int64_t doc_begin_, doc_end_;
  int64_t seq_len_;
  int64_t eod_token_id_;
  uint64_t seed_;
  int64_t tokens_per_epoch_ = 0;
  int64_t samples_per_epoch_ = 0;
  std::array<Epoch, 2> cache_;  // the two most recent epochs
  int next_slot_ = 0;
};

}  // namespace fathom

#endif  // FATHOM_DATA_PACKED_SPLIT_H_
