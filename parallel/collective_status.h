// Small collectives over host communicators for decisions that every rank must take together: agreeing on
// success or failure (and on one error message), and moving strings (paths, JSON) between ranks.
//
// All are collective over `comm` (every rank calls them in the same order) and need a communicator that
// moves CPU tensors (MpiCommunicator, LocalCommunicator). Strings travel as bytes packed into i64 words.
// Thread safety: that of the communicator (one thread).
#ifndef FATHOM_PARALLEL_COLLECTIVE_STATUS_H_
#define FATHOM_PARALLEL_COLLECTIVE_STATUS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "parallel/communicator.h"

namespace fathom {

// OK on every rank when `local` is OK on every rank; otherwise, on every rank, the error of the lowest
// failing rank: its code and its message (prefixed "[rank R] " when R is not 0).
absl::Status AgreeOnStatus(Communicator& comm, const absl::Status& local);

// `s` of rank `root`, on every rank.
std::string BroadcastString(Communicator& comm, const std::string& s, int root);

// Every rank's `s`, in rank order, on `root`; an empty vector on the other ranks.
std::vector<std::string> GatherStrings(Communicator& comm, const std::string& s, int root);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_COLLECTIVE_STATUS_H_
