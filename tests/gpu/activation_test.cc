// CUDA SwiGLU and sigmoid (framework/kernels/cuda/activation.h) against the CPU twins run in f64 on the same
// (dtype-rounded) inputs, including an expert's empty (0, I) block, odd sizes, large |x| (the sigmoid's
// overflow-free branches), and the documented in-place aliasing.
//
// Tolerances (relative L2): f32 1e-5 (a few f32 operations and one expf per element, error ~1e-7); bf16 4e-3:
// computed in f32 and rounded once to bf16, at most 2^-8 relative per element, so at most 3.9e-3 in L2.
#include "framework/kernels/cuda/activation.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <utility>

#include "framework/cuda/device_arena.h"
#include "framework/kernels/cpu/activation.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using testing::Download;
using testing::RandomTensor;
using testing::RelError;
using testing::RoundTo;
using testing::SameBytes;
using testing::TestSeed;
using testing::Upload;

double Tolerance(DType dtype) { return dtype == DType::kF32 ? 1e-5 : 4e-3; }

void CheckSwiGlu(int64_t n, int64_t width, DType dtype, uint64_t seed) {
  SCOPED_TRACE("seed " + std::to_string(seed) + " (N, I) = (" + std::to_string(n) + ", " +
               std::to_string(width) + ") " + std::string(DTypeName(dtype)));
  std::mt19937_64 rng(seed);
  const Shape shape{n, width};
  const Tensor gate = RoundTo(RandomTensor(shape, DType::kF64, rng, 3.0), dtype);
  const Tensor up = RoundTo(RandomTensor(shape, DType::kF64, rng), dtype);
  const Tensor dout = RoundTo(RandomTensor(shape, DType::kF64, rng), dtype);
  cuda::DeviceArena arena("activation_test", 8 * static_cast<size_t>(n * width) * 4 + 16 * 256);
  const Tensor gate_d = Upload(arena, gate, dtype), up_d = Upload(arena, up, dtype);
  const Tensor dout_d = Upload(arena, dout, dtype);
  const Tensor out_d = arena.Alloc(shape, dtype), dgate_d = arena.Alloc(shape, dtype);
  const Tensor dup_d = arena.Alloc(shape, dtype);
  cuda::SwiGluForward(out_d, gate_d, up_d, nullptr);
  cuda::SwiGluBackward(dgate_d, dup_d, dout_d, gate_d, up_d, nullptr);
  // In place: dgate over gate, dup over up (the backward of a fused MLP reusing its saved buffers).
  const Tensor gate2_d = Upload(arena, gate, dtype), up2_d = Upload(arena, up, dtype);
  cuda::SwiGluBackward(gate2_d, up2_d, dout_d, gate2_d, up2_d, nullptr);
  if (n == 0) {
    SUCCEED() << "empty block: the launches above must simply not fail";
    return;
  }
  Tensor out_ref = Tensor::Empty(shape, DType::kF64), dgate_ref = Tensor::Empty(shape, DType::kF64);
  Tensor dup_ref = Tensor::Empty(shape, DType::kF64);
  cpu::SwiGluForward(out_ref, gate, up);
  cpu::SwiGluBackward(dgate_ref, dup_ref, dout, gate, up);
  const Tensor dgate = Download(dgate_d), dup = Download(dup_d);
  EXPECT_LT(RelError(Download(out_d), out_ref), Tolerance(dtype)) << "out";
  EXPECT_LT(RelError(dgate, dgate_ref), Tolerance(dtype)) << "dgate";
  EXPECT_LT(RelError(dup, dup_ref), Tolerance(dtype)) << "dup";
  EXPECT_TRUE(SameBytes(Download(gate2_d), dgate)) << "in-place dgate";
  EXPECT_TRUE(SameBytes(Download(up2_d), dup)) << "in-place dup";
}

TEST(CudaActivation, SwiGluMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  const std::pair<int64_t, int64_t> shapes[] = {{37, 1408}, {1, 5}, {0, 1408}, {300, 5632}, {77, 33}};
  for (const auto& [n, width] : shapes)
    for (DType dtype : {DType::kF32, DType::kBF16}) CheckSwiGlu(n, width, dtype, seed);
}

TEST(CudaActivation, SigmoidMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE("seed " + std::to_string(seed) + " " + std::string(DTypeName(dtype)));
    std::mt19937_64 rng(seed);
    const Shape shape{129, 257};
    Tensor x = RandomTensor(shape, DType::kF64, rng, 4.0);
    x.data<double>()[0] = 120.0;   // exp(-x) underflows
    x.data<double>()[1] = -120.0;  // exp(x) underflows; the naive 1 / (1 + exp(-x)) would overflow exp
    x = RoundTo(x, dtype);
    const Tensor dy = RoundTo(RandomTensor(shape, DType::kF64, rng), dtype);
    cuda::DeviceArena arena("activation_test", 6 * static_cast<size_t>(x.numel()) * 4 + 16 * 256);
    const Tensor x_d = Upload(arena, x, dtype), dy_d = Upload(arena, dy, dtype);
    const Tensor y_d = arena.Alloc(shape, dtype), dx_d = arena.Alloc(shape, dtype);
    cuda::SigmoidForward(y_d, x_d, nullptr);
    cuda::SigmoidBackward(dx_d, dy_d, y_d, nullptr);
    const Tensor inplace_d = Upload(arena, x, dtype);
    cuda::SigmoidForward(inplace_d, inplace_d, nullptr);
    const Tensor y = Download(y_d);
    // The backward's reference uses the GPU's saved y (its input), exactly as the GPU backward does.
    const Tensor y64 = y.To(DType::kF64);
    Tensor y_ref = Tensor::Empty(shape, DType::kF64), dx_ref = Tensor::Empty(shape, DType::kF64);
    cpu::SigmoidForward(y_ref, x);
    cpu::SigmoidBackward(dx_ref, dy, y64);
    EXPECT_LT(RelError(y, y_ref), Tolerance(dtype)) << "sigmoid";
    EXPECT_LT(RelError(Download(dx_d), dx_ref), Tolerance(dtype)) << "sigmoid backward";
    EXPECT_EQ(y.Item(0), 1.0);
    EXPECT_EQ(y.Item(1), 0.0);  // exp(-120) underflows in f32: exactly 0, never NaN
    EXPECT_TRUE(SameBytes(Download(inplace_d), y)) << "in-place sigmoid";
  }
}

}  // namespace
}  // namespace fathom
