// Helpers shared by the CUDA kernel files (include from .cu files only): the grid of a grid-stride loop,
// the CUDA-tensor check of the launchers, the f32/bf16 input dispatch, and the group search of the grouped
// FP8 kernels.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_KERNEL_COMMON_CUH_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_KERNEL_COMMON_CUH_

#include <algorithm>
#include <cstdint>

#include "framework/check.h"
#include "framework/tensor.h"

namespace fathom::cuda::common {

// Blocks for a grid-stride loop over n elements at `threads` per block: enough to fill an H100/H200
// several times over (132 SMs x 32 blocks), capped, and at least one.
inline unsigned GridFor(int64_t n, int threads) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + threads - 1) / threads, 1, 132 * 32));
}

inline void CheckCuda(const char* op, const Tensor& t, const char* name) {
  FATHOM_CHECK(t.device() == Device::kCUDA, "[", op, "] ", name, " ", t.shape_str(), " is on ",
               DeviceName(t.device()), ", expected a CUDA tensor");
}

// Runs f(typed input pointer) for an f32 or bf16 tensor (bf16 as its bit pattern, uint16_t).
template <class F>
void WithFloatIn(const Tensor& t, F&& f) {
  if (t.dtype() == DType::kF32) {
    f(static_cast<const float*>(t.raw()));
  } else {
    f(static_cast<const uint16_t*>(t.raw()));
  }
}

// The group g with begin[g] <= v < begin[g + 1] (begin non-decreasing; empty groups are skipped over).
__device__ __forceinline__ int FindGroup(const int32_t* begin, int groups, int64_t v) {
  int lo = 0, hi = groups - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (begin[mid] <= v) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

}  // namespace fathom::cuda::common

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_KERNEL_COMMON_CUH_
