// FP8 weights with 128x128 block scales, as DeepSeek-V3's release stores its Linear weights: an e4m3fn
// matrix (rows, cols) and an f32 matrix `weight_scale_inv` of shape (ceil(rows/128), ceil(cols/128)), one
// scale per block (edge blocks are partial), and
//   dequantized[r, c] = e4m3_to_f32(q[r, c]) * scale_inv[r / 128, c / 128].
//
// Quantization (fathom's export): per block, s = amax / 448 where amax = max |w| over the block (s = 1 for
// an all-zero block, or when amax is so small that amax / 448 underflows to 0), q = e4m3fn(w / s) rounded
// to nearest even and saturated to +-448 (framework/numeric.h, PyTorch-exact), scale_inv = s. The
// dequantized value is then within about half an e4m3 ulp of w: relative 2^-4 for values the block's
// scale keeps normal, absolute s * 2^-10 below. Dequantization is one IEEE f32 multiplication, as
// `q.to(torch.float32) * scale_inv` in PyTorch, so Dequantize(Quantize(w)) is a function of w alone, the
// same on every machine.
//
// Pure functions on host memory; thread safe. REQUIRES (checked): finite inputs to the quantizer.
#ifndef FATHOM_CHECKPOINT_FP8_BLOCKS_H_
#define FATHOM_CHECKPOINT_FP8_BLOCKS_H_

#include <cstdint>

#include "framework/tensor.h"

namespace fathom {

inline constexpr int64_t kFp8BlockSize = 128;

// (ceil(rows / 128), ceil(cols / 128)).
Shape Fp8ScaleShape(int64_t rows, int64_t cols);

// Quantizes `rows` rows of a row-major matrix with `cols` columns: w (rows x cols) f32 -> q (rows x cols)
// e4m3fn codes and scale_inv (ceil(rows/128) x ceil(cols/128)) f32. A matrix quantized in bands of rows
// whose first row is a multiple of 128 gives the same codes and scales as the whole matrix at once, the
// bands' scale rows stacked. REQUIRES: every w finite.
void QuantizeE4M3Blocks(const float* w, int64_t rows, int64_t cols, uint8_t* q, float* scale_inv);

// out[i] for the flat elements [begin, begin + count) of a (rows x cols) e4m3fn matrix whose codes
// q[0 .. count) hold those elements, with the whole matrix's scale_inv (ceil(rows/128) x ceil(cols/128)).
void DequantizeE4M3Blocks(const uint8_t* q, int64_t begin, int64_t count, int64_t cols,
                          const float* scale_inv, float* out);

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_FP8_BLOCKS_H_
