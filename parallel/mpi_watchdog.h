// The watchdog behind MpiCommunicator's waits (parallel/communicator.h, "The watchdog"): it polls MPI
// requests against a deadline and, when one expires, finds out which peers have not arrived, reports it
// and ends the job. Used by parallel/mpi_communicator.cc; nothing else needs it.
//
// How the peers are found out. Every MPI communicator of fathom has a GroupRecord: its name, its members
// (world ranks), a key that is equal on every member, and counters of what this rank started on it (the
// collectives, and the point-to-point messages per peer and tag). While a rank waits - in WatchdogWait, or
// in a WatchdogTest that has not completed - it answers questions that arrive on a private duplicate of
// MPI_COMM_WORLD (the side channel): "on the group with key K, how many collectives have you started, how
// many messages with tag T have you sent to me and received from me, and what are you waiting for now?".
// A rank whose deadline passes asks every peer of the operation, collects the answers for up to
// kAnswerWaitSeconds, and reports, for a collective, each peer that has not arrived (it started fewer
// collectives on the group than this one's index) and what it is doing instead, and for a point-to-point
// message, whether the peer posted its side. A peer that does not answer is named as such: it is stopped
// (SIGSTOP, a debugger), dead, or busy outside fathom's MPI waits (computing, or blocked in a call the
// watchdog does not cover); that cannot be told apart from the outside. The report goes to stderr as
// "[rank R] watchdog: ..." (FailJob, parallel/fault.h) and MPI_Abort ends the job - a little later
// (kChainLingerSeconds) when a peer is itself blocked on a third rank, so that the report of the rank at
// the end of such a chain (the one naming the stopped or missing rank) is printed as well.
//
// Ranks are world ranks in every message. Costs in a healthy run: two counters per operation and, while
// a wait lasts longer than 10 ms, one MPI_Iprobe per 10 ms. Waits poll MPI_Test with a backoff: spinning
// for the first 50 us (short waits stay fast), then yielding the core until 2 ms, then sleeping up to
// 1 ms between polls, so that ranks oversubscribing a few cores (CI) leave them to the ranks that work.
//
// Lifetime and threads: WatchdogInit after MPI_Init (MpiInit calls it), WatchdogFinalBarrier then
// WatchdogRelease before MPI_Finalize (MpiFinalize). Process-wide state, as MPI's own; one thread (the
// thread that calls MPI, MPI_THREAD_FUNNELED).
#ifndef FATHOM_PARALLEL_MPI_WATCHDOG_H_
#define FATHOM_PARALLEL_MPI_WATCHDOG_H_

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "parallel/communicator.h"

namespace fathom {

// How long a rank whose deadline passed waits for its peers' answers before it reports without them.
inline constexpr double kAnswerWaitSeconds = 1.0;
// How long a rank that has reported waits before ending the job when a peer it waited for is itself
// blocked on another rank (so that the peer's report, which names the end of the chain, gets out too).
inline constexpr double kChainLingerSeconds = kAnswerWaitSeconds + 1.0;

// One MPI communicator's identity and this rank's counters on it. Registered with the watchdog while it
// lives (so that questions about it can be answered). Not copyable: the registry points at it.
class GroupRecord {
 public:
  // `key` must be equal on every member and differ between the live groups of a rank (GroupKey).
  GroupRecord(std::string name, std::vector<int> world_ranks, uint64_t key);
  ~GroupRecord();
  GroupRecord(const GroupRecord&) = delete;
  GroupRecord& operator=(const GroupRecord&) = delete;

  const std::string& name() const { return name_; }
  const std::vector<int>& world_ranks() const { return world_ranks_; }  // indexed by group rank
  uint64_t key() const { return key_; }

  // Each returns the 1-based index of the operation it counts: the n-th collective on the group, the n-th
  // message to (from) group rank `peer` with `tag`.
  int64_t StartCollective() { return ++collectives_; }
  int64_t StartSend(int peer, int tag) { return ++messages_[MessageKey(peer, tag)].sends; }
  int64_t StartRecv(int peer, int tag) { return ++messages_[MessageKey(peer, tag)].recvs; }
  // Children split off this group so far (part of the children's keys).
  int64_t StartSplit() { return ++splits_; }

  int64_t collectives() const { return collectives_; }
  int64_t sends(int peer, int tag) const;
  int64_t recvs(int peer, int tag) const;

 private:
  struct Messages {
    int64_t sends = 0, recvs = 0;
  };
  static int64_t MessageKey(int peer, int tag) { return (static_cast<int64_t>(peer) << 20) | tag; }

  std::string name_;
  std::vector<int> world_ranks_;
  uint64_t key_;
  int64_t collectives_ = 0, splits_ = 0;
  std::unordered_map<int64_t, Messages> messages_;
};

// A key equal on every member: a hash of the parent's key, the parent's split index, the name and the
// members. (Splits are collective and ordered, so every member computes the same one.)
uint64_t GroupKey(uint64_t parent_key, int64_t split_index, const std::string& name,
                  const std::vector<int>& world_ranks);

// What one wait is waiting for, for questions and the report.
struct WaitSite {
  const char* op = "";    // fathom's name of the operation: "all_reduce", "recv", "split", ...
  const char* call = "";  // the MPI call: "MPI_Iallgather"
  const GroupRecord* group = nullptr;
  int64_t collective = 0;  // collectives: the 1-based index on the group; 0 for point to point
  bool send = false;       // point to point: a send (else a receive)
  int peer = -1;           // point to point: the peer's group rank
  int tag = -1;
  int64_t message = 0;  // point to point: the 1-based index among the messages to/from `peer` with `tag`
};

// "all_reduce (MPI_Iallgather) #6 on group dp" / "recv #2 from rank 3 (tag 7) on group pp".
std::string DescribeSite(const WaitSite& site);
// The first line of an expiry report: "watchdog: <site> did not complete within 9 s
// (parallel.save_timeout_s); group dp has 2 rank(s): 0-1", naming the setting whose deadline applied.
std::string DescribeExpiry(const WaitSite& site, const Deadline& deadline);

// Collective over MPI_COMM_WORLD: creates the side channel and the record of MPI_COMM_WORLD.
void WatchdogInit();
// Frees the side channel. REQUIRES every communicator destroyed or left to MPI_Finalize.
void WatchdogRelease();
// MPI_COMM_WORLD's record (for collectives on it, e.g. the MPI_Comm_idup of MpiCommunicator::World()).
GroupRecord& MpiWorldRecord();

// Blocks until `request` completes, filling `status` (may be MPI_STATUS_IGNORE). When the wait lasts
// longer than `deadline.seconds`, asks the peers of `site`, reports (naming deadline.setting) and ends the
// job (kExitFailure).
void WatchdogWait(MPI_Request* request, MPI_Status* status, const WaitSite& site, const Deadline& deadline);
// One MPI_Test (true when complete). A caller that keeps testing is waiting: `first_test` (kept by the
// caller, empty at first) marks the first unsuccessful test, and once `deadline.seconds` have passed since,
// the same report ends the job.
bool WatchdogTest(MPI_Request* request, MPI_Status* status, const WaitSite& site, const Deadline& deadline,
                  std::optional<std::chrono::steady_clock::time_point>* first_test);
// Every rank meets here before MPI_Finalize, which would otherwise wait for ever for a rank that never
// comes (a stopped one, one still in a collective); the deadline is `timeout_seconds`.
void WatchdogFinalBarrier(double timeout_seconds);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_MPI_WATCHDOG_H_
