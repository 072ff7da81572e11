#include "framework/kernels/cpu/rope.h"

#include <vector>

namespace fathom::cpu {

namespace {

void CheckRope(const char* op, const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin) {
  FATHOM_CHECK(x.ndim() == 4 && out.shape() == x.shape(), "[", op, "] x ", x.shape_str(), " out ",
               out.shape_str(), ", expected equal (B, T, H, W)");
  FATHOM_CHECK(
      cos.ndim() == 2 && sin.shape() == cos.shape() && cos.dim(0) >= x.dim(1) && 2 * cos.dim(1) <= x.dim(3),
      "[", op, "] cos ", cos.shape_str(), " sin ", sin.shape_str(), " for x ", x.shape_str(),
      ", expected (>= T, d/2) with d <= W");
  FATHOM_CHECK(out.dtype() == x.dtype() && cos.dtype() == x.dtype() && sin.dtype() == x.dtype(), "[", op,
               "] mixed dtypes: x ", DTypeName(x.dtype()), " out ", DTypeName(out.dtype()), " tables ",
               DTypeName(cos.dtype()), "/", DTypeName(sin.dtype()));
}

// Runs `rotate(src_row, dst_row, c, s)` over every row; the rope part of each row is staged through a
// buffer so that the output may alias the input (the interleaved layout reads and writes different slots).
template <class T, class Rotate>
void ForEachRow(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, Rotate rotate) {
  const int64_t b = x.dim(0), t = x.dim(1), h = x.dim(2), w = x.dim(3);
  const int64_t half = cos.dim(1), d = 2 * half, lead = w - d;
  const T* xp = x.data<T>();
  T* op = out.data<T>();
  const T* cp = cos.data<T>();
  const T* sp = sin.data<T>();
  std::vector<T> buf(static_cast<size_t>(d));
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t ti = 0; ti < t; ++ti) {
      const T* c = cp + ti * half;
      const T* s = sp + ti * half;
      for (int64_t hi = 0; hi < h; ++hi) {
        const int64_t row = ((bi * t + ti) * h + hi) * w;
        const T* src = xp + row;
        T* dst = op + row;
        if (dst != src)
          for (int64_t j = 0; j < lead; ++j) dst[j] = src[j];
        for (int64_t j = 0; j < d; ++j) buf[static_cast<size_t>(j)] = src[lead + j];
        rotate(buf.data(), dst + lead, c, s, half);
      }
    }
  }
}

}  // namespace

void RopeForward(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved) {
  CheckRope("rope", out, x, cos, sin);
  DispatchFloat(x.dtype(), "rope", [&](auto tag) {
    using T = decltype(tag);
    // Pair j is (r[2j], r[2j+1]) interleaved, (r[j], r[j+d/2]) otherwise; the output is always split halves.
    const int64_t stride = interleaved ? 2 : 1;
    ForEachRow<T>(out, x, cos, sin, [&](const T* r, T* o, const T* c, const T* s, int64_t half) {
      const int64_t second = interleaved ? 1 : half;
      for (int64_t j = 0; j < half; ++j) {
        const T a = r[j * stride], b = r[j * stride + second];
        o[j] = a * c[j] - b * s[j];
        o[j + half] = b * c[j] + a * s[j];
      }
    });
  });
}

void RopeBackward(const Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin,
                  bool interleaved) {
  CheckRope("rope_backward", dx, dout, cos, sin);
  DispatchFloat(dout.dtype(), "rope_backward", [&](auto tag) {
    using T = decltype(tag);
    // The Jacobian of each pair is the rotation [[c, -s], [s, c]]; its transpose rotates by -angle, and the
    // gradients go back to the slots the forward read (re-interleaved for the interleaved layout).
    const int64_t stride = interleaved ? 2 : 1;
    ForEachRow<T>(dx, dout, cos, sin, [&](const T* g, T* o, const T* c, const T* s, int64_t half) {
      const int64_t second = interleaved ? 1 : half;
      for (int64_t j = 0; j < half; ++j) {
        const T lo = g[j], hi = g[j + half];
        o[j * stride] = lo * c[j] + hi * s[j];
        o[j * stride + second] = hi * c[j] - lo * s[j];
      }
    });
  });
}

}  // namespace fathom::cpu
