// Small collectives over host communicators for decisions that every rank must take together: agreeing on
// success or failure (and on one error message), and moving strings (paths, JSON) between ranks.
//
// All are collective over `comm` (every rank calls them in the same order) and need a communicator that
// moves CPU tensors (MpiCommunicator, LocalCommunicator). Strings travel as bytes packed into i64 words.
// Thread safety: that of the communicator (one thread).
#ifndef FATHOM_PARALLEL_COLLECTIVE_STATUS_H_
#define FATHOM_PARALLEL_COLLECTIVE_STATUS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "parallel/communicator.h"

namespace fathom {

// OK on every rank when `local` is OK on every rank. Otherwise the same error on every rank: when every
// rank failed with the same message, that status; else the code of the lowest failing rank R and its
// message prefixed "rank R: ", followed by the ranks that did not fail (when some did not).
absl::Status AgreeOnStatus(Communicator& comm, const absl::Status& local);

// Every rank's `values` (the same count on each), gathered on every rank: [rank][i].
std::vector<std::vector<int64_t>> AllGatherI64(Communicator& comm, const std::vector<int64_t>& values);

// "0-3, 8, 10-11": the ranks sorted, runs collapsed, so that a group of thousands stays one line (not
// collective).
std::string RankRuns(std::vector<int> ranks);
// "ranks 0-2, 5" / "rank 3": RankRuns with its noun (not collective).
std::string RankList(const std::vector<int>& ranks);

// FNV-1a of `text`: stable across builds and hosts (std::hash promises neither), for comparing texts
// between ranks without moving them (not collective).
int64_t StableHash64(const std::string& text);

// `s` of rank `root`, on every rank.
std::string BroadcastString(Communicator& comm, const std::string& s, int root);

// Every rank's `s`, in rank order, on `root`; an empty vector on the other ranks.
std::vector<std::string> GatherStrings(Communicator& comm, const std::string& s, int root);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_COLLECTIVE_STATUS_H_
