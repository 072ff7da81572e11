// Device code for tests/gpu/fp8_test.cc: the hardware e4m3 conversion against the integer one over f32
// bit patterns, counted on the device (2^32 inputs take about a second there; on the host, minutes).
#ifndef FATHOM_TESTS_GPU_FP8_EXHAUSTIVE_SUPPORT_H_
#define FATHOM_TESTS_GPU_FP8_EXHAUSTIVE_SUPPORT_H_

#include <cstdint>
#include <vector>

namespace fathom::testing {

struct ConversionMismatches {
  uint64_t count = 0;
  std::vector<uint32_t> examples;  // up to 8 input bit patterns whose codes differ
};

// FloatToE4M3Saturate against FloatToE4M3SaturateSoftware (framework/cuda/fp8_numeric.cuh) for every f32
// bit pattern in [first, first + count) (count <= 2^32 - first), on the current device.
ConversionMismatches SaturatingE4M3Mismatches(uint64_t first, uint64_t count);

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_GPU_FP8_EXHAUSTIVE_SUPPORT_H_
