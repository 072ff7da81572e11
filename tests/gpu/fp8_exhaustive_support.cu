#include "tests/gpu/fp8_exhaustive_support.h"

#include <cuda_runtime.h>

#include "framework/cuda/check.h"
#include "framework/cuda/fp8_numeric.cuh"

namespace fathom::testing {
namespace {

constexpr int kExamples = 8;

// out[0]: mismatches; out[1 .. kExamples]: the first ones found (in no particular order).
__global__ void CompareKernel(unsigned long long* out, uint64_t first, uint64_t count) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const uint32_t bits = static_cast<uint32_t>(first + i);
    const float f = __uint_as_float(bits);
    if (cuda::fp8_numeric::FloatToE4M3Saturate(f) != cuda::fp8_numeric::FloatToE4M3SaturateSoftware(f)) {
      const unsigned long long k = atomicAdd(out, 1ull);
      if (k < kExamples) out[1 + k] = bits;
    }
  }
}

}  // namespace

ConversionMismatches SaturatingE4M3Mismatches(uint64_t first, uint64_t count) {
  unsigned long long* device = nullptr;
  FATHOM_CUDA_CHECK(cudaMalloc(&device, (1 + kExamples) * sizeof(unsigned long long)));
  FATHOM_CUDA_CHECK(cudaMemset(device, 0, (1 + kExamples) * sizeof(unsigned long long)));
  CompareKernel<<<132 * 16, 256>>>(device, first, count);
  FATHOM_CUDA_CHECK_LAUNCH();
  unsigned long long host[1 + kExamples];
  FATHOM_CUDA_CHECK(cudaMemcpy(host, device, sizeof(host), cudaMemcpyDeviceToHost));
  FATHOM_CUDA_CHECK(cudaFree(device));
  ConversionMismatches m;
  m.count = host[0];
  for (uint64_t k = 0; k < host[0] && k < kExamples; ++k) m.examples.push_back(static_cast<uint32_t>(host[1 + k]));
  return m;
}

}  // namespace fathom::testing
