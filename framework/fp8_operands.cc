#include "framework/fp8_operands.h"

#include <utility>

namespace fathom {
namespace {

// (..., rows, cols) -> (..., rows', cols') with the last two dimensions replaced.
Shape WithLastTwo(const Shape& s, int64_t rows, int64_t cols) {
  Shape out = s;
  out[out.size() - 2] = rows;
  out[out.size() - 1] = cols;
  return out;
}

Fp8BlockMatrix EmptyBlocks(const Shape& shape, Device device) {
  const int64_t rows = shape[shape.size() - 2], cols = shape.back();
  Fp8BlockMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.codes = Tensor::Empty(WithLastTwo(shape, rows, Fp8Padded(cols)), DType::kF8E4M3, device);
  m.scales = Tensor::Zeros(WithLastTwo(shape, Fp8Blocks(rows), Fp8ScaleStride(Fp8Blocks(cols))), DType::kF32,
                           device);
  return m;
}

// Bytes of the codes and of the scales of a block matrix of `shape`.
std::pair<int64_t, int64_t> BlockBytes(const Shape& shape) {
  const int64_t rows = shape[shape.size() - 2], cols = shape.back();
  const int64_t matrices = rows * cols != 0 ? NumElements(shape) / (rows * cols) : 0;
  return {matrices * rows * Fp8Padded(cols),
          matrices * 4 * Fp8Blocks(rows) * Fp8ScaleStride(Fp8Blocks(cols))};
}

Shape Transposed(const Shape& shape) {
  Shape t = shape;
  std::swap(t[t.size() - 1], t[t.size() - 2]);
  return t;
}

}  // namespace

Tensor Fp8SingleGroup(int64_t rows) {
  Tensor t = Tensor::Empty({1}, DType::kI64);
  t.data<int64_t>()[0] = rows;
  return t;
}

std::vector<int64_t> Fp8GroupCounts(const Tensor& counts, const char* op) {
  FATHOM_CHECK(counts.defined() && counts.device() == Device::kCPU && counts.dtype() == DType::kI64 &&
                   counts.ndim() == 1,
               "[", op, "] counts must be a HOST (G) i64 tensor, got ", counts.shape_str(), " ",
               DTypeName(counts.dtype()), " on ", DeviceName(counts.device()));
  std::vector<int64_t> v(counts.data<int64_t>(), counts.data<int64_t>() + counts.numel());
  for (int64_t c : v) FATHOM_CHECK(c >= 0, "[", op, "] negative group count ", c);
  return v;
}

Fp8Rows Fp8Rows::Empty(int64_t rows, int64_t cols, Device device) {
  FATHOM_CHECK(rows >= 0 && cols > 0, "[fp8_rows] ", rows, " rows of width ", cols);
  return {Tensor::Empty({rows, Fp8RowBytes(cols)}, DType::kF8E4M3, device), cols};
}

Fp8Rows Fp8Rows::Wrap(const Tensor& data, int64_t cols) {
  FATHOM_CHECK(
      cols > 0 && data.ndim() == 2 && data.dtype() == DType::kF8E4M3 && data.dim(1) == Fp8RowBytes(cols),
      "[fp8_rows] ", data.shape_str(), " ", DTypeName(data.dtype()), " is not packed FP8 rows of width ",
      cols, " (expected e4m3 (R, ", Fp8RowBytes(cols), "))");
  return {data, cols};
}

Fp8Cols Fp8Cols::Empty(int64_t cols, const Tensor& counts, Device device) {
  int64_t padded = 0;
  for (int64_t c : Fp8GroupCounts(counts, "fp8_cols")) padded += Fp8Padded(c);
  Fp8Cols q;
  q.codes = Tensor::Empty({cols, padded}, DType::kF8E4M3, device);
  q.scales = Tensor::Empty({padded / kFp8Block, cols}, DType::kF32, device);
  q.counts = counts.Clone();
  return q;
}

Fp8Weight Fp8Weight::Empty(const Shape& weight_shape, Device device) {
  FATHOM_CHECK(weight_shape.size() >= 2, "[fp8_weight] weight shape ", ShapeString(weight_shape));
  return {EmptyBlocks(weight_shape, device), EmptyBlocks(Transposed(weight_shape), device)};
}

std::vector<int64_t> Fp8Weight::TensorBytes(const Shape& weight_shape) {
  FATHOM_CHECK(weight_shape.size() >= 2, "[fp8_weight] weight shape ", ShapeString(weight_shape));
  const auto [codes, scales] = BlockBytes(weight_shape);
  const auto [codes_t, scales_t] = BlockBytes(Transposed(weight_shape));
  return {codes, scales, codes_t, scales_t};
}

int64_t Fp8Weight::Bytes(const Shape& weight_shape) {
  int64_t sum = 0;
  for (int64_t b : TensorBytes(weight_shape)) sum += b;
  return sum;
}

void CheckFp8Rows(const char* op, const Fp8Rows& q, int64_t rows, int64_t cols) {
  FATHOM_CHECK(q.defined() && q.cols == cols && q.data.ndim() == 2 && q.data.dtype() == DType::kF8E4M3 &&
                   q.rows() == rows && q.row_bytes() == Fp8RowBytes(cols),
               "[", op, "] fp8 rows ", q.data.shape_str(), " of width ", q.cols, ", expected (", rows, ", ",
               Fp8RowBytes(cols), ") e4m3 of width ", cols);
}

void CheckFp8Cols(const char* op, const Fp8Cols& q, int64_t rows, int64_t cols) {
  int64_t sum = 0, padded = 0;
  for (int64_t c : Fp8GroupCounts(q.counts, op)) sum += c, padded += Fp8Padded(c);
  FATHOM_CHECK(sum == rows, "[", op, "] fp8 columns grouped for ", sum, " rows, the input has ", rows);
  FATHOM_CHECK(q.codes.dtype() == DType::kF8E4M3 && q.codes.shape() == Shape({cols, padded}) &&
                   q.scales.dtype() == DType::kF32 && q.scales.shape() == Shape({padded / kFp8Block, cols}),
               "[", op, "] fp8 columns codes ", q.codes.shape_str(), " ", DTypeName(q.codes.dtype()),
               " scales ", q.scales.shape_str(), " ", DTypeName(q.scales.dtype()), ", expected e4m3 (", cols,
               ", ", padded, ") and f32 (", padded / kFp8Block, ", ", cols, ")");
}

void CheckFp8Weight(const char* op, const Fp8Weight& q, const Shape& shape) {
  FATHOM_CHECK(shape.size() >= 2, "[", op, "] weight shape ", ShapeString(shape));
  auto check = [&](const Fp8BlockMatrix& m, const Shape& s, const char* which) {
    const int64_t rows = s[s.size() - 2], cols = s.back();
    const Shape codes = WithLastTwo(s, rows, Fp8Padded(cols));
    const Shape scales = WithLastTwo(s, Fp8Blocks(rows), Fp8ScaleStride(Fp8Blocks(cols)));
    FATHOM_CHECK(m.rows == rows && m.cols == cols && m.codes.dtype() == DType::kF8E4M3 &&
                     m.codes.shape() == codes && m.scales.dtype() == DType::kF32 &&
                     m.scales.shape() == scales,
                 "[", op, "] fp8 weight (", which, ") codes ", m.codes.shape_str(), " scales ",
                 m.scales.shape_str(), " of ", m.rows, " x ", m.cols, ", expected e4m3 ", ShapeString(codes),
                 " and f32 ", ShapeString(scales));
  };
  check(q.w, shape, "forward");
  check(q.wt, Transposed(shape), "transposed");
}

std::vector<int64_t> CheckFp8MatmulNT(const char* op, const Tensor& out, const Fp8Rows& x,
                                      const Fp8BlockMatrix& w, const Tensor& counts) {
  std::vector<int64_t> groups = Fp8GroupCounts(counts, op);
  int64_t sum = 0;
  for (int64_t c : groups) sum += c;
  const int64_t matrices = w.codes.ndim() == 2 ? 1 : w.codes.ndim() == 3 ? w.codes.dim(0) : -1;
  FATHOM_CHECK(x.defined() && w.codes.defined() && matrices == static_cast<int64_t>(groups.size()) &&
                   x.cols == w.cols && x.row_bytes() == Fp8RowBytes(x.cols),
               "[", op, "] x ", x.data.shape_str(), " of width ", x.cols, ", weight codes ",
               w.codes.shape_str(), " (", w.rows, " x ", w.cols, "), ", groups.size(),
               " groups: widths must agree and the weight hold "
               "one matrix per group");
  FATHOM_CHECK(
      out.defined() && out.ndim() == 2 && out.dim(0) == x.rows() && out.dim(1) == w.rows && sum == x.rows(),
      "[", op, "] out ", out.shape_str(), " for x of ", x.rows(), " rows (groups sum to ", sum, ") and ",
      w.rows, " output columns");
  return groups;
}

std::vector<int64_t> CheckFp8MatmulTN(const char* op, const Tensor& out, const Fp8Cols& a, const Fp8Cols& b) {
  std::vector<int64_t> groups = Fp8GroupCounts(a.counts, op);
  FATHOM_CHECK(groups == Fp8GroupCounts(b.counts, op) && a.padded_tokens() == b.padded_tokens(), "[", op,
               "] the two operands are grouped differently: ", a.counts.numel(), " and ", b.counts.numel(),
               " groups, ", a.padded_tokens(), " and ", b.padded_tokens(), " padded tokens");
  const int64_t g = static_cast<int64_t>(groups.size());
  const bool shape_ok =
      out.defined() &&
      ((out.ndim() == 3 && out.dim(0) == g && out.dim(1) == a.cols() && out.dim(2) == b.cols()) ||
       (out.ndim() == 2 && g == 1 && out.dim(0) == a.cols() && out.dim(1) == b.cols()));
  FATHOM_CHECK(shape_ok, "[", op, "] out ", out.shape_str(), " for ", g, " groups of (", a.cols(), ", ",
               b.cols(), ")");
  return groups;
}

}  // namespace fathom
