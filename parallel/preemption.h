// Preemption: a scheduler's warning (SIGTERM, or Slurm's `--signal=USR1@120`) asks the job to stop. The
// job finishes its current step, saves a checkpoint and exits 0 (issue 10). This file provides the two
// halves below the trainer:
//   InstallPreemptionHandlers  SIGTERM and SIGUSR1 handlers that only record the signal (an atomic store,
//                              async-signal-safe); the step loop is never interrupted.
//   AgreeToStop                the step-boundary decision, collective: any rank's signal stops every rank
//                              after the same step (mpirun may deliver a signal to one rank only).
// Handlers are process-wide (signals are); installing replaces SIGTERM's default action, so a job that
// installs them must call AgreeToStop every step or it will ignore SIGTERM. SIGKILL still ends it.
#ifndef FATHOM_PARALLEL_PREEMPTION_H_
#define FATHOM_PARALLEL_PREEMPTION_H_

#include "absl/status/status.h"
#include "parallel/communicator.h"

namespace fathom {

// Installs the handlers (sigaction with SA_RESTART, so system calls in flight resume). Idempotent.
// Internal error naming the signal when sigaction fails.
absl::Status InstallPreemptionHandlers();

// The first preemption signal this process received (SIGTERM or SIGUSR1), 0 when none. Thread safe and
// async-signal-safe.
int PreemptionSignal();

// Collective over `comm` (a host communicator; every rank calls it at the same step boundary): true on
// every rank when any rank has received a preemption signal. One all-reduce (max) of one integer.
bool AgreeToStop(Communicator& comm);

// Forgets a received signal (tests).
void ResetPreemptionForTesting();

}  // namespace fathom

#endif  // FATHOM_PARALLEL_PREEMPTION_H_
