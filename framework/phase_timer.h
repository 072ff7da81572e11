// Phase timing for `fathom bench`: how much of a training step goes to each named phase of the work.
//
// Phases are named by the code that does the work, not here: a module registers each of its phases once
// (RegisterPhase, usually to initialise a namespace-scope constant; layers/phases.h names the model's,
// parallel/phases.h the optimizer's) and wraps the phase's work in a ScopedPhase; the bench enables the
// calling thread's timer, Reset()s it, runs steps, and reads the per-phase totals with Collect():
//   const PhaseId kAttention = RegisterPhase("attention");
//   { ScopedPhase phase(kAttention); ... the MLA forward ... }
//   PhaseTimer::Enable(true); PhaseTimer::Reset(); <steps>; PhaseMillis ms = PhaseTimer::Collect();
//
// Cost when disabled (the default, and always outside the bench): ScopedPhase's constructor reads one
// thread_local bool and branches; nothing is recorded and no clock or CUDA call is made.
//
// Clocks. A nest of scopes (from an outermost ScopedPhase to its end) takes its clock when the outermost
// scope opens and keeps it for every inner boundary:
//   CUDA  in a build with the CUDA backend, when the thread has a current ops::OpContext (framework/ops.h):
//         every scope boundary records a cudaEvent on that context's stream (nullptr, the legacy default
//         stream, counts as a stream: it is the one the trainer's ops run on). Events come from a per-thread
//         pool that grows only while a step has more boundaries than any step before it (warm-up); after
//         that a scope creates no event and never synchronises the host. The GPU time of a phase is the
//         elapsed time between its boundary events on the stream, i.e. the work queued inside the scope.
//   CPU   otherwise: std::chrono::steady_clock at each boundary (the CPU ops run synchronously).
//
// Nesting: scopes may nest (also the same phase in itself) and the accounting is EXCLUSIVE: time runs for
// the innermost open scope only, so an inner phase's time is not also counted in the outer one and the
// phases of a step never add up to more than the time spent inside scopes. (For example, experts timed
// inside a dispatch/combine scope count as experts only.) Scopes must close in reverse order of opening,
// which C++ scoping guarantees for ScopedPhase locals.
//
// Thread safety: all state is per thread (the timer of the thread that runs the ops); a ScopedPhase must
// end on the thread that began it. Enable, Reset and Collect act on the calling thread's timer only.
#ifndef FATHOM_FRAMEWORK_PHASE_TIMER_H_
#define FATHOM_FRAMEWORK_PHASE_TIMER_H_

#include <array>
#include <string>
#include <string_view>

namespace fathom {

// A registered phase: an index into PhaseMillis.
using PhaseId = int;
inline constexpr int kMaxPhases = 16;

// The id of the phase called `name` (non-empty), registering it on first use: the same name always gives
// the same id, so two modules that time the same kind of work share a row. Ids are dense from 0 in the
// order of first registration (static initialisation order: do not rely on the values, use the names).
// Thread safe. More than kMaxPhases names fail a FATHOM_CHECK.
PhaseId RegisterPhase(std::string_view name);
// The name `id` was registered with. REQUIRES: id registered (checked).
const std::string& PhaseName(PhaseId id);
// How many phases are registered (ids 0 .. RegisteredPhases() - 1).
int RegisteredPhases();

// Milliseconds per phase, indexed by PhaseId (0 for ids not registered or not timed).
using PhaseMillis = std::array<double, kMaxPhases>;

class PhaseTimer {
 public:
  // Turns recording on or off for the calling thread. Scopes already open keep recording until they
  // close, so turning it off inside a scope leaves the accounting consistent.
  static void Enable(bool on) { enabled_ = on; }
  static bool enabled() { return enabled_; }

  // Drops everything recorded since the last Reset (also what was not collected yet).
  // REQUIRES: no ScopedPhase open on this thread (checked).
  static void Reset();

  // Exclusive milliseconds per phase accumulated since the last Reset(). CUDA: waits for the recorded
  // events (one cudaEventSynchronize on the last one, then cudaEventElapsedTime per segment) and folds them
  // into the totals, so the event pool is free again and a later Collect() continues the sums.
  // REQUIRES: no ScopedPhase open on this thread (checked).
  static PhaseMillis Collect();

  // Scopes recorded on this thread since the last Reset() (for tests and sanity checks of the wiring).
  static long long scope_count();

 private:
  friend class ScopedPhase;
  // constinit: no dynamic initialisation, so ScopedPhase's test is a plain thread-local load, no TLS
  // wrapper call.
  static inline thread_local constinit bool enabled_ = false;
};

// Times `phase` from construction to destruction when the calling thread's PhaseTimer is enabled at
// construction (see the header comment for clocks and the exclusive accounting of nested scopes).
// REQUIRES: `phase` registered (an id outside [0, kMaxPhases) fails a check when recording).
class ScopedPhase {
 public:
  explicit ScopedPhase(PhaseId phase) {
    if (PhaseTimer::enabled_) [[unlikely]] {
      Begin(phase);
    }
  }
  ~ScopedPhase() {
    if (depth_ != 0) [[unlikely]] {
      End();
    }
  }
  ScopedPhase(const ScopedPhase&) = delete;
  ScopedPhase& operator=(const ScopedPhase&) = delete;

 private:
  void Begin(PhaseId phase);
  void End();
  int depth_ = 0;  // 0: not recording; else this scope's depth in the thread's nest (checked at End)
};

}  // namespace fathom

#endif  // FATHOM_FRAMEWORK_PHASE_TIMER_H_
