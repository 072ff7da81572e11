#include "framework/kernels/cpu/elementwise.h"

#include <cstring>

namespace fathom::cpu {

void AddInPlace(const Tensor& a, const Tensor& b) {
  FATHOM_CHECK(a.numel() == b.numel() && a.dtype() == b.dtype(), "[add] ", a.shape_str(), " + ",
               b.shape_str());
  DispatchFloat(a.dtype(), "add", [&](auto tag) {
    using T = decltype(tag);
    T* x = a.data<T>();
    const T* y = b.data<T>();
    for (int64_t i = 0; i < a.numel(); ++i) x[i] += y[i];
  });
}

Tensor Add(const Tensor& a, const Tensor& b) {
  Tensor out = a.Clone();
  AddInPlace(out, b);
  return out;
}

Tensor ConcatLastDim(const Tensor& a, const Tensor& b) {
  Tensor a2 = a.Flatten2D(), b2 = b.Flatten2D();
  FATHOM_CHECK(a2.dim(0) == b2.dim(0) && a.dtype() == b.dtype(), "[concat] ", a.shape_str(), " and ",
               b.shape_str());
  const int64_t n = a2.dim(0), ca = a2.dim(1), cb = b2.dim(1);
  const size_t es = DTypeSize(a.dtype());
  Shape shape = a.shape();
  shape.back() = ca + cb;
  Tensor out = Tensor::Empty(shape, a.dtype());
  char* o = static_cast<char*>(out.raw());
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(o + i * (ca + cb) * es, static_cast<const char*>(a2.raw()) + i * ca * es, ca * es);
    std::memcpy(o + (i * (ca + cb) + ca) * es, static_cast<const char*>(b2.raw()) + i * cb * es, cb * es);
  }
  return out;
}

void SplitLastDim(const Tensor& x, const Tensor& a, const Tensor& b) {
  Tensor x2 = x.Flatten2D(), a2 = a.Flatten2D(), b2 = b.Flatten2D();
  const int64_t n = x2.dim(0), ca = a2.dim(1), cb = b2.dim(1);
  FATHOM_CHECK(x2.dim(1) == ca + cb && a2.dim(0) == n && b2.dim(0) == n, "[split] ", x.shape_str(), " into ",
               a.shape_str(), " and ", b.shape_str());
  const size_t es = DTypeSize(x.dtype());
  const char* s = static_cast<const char*>(x2.raw());
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(static_cast<char*>(a2.raw()) + i * ca * es, s + i * (ca + cb) * es, ca * es);
    std::memcpy(static_cast<char*>(b2.raw()) + i * cb * es, s + (i * (ca + cb) + ca) * es, cb * es);
  }
}

void AccumulateF64(const Tensor& sums, const std::vector<AccumulationTerm>& terms) {
  FATHOM_CHECK(sums.dtype() == DType::kF64 && sums.ndim() == 1, "[accumulate_f64] sums ", sums.shape_str(),
               " ", DTypeName(sums.dtype()), ", expected (n) f64");
  double* out = sums.data<double>();
  for (const AccumulationTerm& t : terms) {
    FATHOM_CHECK(t.offset >= 0 && t.offset + t.values.numel() <= sums.numel(), "[accumulate_f64] term at ",
                 t.offset, " of ", t.values.numel(), " elements outside the ", sums.numel(), " sums");
    double* o = out + t.offset;
    const int64_t n = t.values.numel();
    switch (t.values.dtype()) {
      case DType::kF64:
        for (int64_t i = 0; i < n; ++i) o[i] += t.values.data<double>()[i];
        break;
      case DType::kF32:
        for (int64_t i = 0; i < n; ++i) o[i] += static_cast<double>(t.values.data<float>()[i]);
        break;
      case DType::kI64:
        for (int64_t i = 0; i < n; ++i) o[i] += static_cast<double>(t.values.data<int64_t>()[i]);
        break;
      default:
        FATHOM_CHECK(false, "[accumulate_f64] values are ", DTypeName(t.values.dtype()),
                     ", expected f32, f64 or i64");
    }
  }
}

}  // namespace fathom::cpu
