// bf16 / fp8 casts: invariants derived by hand (always), and PyTorch's own cast tables bit for bit when
// tests/golden/fp8_casts.safetensors exists (written by tests/golden/make_golden.py on the GPU machine).
#include "framework/numeric.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <random>
#include <string>

#include "checkpoint/safetensors.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

bool IsE4M3NaN(uint8_t c) { return (c & 0x7F) == 0x7F; }
bool IsE5M2NaN(uint8_t c) { return (c & 0x7C) == 0x7C && (c & 0x03) != 0; }
bool IsBf16NaN(uint16_t c) { return (c & 0x7F80) == 0x7F80 && (c & 0x007F) != 0; }

std::string Hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}

uint8_t E4(float f) { return FloatToE4M3(f).bits; }
uint8_t E5(float f) { return FloatToE5M2(f).bits; }

TEST(NumericFp8, E4M3HandDerivedCodes) {
  EXPECT_EQ(E4(0.0f), 0x00);
  EXPECT_EQ(E4(-0.0f), 0x80);
  EXPECT_EQ(E4(1.0f), 0x38);  // exponent 7 = bias, mantissa 0
  EXPECT_EQ(E4(448.0f), 0x7E);
  EXPECT_EQ(E4(464.0f), 0x7E);  // halfway to 480 (mantissa 111, odd): ties to the even 448
  EXPECT_EQ(E4(std::nextafter(464.0f, 0.0f)), 0x7E);
  // Above 464 rounding goes up into S.1111.111, which e4m3fn spends on NaN (PyTorch does the same).
  EXPECT_EQ(E4(std::nextafter(464.0f, 1000.0f)), 0x7F);
  EXPECT_EQ(E4(480.0f), 0x7F);
  EXPECT_EQ(E4(-1e9f), 0xFF);
  EXPECT_EQ(E4(std::numeric_limits<float>::infinity()), 0x7F);
  EXPECT_TRUE(IsE4M3NaN(E4(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(E4M3ToFloat(Fp8E4M3{0x7F})));
  EXPECT_TRUE(std::isnan(E4M3ToFloat(Fp8E4M3{0xFF})));
  EXPECT_EQ(E4M3ToFloat(Fp8E4M3{0x7E}), 448.0f);
  EXPECT_EQ(E4M3ToFloat(Fp8E4M3{0x08}), std::ldexp(1.0f, -6));  // smallest normal
  // Subnormals: steps of 2^-9.
  const float s = std::ldexp(1.0f, -9);
  EXPECT_EQ(E4M3ToFloat(Fp8E4M3{0x01}), s);
  EXPECT_EQ(E4M3ToFloat(Fp8E4M3{0x07}), 7 * s);
  EXPECT_EQ(E4(s), 0x01);
  EXPECT_EQ(E4(0.5f * s), 0x00);  // halfway between 0 and the smallest: ties to even 0
  EXPECT_EQ(E4(std::nextafter(0.5f * s, 1.0f)), 0x01);
  EXPECT_EQ(E4(1.5f * s), 0x02);  // halfway between codes 1 and 2: ties to even 2
  EXPECT_EQ(E4(2.5f * s), 0x02);  // halfway between codes 2 and 3: ties to even 2
  EXPECT_EQ(E4(7.5f * s), 0x08);  // halfway between the largest subnormal and the smallest normal
  EXPECT_EQ(E4(-s), 0x81);
}

TEST(NumericFp8, E5M2HandDerivedCodes) {
  EXPECT_EQ(E5(1.0f), 0x3C);
  EXPECT_EQ(E5(57344.0f), 0x7B);
  EXPECT_EQ(E5(std::nextafter(61440.0f, 0.0f)), 0x7B);
  EXPECT_EQ(E5(61440.0f), 0x7C);  // halfway to 65536 (mantissa 11, odd): ties up, to the infinity code
  EXPECT_EQ(E5(65536.0f), 0x7C);
  EXPECT_EQ(E5(std::numeric_limits<float>::infinity()), 0x7C);
  EXPECT_EQ(E5(-std::numeric_limits<float>::infinity()), 0xFC);
  EXPECT_TRUE(IsE5M2NaN(E5(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isinf(E5M2ToFloat(Fp8E5M2{0x7C})));
  for (uint8_t c : {0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF}) EXPECT_TRUE(std::isnan(E5M2ToFloat(Fp8E5M2{c})));
  const float s = std::ldexp(1.0f, -16);
  EXPECT_EQ(E5M2ToFloat(Fp8E5M2{0x01}), s);
  EXPECT_EQ(E5M2ToFloat(Fp8E5M2{0x04}), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(E5(s), 0x01);
  EXPECT_EQ(E5(0.5f * s), 0x00);
  EXPECT_EQ(E5(std::nextafter(0.5f * s, 1.0f)), 0x01);
  EXPECT_EQ(E5(1.5f * s), 0x02);
  EXPECT_EQ(E5(3.5f * s), 0x04);
}

TEST(NumericFp8, SaturatingVariantsClampToTheLargestFiniteValue) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FloatToE4M3Saturate(470.0f).bits, 0x7E);
  EXPECT_EQ(FloatToE4M3Saturate(1e30f).bits, 0x7E);
  EXPECT_EQ(FloatToE4M3Saturate(inf).bits, 0x7E);
  EXPECT_EQ(FloatToE4M3Saturate(-inf).bits, 0xFE);
  EXPECT_EQ(E4M3ToFloat(FloatToE4M3Saturate(-1e6f)), -448.0f);
  EXPECT_EQ(FloatToE5M2Saturate(61440.0f).bits, 0x7B);
  EXPECT_EQ(FloatToE5M2Saturate(inf).bits, 0x7B);
  EXPECT_EQ(E5M2ToFloat(FloatToE5M2Saturate(-1e30f)), -57344.0f);
  EXPECT_TRUE(IsE4M3NaN(FloatToE4M3Saturate(std::nanf("")).bits));
  EXPECT_TRUE(IsE5M2NaN(FloatToE5M2Saturate(std::nanf("")).bits));
  // Inside the range the saturating casts are the plain ones.
  uint64_t seed = testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-448.0f, 448.0f);
  for (int i = 0; i < 10000; ++i) {
    float x = u(rng);
    ASSERT_EQ(FloatToE4M3Saturate(x).bits, E4(x)) << x;
    ASSERT_EQ(FloatToE5M2Saturate(x * 128).bits, E5(x * 128)) << x * 128;
  }
}

TEST(NumericFp8, CodesRoundTripAndAreOrdered) {
  float previous4 = -1, previous5 = -1;
  for (int c = 0; c < 256; ++c) {
    SCOPED_TRACE("code " + std::to_string(c));
    const uint8_t code = static_cast<uint8_t>(c);
    float v4 = E4M3ToFloat(Fp8E4M3{code});
    if (IsE4M3NaN(code)) {
      EXPECT_TRUE(std::isnan(v4));
      EXPECT_TRUE(IsE4M3NaN(E4(v4)));
    } else {
      EXPECT_EQ(E4(v4), code);
      EXPECT_EQ(std::signbit(v4), c >= 0x80);
      if (c > 0 && c < 0x7F) {
        EXPECT_GT(v4, previous4);  // positive codes increase with their value
      }
      if (c < 0x7F) previous4 = v4;
    }
    float v5 = E5M2ToFloat(Fp8E5M2{code});
    if (IsE5M2NaN(code)) {
      EXPECT_TRUE(std::isnan(v5));
      EXPECT_TRUE(IsE5M2NaN(E5(v5)));
    } else {
      EXPECT_EQ(E5(v5), code);
      if (c > 0 && c <= 0x7C) {
        EXPECT_GT(v5, previous5);
      }
      if (c <= 0x7C) previous5 = v5;
    }
  }
}

TEST(NumericFp8, CastsAreSignSymmetric) {
  uint64_t seed = testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 100000; ++i) {
    const float x = BitsFloat(static_cast<uint32_t>(rng()) & 0x7FFFFFFFu);  // every |x|, NaN included
    ASSERT_EQ(E4(-x), E4(x) | 0x80) << Hex(FloatBits(x));
    ASSERT_EQ(E5(-x), E5(x) | 0x80) << Hex(FloatBits(x));
    if (!std::isnan(x)) {
      ASSERT_EQ(FloatToBf16(-x).bits, FloatToBf16(x).bits | 0x8000) << Hex(FloatBits(x));
    }
  }
}

TEST(NumericBf16, HandDerivedCodes) {
  EXPECT_EQ(FloatToBf16(1.0f).bits, 0x3F80);
  EXPECT_EQ(FloatToBf16(BitsFloat(0x3F808000u)).bits, 0x3F80);  // tie, even stays
  EXPECT_EQ(FloatToBf16(BitsFloat(0x3F818000u)).bits, 0x3F82);  // tie, odd rounds up
  EXPECT_EQ(FloatToBf16(BitsFloat(0x3F808001u)).bits, 0x3F81);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()).bits, 0x7F80);  // rounds to infinity
  EXPECT_EQ(FloatToBf16(-std::numeric_limits<float>::infinity()).bits, 0xFF80);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::quiet_NaN()).bits, 0x7FC0);
  EXPECT_EQ(FloatToBf16(BitsFloat(0x00008000u)).bits, 0x0000);  // the smallest f32 subnormals tie to 0
  EXPECT_EQ(FloatToBf16(BitsFloat(0x00018000u)).bits, 0x0002);
  EXPECT_EQ(Bf16ToFloat(Bf16{0x4049}), BitsFloat(0x40490000u));
}

// PyTorch's tables: every entry bit for bit (NaN: both NaN).
TEST(NumericGolden, MatchesPyTorchCastTablesBitForBit) {
  const std::string path = std::string(FATHOM_SOURCE_DIR) + "/tests/golden/fp8_casts.safetensors";
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " is absent: run tests/golden/make_golden.py on the GPU machine (PyTorch) "
                 << "and commit its output to compare the casts with PyTorch's";
  }
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<Tensor> inputs = f->Get("inputs"), e4m3 = f->Get("e4m3fn"), e5m2 = f->Get("e5m2"),
                         bf16 = f->Get("bf16");
  ASSERT_TRUE(inputs.ok() && e4m3.ok() && e5m2.ok() && bf16.ok()) << "tensors inputs, e4m3fn, e5m2, bf16";
  ASSERT_EQ(inputs->dtype(), DType::kF32);
  const int64_t n = inputs->numel();
  ASSERT_GE(n, 512);
  ASSERT_EQ(e4m3->numel(), n);
  ASSERT_EQ(e5m2->numel(), n);
  ASSERT_EQ(bf16->numel(), n);
  const float* x = inputs->data<float>();
  const int32_t* t4 = e4m3->data<int32_t>();
  const int32_t* t5 = e5m2->data<int32_t>();
  const int32_t* tb = bf16->data<int32_t>();

  int64_t bad4 = 0, bad5 = 0, badb = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t ref4 = static_cast<uint8_t>(t4[i]), ref5 = static_cast<uint8_t>(t5[i]);
    const uint16_t refb = static_cast<uint16_t>(tb[i]);
    const uint8_t got4 = E4(x[i]), got5 = E5(x[i]);
    const uint16_t gotb = FloatToBf16(x[i]).bits;
    if (IsE4M3NaN(ref4) ? !IsE4M3NaN(got4) : got4 != ref4) {
      if (++bad4 <= 10) {
        ADD_FAILURE() << "e4m3fn of " << Hex(FloatBits(x[i])) << " (" << x[i] << "): fathom " << int{got4}
                      << ", PyTorch " << int{ref4};
      }
    }
    if (IsE5M2NaN(ref5) ? !IsE5M2NaN(got5) : got5 != ref5) {
      if (++bad5 <= 10) {
        ADD_FAILURE() << "e5m2 of " << Hex(FloatBits(x[i])) << " (" << x[i] << "): fathom " << int{got5}
                      << ", PyTorch " << int{ref5};
      }
    }
    if (IsBf16NaN(refb) ? !IsBf16NaN(gotb) : gotb != refb) {
      if (++badb <= 10) {
        ADD_FAILURE() << "bf16 of " << Hex(FloatBits(x[i])) << " (" << x[i] << "): fathom " << gotb
                      << ", PyTorch " << refb;
      }
    }
  }
  EXPECT_EQ(bad4, 0) << "of " << n;
  EXPECT_EQ(bad5, 0) << "of " << n;
  EXPECT_EQ(badb, 0) << "of " << n;

  // inputs[0, 256) are PyTorch's decodings of the e4m3fn codes 0..255, inputs[256, 512) of the e5m2 codes.
  for (int c = 0; c < 256; ++c) {
    const float ref4 = x[c], ref5 = x[256 + c];
    const float got4 = E4M3ToFloat(Fp8E4M3{static_cast<uint8_t>(c)});
    const float got5 = E5M2ToFloat(Fp8E5M2{static_cast<uint8_t>(c)});
    if (std::isnan(ref4)) {
      EXPECT_TRUE(std::isnan(got4)) << "e4m3fn code " << c;
    } else {
      EXPECT_EQ(FloatBits(got4), FloatBits(ref4)) << "e4m3fn code " << c;
    }
    if (std::isnan(ref5)) {
      EXPECT_TRUE(std::isnan(got5)) << "e5m2 code " << c;
    } else {
      EXPECT_EQ(FloatBits(got5), FloatBits(ref5)) << "e5m2 code " << c;
    }
    if (!IsE4M3NaN(static_cast<uint8_t>(c))) {
      EXPECT_EQ(t4[c], c) << "the table's first 256 inputs are the e4m3fn codes in order";
    }
  }
}

}  // namespace
}  // namespace fathom
