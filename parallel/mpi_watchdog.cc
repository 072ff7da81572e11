#include "parallel/mpi_watchdog.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "framework/check.h"
#include "parallel/collective_status.h"
#include "parallel/fault.h"

namespace fathom {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::microseconds;
using std::chrono::milliseconds;

constexpr int kQueryTag = 1;
constexpr int kAnswerTag = 2;
constexpr Clock::duration kServiceInterval = milliseconds(10);

double SecondsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// A question on the side channel, and its answer: plain structs moved as MPI_BYTE between processes of
// one binary.
struct Query {
  uint64_t key = 0;
  int64_t tag = -1;               // point to point: the tag asked about; -1 for a collective
  int64_t asker_group_rank = -1;  // the asker's rank in the group
};

struct Answer {
  int64_t found = 0;  // 1 when the answering rank has a live group with the key
  int64_t collectives = 0;
  int64_t sends_to_asker = 0;
  int64_t recvs_from_asker = 0;
  char doing[240] = {0};
};

// The process-wide state, as MPI's own is process-wide: the side channel, the live groups and the wait in
// progress. Never destroyed, because records of communicators left to MPI_Finalize outlive main.
struct Watchdog {
  MPI_Comm side = MPI_COMM_NULL;
  std::vector<GroupRecord*> groups;
  std::unique_ptr<GroupRecord> mpi_world;      // MPI_COMM_WORLD
  std::unique_ptr<GroupRecord> final_barrier;  // the side channel's barrier before MPI_Finalize
  const WaitSite* waiting = nullptr;           // the wait in progress, or nullptr
  Clock::time_point waiting_since;
  bool reporting = false;
  Clock::time_point last_service;
  std::vector<std::pair<MPI_Request, std::unique_ptr<Answer>>> answers_in_flight;
};

Watchdog& TheWatchdog() {
  static Watchdog* watchdog = new Watchdog;
  return *watchdog;
}

int WorldRank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

const std::string& GroupName(const WaitSite& site) {
  static const std::string unknown = "?";
  return site.group != nullptr ? site.group->name() : unknown;
}

int PeerWorldRank(const WaitSite& site) {
  const std::vector<int>& members = site.group->world_ranks();
  return site.peer >= 0 && site.peer < static_cast<int>(members.size()) ? members[site.peer] : -1;
}

std::string Ordinal(int64_t n) {
  const int64_t mod100 = n % 100;
  const char* suffix = "th";
  if (mod100 < 11 || mod100 > 13) {
    if (n % 10 == 1) suffix = "st";
    if (n % 10 == 2) suffix = "nd";
    if (n % 10 == 3) suffix = "rd";
  }
  return absl::StrCat(n, suffix);
}

std::string DescribeCurrentWait() {
  const Watchdog& w = TheWatchdog();
  if (w.waiting == nullptr) return "not waiting in fathom's MPI operations";
  return absl::StrFormat("waiting %.1f s in %s%s", SecondsBetween(w.waiting_since, Clock::now()),
                         DescribeSite(*w.waiting),
                         w.reporting ? " (its deadline passed; it is reporting)" : "");
}

GroupRecord* FindGroup(uint64_t key) {
  for (GroupRecord* g : TheWatchdog().groups) {
    if (g->key() == key) return g;
  }
  return nullptr;
}

void FillAnswer(const Query& q, Answer* a) {
  if (const GroupRecord* g = FindGroup(q.key); g != nullptr) {
    a->found = 1;
    a->collectives = g->collectives();
    if (q.tag >= 0 && q.asker_group_rank >= 0) {
      a->sends_to_asker = g->sends(static_cast<int>(q.asker_group_rank), static_cast<int>(q.tag));
      a->recvs_from_asker = g->recvs(static_cast<int>(q.asker_group_rank), static_cast<int>(q.tag));
    }
  }
  const std::string doing = DescribeCurrentWait();
  std::strncpy(a->doing, doing.c_str(), sizeof(a->doing) - 1);
}

// Answers the questions that have arrived, at most once per kServiceInterval unless `now_anyway`. MPI
// errors on the side channel end the job like any other (MpiCheck): it is the same transport.
void AnswerQuestions(bool now_anyway) {
  Watchdog& w = TheWatchdog();
  if (w.side == MPI_COMM_NULL) return;
  const Clock::time_point now = Clock::now();
  if (!now_anyway && now - w.last_service < kServiceInterval) return;
  w.last_service = now;
  std::erase_if(w.answers_in_flight, [](auto& in_flight) {
    int done = 0;
    MpiCheck(MPI_Test(&in_flight.first, &done, MPI_STATUS_IGNORE), "MPI_Test", "watchdog");
    return done != 0;
  });
  while (true) {
    int arrived = 0;
    MPI_Status status;
    MpiCheck(MPI_Iprobe(MPI_ANY_SOURCE, kQueryTag, w.side, &arrived, &status), "MPI_Iprobe", "watchdog");
    if (!arrived) return;
    Query q;
    MpiCheck(MPI_Recv(&q, sizeof(q), MPI_BYTE, status.MPI_SOURCE, kQueryTag, w.side, MPI_STATUS_IGNORE),
             "MPI_Recv", "watchdog");
    auto answer = std::make_unique<Answer>();
    FillAnswer(q, answer.get());
    MPI_Request request = MPI_REQUEST_NULL;
    MpiCheck(
        MPI_Isend(answer.get(), sizeof(Answer), MPI_BYTE, status.MPI_SOURCE, kAnswerTag, w.side, &request),
        "MPI_Isend", "watchdog");
    w.answers_in_flight.emplace_back(request, std::move(answer));
  }
}

// Between two polls of a wait that has lasted `waited`: spin first (most waits are short), then yield the
// core, then sleep a little longer the longer the wait (at most 1 ms: the latency it adds to a long wait).
void Pause(Clock::duration waited) {
  if (waited < microseconds(50)) return;
  if (waited < milliseconds(2)) {
    std::this_thread::yield();
    return;
  }
  std::this_thread::sleep_for(std::clamp<Clock::duration>(waited / 16, microseconds(50), milliseconds(1)));
}

// What one peer said, as a line of the report.
std::string PeerLine(const WaitSite& site, int peer_world, const Answer* a, int my_world) {
  const std::string& group = GroupName(site);
  if (a == nullptr) {
    return absl::StrFormat(
        "rank %d: no answer within %.0f s: it is stopped (SIGSTOP, a debugger), dead, or busy outside "
        "fathom's "
        "MPI waits (computing, or blocked in a call without a deadline)",
        peer_world, kAnswerWaitSeconds);
  }
  if (!a->found) {
    return absl::StrFormat("rank %d: has no live group %s (it destroyed it or never created it); it is %s",
                           peer_world, group, a->doing);
  }
  if (site.collective > 0) {
    const bool arrived = a->collectives >= site.collective;
    return absl::StrFormat("rank %d: %s: it has started %d collective(s) on group %s; it is %s", peer_world,
                           arrived ? "arrived" : "NOT ARRIVED", a->collectives, group, a->doing);
  }
  // Point to point: the peer's count of the matching operations towards this rank.
  const int64_t posted = site.send ? a->recvs_from_asker : a->sends_to_asker;
  const bool matched = posted >= site.message;
  return absl::StrFormat(
      "rank %d: %s: it has posted %d %s with tag %d %s rank %d on group %s (this %s is the %s); it is %s",
      peer_world, matched ? "posted its side" : "NOT POSTED", posted, site.send ? "receive(s)" : "send(s)",
      site.tag, site.send ? "from" : "to", my_world, group, site.send ? "send" : "receive",
      Ordinal(site.message), a->doing);
}

// The deadline of `site` passed: ask its peers, report, end the job.
[[noreturn]] void Expire(const WaitSite& site, const Deadline& deadline) {
  Watchdog& w = TheWatchdog();
  w.reporting = true;
  const int me = WorldRank();
  const GroupRecord& g = *site.group;
  int my_group_rank = -1;
  for (size_t r = 0; r < g.world_ranks().size(); ++r) {
    if (g.world_ranks()[r] == me) my_group_rank = static_cast<int>(r);
  }
  std::vector<int> peers;  // world ranks to ask
  if (site.collective > 0) {
    for (int r : g.world_ranks()) {
      if (r != me) peers.push_back(r);
    }
  } else if (PeerWorldRank(site) >= 0 && PeerWorldRank(site) != me) {
    peers.push_back(PeerWorldRank(site));
  }

  // Ask every peer at once, then collect what arrives in time. Errors on this path are ignored: a dead
  // peer may make a send fail, and the report matters more than the question.
  const Query query{g.key(), site.collective > 0 ? -1 : site.tag, my_group_rank};
  std::vector<Answer> answers(peers.size());
  std::vector<MPI_Request> asks(peers.size(), MPI_REQUEST_NULL), replies(peers.size(), MPI_REQUEST_NULL);
  std::vector<bool> answered(peers.size(), false);
  if (w.side != MPI_COMM_NULL) {
    for (size_t i = 0; i < peers.size(); ++i) {
      MPI_Isend(&query, sizeof(query), MPI_BYTE, peers[i], kQueryTag, w.side, &asks[i]);
      MPI_Irecv(&answers[i], sizeof(Answer), MPI_BYTE, peers[i], kAnswerTag, w.side, &replies[i]);
    }
    const Clock::time_point asked = Clock::now();
    size_t pending = peers.size();
    while (pending > 0 && SecondsBetween(asked, Clock::now()) < kAnswerWaitSeconds) {
      for (size_t i = 0; i < peers.size(); ++i) {
        int done = 0;
        if (!answered[i] && MPI_Test(&replies[i], &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done) {
          answered[i] = true;
          --pending;
        }
      }
      AnswerQuestions(/*now_anyway=*/true);  // the peers may be asking this rank at the same time
      std::this_thread::sleep_for(milliseconds(1));
    }
  }

  std::string report = DescribeExpiry(site, deadline);
  std::vector<int> arrived;
  std::vector<std::string> lines;
  for (size_t i = 0; i < peers.size(); ++i) {
    const Answer* a = answered[i] ? &answers[i] : nullptr;
    if (site.collective > 0 && a != nullptr && a->found && a->collectives >= site.collective) {
      arrived.push_back(peers[i]);
      continue;
    }
    lines.push_back(PeerLine(site, peers[i], a, me));
  }
  for (const std::string& line : lines) absl::StrAppend(&report, "\n  ", line);
  if (!arrived.empty()) absl::StrAppend(&report, "\n  arrived (started it): rank(s) ", RankRuns(arrived));
  if (site.collective > 0 && lines.empty()) {
    absl::StrAppend(&report,
                    "\n  every member has started it, yet MPI did not complete it: a transport problem, or a "
                    "member not progressing MPI");
  }
  if (site.collective == 0 && peers.empty()) {
    absl::StrAppend(&report, "\n  a message to itself: the matching ", site.send ? "receive" : "send",
                    " on this rank was never posted");
  }
  absl::StrAppend(&report, "\n  ending the job");
  // A peer that answered but has not arrived is usually blocked on a third rank, and its own report
  // (due about now, as its deadline passes too) names the one at the end of the chain. Printing this one
  // first and lingering a moment before the abort lets that report out as well.
  AnnounceFailure(report);
  bool chained = false;
  for (size_t i = 0; i < peers.size(); ++i) {
    if (answered[i] && answers[i].found &&
        (site.collective == 0 || answers[i].collectives < site.collective)) {
      chained = true;
    }
  }
  if (chained) {
    const Clock::time_point since = Clock::now();
    while (SecondsBetween(since, Clock::now()) < kChainLingerSeconds) {
      AnswerQuestions(/*now_anyway=*/true);
      std::this_thread::sleep_for(milliseconds(5));
    }
  }
  FailJob(kExitFailure, report);
}

}  // namespace

GroupRecord::GroupRecord(std::string name, std::vector<int> world_ranks, uint64_t key)
    : name_(std::move(name)), world_ranks_(std::move(world_ranks)), key_(key) {
  TheWatchdog().groups.push_back(this);
}

GroupRecord::~GroupRecord() { std::erase(TheWatchdog().groups, this); }

int64_t GroupRecord::sends(int peer, int tag) const {
  auto it = messages_.find(MessageKey(peer, tag));
  return it == messages_.end() ? 0 : it->second.sends;
}

int64_t GroupRecord::recvs(int peer, int tag) const {
  auto it = messages_.find(MessageKey(peer, tag));
  return it == messages_.end() ? 0 : it->second.recvs;
}

// FNV-1a over the fields: no cryptographic need, only equal inputs giving equal keys on every rank and
// distinct groups of one rank (a handful) not colliding.
uint64_t GroupKey(uint64_t parent_key, int64_t split_index, const std::string& name,
                  const std::vector<int>& world_ranks) {
  uint64_t h = 14695981039346656037ull;
  auto mix = [&h](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  };
  mix(&parent_key, sizeof(parent_key));
  mix(&split_index, sizeof(split_index));
  mix(name.data(), name.size());
  mix(world_ranks.data(), world_ranks.size() * sizeof(int));
  return h;
}

std::string DescribeSite(const WaitSite& site) {
  if (site.collective > 0) {
    return absl::StrCat(site.op, " (", site.call, ") #", site.collective, " on group ", GroupName(site));
  }
  return absl::StrCat(site.op, " (", site.call, ") #", site.message, site.send ? " to rank " : " from rank ",
                      site.group != nullptr ? PeerWorldRank(site) : site.peer, " (tag ", site.tag,
                      ") on group ", GroupName(site));
}

std::string DescribeExpiry(const WaitSite& site, const Deadline& deadline) {
  const GroupRecord& g = *site.group;
  return absl::StrFormat("watchdog: %s did not complete within %g s (%s); group %s has %d rank(s): %s",
                         DescribeSite(site), deadline.seconds, deadline.setting, g.name(),
                         g.world_ranks().size(), RankRuns(g.world_ranks()));
}

void WatchdogInit() {
  Watchdog& w = TheWatchdog();
  if (w.side != MPI_COMM_NULL) return;
  MpiCheck(MPI_Comm_dup(MPI_COMM_WORLD, &w.side), "MPI_Comm_dup", "world");
  MpiCheck(MPI_Comm_set_errhandler(w.side, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", "watchdog");
  int size = 1;
  MpiCheck(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size", "world");
  std::vector<int> all(static_cast<size_t>(size));
  std::iota(all.begin(), all.end(), 0);
  w.mpi_world = std::make_unique<GroupRecord>("MPI_COMM_WORLD", all, GroupKey(0, 0, "MPI_COMM_WORLD", all));
  w.final_barrier = std::make_unique<GroupRecord>("world", all, GroupKey(0, 0, "final barrier", all));
  w.last_service = Clock::now();
}

void WatchdogRelease() {
  Watchdog& w = TheWatchdog();
  for (auto& in_flight : w.answers_in_flight) MPI_Request_free(&in_flight.first);
  w.answers_in_flight.clear();
  if (w.side != MPI_COMM_NULL) MpiCheck(MPI_Comm_free(&w.side), "MPI_Comm_free", "watchdog");
  w.side = MPI_COMM_NULL;
  w.mpi_world.reset();
  w.final_barrier.reset();
}

GroupRecord& MpiWorldRecord() {
  Watchdog& w = TheWatchdog();
  FATHOM_CHECK(w.mpi_world != nullptr, "[watchdog] used before WatchdogInit (MpiInit)");
  return *w.mpi_world;
}

void WatchdogWait(MPI_Request* request, MPI_Status* status, const WaitSite& site, const Deadline& deadline) {
  int done = 0;
  MpiCheck(MPI_Test(request, &done, status), site.call, GroupName(site));
  if (done) return;
  Watchdog& w = TheWatchdog();
  const Clock::time_point begin = Clock::now();
  w.waiting = &site;
  w.waiting_since = begin;
  while (true) {
    MpiCheck(MPI_Test(request, &done, status), site.call, GroupName(site));
    if (done) break;
    const Clock::time_point now = Clock::now();
    if (SecondsBetween(begin, now) > deadline.seconds) Expire(site, deadline);
    AnswerQuestions(/*now_anyway=*/false);
    Pause(now - begin);
  }
  w.waiting = nullptr;
}

bool WatchdogTest(MPI_Request* request, MPI_Status* status, const WaitSite& site, const Deadline& deadline,
                  std::optional<Clock::time_point>* first_test) {
  int done = 0;
  MpiCheck(MPI_Test(request, &done, status), site.call, GroupName(site));
  if (done) return true;
  const Clock::time_point now = Clock::now();
  if (!first_test->has_value()) *first_test = now;
  Watchdog& w = TheWatchdog();
  w.waiting = &site;
  w.waiting_since = **first_test;
  if (SecondsBetween(**first_test, now) > deadline.seconds) Expire(site, deadline);
  AnswerQuestions(/*now_anyway=*/false);
  w.waiting = nullptr;
  return false;
}

void WatchdogFinalBarrier(double timeout_seconds) {
  Watchdog& w = TheWatchdog();
  if (w.side == MPI_COMM_NULL) return;
  WaitSite site;
  site.op = "the barrier before MPI_Finalize";
  site.call = "MPI_Ibarrier";
  site.group = w.final_barrier.get();
  site.collective = w.final_barrier->StartCollective();
  MPI_Request request = MPI_REQUEST_NULL;
  MpiCheck(MPI_Ibarrier(w.side, &request), "MPI_Ibarrier", "world");
  WatchdogWait(&request, MPI_STATUS_IGNORE, site, Deadline{timeout_seconds, "MpiFinalize's timeout_seconds"});
}

}  // namespace fathom
