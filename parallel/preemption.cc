#include "parallel/preemption.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "parallel/collective_status.h"

namespace fathom {
namespace {

// Lock-free, hence safe to store from a signal handler.
std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void OnPreemptionSignal(int signo) {
  int none = 0;
  g_signal.compare_exchange_strong(none, signo);  // keep the first one
}

}  // namespace

absl::Status InstallPreemptionHandlers() {
  struct sigaction action {};
  action.sa_handler = OnPreemptionSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int signo : {SIGTERM, SIGUSR1}) {
    if (::sigaction(signo, &action, nullptr) != 0) {
      return absl::InternalError(absl::StrCat("cannot install the preemption handler for ", strsignal(signo),
                                              ": ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

int PreemptionSignal() { return g_signal.load(std::memory_order_relaxed); }

// Gathered rather than max-reduced: the report names the ranks that were signalled, and a signal often
// reaches one rank only (mpirun, kill), which need not be rank 0, the one that reports.
StopAgreement AgreeToStop(Communicator& comm) {
  const std::vector<std::vector<int64_t>> signals = AllGatherI64(comm, {PreemptionSignal()});
  StopAgreement agreed;
  for (const std::vector<int64_t>& s : signals)
    agreed.signal = std::max(agreed.signal, static_cast<int>(s[0]));
  for (int r = 0; r < comm.size() && agreed.signal != 0; ++r) {
    if (signals[static_cast<size_t>(r)][0] == agreed.signal) agreed.ranks.push_back(r);
  }
  return agreed;
}

std::string DescribeStop(const StopAgreement& agreed) {
  const char* name = agreed.signal == SIGTERM ? " (SIGTERM)" : agreed.signal == SIGUSR1 ? " (SIGUSR1)" : "";
  return absl::StrCat("signal ", agreed.signal, name, " received on ", RankList(agreed.ranks));
}

void ResetPreemptionForTesting() { g_signal.store(0); }

}  // namespace fathom
