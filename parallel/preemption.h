// Preemption: a scheduler's warning (SIGTERM, or Slurm's `--signal=USR1@120`) asks the job to stop. The
// job finishes its current step, saves a checkpoint and exits 0 (issue 10). This file provides the two
// halves below the trainer:
//   InstallPreemptionHandlers  SIGTERM and SIGUSR1 handlers that only record the signal (an atomic store,
//                              async-signal-safe); the step loop is never interrupted.
//   AgreeToStop                the step-boundary decision, collective: any rank's signal stops every rank
//                              after the same step (mpirun may deliver a signal to one rank only), and
//                              every rank learns which signal arrived where (rank 0 reports it).
// Handlers are process-wide (signals are); installing replaces SIGTERM's default action, so a job that
// installs them must call AgreeToStop every step or it will ignore SIGTERM. SIGKILL still ends it.
#ifndef FATHOM_PARALLEL_PREEMPTION_H_
#define FATHOM_PARALLEL_PREEMPTION_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "parallel/communicator.h"

namespace fathom {

// Installs the handlers (sigaction with SA_RESTART, so system calls in flight resume). Idempotent.
// Internal error naming the signal when sigaction fails.
absl::Status InstallPreemptionHandlers();

// The first preemption signal this process received (SIGTERM or SIGUSR1), 0 when none. Thread safe and
// async-signal-safe.
int PreemptionSignal();

// What the ranks agreed at a step boundary: stop when any of them received a preemption signal.
struct StopAgreement {
  int signal = 0;          // the largest signal number any rank received (0: none, go on)
  std::vector<int> ranks;  // the ranks of the communicator that received that signal, ascending
  bool stop() const { return signal != 0; }
};

// Collective over `comm` (a host communicator; every rank calls it at the same step boundary): the same
// StopAgreement on every rank, whichever rank the signal reached. One all-gather of one integer per rank.
StopAgreement AgreeToStop(Communicator& comm);

// "signal 10 (SIGUSR1) received on rank 2", "signal 15 (SIGTERM) received on ranks 0-3"; REQUIRES stop().
std::string DescribeStop(const StopAgreement& agreed);

// Forgets a received signal (tests).
void ResetPreemptionForTesting();

}  // namespace fathom

#endif  // FATHOM_PARALLEL_PREEMPTION_H_
