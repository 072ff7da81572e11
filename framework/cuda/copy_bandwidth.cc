#include "framework/cuda/copy_bandwidth.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "framework/check.h"
#include "framework/cuda/check.h"

namespace fathom::cuda {

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
  cudaEvent_t start = nullptr, stop = nullptr;
  FATHOM_CUDA_CHECK(cudaEventCreate(&start));
  FATHOM_CUDA_CHECK(cudaEventCreate(&stop));
  FATHOM_CUDA_CHECK(cudaMemsetAsync(a, 1, bytes, stream));
  FATHOM_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream));  // warm-up
  FATHOM_CUDA_CHECK(cudaEventRecord(start, stream));
  for (int i = 0; i < copies; ++i) {
    FATHOM_CUDA_CHECK(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice, stream));
  }
  FATHOM_CUDA_CHECK(cudaEventRecord(stop, stream));
  FATHOM_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  FATHOM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  FATHOM_CUDA_CHECK(cudaEventDestroy(start));
  FATHOM_CUDA_CHECK(cudaEventDestroy(stop));
  FATHOM_CUDA_CHECK(cudaStreamDestroy(stream));
  FATHOM_CUDA_CHECK(cudaFree(a));
  FATHOM_CUDA_CHECK(cudaFree(b));
  out.buffer_bytes = bytes;
  if (ms > 0) out.bytes_per_s = 2.0 * static_cast<double>(bytes) * copies / (static_cast<double>(ms) * 1e-3);
  return out;
}

}  // namespace fathom::cuda
