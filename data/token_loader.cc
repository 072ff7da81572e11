#include "data/token_loader.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "data/blend.h"
#include "data/demo_corpus.h"
#include "data/hdf5_dataset.h"
#include "data/indexed_dataset.h"
#include "data/sampler.h"
#include "data/tokenizer.h"
#include "framework/check.h"

namespace fathom {
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

// ---------------------------------------------------------------------------------------------------
// demo and synthetic: one token stream, windows drawn with replacement keyed by (step, index).

class StreamLoader final : public TokenLoader {
 public:
  StreamLoader(DataFingerprint fingerprint, uint64_t seed, int64_t global_batch, std::vector<int32_t> tokens)
      : TokenLoader(std::move(fingerprint), seed, global_batch), tokens_(std::move(tokens)) {}

  absl::Status Init() {
    absl::StatusOr<SequenceSampler> s = SequenceSampler::Create(&tokens_, seq_len(), seed());
    if (!s.ok()) return s.status();
    sampler_ = std::make_unique<SequenceSampler>(*std::move(s));
    return absl::OkStatus();
  }

  absl::Status Fill(int64_t step, int64_t index_in_step, int64_t count, int32_t* input,
                    int32_t* labels) override {
    GlobalSample(step, index_in_step, count);  // checks the REQUIRES
    // Keyed by (step, index), not by the global sample: these are the windows the trainer always drew, so
    // the tiny recipe's losses do not move.
    sampler_->SampleBatch(step, index_in_step, count, input, labels);
    return absl::OkStatus();
  }

  std::string Describe() const override {
    return absl::StrCat("data: ", fingerprint().source, ", ", tokens_.size(), " tokens, windows of ",
                        seq_len(), " + 1 drawn with replacement");
  }

 private:
  std::vector<int32_t> tokens_;
  std::unique_ptr<SequenceSampler> sampler_;
};

// ---------------------------------------------------------------------------------------------------
// megatron and hdf5: packed splits of one or more datasets, blended.

class PackedLoader final : public TokenLoader {
 public:
  struct Part {
    std::unique_ptr<TokenDocuments> documents;
    std::unique_ptr<PackedSplit> split;
    double weight = 1;
    std::string prefix;
    std::string warning;  // said after the description (see SeparatorWarning)
  };

  PackedLoader(DataFingerprint fingerprint, uint64_t seed, int64_t global_batch, std::vector<Part> parts)
      : TokenLoader(std::move(fingerprint), seed, global_batch), parts_(std::move(parts)), blend_([this] {
          std::vector<double> w;
          for (const Part& p : parts_) w.push_back(p.weight);
          return w;
        }()) {
    window_.resize(static_cast<size_t>(seq_len() + 1));
  }

  absl::Status Fill(int64_t step, int64_t index_in_step, int64_t count, int32_t* input,
                    int32_t* labels) override {
    const int64_t first = GlobalSample(step, index_in_step, count);
    const int64_t t = seq_len();
    for (int64_t r = 0; r < count; ++r) {
      const auto [dataset, sample] = blend_.Lookup(first + r);
      if (absl::Status s = parts_[static_cast<size_t>(dataset)].split->Window(sample, window_.data());
          !s.ok()) {
        return s;
      }
      std::copy(window_.begin(), window_.begin() + t, input + r * t);
      std::copy(window_.begin() + 1, window_.end(), labels + r * t);
    }
    return absl::OkStatus();
  }

  std::string Describe() const override {
    std::vector<std::string> parts;
    for (const Part& p : parts_) {
      parts.push_back(absl::StrFormat("%.3g x %s (%d of %d documents, %d tokens, %d samples per epoch)",
                                      p.weight, p.prefix, p.split->num_documents(),
                                      p.documents->num_documents(), p.split->tokens_per_epoch(),
                                      p.split->samples_per_epoch()));
    }
    std::string out =
        absl::StrCat("data: ", fingerprint().source, ", ", fingerprint().split, " split (data.split ",
                     fingerprint().split_fractions, ") of ", absl::StrJoin(parts, "; "), "; windows of ",
                     seq_len(), " + 1 tokens");
    for (const Part& p : parts_) {
      if (!p.warning.empty()) absl::StrAppend(&out, "\nwarning: ", p.warning);
    }
    return out;
  }

 private:
  std::vector<Part> parts_;
  BlendSchedule blend_;
  std::vector<int32_t> window_;  // (seq_len + 1)
};

// Documents that already end with data.eod_token_id (a dataset made with Megatron's --append-eod, or fathom
// preprocess --append-eod) get a second one from the packer: said when the first documents of the split
// (up to 32 non-empty ones, at least 4) all end with it. "" otherwise, and on a read error (the loader
// reports those when it reads).
std::string SeparatorWarning(TokenDocuments& docs, int64_t begin, int64_t end, int64_t eod_token_id,
                             const std::string& name) {
  if (eod_token_id < 0) return "";
  int64_t sampled = 0;
  for (int64_t d = begin; d < end && sampled < 32; ++d) {
    const int64_t n = docs.document_length(d);
    if (n == 0) continue;
    int32_t last = -1;
    if (!docs.ReadTokens(d, n - 1, 1, &last).ok() || last != eod_token_id) return "";
    ++sampled;
  }
  if (sampled < 4) return "";
  return absl::StrCat(name, ": its first ", sampled, " documents all end with token ", eod_token_id,
                      ", and data.eod_token_id ", eod_token_id,
                      " appends another after each document: set data.eod_token_id: -1 for data whose documents "
                      "already end with their EOD (Megatron's --append-eod)");
}

// The seed of one dataset's split: distinct datasets and splits draw independent orders.
uint64_t PartSeed(uint64_t seed, size_t dataset, DataSplit split) {
  return SplitMix64(SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(dataset)) ^
                    static_cast<uint64_t>(static_cast<int>(split) + 1));
}

absl::StatusOr<std::unique_ptr<TokenLoader>> OpenPacked(const Recipe& recipe, DataSplit split,
                                                        int64_t global_batch, DataFingerprint fingerprint) {
  const DataConfig& data = recipe.data;
  absl::StatusOr<std::vector<DataBlendEntry>> blend = data.Blend();
  if (!blend.ok()) return blend.status();
  absl::StatusOr<std::vector<double>> fractions = data.SplitFractions();
  if (!fractions.ok()) return fractions.status();
  const int which = static_cast<int>(split);
  std::vector<PackedLoader::Part> parts;
  for (size_t k = 0; k < blend->size(); ++k) {
    const DataBlendEntry& entry = (*blend)[k];
    PackedLoader::Part part;
    part.weight = entry.weight;
    part.prefix = entry.prefix;
    if (data.source == "megatron") {
      absl::StatusOr<std::unique_ptr<IndexedDataset>> ds =
          IndexedDataset::Open(entry.prefix, recipe.model.vocab_size);
      if (!ds.ok()) return ds.status();
      part.documents = *std::move(ds);
    } else {
      absl::StatusOr<std::unique_ptr<Hdf5TokenDataset>> ds =
          Hdf5TokenDataset::Open(entry.prefix, recipe.model.vocab_size);
      if (!ds.ok()) return ds.status();
      part.documents = *std::move(ds);
    }
    const int64_t n = part.documents->num_documents();
    const std::array<int64_t, 4> bounds = SplitBoundaries(*fractions, n);
    const int64_t begin = bounds[static_cast<size_t>(which)], end = bounds[static_cast<size_t>(which) + 1];
    const std::string name =
        absl::StrCat(part.documents->path(), " (data.path entry ", k, ", ", DataSplitName(split), " split)");
    if (begin == end) {
      return Invalid(absl::StrCat(name, ": data.split '", data.split, "' gives the ", DataSplitName(split),
                                  " split none of the ", n, " documents",
                                  split == DataSplit::kValid ? " (train.eval_every needs some)" : "",
                                  "; give it a larger share or use a dataset with more documents"));
    }
    if (data.verify_tokens) {
      if (absl::Status s = part.documents->CheckTokenIds(begin, end); !s.ok()) return s;
    }
    // The train loader's description is the one printed; the same files would say the same for the others.
    if (split == DataSplit::kTrain) {
      part.warning = SeparatorWarning(*part.documents, begin, end, data.eod_token_id, name);
    }
    absl::StatusOr<std::unique_ptr<PackedSplit>> packed =
        PackedSplit::Create(part.documents.get(), begin, end, recipe.train.seq_len, data.eod_token_id,
                            PartSeed(recipe.train.seed, k, split), name);
    if (!packed.ok()) return packed.status();
    part.split = *std::move(packed);
    fingerprint.datasets.push_back({entry.prefix, entry.weight, part.documents->file_bytes(), n});
    parts.push_back(std::move(part));
  }
  return std::unique_ptr<TokenLoader>(
      new PackedLoader(std::move(fingerprint), recipe.train.seed, global_batch, std::move(parts)));
}

// ---------------------------------------------------------------------------------------------------
// JSON helpers

template <class T>
absl::Status ReadField(const nlohmann::json& j, const std::string& path, const char* key, T* out) {
  if (!j.is_object() || !j.contains(key)) {
    return Invalid(absl::StrCat("loader state: field '", path, key, "' is missing"));
  }
  const nlohmann::json& v = j.at(key);
  bool ok = false;
  if constexpr (std::is_same_v<T, std::string>) {
    ok = v.is_string();
  } else if constexpr (std::is_same_v<T, double>) {
    ok = v.is_number();
  } else if constexpr (std::is_same_v<T, uint64_t>) {
    ok = v.is_number_unsigned();
  } else {
    ok = v.is_number_integer();
  }
  if (!ok)
    return Invalid(absl::StrCat("loader state: field '", path, key, "' has the wrong type: ", v.dump()));
  *out = v.get<T>();
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Fingerprints and states

std::string DescribeFingerprintChange(const DataFingerprint& saved, const DataFingerprint& current) {
  std::vector<std::string> changes;
  auto field = [&changes](const std::string& key, const auto& was, const auto& now) {
    if (was != now) changes.push_back(absl::StrCat(key, " changed from '", was, "' to '", now, "'"));
  };
  field("data.source", saved.source, current.source);
  field("the split", saved.split, current.split);
  field("data.split", saved.split_fractions, current.split_fractions);
  field("train.seq_len", saved.seq_len, current.seq_len);
  field("data.eod_token_id", saved.eod_token_id, current.eod_token_id);
  field("model.vocab_size", saved.vocab_size, current.vocab_size);
  if (saved.datasets.size() != current.datasets.size()) {
    changes.push_back(absl::StrCat("data.path changed from ", saved.datasets.size(), " to ",
                                   current.datasets.size(), " datasets"));
  } else {
    for (size_t k = 0; k < saved.datasets.size(); ++k) {
      const DataFingerprint::Dataset &a = saved.datasets[k], &b = current.datasets[k];
      const std::string key = absl::StrCat("data.path entry ", k);
      field(key, a.path, b.path);
      if (a.path != b.path) continue;
      if (a.weight != b.weight) {
        changes.push_back(absl::StrFormat("%s '%s': the blend weight changed from %.17g to %.17g", key,
                                          a.path, a.weight, b.weight));
      }
      if (a.bytes != b.bytes || a.documents != b.documents) {
        changes.push_back(absl::StrCat(key, " '", a.path, "': the files changed (", a.bytes, " bytes, ",
                                       a.documents, " documents -> ", b.bytes, " bytes, ", b.documents,
                                       " documents)"));
      }
    }
  }
  return absl::StrJoin(changes, "\n");
}

nlohmann::json LoaderStateToJson(const LoaderState& state) {
  const DataFingerprint& f = state.fingerprint;
  nlohmann::json datasets = nlohmann::json::array();
  for (const DataFingerprint::Dataset& d : f.datasets) {
    datasets.push_back(
        {{"path", d.path}, {"weight", d.weight}, {"bytes", d.bytes}, {"documents", d.documents}});
  }
  return {{"seed", state.seed},
          {"next_step", state.next_step},
          {"consumed_samples", state.consumed_samples},
          {"fingerprint",
           {{"source", f.source},
            {"split", f.split},
            {"split_fractions", f.split_fractions},
            {"seq_len", f.seq_len},
            {"eod_token_id", f.eod_token_id},
            {"vocab_size", f.vocab_size},
            {"datasets", datasets}}}};
}

absl::StatusOr<LoaderState> LoaderStateFromJson(const nlohmann::json& json) {
  LoaderState s;
  DataFingerprint& f = s.fingerprint;
  for (absl::Status st :
       {ReadField(json, "", "seed", &s.seed), ReadField(json, "", "next_step", &s.next_step),
        ReadField(json, "", "consumed_samples", &s.consumed_samples)}) {
    if (!st.ok()) return st;
  }
  if (!json.contains("fingerprint")) return Invalid("loader state: field 'fingerprint' is missing");
  const nlohmann::json& j = json.at("fingerprint");
  const std::string p = "fingerprint.";
  for (absl::Status st :
       {ReadField(j, p, "source", &f.source), ReadField(j, p, "split", &f.split),
        ReadField(j, p, "split_fractions", &f.split_fractions), ReadField(j, p, "seq_len", &f.seq_len),
        ReadField(j, p, "eod_token_id", &f.eod_token_id), ReadField(j, p, "vocab_size", &f.vocab_size)}) {
    if (!st.ok()) return st;
  }
  if (!j.contains("datasets") || !j.at("datasets").is_array()) {
    return Invalid("loader state: field 'fingerprint.datasets' is missing or not a list");
  }
  for (size_t k = 0; k < j.at("datasets").size(); ++k) {
    const nlohmann::json& d = j.at("datasets")[k];
    const std::string dp = absl::StrCat(p, "datasets[", k, "].");
    DataFingerprint::Dataset ds;
    for (absl::Status st :
         {ReadField(d, dp, "path", &ds.path), ReadField(d, dp, "weight", &ds.weight),
          ReadField(d, dp, "bytes", &ds.bytes), ReadField(d, dp, "documents", &ds.documents)}) {
      if (!st.ok()) return st;
    }
    f.datasets.push_back(std::move(ds));
  }
  if (s.next_step < 0 || s.consumed_samples < 0) {
    return Invalid(absl::StrCat("loader state: next_step (", s.next_step, ") and consumed_samples (",
                                s.consumed_samples, ") must be >= 0"));
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------
// TokenLoader

int64_t TokenLoader::GlobalSample(int64_t step, int64_t index, int64_t count) const {
  FATHOM_CHECK(step >= base_step_ && index >= 0 && count >= 0 && index + count <= global_batch_,
               "[token_loader] step ", step, " (restored at ", base_step_, "), sequences [", index, ", ",
               index + count, ") of a global batch of ", global_batch_);
  return base_samples_ + (step - base_step_) * global_batch_ + index;
}

LoaderState TokenLoader::state(int64_t next_step) const {
  FATHOM_CHECK(next_step >= base_step_, "[token_loader] state(", next_step, ") before the restored step ",
               base_step_);
  return {seed_, next_step, base_samples_ + (next_step - base_step_) * global_batch_, fingerprint_};
}

absl::Status TokenLoader::Restore(const LoaderState& state) {
  if (state.seed != seed_) {
    return Invalid(absl::StrCat("the checkpoint's data order was drawn with train.seed ", state.seed,
                                "; this run has train.seed ", seed_, " (the samples would differ)"));
  }
  if (std::string change = DescribeFingerprintChange(state.fingerprint, fingerprint_); !change.empty()) {
    return Invalid(absl::StrCat("the data changed since the checkpoint was written: ", change));
  }
  base_step_ = state.next_step;
  base_samples_ = state.consumed_samples;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TokenLoader>> OpenTokenLoader(const Recipe& recipe, DataSplit split,
                                                             int64_t global_batch) {
  FATHOM_CHECK(global_batch >= 1, "[token_loader] global batch ", global_batch);
  if (absl::Status s = recipe.data.Validate(recipe.model); !s.ok()) return s;
  DataFingerprint f;
  f.source = recipe.data.source;
  f.split = DataSplitName(split);
  f.split_fractions = recipe.data.split;
  f.seq_len = recipe.train.seq_len;
  f.eod_token_id = recipe.data.eod_token_id;
  f.vocab_size = recipe.model.vocab_size;
  if (f.source == "megatron" || f.source == "hdf5")
    return OpenPacked(recipe, split, global_batch, std::move(f));
  if (split != DataSplit::kTrain) {
    return Invalid(absl::StrCat(
        "data.source ", f.source, " has no ", DataSplitName(split),
        " split (it draws training windows from one stream); for validation convert the demo corpus: ",
        "`fathom preprocess --demo-corpus --output-prefix PREFIX`, then data.source megatron, data.path "
        "[PREFIX]"));
  }
  std::vector<int32_t> tokens;
  if (f.source == "demo") {
    tokens = EncodeBytes(DemoCorpus());
  } else {
    // The stream the trainer has always drawn synthetic windows from.
    tokens = SyntheticTokens(std::max<int64_t>(1 << 20, 4 * recipe.train.seq_len), recipe.model.vocab_size,
                             recipe.train.seed);
  }
  auto loader =
      std::make_unique<StreamLoader>(std::move(f), recipe.train.seed, global_batch, std::move(tokens));
  if (absl::Status s = loader->Init(); !s.ok()) return s;
  return std::unique_ptr<TokenLoader>(std::move(loader));
}

}  // namespace fathom
