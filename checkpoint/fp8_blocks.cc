#include "checkpoint/fp8_blocks.h"

#include <algorithm>
#include <cmath>

#include "framework/check.h"
#include "framework/numeric.h"

namespace fathom {

Shape Fp8ScaleShape(int64_t rows, int64_t cols) {
  return {(rows + kFp8BlockSize - 1) / kFp8BlockSize, (cols + kFp8BlockSize - 1) / kFp8BlockSize};
}

void QuantizeE4M3Blocks(const float* w, int64_t rows, int64_t cols, uint8_t* q, float* scale_inv) {
  const Shape grid = Fp8ScaleShape(rows, cols);
  for (int64_t br = 0; br < grid[0]; ++br) {
    const int64_t r0 = br * kFp8BlockSize, r1 = std::min(rows, r0 + kFp8BlockSize);
    for (int64_t bc = 0; bc < grid[1]; ++bc) {
      const int64_t c0 = bc * kFp8BlockSize, c1 = std::min(cols, c0 + kFp8BlockSize);
      float amax = 0;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) {
          const float v = w[r * cols + c];
          FATHOM_CHECK(std::isfinite(v), "[QuantizeE4M3Blocks] non-finite value ", v, " at (", r, ", ", c,
                       ")");
          amax = std::max(amax, std::fabs(v));
        }
      }
      // s = amax / 448 maps the block's largest magnitude to e4m3's largest finite value. A zero s (an
      // all-zero block, or an amax that underflows) would divide by zero: every value then rounds to 0 at
      // any scale, and 1 keeps the file free of zeros that a loader might divide by.
      float s = amax / kE4M3Max;
      if (s == 0) s = 1;
      scale_inv[br * grid[1] + bc] = s;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) q[r * cols + c] = FloatToE4M3Saturate(w[r * cols + c] / s).bits;
      }
    }
  }
}

void DequantizeE4M3Blocks(const uint8_t* q, int64_t begin, int64_t count, int64_t cols,
                          const float* scale_inv, float* out) {
  const int64_t grid_cols = (cols + kFp8BlockSize - 1) / kFp8BlockSize;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t flat = begin + i, r = flat / cols, c = flat % cols;
    out[i] = E4M3ToFloat(Fp8E4M3{q[i]}) * scale_inv[(r / kFp8BlockSize) * grid_cols + c / kFp8BlockSize];
  }
}

}  // namespace fathom
