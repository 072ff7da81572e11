#include "parallel/preemption.h"

#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

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

bool AgreeToStop(Communicator& comm) {
  Tensor flag = Tensor::Empty({1}, DType::kI32);
  flag.data<int32_t>()[0] = PreemptionSignal() != 0 ? 1 : 0;
  comm.AllReduce(flag, ReduceOp::kMax);
  return flag.data<int32_t>()[0] != 0;
}

void ResetPreemptionForTesting() { g_signal.store(0); }

}  // namespace fathom
