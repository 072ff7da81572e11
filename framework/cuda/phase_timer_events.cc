#include "framework/cuda/phase_timer_events.h"

#include "framework/cuda/check.h"

namespace fathom::cuda {

TimingEventPool::~TimingEventPool() {
  // The pool is thread_local: the main thread's is destroyed at process exit, possibly after the CUDA
  // runtime has been unloaded. Destroying an event then is pointless and its error harmless, so the return
  // codes are not checked; a failure stops the loop and is cleared from cudaGetLastError.
  for (CUevent_st* e : events_) {
    if (cudaEventDestroy(e) != cudaSuccess) {
      cudaGetLastError();
      break;
    }
  }
}

int TimingEventPool::Record(Stream stream) {
  if (used_ == static_cast<int>(events_.size())) {
    cudaEvent_t e = nullptr;
    FATHOM_CUDA_CHECK(cudaEventCreate(&e));
    events_.push_back(e);
  }
  FATHOM_CUDA_CHECK(cudaEventRecord(events_[static_cast<size_t>(used_)], stream));
  return used_++;
}

void TimingEventPool::Synchronize(int index) {
  FATHOM_CHECK(index >= 0 && index < used_, "[phase_timer] event ", index, " not recorded (", used_,
               " in use)");
  FATHOM_CUDA_CHECK(cudaEventSynchronize(events_[static_cast<size_t>(index)]));
}

float TimingEventPool::ElapsedMs(int start, int end) const {
  FATHOM_CHECK(start >= 0 && end >= 0 && start < used_ && end < used_, "[phase_timer] events ", start, ", ",
               end, " not recorded (", used_, " in use)");
  float ms = 0;
  FATHOM_CUDA_CHECK(
      cudaEventElapsedTime(&ms, events_[static_cast<size_t>(start)], events_[static_cast<size_t>(end)]));
  return ms;
}

}  // namespace fathom::cuda
