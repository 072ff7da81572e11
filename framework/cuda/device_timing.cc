#include "framework/cuda/device_timing.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "framework/check.h"
#include "framework/cuda/check.h"

namespace fathom::cuda {

double TimeMs(CUstream_st* stream, int warmup, int reps, const std::function<void()>& work) {
  FATHOM_CHECK(reps >= 1, "[cuda::TimeMs] reps ", reps);
  for (int i = 0; i < warmup; ++i) work();
  cudaEvent_t start = nullptr, stop = nullptr;
  FATHOM_CUDA_CHECK(cudaEventCreate(&start));
  FATHOM_CUDA_CHECK(cudaEventCreate(&stop));
  FATHOM_CUDA_CHECK(cudaEventRecord(start, stream));
  for (int i = 0; i < reps; ++i) work();
  FATHOM_CUDA_CHECK(cudaEventRecord(stop, stream));
  FATHOM_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  FATHOM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  FATHOM_CUDA_CHECK(cudaEventDestroy(start));
  FATHOM_CUDA_CHECK(cudaEventDestroy(stop));
  return static_cast<double>(ms) / reps;
}

CopyBandwidth MeasureCopyBandwidth(int copies, size_t max_buffer_bytes) {
  FATHOM_CHECK(copies >= 1, "[MeasureCopyBandwidth] copies ", copies);
  size_t free_bytes = 0, total_bytes = 0;
  FATHOM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const size_t bytes = std::min(max_buffer_bytes, free_bytes / 4) & ~size_t{4095};
  CopyBandwidth out;
  if (bytes < (size_t{64} << 20)) return out;
  void* a = nullptr;
  void* b = nullptr;
  FATHOM_CUDA_CHECK(cudaMalloc(&a, bytes));
  FATHOM_CUDA_CHECK(cudaMalloc(&b, bytes));
  cudaStream_t stream = nullptr;
  FATHOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  FATHOM_CUDA_CHECK(cudaMemsetAsync(a, 1, bytes, stream));
  bool forward = true;  // a -> b, then b -> a, ...
  const double ms = TimeMs(stream, /*warmup=*/1, copies, [&] {
    FATHOM_CUDA_CHECK(
        cudaMemcpyAsync(forward ? b : a, forward ? a : b, bytes, cudaMemcpyDeviceToDevice, stream));
    forward = !forward;
  });
  FATHOM_CUDA_CHECK(cudaStreamDestroy(stream));
  FATHOM_CUDA_CHECK(cudaFree(a));
  FATHOM_CUDA_CHECK(cudaFree(b));
  out.buffer_bytes = bytes;
  if (ms > 0) out.bytes_per_s = 2.0 * static_cast<double>(bytes) / (ms * 1e-3);
  return out;
}

}  // namespace fathom::cuda
