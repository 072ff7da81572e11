// TimingEventPool: the CUDA events behind framework/phase_timer.h's device clock. Events are created on
// demand and kept: Recycle() makes every event available again, so a loop that records the same number of
// events per iteration creates them in its first iteration only (no cudaEventCreate afterwards).
// Recording never waits for the device; Synchronize and ElapsedMs do (they are for the collection point).
// This header includes no CUDA header; the code exists only in builds with the CUDA backend
// (FATHOM_WITH_CUDA). Not thread safe: one pool per thread.
#ifndef FATHOM_FRAMEWORK_CUDA_PHASE_TIMER_EVENTS_H_
#define FATHOM_FRAMEWORK_CUDA_PHASE_TIMER_EVENTS_H_

#include <vector>

#include "framework/cuda/stream.h"

struct CUevent_st;  // cudaEvent_t is CUevent_st*

namespace fathom::cuda {

class TimingEventPool {
 public:
  TimingEventPool() = default;
  ~TimingEventPool();  // destroys the events (tolerating a CUDA runtime already shut down at process exit)
  TimingEventPool(const TimingEventPool&) = delete;
  TimingEventPool& operator=(const TimingEventPool&) = delete;

  // Records the next free event on `stream` (queued, no wait) and returns its index; creates an event only
  // when every existing one is in use.
  int Record(Stream stream);
  // Waits until the work before event `index` is done. REQUIRES: index recorded since the last Recycle().
  void Synchronize(int index);
  // Milliseconds between two recorded, completed events (cudaEventElapsedTime).
  float ElapsedMs(int start, int end) const;
  // Every event becomes free for Record again. REQUIRES: none of them is still needed.
  void Recycle() { used_ = 0; }

  int created() const { return static_cast<int>(events_.size()); }
  int used() const { return used_; }

 private:
  std::vector<CUevent_st*> events_;
  int used_ = 0;
};

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_CUDA_PHASE_TIMER_EVENTS_H_
