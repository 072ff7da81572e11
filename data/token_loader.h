// The one interface the trainer reads tokens through, for every data.source.
//
//   absl::StatusOr<std::unique_ptr<TokenLoader>> train = OpenTokenLoader(recipe, DataSplit::kTrain, gb);
//   ...every rank, every step: (*train)->Fill(step, first_index_of_this_rank, count, input, labels);
//
// Global samples. Step s of a run draws the global batch of `global_batch` sequences; its sequence i is
// global sample g = s * global_batch + i (after Restore: consumed_samples + (s - next_step) * global_batch
// + i). A data-parallel rank fills a contiguous range of i, so the ranks of a step read disjoint samples and
// every mesh with the same global batch reads the same ones, in the same order. What a sample is depends
// only on (recipe data keys, train.seed, train.seq_len, split, g):
//   demo, synthetic: SequenceSampler's window (data/sampler.h) of (step, i) over the embedded corpus or
//     the synthetic stream: exactly the tokens the trainer drew before this interface existed;
//   megatron, hdf5: the blend (data/blend.h) picks the dataset and its own sample index, which packs that
//     dataset's split (data/packed_split.h): epochs, a new document order each epoch.
// input = the sample's first seq_len tokens, labels = the next token of each: every label exists (windows
// are seq_len + 1 tokens), so no label is loss.ignore_index.
//
// Validation at open (before any step): the recipe's data keys, every file (data/indexed_dataset.h,
// data/hdf5_dataset.h), an empty split of any dataset, a split too short for one sample, and with
// data.verify_tokens every token id of the split < model.vocab_size (a sequential read of the split's
// tokens: at disk or page-cache speed, see tests/data/open_bench_test.cc). Errors are InvalidArgument
// naming the file or the key and what was expected. Without verify_tokens, Fill checks the tokens it
// reads and fails with the same message.
//
// Thread safety: none; one thread per loader (the trainer's rank thread). A loader holds its files open
// (mmap or HDF5) until destroyed.
#ifndef FATHOM_DATA_TOKEN_LOADER_H_
#define FATHOM_DATA_TOKEN_LOADER_H_

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/packed_split.h"
#include "framework/config.h"

namespace fathom {

// What a loader's samples depend on besides train.seed; Restore refuses a state whose fingerprint differs.
struct DataFingerprint {
  struct Dataset {
    std::string path;       // data.path prefix (megatron) or file (hdf5)
    double weight = 1;      // normalised blend weight
    int64_t bytes = 0;      // .bin + .idx, or the HDF5 file
    int64_t documents = 0;  // in the whole file
    bool operator==(const Dataset&) const = default;
  };
  std::string source;             // data.source
  std::string split;              // "train", "valid" or "test"
  std::string split_fractions;    // data.split as written
  int64_t seq_len = 0;            // train.seq_len
  int64_t eod_token_id = 0;       // data.eod_token_id
  int64_t vocab_size = 0;         // model.vocab_size (the synthetic stream depends on it)
  std::vector<Dataset> datasets;  // megatron and hdf5: data.path in order; otherwise empty
  bool operator==(const DataFingerprint&) const = default;
};

// "" when equal; otherwise what changed, one difference per line, e.g.
// "data.path[0] 'web': the files changed size (1024 -> 2048 bytes)".
std::string DescribeFingerprintChange(const DataFingerprint& saved, const DataFingerprint& current);

// A loader's position, saved in checkpoints.
struct LoaderState {
  uint64_t seed = 0;             // train.seed
  int64_t next_step = 0;         // the first step not yet trained
  int64_t consumed_samples = 0;  // global samples drawn by steps [0, next_step)
  DataFingerprint fingerprint;
};

nlohmann::json LoaderStateToJson(const LoaderState& state);
// InvalidArgument naming the field that is missing or mistyped.
absl::StatusOr<LoaderState> LoaderStateFromJson(const nlohmann::json& json);

class TokenLoader {
 public:
  virtual ~TokenLoader() = default;
  TokenLoader(const TokenLoader&) = delete;
  TokenLoader& operator=(const TokenLoader&) = delete;

  // Sequences [index_in_step, index_in_step + count) of step `step`'s global batch into row-major
  // input and labels, (count, seq_len) i32 each (host memory). Errors: a token id outside the vocabulary
  // (InvalidArgument naming the file, document and position), an HDF5 read failure (Internal).
  // REQUIRES: step >= the restored next_step (0 without Restore), index_in_step >= 0, count >= 0,
  // index_in_step + count <= global_batch().
  virtual absl::Status Fill(int64_t step, int64_t index_in_step, int64_t count, int32_t* input,
                            int32_t* labels) = 0;

  // The state to save with a checkpoint taken before step `next_step` runs. REQUIRES: next_step >= the
  // restored next_step.
  LoaderState state(int64_t next_step) const;
  // Continues from a saved state: step state.next_step reads global samples from state.consumed_samples
  // on (with an unchanged global batch: exactly what the uninterrupted run would have read).
  // Errors (InvalidArgument): another train.seed, or another fingerprint (the message says what changed).
  absl::Status Restore(const LoaderState& state);

  int64_t seq_len() const { return fingerprint_.seq_len; }
  int64_t global_batch() const { return global_batch_; }
  const DataFingerprint& fingerprint() const { return fingerprint_; }
  // One line for the start-up log: source, split, datasets, documents, tokens, samples per epoch.
  virtual std::string Describe() const = 0;

 protected:
  TokenLoader(DataFingerprint fingerprint, uint64_t seed, int64_t global_batch)
      : fingerprint_(std::move(fingerprint)), seed_(seed), global_batch_(global_batch) {}
  // The global sample of (step, index) (see the top of this file), after checking Fill's REQUIRES.
  int64_t GlobalSample(int64_t step, int64_t index, int64_t count) const;
  uint64_t seed() const { return seed_; }

 private:
  DataFingerprint fingerprint_;
  uint64_t seed_;
  int64_t global_batch_;
  int64_t base_step_ = 0, base_samples_ = 0;  // set by Restore
};

// Opens `split` of the recipe's data for a global batch of `global_batch` sequences per step
// (dp x parallel.micro_batches x train.micro_batch_size). demo and synthetic have only a train split:
// asking them for valid or test is an InvalidArgument that says how to make a real dataset from the
// demo corpus (`fathom preprocess --demo-corpus`). REQUIRES: a validated recipe, global_batch >= 1.
absl::StatusOr<std::unique_ptr<TokenLoader>> OpenTokenLoader(const Recipe& recipe, DataSplit split,
                                                             int64_t global_batch);

}  // namespace fathom

#endif  // FATHOM_DATA_TOKEN_LOADER_H_
