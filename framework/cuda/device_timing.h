// Timing work on the GPU with CUDA events, and the current GPU's device-to-device copy rate measured so:
// the memory-bandwidth floor that `fathom bench` and the optimizer's Google Benchmark compare the
// optimizer's traffic with (bytes read + written per second, as they count the optimizer's). A fixed number
// would be one GPU's: the H200's copy runs at about 4.3 TB/s, the H100's at about 3.0. This header includes
// no CUDA header; the code exists only in builds with the CUDA backend (FATHOM_WITH_CUDA).
#ifndef FATHOM_FRAMEWORK_CUDA_DEVICE_TIMING_H_
#define FATHOM_FRAMEWORK_CUDA_DEVICE_TIMING_H_

#include <cstddef>
#include <functional>

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace fathom::cuda {

// Milliseconds per call of `work`, which queues its GPU work on `stream` (nullptr: the legacy default
// stream): `warmup` calls first (plans, workspaces), then `reps` between two events. Blocks until done.
// REQUIRES: a current CUDA device; reps >= 1.
double TimeMs(CUstream_st* stream, int warmup, int reps, const std::function<void()>& work);

struct CopyBandwidth {
  double bytes_per_s = 0;  // 2 x bytes copied per second (each byte read once and written once); 0: not measured
  size_t buffer_bytes = 0;  // the size of each of the two buffers it used
};

// Copies one buffer into another (cudaMemcpyAsync, device to device, on a stream of its own) once to warm
// up and `copies` times timed with CUDA events. Each buffer is at most `max_buffer_bytes` and a quarter of
// the device's free memory, far past the L2 at the default so every copy streams from HBM; with less than
// 64 MiB per buffer free it measures nothing (bytes_per_s 0: the caller says so). Blocks until done;
// allocates and frees its buffers. REQUIRES: a current CUDA device; copies >= 1.
CopyBandwidth MeasureCopyBandwidth(int copies = 10, size_t max_buffer_bytes = size_t{512} << 20);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_CUDA_DEVICE_TIMING_H_
