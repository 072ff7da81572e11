#include "framework/phase_timer.h"

#include <chrono>
#include <mutex>
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
  PhaseId phase;
  int start_event;
  int end_event;
};

// One thread's timer. Time is cut into segments at every scope boundary (begin or end) of a nest; each
// segment belongs to the phase innermost during it, which is what makes the accounting exclusive.
struct ThreadTimer {
  std::vector<PhaseId> open;  // the nest's open scopes, outermost first
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

// The names, in id order. Function-local, so registration from static initialisers of any translation unit
// finds it constructed.
struct PhaseRegistry {
  std::mutex mu;
  std::vector<std::string> names;
};

PhaseRegistry& Registry() {
  static PhaseRegistry registry;
  return registry;
}

}  // namespace

PhaseId RegisterPhase(std::string_view name) {
  FATHOM_CHECK(!name.empty(), "[phase_timer] a phase needs a name");
  PhaseRegistry& r = Registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (size_t i = 0; i < r.names.size(); ++i) {
    if (r.names[i] == name) return static_cast<PhaseId>(i);
  }
  FATHOM_CHECK(static_cast<int>(r.names.size()) < kMaxPhases, "[phase_timer] phase '", name, "': all ",
               kMaxPhases, " phase ids are taken");
  r.names.emplace_back(name);
  return static_cast<PhaseId>(r.names.size() - 1);
}

const std::string& PhaseName(PhaseId id) {
  PhaseRegistry& r = Registry();
  std::lock_guard<std::mutex> lock(r.mu);
  FATHOM_CHECK(id >= 0 && id < static_cast<int>(r.names.size()), "[phase_timer] no phase ", id, " (",
               r.names.size(), " registered)");
  return r.names[static_cast<size_t>(id)];  // never moved: names are only appended, and strings stay put
}

int RegisteredPhases() {
  PhaseRegistry& r = Registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return static_cast<int>(r.names.size());
}

void ScopedPhase::Begin(PhaseId phase) {
  // The range only (no lock on this path): an id is an index into PhaseMillis.
  FATHOM_CHECK(phase >= 0 && phase < kMaxPhases, "[phase_timer] phase ", phase, " is not a phase id");
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
