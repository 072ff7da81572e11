#include "framework/phase_timer.h"

#include <chrono>
#include <vector>

#include "framework/check.h"
#include "framework/ops.h"

#ifdef FATHOM_WITH_CUDA
#include "framework/cuda/phase_timer_events.h"
#endif

namespace fathom {
namespace {

using Clock = std::chrono::steady_clock;

// A span of device time between two boundary events, owned by the phase innermost at the time.
struct DeviceSegment {
  Phase phase;
  int start_event;
  int end_event;
};

// One thread's timer. Time is cut into segments at every scope boundary (begin or end) of a nest; each
// segment belongs to the phase innermost during it, which is what makes the accounting exclusive.
struct ThreadTimer {
  std::vector<Phase> open;  // the nest's open scopes, outermost first
  bool nest_on_device = false;
  Clock::time_point last_host;  // the nest's previous boundary (host clock)
  PhaseMillis totals{};
  long long scopes = 0;
#ifdef FATHOM_WITH_CUDA
  cuda::Stream nest_stream = nullptr;
  int last_event = -1;  // the nest's previous boundary (device clock)
  cuda::TimingEventPool events;
  std::vector<DeviceSegment> pending;  // not yet folded into `totals`
#endif

  // Takes a boundary on the nest's clock and gives the time since the previous one to the innermost
  // open scope (none at the nest's first boundary).
  void Boundary() {
#ifdef FATHOM_WITH_CUDA
    if (nest_on_device) {
      const int e = events.Record(nest_stream);
      if (!open.empty()) pending.push_back({open.back(), last_event, e});
      last_event = e;
      return;
    }
#endif
    const Clock::time_point now = Clock::now();
    if (!open.empty()) {
      totals[static_cast<size_t>(open.back())] +=
          std::chrono::duration<double, std::milli>(now - last_host).count();
    }
    last_host = now;
  }
};

ThreadTimer& Timer() {
  static thread_local ThreadTimer timer;
  return timer;
}

}  // namespace

const char* PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kAttention:
      return "attention";
    case Phase::kExperts:
      return "experts";
    case Phase::kDispatchCombine:
      return "dispatch/combine";
    case Phase::kHeadLoss:
      return "head/loss";
    case Phase::kOptimizer:
      return "optimizer";
    case Phase::kCount:
      break;
  }
  FATHOM_CHECK(false, "[phase_timer] no phase ", static_cast<int>(phase));
  return "";
}

void ScopedPhase::Begin(Phase phase) {
  FATHOM_CHECK(phase != Phase::kCount, "[phase_timer] Phase::kCount is not a phase");
  ThreadTimer& t = Timer();
  if (t.open.empty()) {
    // The clock of the whole nest is chosen here, so every boundary of one segment is on the same clock.
    t.nest_on_device = false;
#ifdef FATHOM_WITH_CUDA
    if (ops::OpContext* context = ops::CurrentOpContext()) {
      t.nest_on_device = true;
      t.nest_stream = context->stream();
    }
#endif
  }
  t.Boundary();
  t.open.push_back(phase);
  ++t.scopes;
  depth_ = static_cast<int>(t.open.size());
}

void ScopedPhase::End() {
  ThreadTimer& t = Timer();
  FATHOM_CHECK(static_cast<int>(t.open.size()) == depth_, "[phase_timer] a ScopedPhase at depth ", depth_,
               " ends while ", t.open.size(),
               " scopes are open: scopes must end in reverse order, on the "
               "thread that began them");
  t.Boundary();
  t.open.pop_back();
  depth_ = 0;
}

void PhaseTimer::Reset() {
  ThreadTimer& t = Timer();
  FATHOM_CHECK(t.open.empty(), "[phase_timer] Reset with ", t.open.size(), " scopes open");
  t.totals = {};
  t.scopes = 0;
#ifdef FATHOM_WITH_CUDA
  t.pending.clear();
  t.events.Recycle();
#endif
}

PhaseMillis PhaseTimer::Collect() {
  ThreadTimer& t = Timer();
  FATHOM_CHECK(t.open.empty(), "[phase_timer] Collect with ", t.open.size(), " scopes open");
#ifdef FATHOM_WITH_CUDA
  // Nests may have used different streams: wait for each segment's end (cheap once complete).
  for (const DeviceSegment& s : t.pending) t.events.Synchronize(s.end_event);
  for (const DeviceSegment& s : t.pending) {
    t.totals[static_cast<size_t>(s.phase)] += t.events.ElapsedMs(s.start_event, s.end_event);
  }
  t.pending.clear();
  t.events.Recycle();
#endif
  return t.totals;
}

long long PhaseTimer::scope_count() { return Timer().scopes; }

}  // namespace fathom
