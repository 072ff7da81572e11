#include "framework/cuda/host_staging.h"

#include <algorithm>
#include <cstring>

#include "framework/cuda/check.h"

namespace fathom::cuda {

HostStaging::~HostStaging() {
  // An OpContext may be destroyed at process exit, after the CUDA runtime has been unloaded: freeing then is
  // pointless and its error harmless, so a failure stops the loop and is cleared (as TimingEventPool does).
  // An upload still queued reads its slot: wait for it first.
  for (const Slot& s : slots_) {
    if ((s.uploading && cudaEventSynchronize(s.event) != cudaSuccess) ||
        cudaEventDestroy(s.event) != cudaSuccess || cudaFreeHost(s.host) != cudaSuccess) {
      cudaGetLastError();
      break;
    }
  }
}

int HostStaging::Acquire(size_t bytes) {
  // The smallest free slot that fits, so small copies do not occupy the few large slots.
  int best = -1;
  for (int i = 0; i < static_cast<int>(slots_.size()); ++i) {
    Slot& s = slots_[static_cast<size_t>(i)];
    if (s.leased || s.capacity < bytes) continue;
    if (s.uploading) {
      const cudaError_t done = cudaEventQuery(s.event);
      if (done == cudaErrorNotReady) continue;  // its upload has not run yet
      FATHOM_CUDA_CHECK(done);
      s.uploading = false;
    }
    if (best < 0 || s.capacity < slots_[static_cast<size_t>(best)].capacity) best = i;
  }
  if (best < 0) {
    Slot s;
    s.capacity = std::max<size_t>(bytes, 256);
    FATHOM_CUDA_CHECK(cudaMallocHost(&s.host, s.capacity));
    FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&s.event, cudaEventDisableTiming));
    slots_.push_back(s);
    best = static_cast<int>(slots_.size()) - 1;
  }
  return best;
}

int HostStaging::Copy(const void* device_src, size_t bytes, Stream stream) {
  const int slot = Acquire(bytes);
  Slot& s = slots_[static_cast<size_t>(slot)];
  s.leased = true;
  s.waited = false;
  if (bytes > 0) {
    FATHOM_CUDA_CHECK(cudaMemcpyAsync(s.host, device_src, bytes, cudaMemcpyDeviceToHost, stream));
  }
  FATHOM_CUDA_CHECK(cudaEventRecord(s.event, stream));
  return slot;
}

void HostStaging::Upload(void* device_dst, const void* host_src, size_t bytes, Stream stream) {
  if (bytes == 0) return;
  Slot& s = slots_[static_cast<size_t>(Acquire(bytes))];
  std::memcpy(s.host, host_src, bytes);
  FATHOM_CUDA_CHECK(cudaMemcpyAsync(device_dst, s.host, bytes, cudaMemcpyHostToDevice, stream));
  FATHOM_CUDA_CHECK(cudaEventRecord(s.event, stream));
  s.uploading = true;
}

const void* HostStaging::Wait(int slot) {
  FATHOM_CHECK(slot >= 0 && slot < slots() && slots_[static_cast<size_t>(slot)].leased,
               "[host_staging] slot ", slot, " is not leased (", slots(), " slots)");
  Slot& s = slots_[static_cast<size_t>(slot)];
  FATHOM_CUDA_CHECK(cudaEventSynchronize(s.event));
  s.waited = true;
  return s.host;
}

void HostStaging::Release(int slot) {
  FATHOM_CHECK(slot >= 0 && slot < slots() && slots_[static_cast<size_t>(slot)].leased,
               "[host_staging] slot ", slot, " is not leased (", slots(), " slots)");
  Slot& s = slots_[static_cast<size_t>(slot)];
  FATHOM_CHECK(s.waited, "[host_staging] slot ", slot, " released before its copy was waited for");
  s.leased = false;
}

int HostStaging::leased() const {
  return static_cast<int>(
      std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return s.leased; }));
}

}  // namespace fathom::cuda
