// Element-wise kernels on the GPU (framework/kernels/cuda/elementwise.h) against
// framework/kernels/cpu/elementwise.h and framework/numeric.h.
//
// Every comparison is bit for bit: each output element is one correctly rounded f32 operation (or a copy,
// or one f32 -> bf16 rounding), and the CPU performs the same operation on the same values.
#include "framework/kernels/cpu/elementwise.h"

#include <cstdint>
#include <limits>
#include <random>
#include <string>

#include "framework/cuda/device_arena.h"
#include "framework/kernels/cuda/elementwise.h"
#include "framework/numeric.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using testing::Download;
using testing::ExpectBitEqual;
using testing::RandomTensor;
using testing::TestSeed;
using testing::Upload;

// bf16 tensor whose every element is FloatToBf16 of the f32 one: the CPU reference of an f32 -> bf16 result.
Tensor RoundToBf16(const Tensor& f32) { return f32.To(DType::kBF16); }

const Shape kShapes[] = {{1}, {3, 5, 7}, {1000003}};

TEST(ElementwiseCudaTest, AddMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("elementwise_test", size_t{64} << 20);
  for (const Shape& shape : kShapes) {
    SCOPED_TRACE(ShapeString(shape));
    arena.Reset();
    Tensor a = RandomTensor(shape, DType::kF32, rng), b = RandomTensor(shape, DType::kF32, rng);
    Tensor da = Upload(arena, a), db = Upload(arena, b), out = arena.Alloc(shape, DType::kF32);
    cuda::Add(out, da, db, nullptr);
    ExpectBitEqual(Download(out), cpu::Add(a, b), "f32 add");

    // bf16: the f32 sum of the widened operands, rounded once.
    Tensor a16 = a.To(DType::kBF16), b16 = b.To(DType::kBF16);
    Tensor out16 = arena.Alloc(shape, DType::kBF16);
    cuda::Add(out16, Upload(arena, a16), Upload(arena, b16), nullptr);
    ExpectBitEqual(Download(out16), RoundToBf16(cpu::Add(a16.To(DType::kF32), b16.To(DType::kF32))),
                   "bf16 add");
  }
}

TEST(ElementwiseCudaTest, AddInPlaceMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("elementwise_test", size_t{64} << 20);
  for (const Shape& shape : kShapes) {
    SCOPED_TRACE(ShapeString(shape));
    arena.Reset();
    Tensor a = RandomTensor(shape, DType::kF32, rng), b = RandomTensor(shape, DType::kF32, rng);
    Tensor b16 = b.To(DType::kBF16);

    Tensor da = Upload(arena, a);
    cuda::AddInPlace(da, Upload(arena, b), nullptr);
    Tensor want = a.Clone();
    cpu::AddInPlace(want, b);
    ExpectBitEqual(Download(da), want, "f32 += f32");

    Tensor da2 = Upload(arena, a);
    cuda::AddInPlace(da2, Upload(arena, b16), nullptr);
    Tensor want2 = a.Clone();
    cpu::AddInPlace(want2, b16.To(DType::kF32));
    ExpectBitEqual(Download(da2), want2, "f32 += bf16");

    Tensor a16 = a.To(DType::kBF16);
    Tensor da3 = Upload(arena, a16);
    cuda::AddInPlace(da3, Upload(arena, b16), nullptr);
    Tensor want3 = a16.To(DType::kF32);
    cpu::AddInPlace(want3, b16.To(DType::kF32));
    ExpectBitEqual(Download(da3), RoundToBf16(want3), "bf16 += bf16");

    Tensor da4 = Upload(arena, a16);
    cuda::AddInPlace(da4, Upload(arena, b), nullptr);
    Tensor want4 = a16.To(DType::kF32);
    cpu::AddInPlace(want4, b);
    ExpectBitEqual(Download(da4), RoundToBf16(want4), "bf16 += f32 (one rounding)");
  }
}

TEST(ElementwiseCudaTest, ConvertMatchesFloatToBf16BitForBit) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("elementwise_test", size_t{64} << 20);
  // f32 -> bf16 over random bit patterns (NaNs, infinities, denormals, ties) ...
  const int64_t n = 1 << 22;
  Tensor f = Tensor::Empty({n}, DType::kF32);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits = static_cast<uint32_t>(rng());
    if (i % 4 == 1) bits = (bits & 0xFFFF0000u) | 0x8000u;  // exact ties: round to even
    if (i % 4 == 2) bits = (bits & 0xFFFF0000u) | 0x7FFFu;  // just below a tie
    f.data<float>()[i] = BitsFloat(bits);
  }
  Tensor bf = arena.Alloc({n}, DType::kBF16);
  cuda::Convert(bf, Upload(arena, f), nullptr);
  Tensor want = Tensor::Empty({n}, DType::kBF16);
  for (int64_t i = 0; i < n; ++i) want.data<Bf16>()[i] = FloatToBf16(f.data<float>()[i]);
  ExpectBitEqual(Download(bf), want, "f32 -> bf16");

  // ... and bf16 -> f32 over all 65536 patterns (NaN payloads included: widening keeps the bits).
  Tensor all = Tensor::Empty({65536}, DType::kBF16);
  for (int i = 0; i < 65536; ++i) all.data<Bf16>()[i].bits = static_cast<uint16_t>(i);
  Tensor wide = arena.Alloc({65536}, DType::kF32);
  cuda::Convert(wide, Upload(arena, all), nullptr);
  Tensor want_wide = Tensor::Empty({65536}, DType::kF32);
  for (int i = 0; i < 65536; ++i) want_wide.data<float>()[i] = Bf16ToFloat(all.data<Bf16>()[i]);
  ExpectBitEqual(Download(wide), want_wide, "bf16 -> f32");
}

TEST(ElementwiseCudaTest, ConcatAndSplitMatchCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("elementwise_test", size_t{16} << 20);
  struct Case {
    Shape a, b;
  };
  for (const Case& c : {Case{{2, 37, 5}, {2, 37, 11}}, Case{{1, 1}, {1, 1}}, Case{{301, 128}, {301, 1}}}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(ShapeString(c.a) + " + " + ShapeString(c.b) + " " + std::string(DTypeName(dtype)));
      arena.Reset();
      Tensor a = RandomTensor(c.a, DType::kF32, rng).To(dtype),
             b = RandomTensor(c.b, DType::kF32, rng).To(dtype);
      Tensor want = cpu::ConcatLastDim(a, b);
      Tensor out = arena.Alloc(want.shape(), dtype);
      cuda::ConcatLastDim(out, Upload(arena, a), Upload(arena, b), nullptr);
      ExpectBitEqual(Download(out), want, "concat");

      // Split a different random tensor of the concatenated shape.
      Tensor x = RandomTensor(want.shape(), DType::kF32, rng).To(dtype);
      Tensor wa = Tensor::Empty(c.a, dtype), wb = Tensor::Empty(c.b, dtype);
      cpu::SplitLastDim(x, wa, wb);
      Tensor ga = arena.Alloc(c.a, dtype), gb = arena.Alloc(c.b, dtype);
      cuda::SplitLastDim(ga, gb, Upload(arena, x), nullptr);
      ExpectBitEqual(Download(ga), wa, "split a");
      ExpectBitEqual(Download(gb), wb, "split b");
    }
  }
}

TEST(ElementwiseCudaTest, FillAndZero) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("elementwise_test", size_t{4} << 20);
  const double value = std::normal_distribution<double>(0.0, 3.0)(rng);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)) + " value " + std::to_string(value));
    Tensor t = Upload(arena, RandomTensor({1001}, DType::kF32, rng).To(dtype));
    cuda::Fill(t, value, nullptr);
    Tensor want = Tensor::Empty({1001}, DType::kF32);
    want.Fill(value);
    ExpectBitEqual(Download(t), want.To(dtype), "fill");
    cuda::Zero(t, nullptr);
    ExpectBitEqual(Download(t), Tensor::Zeros({1001}, DType::kF32).To(dtype), "zero");
  }
}

}  // namespace
}  // namespace fathom
