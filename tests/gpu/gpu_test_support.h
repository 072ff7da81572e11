// GPU test support: skip with a message where there is no GPU (CI), never pass silently.
#ifndef FATHOM_TESTS_GPU_GPU_TEST_SUPPORT_H_
#define FATHOM_TESTS_GPU_GPU_TEST_SUPPORT_H_

#include "framework/cuda/device_arena.h"
#include "gtest/gtest.h"

#define FATHOM_REQUIRE_GPU()                                                                   \
  do {                                                                                         \
    if (::fathom::cuda::DeviceCount() == 0) {                                                  \
      GTEST_SKIP() << "no CUDA device visible: GPU tests run on the GPU machine (ctest -L gpu)"; \
    }                                                                                          \
  } while (0)

#endif  // FATHOM_TESTS_GPU_GPU_TEST_SUPPORT_H_
