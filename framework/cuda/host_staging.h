// HostStaging: page-locked host slots for asynchronous copies between host and device (ops::CopyToHostAsync,
// ops::ToDeviceAsync). Each slot is a cudaMallocHost buffer with a cudaEvent recorded right after the copy
// that uses it:
//   - device to host (Copy / Wait / Release): the host waits for that copy alone (cudaEventSynchronize)
//     instead of the whole stream, so work queued after the copy keeps the GPU busy while the host waits;
//   - host to device (Upload): the host data is staged into the slot and the copy queued; the host does not
//     wait at all, and the slot is busy until its event has passed (found with cudaEventQuery when a later
//     copy looks for a free slot). A pageable source would make cudaMemcpyAsync wait for the stream.
//
// Slots are created on demand and kept: a loop that has the same number of copies in flight per iteration
// allocates in its first iterations only (cudaMallocHost and cudaEventCreate are start-up costs; a copy
// larger than every free slot gets a new slot once). A download leases its slot from Copy to Release; an
// upload holds it until its copy has run. This header includes no CUDA header; the code exists only in builds
// with the CUDA backend (FATHOM_WITH_CUDA). Not thread safe: one per ops::OpContext (one thread).
#ifndef FATHOM_FRAMEWORK_CUDA_HOST_STAGING_H_
#define FATHOM_FRAMEWORK_CUDA_HOST_STAGING_H_

#include <cstddef>
#include <vector>

#include "framework/cuda/stream.h"

struct CUevent_st;  // cudaEvent_t is CUevent_st*

namespace fathom::cuda {

class HostStaging {
 public:
  HostStaging() = default;
  // Frees every slot (tolerating a CUDA runtime already shut down at process exit). REQUIRES: no slot
  // leased, i.e. every copy waited for or released.
  ~HostStaging();
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;

  // Leases a free slot of at least `bytes`, queues cudaMemcpyAsync(slot, device_src, bytes) on `stream`
  // and records the slot's event after it. Returns the slot's index. No host wait.
  int Copy(const void* device_src, size_t bytes, Stream stream);
  // Stages `bytes` of `host_src` in a free slot and queues cudaMemcpyAsync(device_dst, slot, bytes) on
  // `stream`, then the slot's event. No host wait; `host_src` may be reused at once.
  void Upload(void* device_dst, const void* host_src, size_t bytes, Stream stream);
  // SYNC POINT: waits for the slot's copy (its event only) and returns the slot's host memory, valid until
  // Release. REQUIRES: `slot` leased.
  const void* Wait(int slot);
  // The slot becomes free for another Copy. REQUIRES: `slot` leased and its copy waited for.
  void Release(int slot);

  int slots() const { return static_cast<int>(slots_.size()); }
  int leased() const;  // downloads not yet released

 private:
  struct Slot {
    void* host = nullptr;
    size_t capacity = 0;
    CUevent_st* event = nullptr;
    bool leased = false;     // a download owns it
    bool waited = false;     // that download's copy was waited for
    bool uploading = false;  // an upload's copy may still read it (until the event has passed)
  };
  // A free slot of at least `bytes` (the smallest that fits), made when none is.
  int Acquire(size_t bytes);
  std::vector<Slot> slots_;
};

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_CUDA_HOST_STAGING_H_
