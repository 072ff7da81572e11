// GPU test support: skip with a message where there is no GPU (CI), never pass silently; and the host <->
// device copies and comparisons that every kernel test against a CPU twin needs.
#ifndef FATHOM_TESTS_GPU_GPU_TEST_SUPPORT_H_
#define FATHOM_TESTS_GPU_GPU_TEST_SUPPORT_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "framework/cuda/device_arena.h"
#include "framework/cuda/device_pool.h"
#include "framework/dtype.h"
#include "framework/ops.h"
#include "framework/tensor.h"
#include "gtest/gtest.h"

#define FATHOM_REQUIRE_GPU()                                                                     \
  do {                                                                                           \
    if (::fathom::cuda::DeviceCount() == 0) {                                                    \
      GTEST_SKIP() << "no CUDA device visible: GPU tests run on the GPU machine (ctest -L gpu)"; \
    }                                                                                            \
  } while (0)

namespace fathom::testing {

// The pool and op context an ops-level GPU test installs (both on the legacy default stream).
struct GpuOpsEnv {
  GpuOpsEnv(const char* name, size_t bytes) : pool(name, bytes), pool_scope(pool), context_scope(context) {}
  cuda::DevicePool pool;
  ops::OpContext context;
  cuda::PoolScope pool_scope;
  ops::OpContextScope context_scope;
};

// host -> device and back through ops::To (allocating from the current pool).
inline Tensor Up(const Tensor& host) { return ops::To(host, Device::kCUDA); }
inline Tensor Down(const Tensor& dev) { return ops::To(dev, Device::kCPU); }

// x as the GPU will hold it in `dtype`, returned in f64 (widening back is exact): the CPU twin's input.
inline Tensor RoundTo(const Tensor& x, DType dtype) { return x.To(dtype).To(DType::kF64); }

// A device copy of host tensor `host` (same shape and dtype), allocated from `arena`.
inline Tensor Upload(cuda::DeviceArena& arena, const Tensor& host) {
  Tensor dev = arena.Alloc(host.shape(), host.dtype());
  cuda::CopyToDevice(dev, host);
  return dev;
}

// A device copy of host tensor `x` converted to `dtype` first (x.To(dtype)), allocated from `arena`.
inline Tensor Upload(cuda::DeviceArena& arena, const Tensor& x, DType dtype) {
  Tensor host = x.To(dtype);
  Tensor dev = arena.Alloc(host.shape(), dtype);
  cuda::CopyToDevice(dev, host);
  return dev;
}

// A host copy of device tensor `dev` (same shape and dtype). Synchronous.
inline Tensor Download(const Tensor& dev) {
  Tensor host = Tensor::Empty(dev.shape(), dev.dtype());
  cuda::CopyToHost(host, dev);
  return host;
}

// A host copy of device tensor `dev` widened to f64 (exact for f32 and bf16). Synchronous.
inline Tensor DownloadF64(const Tensor& dev) { return Download(dev).To(DType::kF64); }

// ||got - want||_2 / ||want||_2 over host tensors of equal numel (any float dtypes); adds a failure when the
// numels differ or `want` is all zeros (the comparison would be vacuous).
inline double RelError(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.numel(), want.numel());
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double d = got.Item(i) - want.Item(i);
    diff += d * d;
    norm += want.Item(i) * want.Item(i);
  }
  EXPECT_GT(norm, 0.0) << "reference is all zeros: the comparison would be vacuous";
  return std::sqrt(diff / norm);
}

// Whether host tensors `a` and `b` have the same byte size and the same bytes.
inline bool SameBytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Adds a failure (naming `what`, the first 5 differing elements and their count) unless host tensors `got`
// and `want` have the same byte size, the same dtype and bit-identical elements.
inline void ExpectBitEqual(const Tensor& got, const Tensor& want, const char* what) {
  ASSERT_EQ(got.nbytes(), want.nbytes()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  const size_t es = DTypeSize(want.dtype());
  int64_t bad = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    if (std::memcmp(static_cast<const char*>(got.raw()) + i * es,
                    static_cast<const char*>(want.raw()) + i * es, es) != 0 &&
        bad++ < 5) {
      ADD_FAILURE() << what << " element " << i << ": gpu " << got.Item(i) << " cpu " << want.Item(i);
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_GPU_GPU_TEST_SUPPORT_H_
