// Proves a Schedule runnable before anything runs, and executes it in time for the simulator.
//
// ValidateSchedule checks, in this order, and names the rank, the instruction index and the micro-batch in
// every error:
//   1. ids: every micro-batch in [0, micro_batches), every chunk in [0, chunks), and the micro-batch visits
//      that chunk (DualPipe: its direction's chunk);
//   2. completeness: for every micro-batch and stage, exactly one F and exactly one backward, either a BW or
//      a B with exactly one later W (an FB counts as an F and a BW);
//   3. local order: on each rank, a stage's F before its B/BW, B before W, and a dependency on the same rank
//      (DualPipeV's turn from chunk 0 to chunk 1 on the last rank) earlier in the list;
//   4. deadlock freedom: the lists are executed with blocking receives and buffered sends (the semantics of
//      schedule.h); if at some point no rank can start its next instruction, the stuck state is reported
//      (each blocked rank with the instruction and the message it waits for);
//   5. channel order: on every channel (src, dst, activation|gradient, receiving chunk) messages are
//      consumed in the order they were produced (so an executor can match them by (kind, chunk) tags).
// On success it reports each rank's peak live activations: micro-batch-chunks whose F has run and whose
// B/BW has not (an FB counts its forward before its backward).
#ifndef FATHOM_PARALLEL_SCHEDULE_VALIDATE_H_
#define FATHOM_PARALLEL_SCHEDULE_VALIDATE_H_

#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/schedule.h"

namespace fathom {

// One input an instruction waits for: the instruction (rank, index) that produces it.
struct Dependency {
  int rank = 0;
  int index = 0;
  bool gradient = false;  // a backward gradient (else a forward activation or, on one rank, saved state)
  int stage = 0;          // the consumer's stage that needs it (FB: of the half that needs it)
};

// deps[r][i]: the messages instruction i of rank r waits for (cross-rank only: a same-rank producer is
// satisfied by list order, which ResolveDependencies checks).
using ScheduleDeps = std::vector<std::vector<std::vector<Dependency>>>;

// Checks 1-3 and returns the dependencies. InvalidArgument on the first problem found.
absl::StatusOr<ScheduleDeps> ResolveDependencies(const Schedule& schedule);

// Start and end time of every instruction: times[r][i].
struct TimedInstruction {
  double start = 0;
  double end = 0;
};
using ScheduleTimes = std::vector<std::vector<TimedInstruction>>;

// Runs the lists in time: instruction i of rank r starts when rank r has finished instruction i-1 and every
// dependency d has arrived at end(d) + latency(d, r, i) (latency 0 on one rank is the caller's choice), and
// lasts duration(r, instruction). FailedPrecondition describing the stuck state on deadlock.
absl::StatusOr<ScheduleTimes> ExecuteSchedule(
    const Schedule& schedule, const ScheduleDeps& deps,
    const std::function<double(int rank, const Instruction&)>& duration,
    const std::function<double(const Dependency& producer, int rank, int index)>& latency);

struct ValidationReport {
  std::vector<int> peak_live_activations;      // per rank
  std::vector<int> peak_pending_weight_grads;  // per rank: B run, W not yet
};

absl::StatusOr<ValidationReport> ValidateSchedule(const Schedule& schedule);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_SCHEDULE_VALIDATE_H_
