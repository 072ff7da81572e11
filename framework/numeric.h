// Scalar storage formats and their conversions.
//
// bf16: round-to-nearest-even from f32, NaN -> 0x7FC0 (as PyTorch's c10::BFloat16).
// fp8 e4m3fn: 4 exponent bits (bias 7), 3 mantissa bits, no infinities, NaN = S.1111.111, max 448.
// fp8 e5m2: 5 exponent bits (bias 15), 2 mantissa bits, IEEE-like infinities, max 57344.
// The f32 -> fp8 casts round to nearest even and treat out-of-range values exactly as PyTorch's
// `tensor.to(torch.float8_e4m3fn)` / `.to(torch.float8_e5m2)`: e4m3fn turns |x| >= 480 (and inf) into
// NaN, e5m2 turns |x| >= 65536 into inf. The *Saturate variants clamp to +-max first, which is what
// block-scaled quantizers want (tests/framework/numeric_test.cc pins both against PyTorch's tables).
#ifndef FATHOM_FRAMEWORK_NUMERIC_H_
#define FATHOM_FRAMEWORK_NUMERIC_H_

#include <cstdint>
#include <cstring>

namespace fathom {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Bf16 {
  uint16_t bits;
};
struct Fp8E4M3 {
  uint8_t bits;
};
struct Fp8E5M2 {
  uint8_t bits;
};

inline Bf16 FloatToBf16(float f) {
  uint32_t u = FloatBits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return Bf16{0x7FC0};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return Bf16{static_cast<uint16_t>(u >> 16)};
}
inline float Bf16ToFloat(Bf16 b) { return BitsFloat(static_cast<uint32_t>(b.bits) << 16); }

namespace numeric_detail {

// Rounds |x| (bits `a`, below the format's overflow threshold) to a format with `kMant` mantissa bits and
// exponent bias `kBias`, nearest-even, returning the unsigned code. Subnormals are rounded by the FPU:
// adding 2^(1-bias+23-mant) places the format's subnormal step exactly at the f32 ulp.
template <int kMant, int kBias>
inline uint32_t RoundToSmallFloat(uint32_t a) {
  constexpr uint32_t kMinNormal = static_cast<uint32_t>(127 - kBias + 1) << 23;
  if (a < kMinNormal) {
    constexpr uint32_t kMagic = static_cast<uint32_t>((127 - kBias) + (23 - kMant) + 1) << 23;
    float sum = BitsFloat(a) + BitsFloat(kMagic);
    return FloatBits(sum) - kMagic;
  }
  constexpr int kShift = 23 - kMant;
  uint32_t odd = (a >> kShift) & 1u;
  a += (static_cast<uint32_t>(kBias - 127) << 23) + ((1u << (kShift - 1)) - 1u) + odd;
  return a >> kShift;
}

}  // namespace numeric_detail

inline Fp8E4M3 FloatToE4M3(float f) {
  uint32_t u = FloatBits(f);
  uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  uint32_t a = u & 0x7FFFFFFFu;
  if (a >= 0x43F00000u) return Fp8E4M3{static_cast<uint8_t>(sign | 0x7F)};  // >= 480, inf, NaN
  return Fp8E4M3{static_cast<uint8_t>(sign | numeric_detail::RoundToSmallFloat<3, 7>(a))};
}

inline Fp8E5M2 FloatToE5M2(float f) {
  uint32_t u = FloatBits(f);
  uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return Fp8E5M2{static_cast<uint8_t>(sign | 0x7F)};   // NaN
  if (a >= 0x47800000u) return Fp8E5M2{static_cast<uint8_t>(sign | 0x7C)};  // >= 65536 -> inf
  return Fp8E5M2{static_cast<uint8_t>(sign | numeric_detail::RoundToSmallFloat<2, 15>(a))};
}

inline constexpr float kE4M3Max = 448.0f;
inline constexpr float kE5M2Max = 57344.0f;

inline float ClampAbs(float f, float max) {
  if (f != f) return f;
  return f > max ? max : (f < -max ? -max : f);
}
inline Fp8E4M3 FloatToE4M3Saturate(float f) { return FloatToE4M3(ClampAbs(f, kE4M3Max)); }
inline Fp8E5M2 FloatToE5M2Saturate(float f) { return FloatToE5M2(ClampAbs(f, kE5M2Max)); }

inline float E4M3ToFloat(Fp8E4M3 v) {
  uint32_t sign = static_cast<uint32_t>(v.bits & 0x80) << 24;
  uint32_t exp = (v.bits >> 3) & 0xF, mant = v.bits & 0x7;
  if (exp == 0xF && mant == 0x7) return BitsFloat(sign | 0x7FC00000u);
  float mag = exp == 0 ? static_cast<float>(mant) * (1.0f / 512.0f)
                       : BitsFloat(((exp + 127 - 7) << 23) | (mant << 20));
  return BitsFloat(sign | FloatBits(mag));
}

inline float E5M2ToFloat(Fp8E5M2 v) {
  // e5m2 is the top byte of an IEEE half; widen through the half layout.
  uint32_t sign = static_cast<uint32_t>(v.bits & 0x80) << 24;
  uint32_t exp = (v.bits >> 2) & 0x1F, mant = v.bits & 0x3;
  if (exp == 0x1F) return BitsFloat(sign | 0x7F800000u | (mant ? 0x400000u : 0u));
  float mag = exp == 0 ? static_cast<float>(mant) * (1.0f / 65536.0f)
                       : BitsFloat(((exp + 127 - 15) << 23) | (mant << 21));
  return BitsFloat(sign | FloatBits(mag));
}

}  // namespace fathom

#endif  // FATHOM_FRAMEWORK_NUMERIC_H_
