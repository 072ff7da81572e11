// fp8 casts and block quantisation on the GPU (framework/kernels/cuda/fp8.h).
//
// Casts and quantisation are integer-exact operations on the same f32 values, so every comparison with
// the CPU (framework/numeric.h and the reference quantiser below) is bit for bit: codes byte-equal, scales
// and dequantised values bit-equal. The only tolerance is the round trip x -> q -> x', stated there.
#include "framework/kernels/cuda/fp8.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "framework/cuda/device_arena.h"
#include "framework/fp8_operands.h"
#include "framework/numeric.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/fp8_exhaustive_support.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using testing::Download;
using testing::TestSeed;
using testing::Upload;

Tensor F32FromBits(const std::vector<uint32_t>& bits) {
  Tensor t = Tensor::Empty({static_cast<int64_t>(bits.size())}, DType::kF32);
  std::memcpy(t.raw(), bits.data(), bits.size() * 4);
  return t;
}

uint8_t Code(const Tensor& t, int64_t i) { return static_cast<const uint8_t*>(t.raw())[i]; }
uint32_t F32Bits(const Tensor& t, int64_t i) { return FloatBits(t.data<float>()[i]); }
uint16_t Bf16Bits(const Tensor& t, int64_t i) { return t.data<Bf16>()[i].bits; }

// The four CPU casts, by format and saturation.
uint8_t CpuCast(float f, bool e4m3, bool saturate) {
  if (e4m3) return saturate ? FloatToE4M3Saturate(f).bits : FloatToE4M3(f).bits;
  return saturate ? FloatToE5M2Saturate(f).bits : FloatToE5M2(f).bits;
}

// Casts `in` (f32 or bf16, on the device) with all four variants and compares every code with the CPU
// cast of the same f32 value. Stops at the first mismatch of each variant (there may be millions).
void CheckAllCasts(cuda::DeviceArena& arena, const Tensor& in_host) {
  Tensor in = Upload(arena, in_host);
  for (bool e4m3 : {true, false}) {
    for (bool saturate : {false, true}) {
      SCOPED_TRACE(std::string(e4m3 ? "e4m3" : "e5m2") + (saturate ? " saturate" : "") + " from " +
                   std::string(DTypeName(in_host.dtype())));
      Tensor out = arena.Alloc(in_host.shape(), e4m3 ? DType::kF8E4M3 : DType::kF8E5M2);
      cuda::CastToFp8(out, in, saturate, nullptr);
      Tensor got = Download(out);
      int64_t mismatches = 0;
      for (int64_t i = 0; i < in_host.numel(); ++i) {
        const float f = static_cast<float>(in_host.Item(i));
        const uint8_t want = CpuCast(f, e4m3, saturate);
        if (Code(got, i) != want && mismatches++ < 5) {
          ADD_FAILURE() << "input bits 0x" << std::hex << FloatBits(f) << ": gpu 0x" << int{Code(got, i)}
                        << " cpu 0x" << int{want};
        }
      }
      EXPECT_EQ(mismatches, 0);
    }
  }
}

TEST(Fp8CudaCast, EveryBf16PatternMatchesCpu) {
  FATHOM_REQUIRE_GPU();
  cuda::DeviceArena arena("fp8_test", size_t{4} << 20);
  Tensor bf = Tensor::Empty({65536}, DType::kBF16);
  for (int i = 0; i < 65536; ++i) bf.data<Bf16>()[i].bits = static_cast<uint16_t>(i);
  CheckAllCasts(arena, bf);  // the bf16 input path
  arena.Reset();
  CheckAllCasts(arena, bf.To(DType::kF32));  // the same values through the f32 input path
}

TEST(Fp8CudaCast, RandomF32PatternsMatchCpu) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> bits;
  // Uniform bit patterns (NaNs, infinities, denormals, everything) ...
  for (int i = 0; i < (1 << 21); ++i) bits.push_back(static_cast<uint32_t>(rng()));
  // ... and patterns with exponents inside and around both fp8 ranges, where the rounding happens.
  std::uniform_int_distribution<uint32_t> exp(127 - 30, 127 + 18), mant(0, (1u << 23) - 1), sign(0, 1);
  for (int i = 0; i < (1 << 21); ++i) bits.push_back(sign(rng) << 31 | exp(rng) << 23 | mant(rng));
  // Exact midpoints between neighbouring codes and their f32 neighbours: the ties-to-even cases.
  for (uint32_t c = 0; c < 0x7E; ++c) {
    for (bool e4m3 : {true, false}) {
      const float lo = e4m3 ? E4M3ToFloat(Fp8E4M3{static_cast<uint8_t>(c)})
                            : E5M2ToFloat(Fp8E5M2{static_cast<uint8_t>(c)});
      const float hi = e4m3 ? E4M3ToFloat(Fp8E4M3{static_cast<uint8_t>(c + 1)})
                            : E5M2ToFloat(Fp8E5M2{static_cast<uint8_t>(c + 1)});
      if (!std::isfinite(hi)) continue;
      const uint32_t mid = FloatBits(0.5f * (lo + hi));
      for (uint32_t b : {mid - 1, mid, mid + 1}) {
        bits.push_back(b);
        bits.push_back(b | 0x80000000u);
      }
    }
  }
  cuda::DeviceArena arena("fp8_test", size_t{48} << 20);
  CheckAllCasts(arena, F32FromBits(bits));
}

// The quantisers' e4m3 conversion is one hardware instruction on Hopper; it must give the integer path's
// code (the CPU's, which the tests above compare) for every f32 input, all 2^32 of them.
TEST(Fp8CudaCast, HardwareSaturatingE4M3EqualsTheIntegerPathForEveryF32) {
  FATHOM_REQUIRE_GPU();
  const testing::ConversionMismatches m = testing::SaturatingE4M3Mismatches(0, uint64_t{1} << 32);
  for (uint32_t bits : m.examples) {
    const float f = BitsFloat(bits);
    ADD_FAILURE() << "input bits 0x" << std::hex << bits << " (" << f << "): the CPU's code 0x"
                  << int{FloatToE4M3Saturate(f).bits};
  }
  EXPECT_EQ(m.count, 0u);
}

TEST(Fp8CudaCast, DecodeAll256Codes) {
  FATHOM_REQUIRE_GPU();
  cuda::DeviceArena arena("fp8_test", size_t{1} << 20);
  for (bool e4m3 : {true, false}) {
    SCOPED_TRACE(e4m3 ? "e4m3" : "e5m2");
    Tensor codes = Tensor::Empty({256}, e4m3 ? DType::kF8E4M3 : DType::kF8E5M2);
    for (int i = 0; i < 256; ++i) static_cast<uint8_t*>(codes.raw())[i] = static_cast<uint8_t>(i);
    Tensor dc = Upload(arena, codes);
    Tensor f32 = arena.Alloc({256}, DType::kF32), bf16 = arena.Alloc({256}, DType::kBF16);
    cuda::CastFromFp8(f32, dc, nullptr);
    cuda::CastFromFp8(bf16, dc, nullptr);
    Tensor got32 = Download(f32), got16 = Download(bf16);
    for (int i = 0; i < 256; ++i) {
      const float want = e4m3 ? E4M3ToFloat(Fp8E4M3{static_cast<uint8_t>(i)})
                              : E5M2ToFloat(Fp8E5M2{static_cast<uint8_t>(i)});
      EXPECT_EQ(F32Bits(got32, i), FloatBits(want)) << "code " << i;
      EXPECT_EQ(Bf16Bits(got16, i), FloatToBf16(want).bits) << "code " << i;
    }
  }
}

// ---- block quantisation: the CPU reference of the header's formula ----

struct Quantized {
  std::vector<uint8_t> q;
  std::vector<float> scales;
};

// Quantises the elements listed by `index` (flat indices into x) as one tile: returns the scale and
// writes the codes at the same indices.
float QuantizeTile(const std::vector<float>& x, const std::vector<int64_t>& index, std::vector<uint8_t>& q) {
  float amax = 0.0f;
  for (int64_t i : index) amax = std::fmax(amax, std::fabs(x[i]));
  amax = std::fmax(amax, kFp8ScaleFloor);
  const float inv = 448.0f / amax;
  for (int64_t i : index) q[i] = FloatToE4M3Saturate(x[i] * inv).bits;
  return amax / 448.0f;
}

std::vector<float> HostFloats(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = static_cast<float>(t.Item(i));
  return v;
}

// x (T, H): scales (ceil(H/128), T).
Quantized CpuActivation1x128(const Tensor& x) {
  const int64_t rows = x.dim(0), cols = x.dim(1), tiles = (cols + 127) / 128;
  std::vector<float> v = HostFloats(x);
  Quantized out{std::vector<uint8_t>(v.size()), std::vector<float>(static_cast<size_t>(tiles * rows))};
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < tiles; ++t) {
      std::vector<int64_t> index;
      for (int64_t c = t * 128; c < std::min(cols, t * 128 + 128); ++c) index.push_back(r * cols + c);
      out.scales[t * rows + r] = QuantizeTile(v, index, out.q);
    }
  }
  return out;
}

// w (M, N, K): scales (M, ceil(N/128), ceil(K/128)).
Quantized CpuWeight128x128(const Tensor& w, int64_t matrices, int64_t rows, int64_t cols) {
  const int64_t rb = (rows + 127) / 128, cb = (cols + 127) / 128;
  std::vector<float> v = HostFloats(w);
  Quantized out{std::vector<uint8_t>(v.size()), std::vector<float>(static_cast<size_t>(matrices * rb * cb))};
  for (int64_t m = 0; m < matrices; ++m) {
    for (int64_t br = 0; br < rb; ++br) {
      for (int64_t bc = 0; bc < cb; ++bc) {
        std::vector<int64_t> index;
        for (int64_t r = br * 128; r < std::min(rows, br * 128 + 128); ++r) {
          for (int64_t c = bc * 128; c < std::min(cols, bc * 128 + 128); ++c) {
            index.push_back((m * rows + r) * cols + c);
          }
        }
        out.scales[(m * rb + br) * cb + bc] = QuantizeTile(v, index, out.q);
      }
    }
  }
  return out;
}

// Compares the device codes and scales bit for bit with the CPU reference, then dequantises both ways
// (f32 and bf16 outputs) and compares with the reference dequantisation; returns the f32 dequantisation.
template <class Dequantize>
Tensor CheckQuantized(const Quantized& ref, const Tensor& dq, const Tensor& dscales, Dequantize&& dequantize,
                      cuda::DeviceArena& arena) {
  Tensor q = Download(dq), s = Download(dscales);
  int64_t bad = 0;
  for (int64_t i = 0; i < q.numel(); ++i) {
    if (Code(q, i) != ref.q[i] && bad++ < 5) ADD_FAILURE() << "code " << i;
  }
  EXPECT_EQ(bad, 0);
  for (int64_t i = 0; i < s.numel(); ++i) EXPECT_EQ(F32Bits(s, i), FloatBits(ref.scales[i])) << "scale " << i;
  Tensor out32 = arena.Alloc(dq.shape(), DType::kF32), out16 = arena.Alloc(dq.shape(), DType::kBF16);
  dequantize(out32, dq, dscales);
  dequantize(out16, dq, dscales);
  Tensor x32 = Download(out32), x16 = Download(out16);
  bad = 0;
  for (int64_t i = 0; i < x32.numel(); ++i) {
    if (Bf16Bits(x16, i) != FloatToBf16(x32.data<float>()[i]).bits && bad++ < 5) {
      ADD_FAILURE() << "bf16 output, element " << i;
    }
  }
  EXPECT_EQ(bad, 0);
  return x32;
}

// Round trip: e4m3 keeps 3 mantissa bits, so each element within amax/2^8 of the tile's range is off by at
// most 2^-4 relative (nearest rounding: half an ulp of 2^-3); smaller elements land on subnormal codes
// whose absolute error is below the tile's amax * 2^-10. In norm both stay below 2^-4 of ||x||.
void ExpectRoundTrip(const Tensor& x_host, const Tensor& back) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < x_host.numel(); ++i) {
    const double d = back.Item(i) - x_host.Item(i);
    diff += d * d;
    norm += x_host.Item(i) * x_host.Item(i);
  }
  ASSERT_GT(norm, 0.0);
  EXPECT_LE(std::sqrt(diff / norm), 1.0 / 16);
}

// Normal values with a wide spread of magnitudes across tiles (x 2^-20 .. 2^10), an all-zero row (the
// amax floor) and an outlier, so the per-tile scales genuinely differ.
Tensor TestValues(const Shape& shape, DType dtype, std::mt19937_64& rng) {
  Tensor t = Tensor::Empty(shape, DType::kF32);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> octave(-20, 10);
  const int64_t cols = shape.back();
  float scale = 1.0f;
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (i % 128 == 0) scale = std::ldexp(1.0f, octave(rng));
    t.data<float>()[i] = i < cols ? 0.0f : nd(rng) * scale;
  }
  t.data<float>()[t.numel() / 2] = 3.0e5f;
  return dtype == DType::kF32 ? t : t.To(dtype);
}

TEST(Fp8CudaQuant, Activation1x128MatchesCpuReference) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("fp8_test", size_t{32} << 20);
  struct Case {
    int64_t t, h;
  };
  for (Case c : {Case{300, 200}, Case{129, 512}, Case{1, 7}, Case{77, 1000}}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE("T " + std::to_string(c.t) + " H " + std::to_string(c.h) + " " +
                   std::string(DTypeName(dtype)));
      arena.Reset();
      Tensor x = TestValues({c.t, c.h}, dtype, rng);
      Tensor dx = Upload(arena, x);
      Tensor dq = arena.Alloc({c.t, c.h}, DType::kF8E4M3);
      Tensor ds = arena.Alloc({(c.h + 127) / 128, c.t}, DType::kF32);
      cuda::QuantizeActivation1x128(dq, ds, dx, nullptr);
      Quantized ref = CpuActivation1x128(x);
      Tensor back = CheckQuantized(
          ref, dq, ds,
          [](const Tensor& o, const Tensor& q, const Tensor& s) {
            cuda::DequantizeActivation1x128(o, q, s, nullptr);
          },
          arena);
      // Dequantisation reference: code * scale of the element's (row, tile).
      for (int64_t i = 0; i < back.numel(); ++i) {
        const float want = E4M3ToFloat(Fp8E4M3{ref.q[i]}) * ref.scales[(i % c.h) / 128 * c.t + i / c.h];
        ASSERT_EQ(F32Bits(back, i), FloatBits(want)) << "element " << i;
      }
      ExpectRoundTrip(x, back);
    }
  }
}

TEST(Fp8CudaQuant, Weight128x128MatchesCpuReference) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cuda::DeviceArena arena("fp8_test", size_t{32} << 20);
  for (Shape shape : {Shape{300, 200}, Shape{256, 384}, Shape{3, 130, 70}, Shape{1, 1}}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(ShapeString(shape) + " " + std::string(DTypeName(dtype)));
      arena.Reset();
      const int64_t rows = shape[shape.size() - 2], cols = shape.back();
      const int64_t matrices = NumElements(shape) / (rows * cols);
      Shape scale_shape = shape;
      scale_shape[shape.size() - 2] = (rows + 127) / 128;
      scale_shape.back() = (cols + 127) / 128;
      Tensor w = TestValues(shape, dtype, rng);
      Tensor dw = Upload(arena, w);
      Tensor dq = arena.Alloc(shape, DType::kF8E4M3);
      Tensor ds = arena.Alloc(scale_shape, DType::kF32);
      cuda::QuantizeWeight128x128(dq, ds, dw, nullptr);
      Quantized ref = CpuWeight128x128(w, matrices, rows, cols);
      Tensor back = CheckQuantized(
          ref, dq, ds,
          [](const Tensor& o, const Tensor& q, const Tensor& s) {
            cuda::DequantizeWeight128x128(o, q, s, nullptr);
          },
          arena);
      const int64_t rb = (rows + 127) / 128, cb = (cols + 127) / 128;
      for (int64_t i = 0; i < back.numel(); ++i) {
        const int64_t m = i / (rows * cols), r = i % (rows * cols) / cols, c = i % cols;
        const float want = E4M3ToFloat(Fp8E4M3{ref.q[i]}) * ref.scales[(m * rb + r / 128) * cb + c / 128];
        ASSERT_EQ(F32Bits(back, i), FloatBits(want)) << "element " << i;
      }
      ExpectRoundTrip(w, back);
    }
  }
}

}  // namespace
}  // namespace fathom
