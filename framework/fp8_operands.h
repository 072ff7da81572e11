// The FP8 operands of the block-scaled GEMMs of train.precision fp8 (the DeepSeek-V3 report's recipe:
// e4m3 values, 1x128 tiles for activations and activation gradients, 128x128 blocks for weights, one f32
// scale per tile or block, f32 accumulation), laid out identically on the CPU (the emulation,
// framework/kernels/cpu/fp8_gemm.h) and the GPU (cuBLASLt's block-scaling modes,
// framework/kernels/cuda/fp8_gemm.h), so that both backends' bytes can be compared.
//
// Quantisation of one tile or block of values x (f32; bf16 widened exactly; f64 rounded to f32 first),
// the formula of framework/kernels/cuda/fp8.h:
//   amax = max(max |x| over the tile, 1e-12)      (NaN does not enter amax)
//   code = FloatToE4M3Saturate(x * (448 / amax))  (448 / amax rounded once to f32, one f32 product)
//   scale = amax / 448                            (rounded to f32); the value is E4M3ToFloat(code) * scale
//
// Every GEMM reduces over a dimension padded to a multiple of 128 with zero codes (exact: a zero code adds
// nothing), so a partial last tile needs no special kernel and every leading dimension is a multiple of
// 16 bytes, as cuBLASLt's FP8 kernels require. Tiles never straddle groups (routed experts): the grouped
// forms take the per-group row counts as a HOST i64 tensor (`counts`, sum = rows), as the bf16 grouped
// GEMMs of framework/ops.h do.
//
// The three operand kinds:
//   Fp8Rows   an activation x (R, K) or gradient dy (R, N) tiled 1x128 along each row: the row-side
//             operand of the forward and the dgrad. One byte tensor (R, Fp8RowBytes(K)): each row holds
//             Fp8Padded(K) e4m3 codes (zero past K), then Fp8ScaleStride(Fp8Blocks(K)) f32 scales (zero
//             past Fp8Blocks(K)). Group-free, so token rows travel through the expert all-to-all as they
//             are (the report's FP8 dispatch: codes and scales in one row).
//   Fp8Cols   the wgrad operands x^T and dy^T: (C, Tp) codes tiled 1x128 along the tokens, each group's
//             tokens padded to a multiple of 128 (Tp = sum over groups of Fp8Padded(rows_g)), and scales
//             (Tp / 128, C): tile t of the padded token axis, column c. Group g owns the columns
//             [off_g, off_g + Fp8Padded(rows_g)) with off_g = the padded sizes of the groups before it.
//   Fp8Weight a weight w (..., N, K) (one matrix or a stack of routed experts) in 128x128 blocks, twice:
//             `w` for the forward (codes (..., N, Fp8Padded(K)), scales (..., Fp8Blocks(N),
//             Fp8ScaleStride(Fp8Blocks(K)))) and `wt`, the same blocks transposed, for the dgrad (codes
//             (..., K, Fp8Padded(N)), scales (..., Fp8Blocks(K), Fp8ScaleStride(Fp8Blocks(N)))). A block's
//             scale is shared by both (the transpose has the same amax). Scale padding is zero.
// The scale strides are those of cuBLASLt's BLK128x128_32F mode (the block-row stride a multiple of 4).
//
// All factories allocate with Tensor::Empty on `device` (CUDA: the current cuda::DevicePool). Not thread
// safe beyond the tensors' own guarantees.
#ifndef FATHOM_FRAMEWORK_FP8_OPERANDS_H_
#define FATHOM_FRAMEWORK_FP8_OPERANDS_H_

#include <cstdint>
#include <vector>

#include "framework/tensor.h"

namespace fathom {

inline constexpr int64_t kFp8Block = 128;
inline constexpr float kFp8E4M3Max = 448.0f;
inline constexpr float kFp8ScaleFloor = 1e-12f;  // the amax floor

inline int64_t Fp8Blocks(int64_t n) { return (n + kFp8Block - 1) / kFp8Block; }
inline int64_t Fp8Padded(int64_t n) { return Fp8Blocks(n) * kFp8Block; }
// A row of block scales padded to a multiple of 4 floats (16 bytes).
inline int64_t Fp8ScaleStride(int64_t blocks) { return (blocks + 3) / 4 * 4; }
// Bytes of one Fp8Rows row of K values: the padded codes, then the padded scales.
inline int64_t Fp8RowBytes(int64_t k) { return Fp8Padded(k) + 4 * Fp8ScaleStride(Fp8Blocks(k)); }

// HOST i64 (1) tensor {rows}: the counts of a dense (single-group) operand.
Tensor Fp8SingleGroup(int64_t rows);
// The counts of a HOST i64 (G) tensor as a vector (FATHOM_CHECK: host, i64, 1-D, no negative count).
std::vector<int64_t> Fp8GroupCounts(const Tensor& counts, const char* op);

struct Fp8Rows {
  Tensor data;       // (R, Fp8RowBytes(cols)) kF8E4M3 storage: codes then f32 scales, per row
  int64_t cols = 0;  // K, the logical width

  static Fp8Rows Empty(int64_t rows, int64_t cols, Device device);
  // A view of `data` (R, Fp8RowBytes(cols)) received from elsewhere (the expert exchange).
  static Fp8Rows Wrap(const Tensor& data, int64_t cols);
  int64_t rows() const { return data.dim(0); }
  int64_t row_bytes() const { return data.dim(1); }
  int64_t padded_cols() const { return Fp8Padded(cols); }
  int64_t blocks() const { return Fp8Blocks(cols); }
  bool defined() const { return data.defined(); }
  size_t nbytes() const { return data.nbytes(); }
};

struct Fp8Cols {
  Tensor codes;   // (C, Tp) e4m3
  Tensor scales;  // (Tp / 128, C) f32
  Tensor counts;  // (G) i64 HOST: the tokens of each group, sum = the rows quantised

  // For x (R, C) grouped by counts (a HOST i64 tensor, copied).
  static Fp8Cols Empty(int64_t cols, const Tensor& counts, Device device);
  int64_t cols() const { return codes.dim(0); }
  int64_t padded_tokens() const { return codes.dim(1); }
  bool defined() const { return codes.defined(); }
};

// 128x128-block codes and scales of one matrix (..., rows, cols) as the GEMM's column operand.
struct Fp8BlockMatrix {
  Tensor codes;   // (..., rows, Fp8Padded(cols)) e4m3
  Tensor scales;  // (..., Fp8Blocks(rows), Fp8ScaleStride(Fp8Blocks(cols))) f32
  int64_t rows = 0, cols = 0;
  int64_t matrices() const { return rows && cols ? codes.numel() / (rows * Fp8Padded(cols)) : 0; }
};

struct Fp8Weight {
  Fp8BlockMatrix w;   // forward: w (..., N, K)
  Fp8BlockMatrix wt;  // dgrad: w^T (..., K, N)

  // For a weight of shape (..., N, K) (2-D or a stack); the scales are zeroed (their padding must be),
  // the codes are left for QuantizeWeight128x128 to fill.
  static Fp8Weight Empty(const Shape& weight_shape, Device device);
  // Bytes Empty allocates for `weight_shape`: the sum of TensorBytes, the sizes of w.codes, w.scales,
  // wt.codes and wt.scales.
  static int64_t Bytes(const Shape& weight_shape);
  static std::vector<int64_t> TensorBytes(const Shape& weight_shape);
};

// ---- Shape contracts shared by both backends (FATHOM_CHECK naming `op`; dtypes and devices are the op
// layer's) --------------------------------------------------------------------------------------------

// q holds `rows` x `cols` packed rows.
void CheckFp8Rows(const char* op, const Fp8Rows& q, int64_t rows, int64_t cols);
// q holds x (R, cols) grouped by its counts (sum = rows).
void CheckFp8Cols(const char* op, const Fp8Cols& q, int64_t rows, int64_t cols);
// q is the Fp8Weight of a weight of `shape`.
void CheckFp8Weight(const char* op, const Fp8Weight& q, const Shape& shape);
// out (R, N) from x (R, K) by w (G, N, K) (or (N, K) with G = 1) over the row groups of counts (G, sum R);
// returns the counts.
std::vector<int64_t> CheckFp8MatmulNT(const char* op, const Tensor& out, const Fp8Rows& x,
                                      const Fp8BlockMatrix& w, const Tensor& counts);
// out (G, M, N) (or (M, N) with G = 1) from a (M, Tp) and b (N, Tp) with equal counts; returns them.
std::vector<int64_t> CheckFp8MatmulTN(const char* op, const Tensor& out, const Fp8Cols& a, const Fp8Cols& b);

}  // namespace fathom

#endif  // FATHOM_FRAMEWORK_FP8_OPERANDS_H_
