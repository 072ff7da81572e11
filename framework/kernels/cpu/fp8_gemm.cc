#include "framework/kernels/cpu/fp8_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "framework/numeric.h"

namespace fathom::cpu {
namespace {

uint8_t* Bytes(const Tensor& t) { return static_cast<uint8_t*>(t.raw()); }

float Decode(uint8_t code) { return E4M3ToFloat(Fp8E4M3{code}); }

// The scale of values v[0..n) and their codes, written through code_at(i) (framework/fp8_operands.h's
// formula; std::fmax drops NaN as the GPU's fmaxf does).
template <class CodeAt>
float QuantizeTile(const float* v, int64_t n, CodeAt&& code_at) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(v[i]));
  amax = std::fmax(amax, kFp8ScaleFloor);
  const float inv = kFp8E4M3Max / amax;
  for (int64_t i = 0; i < n; ++i) code_at(i) = FloatToE4M3Saturate(v[i] * inv).bits;
  return amax / kFp8E4M3Max;
}

// Packed-row access (framework/fp8_operands.h: codes, then the f32 scales).
uint8_t* RowCodes(const Fp8Rows& q, int64_t r) { return Bytes(q.data) + r * q.row_bytes(); }
float RowScale(const Fp8Rows& q, int64_t r, int64_t kb) {
  float s;
  std::memcpy(&s, RowCodes(q, r) + q.padded_cols() + 4 * kb, 4);
  return s;
}
void SetRowScale(const Fp8Rows& q, int64_t r, int64_t kb, float s) {
  std::memcpy(RowCodes(q, r) + q.padded_cols() + 4 * kb, &s, 4);
}

void CheckFloat(const char* op, const Tensor& t, const char* name) {
  FATHOM_CHECK(t.defined() && (t.dtype() == DType::kF32 || t.dtype() == DType::kF64), "[", op, "] ", name,
               " ", t.shape_str(), " is ", DTypeName(t.dtype()), ": the CPU emulation takes f32 or f64");
}

// The values of an f32/f64 tensor as f32 (f64 rounded once).
std::vector<float> AsFloats(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  DispatchFloat(t.dtype(), "fp8", [&](auto tag) {
    using T = decltype(tag);
    const T* p = t.data<T>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(p[i]);
  });
  return v;
}

// Row group boundaries: groups[g] rows starting at row_begin[g]; padded token offsets at token_begin[g].
struct Groups {
  std::vector<int64_t> rows, row_begin, token_begin;
};
Groups Layout(const std::vector<int64_t>& counts) {
  Groups g;
  int64_t r = 0, t = 0;
  for (int64_t c : counts) {
    g.rows.push_back(c);
    g.row_begin.push_back(r);
    g.token_begin.push_back(t);
    r += c;
    t += Fp8Padded(c);
  }
  return g;
}

// Quantises columns of x (R, C) tile by tile; value(r, c) gives element (r, c) as f32.
template <class Value>
void QuantizeColsImpl(const Fp8Cols& q, int64_t cols, Value&& value) {
  const Groups g = Layout(Fp8GroupCounts(q.counts, "quantize_cols_1x128"));
  const int64_t tp = q.padded_tokens();
  uint8_t* codes = Bytes(q.codes);
  float* scales = q.scales.data<float>();
  float tile[kFp8Block];
  for (size_t gi = 0; gi < g.rows.size(); ++gi) {
    for (int64_t t = 0; t < Fp8Blocks(g.rows[gi]); ++t) {
      const int64_t n = std::min(kFp8Block, g.rows[gi] - t * kFp8Block);
      const int64_t first_row = g.row_begin[gi] + t * kFp8Block,
                    first_token = g.token_begin[gi] + t * kFp8Block;
      for (int64_t c = 0; c < cols; ++c) {
        for (int64_t i = 0; i < n; ++i) tile[i] = value(first_row + i, c);
        uint8_t* out = codes + c * tp + first_token;
        scales[(first_token / kFp8Block) * cols + c] =
            QuantizeTile(tile, n, [&](int64_t i) -> uint8_t& { return out[i]; });
        std::fill(out + n, out + kFp8Block, uint8_t{0});
      }
    }
  }
}

// Stores a float result into out (f32 or f64) at i: overwrite or add.
template <class T>
void Store(T* out, int64_t i, float v, bool accumulate) {
  out[i] = accumulate ? out[i] + static_cast<T>(v) : static_cast<T>(v);
}

}  // namespace

void QuantizeRows1x128(const Fp8Rows& q, const Tensor& x) {
  const char* op = "quantize_rows_1x128";
  CheckFloat(op, x, "x");
  FATHOM_CHECK(x.ndim() == 2, "[", op, "] x ", x.shape_str(), ", expected (R, K)");
  CheckFp8Rows(op, q, x.dim(0), x.dim(1));
  const int64_t rows = x.dim(0), cols = x.dim(1), kp = q.padded_cols(), blocks = q.blocks();
  const std::vector<float> v = AsFloats(x);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* codes = RowCodes(q, r);
    for (int64_t kb = 0; kb < blocks; ++kb) {
      const int64_t c0 = kb * kFp8Block, n = std::min(kFp8Block, cols - c0);
      SetRowScale(q, r, kb, QuantizeTile(v.data() + r * cols + c0, n, [&](int64_t i) -> uint8_t& {
                    return codes[c0 + i];
                  }));
    }
    std::fill(codes + cols, codes + kp, uint8_t{0});
    for (int64_t kb = blocks; kb < Fp8ScaleStride(blocks); ++kb) SetRowScale(q, r, kb, 0.0f);
  }
}

void DequantizeRows1x128(const Tensor& out, const Fp8Rows& q) {
  const char* op = "dequantize_rows_1x128";
  CheckFloat(op, out, "out");
  FATHOM_CHECK(out.ndim() == 2, "[", op, "] out ", out.shape_str(), ", expected (R, K)");
  CheckFp8Rows(op, q, out.dim(0), out.dim(1));
  DispatchFloat(out.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    T* o = out.data<T>();
    for (int64_t r = 0; r < q.rows(); ++r) {
      const uint8_t* codes = RowCodes(q, r);
      for (int64_t c = 0; c < q.cols; ++c) {
        o[r * q.cols + c] = static_cast<T>(Decode(codes[c]) * RowScale(q, r, c / kFp8Block));
      }
    }
  });
}

void QuantizeCols1x128(const Fp8Cols& q, const Tensor& x) {
  const char* op = "quantize_cols_1x128";
  CheckFloat(op, x, "x");
  FATHOM_CHECK(x.ndim() == 2, "[", op, "] x ", x.shape_str(), ", expected (R, C)");
  CheckFp8Cols(op, q, x.dim(0), x.dim(1));
  const int64_t cols = x.dim(1);
  const std::vector<float> v = AsFloats(x);
  QuantizeColsImpl(q, cols, [&](int64_t r, int64_t c) { return v[r * cols + c]; });
}

void QuantizeCols1x128(const Fp8Cols& q, const Fp8Rows& x) {
  const char* op = "quantize_cols_1x128";
  CheckFp8Rows(op, x, x.rows(), x.cols);
  CheckFp8Cols(op, q, x.rows(), x.cols);
  QuantizeColsImpl(q, x.cols, [&](int64_t r, int64_t c) {
    return Decode(RowCodes(x, r)[c]) * RowScale(x, r, c / kFp8Block);
  });
}

void QuantizeWeight128x128(const Fp8Weight& q, const Tensor& w) {
  const char* op = "quantize_weight_128x128";
  CheckFloat(op, w, "w");
  CheckFp8Weight(op, q, w.shape());
  const int64_t rows = w.dim(-2), cols = w.dim(-1),
                matrices = rows * cols != 0 ? w.numel() / (rows * cols) : 0;
  const int64_t kp = Fp8Padded(cols), np = Fp8Padded(rows);
  const int64_t rb = Fp8Blocks(rows), cb = Fp8Blocks(cols);
  const int64_t stride = Fp8ScaleStride(cb), stride_t = Fp8ScaleStride(rb);
  const std::vector<float> v = AsFloats(w);
  uint8_t* codes = Bytes(q.w.codes);
  uint8_t* codes_t = Bytes(q.wt.codes);
  float* scales = q.w.scales.data<float>();
  float* scales_t = q.wt.scales.data<float>();
  std::fill(scales, scales + q.w.scales.numel(), 0.0f);
  std::fill(scales_t, scales_t + q.wt.scales.numel(), 0.0f);
  std::fill(codes, codes + q.w.codes.numel(), uint8_t{0});
  std::fill(codes_t, codes_t + q.wt.codes.numel(), uint8_t{0});
  std::vector<float> block;
  std::vector<uint8_t> block_codes;
  for (int64_t m = 0; m < matrices; ++m) {
    for (int64_t br = 0; br < rb; ++br) {
      for (int64_t bc = 0; bc < cb; ++bc) {
        const int64_t r0 = br * kFp8Block, c0 = bc * kFp8Block;
        const int64_t h = std::min(kFp8Block, rows - r0), wd = std::min(kFp8Block, cols - c0);
        block.clear();
        for (int64_t r = 0; r < h; ++r)
          for (int64_t c = 0; c < wd; ++c) block.push_back(v[(m * rows + r0 + r) * cols + c0 + c]);
        block_codes.assign(block.size(), 0);
        const float s = QuantizeTile(block.data(), static_cast<int64_t>(block.size()),
                                     [&](int64_t i) -> uint8_t& { return block_codes[i]; });
        for (int64_t r = 0; r < h; ++r) {
          for (int64_t c = 0; c < wd; ++c) {
            const uint8_t code = block_codes[r * wd + c];
            codes[(m * rows + r0 + r) * kp + c0 + c] = code;
            codes_t[(m * cols + c0 + c) * np + r0 + r] = code;
          }
        }
        scales[(m * rb + br) * stride + bc] = s;
        scales_t[(m * cb + bc) * stride_t + br] = s;
      }
    }
  }
}

void Fp8GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w, const Tensor& counts,
                        bool accumulate) {
  const char* op = "fp8_grouped_matmul_nt";
  CheckFloat(op, out, "out");
  const Groups g = Layout(CheckFp8MatmulNT(op, out, x, w, counts));
  const int64_t n = w.rows, k = w.cols, kp = Fp8Padded(k), blocks = Fp8Blocks(k);
  const int64_t stride = Fp8ScaleStride(blocks);
  const uint8_t* wcodes = Bytes(w.codes);
  const float* wscales = w.scales.data<float>();
  // Per group: the weight decoded into a (K, N) panel and its scales per (k block, n), so that the inner
  // loop streams over N (vectorisable without reordering any element's sum).
  std::vector<float> panel(static_cast<size_t>(k * n)), wscale(static_cast<size_t>(blocks * n));
  std::vector<float> xr(static_cast<size_t>(k)), partial(static_cast<size_t>(n)), acc(static_cast<size_t>(n));
  for (size_t gi = 0; gi < g.rows.size(); ++gi) {
    if (g.rows[gi] == 0) continue;
    const int64_t m = static_cast<int64_t>(gi);
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t kk = 0; kk < k; ++kk) panel[kk * n + j] = Decode(wcodes[(m * n + j) * kp + kk]);
      for (int64_t kb = 0; kb < blocks; ++kb)
        wscale[kb * n + j] = wscales[(m * Fp8Blocks(n) + j / kFp8Block) * stride + kb];
    }
    for (int64_t r = g.row_begin[gi]; r < g.row_begin[gi] + g.rows[gi]; ++r) {
      const uint8_t* codes = RowCodes(x, r);
      for (int64_t kk = 0; kk < k; ++kk) xr[kk] = Decode(codes[kk]);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t kb = 0; kb < blocks; ++kb) {
        std::fill(partial.begin(), partial.end(), 0.0f);
        for (int64_t kk = kb * kFp8Block; kk < std::min(k, kb * kFp8Block + kFp8Block); ++kk) {
          const float a = xr[kk];
          const float* b = panel.data() + kk * n;
          for (int64_t j = 0; j < n; ++j) partial[j] += a * b[j];
        }
        const float sa = RowScale(x, r, kb);
        const float* sb = wscale.data() + kb * n;
        for (int64_t j = 0; j < n; ++j) acc[j] = acc[j] + partial[j] * (sa * sb[j]);
      }
      DispatchFloat(out.dtype(), op, [&](auto tag) {
        using T = decltype(tag);
        T* o = out.data<T>() + r * n;
        for (int64_t j = 0; j < n; ++j) Store(o, j, acc[j], accumulate);
      });
    }
  }
}

void Fp8GroupedMatmulTN(const Tensor& out, const Fp8Cols& a, const Fp8Cols& b, bool accumulate) {
  const char* op = "fp8_grouped_matmul_tn";
  CheckFloat(op, out, "out");
  const Groups g = Layout(CheckFp8MatmulTN(op, out, a, b));
  const int64_t m = a.cols(), n = b.cols(), tp = a.padded_tokens();
  const uint8_t* acodes = Bytes(a.codes);
  const uint8_t* bcodes = Bytes(b.codes);
  const float* ascales = a.scales.data<float>();
  const float* bscales = b.scales.data<float>();
  std::vector<float> panel, ar, partial(static_cast<size_t>(n)), acc(static_cast<size_t>(n));
  for (size_t gi = 0; gi < g.rows.size(); ++gi) {
    const int64_t tokens = g.rows[gi], t0 = g.token_begin[gi];
    if (tokens == 0) {
      const int64_t group = static_cast<int64_t>(gi);
      if (!accumulate) out.Reshape({static_cast<int64_t>(g.rows.size()), m * n}).Rows(group, group + 1).Zero();
      continue;
    }
    // b's group decoded into a (T_g, N) panel.
    panel.assign(static_cast<size_t>(tokens * n), 0.0f);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t t = 0; t < tokens; ++t) panel[t * n + j] = Decode(bcodes[j * tp + t0 + t]);
    ar.assign(static_cast<size_t>(tokens), 0.0f);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t t = 0; t < tokens; ++t) ar[t] = Decode(acodes[i * tp + t0 + t]);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t tb = 0; tb < Fp8Blocks(tokens); ++tb) {
        std::fill(partial.begin(), partial.end(), 0.0f);
        for (int64_t t = tb * kFp8Block; t < std::min(tokens, tb * kFp8Block + kFp8Block); ++t) {
          const float av = ar[t];
          const float* bv = panel.data() + t * n;
          for (int64_t j = 0; j < n; ++j) partial[j] += av * bv[j];
        }
        const int64_t tile = t0 / kFp8Block + tb;
        const float sa = ascales[tile * m + i];
        const float* sb = bscales + tile * n;
        for (int64_t j = 0; j < n; ++j) acc[j] = acc[j] + partial[j] * (sa * sb[j]);
      }
      DispatchFloat(out.dtype(), op, [&](auto tag) {
        using T = decltype(tag);
        T* o = out.data<T>() + (static_cast<int64_t>(gi) * m + i) * n;
        for (int64_t j = 0; j < n; ++j) Store(o, j, acc[j], accumulate);
      });
    }
  }
}

}  // namespace fathom::cpu
