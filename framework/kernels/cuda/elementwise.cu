#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "framework/cuda/check.h"
#include "framework/cuda/numeric.cuh"
#include "framework/kernels/cuda/elementwise.h"
#include "framework/kernels/cuda/kernel_common.cuh"
#include "framework/numeric.h"

namespace fathom::cuda {
namespace {

constexpr int kThreads = 256;

unsigned GridFor(int64_t n) { return common::GridFor(n, kThreads); }

#define FATHOM_GRID_STRIDE(i, n)                                                         \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// f32 as float, bf16 as its bit pattern (uint16_t): numeric.cuh's ToF32 / FromF32 conventions.

// Add and Convert move V elements per access (V = 8: 16 bytes of each operand when all are bf16; V = 4:
// 16 bytes of f32 and 8 of bf16), element by element (V = 1) where the pointers or the length do not allow
// it: the same arithmetic either way.
template <class O, class A, class B, int V>
__global__ void AddKernel(O* out, const A* a, const B* b, int64_t groups) {
  FATHOM_GRID_STRIDE(g, groups) {
    float x[V], y[V];
    LoadVec<V>(a + g * V, x);
    LoadVec<V>(b + g * V, y);
#pragma unroll
    for (int k = 0; k < V; ++k) x[k] = __fadd_rn(x[k], y[k]);
    StoreVec<V>(out + g * V, x);
  }
}

template <class O, class I, int V>
__global__ void ConvertKernel(O* out, const I* in, int64_t groups) {
  FATHOM_GRID_STRIDE(g, groups) {
    float x[V];
    LoadVec<V>(in + g * V, x);
    StoreVec<V>(out + g * V, x);
  }
}

// The vector width for these operand types: 8 when every one is 2 bytes, else 4.
template <class... T>
constexpr int VecWidth() {
  return ((sizeof(T) == 2) && ...) ? 8 : 4;
}

template <class O, class A, class B>
void LaunchAdd(O* out, const A* a, const B* b, int64_t n, cudaStream_t stream) {
  LaunchVectorized<VecWidth<O, A, B>()>(
      n, {{out, sizeof(O)}, {a, sizeof(A)}, {b, sizeof(B)}}, [&](auto v, int64_t at, int64_t groups) {
        constexpr int kV = decltype(v)::value;
        AddKernel<O, A, B, kV><<<GridFor(groups), kThreads, 0, stream>>>(out + at, a + at, b + at, groups);
      });
}

template <class O, class I>
void LaunchConvert(O* out, const I* in, int64_t n, cudaStream_t stream) {
  LaunchVectorized<VecWidth<O, I>()>(
      n, {{out, sizeof(O)}, {in, sizeof(I)}}, [&](auto v, int64_t at, int64_t groups) {
        constexpr int kV = decltype(v)::value;
        ConvertKernel<O, I, kV><<<GridFor(groups), kThreads, 0, stream>>>(out + at, in + at, groups);
      });
}

template <class E>
__global__ void ConcatKernel(E* out, const E* a, const E* b, int64_t rows, int64_t ca, int64_t cb) {
  const int64_t width = ca + cb;
  FATHOM_GRID_STRIDE(i, rows * width) {
    const int64_t r = i / width, c = i % width;
    out[i] = c < ca ? a[r * ca + c] : b[r * cb + (c - ca)];
  }
}

template <class E>
__global__ void SplitKernel(E* a, E* b, const E* x, int64_t rows, int64_t ca, int64_t cb) {
  const int64_t width = ca + cb;
  FATHOM_GRID_STRIDE(i, rows * width) {
    const int64_t r = i / width, c = i % width;
    if (c < ca) {
      a[r * ca + c] = x[i];
    } else {
      b[r * cb + (c - ca)] = x[i];
    }
  }
}

template <class E>
__global__ void FillKernel(E* out, E bits, int64_t n) {
  FATHOM_GRID_STRIDE(i, n) { out[i] = bits; }
}

// Up to kMaxTerms terms of AccumulateF64, passed by value (well under the 4 KiB parameter limit).
constexpr int kMaxTerms = 32;
enum TermType : int { kTermF32, kTermF64, kTermI64 };
struct TermTable {
  const void* values[kMaxTerms];
  int64_t offset[kMaxTerms];
  int64_t count[kMaxTerms];
  int type[kMaxTerms];
  int terms;
};

// One thread per element of sums, visiting the terms in list order: the additions into one element happen
// in the CPU twin's order.
__global__ void AccumulateF64Kernel(double* sums, int64_t n, TermTable table) {
  FATHOM_GRID_STRIDE(i, n) {
    double acc = sums[i];
    for (int t = 0; t < table.terms; ++t) {
      const int64_t j = i - table.offset[t];
      if (j < 0 || j >= table.count[t]) continue;
      if (table.type[t] == kTermF32) {
        acc += static_cast<double>(static_cast<const float*>(table.values[t])[j]);
      } else if (table.type[t] == kTermF64) {
        acc += static_cast<const double*>(table.values[t])[j];
      } else {
        acc += static_cast<double>(static_cast<const int64_t*>(table.values[t])[j]);
      }
    }
    sums[i] = acc;
  }
}

#undef FATHOM_GRID_STRIDE

using common::CheckCuda;

template <class T>
const T* In(const Tensor& t) {
  return static_cast<const T*>(t.raw());
}
template <class T>
T* Out(const Tensor& t) {
  return static_cast<T*>(t.raw());
}

// Calls f(element-type tag) with an unsigned integer of the dtype's size (bit copies).
template <class F>
void DispatchBits(const char* op, DType t, F&& f) {
  switch (t) {
    case DType::kF32:
    case DType::kI32:
      f(uint32_t{});
      return;
    case DType::kBF16:
      f(uint16_t{});
      return;
    case DType::kF8E4M3:
    case DType::kF8E5M2:
      f(uint8_t{});
      return;
    case DType::kI64:
      f(uint64_t{});
      return;
    default:
      FATHOM_CHECK(false, "[", op, "] unsupported dtype ", DTypeName(t));
  }
}

}  // namespace

void Add(const Tensor& out, const Tensor& a, const Tensor& b, Stream stream) {
  const char* op = "add_cuda";
  CheckCuda(op, out, "out");
  CheckCuda(op, a, "a");
  CheckCuda(op, b, "b");
  FATHOM_CHECK(a.numel() == b.numel() && out.numel() == a.numel(), "[", op, "] out ", out.shape_str(), " = ",
               a.shape_str(), " + ", b.shape_str());
  const DType t = a.dtype();
  FATHOM_CHECK(b.dtype() == t && out.dtype() == t && (t == DType::kF32 || t == DType::kBF16), "[", op,
               "] dtypes out ", DTypeName(out.dtype()), " a ", DTypeName(t), " b ", DTypeName(b.dtype()),
               " (all f32 or all bf16)");
  const int64_t n = a.numel();
  if (n == 0) return;
  if (t == DType::kF32) {
    LaunchAdd(Out<float>(out), In<float>(a), In<float>(b), n, stream);
  } else {
    LaunchAdd(Out<uint16_t>(out), In<uint16_t>(a), In<uint16_t>(b), n, stream);
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

void AddInPlace(const Tensor& a, const Tensor& b, Stream stream) {
  const char* op = "add_in_place_cuda";
  CheckCuda(op, a, "a");
  CheckCuda(op, b, "b");
  FATHOM_CHECK(a.numel() == b.numel(), "[", op, "] ", a.shape_str(), " += ", b.shape_str());
  const int64_t n = a.numel();
  const bool f32_f32 = a.dtype() == DType::kF32 && b.dtype() == DType::kF32;
  const bool f32_bf16 = a.dtype() == DType::kF32 && b.dtype() == DType::kBF16;
  const bool bf16_bf16 = a.dtype() == DType::kBF16 && b.dtype() == DType::kBF16;
  const bool bf16_f32 = a.dtype() == DType::kBF16 && b.dtype() == DType::kF32;
  FATHOM_CHECK(f32_f32 || f32_bf16 || bf16_bf16 || bf16_f32, "[", op, "] ", DTypeName(a.dtype()),
               " += ", DTypeName(b.dtype()),
               " (supported: f32 += f32, f32 += bf16, bf16 += bf16, bf16 += f32)");
  if (n == 0) return;
  if (f32_f32) {
    LaunchAdd(Out<float>(a), In<float>(a), In<float>(b), n, stream);
  } else if (f32_bf16) {
    LaunchAdd(Out<float>(a), In<float>(a), In<uint16_t>(b), n, stream);
  } else if (bf16_f32) {
    LaunchAdd(Out<uint16_t>(a), In<uint16_t>(a), In<float>(b), n, stream);
  } else {
    LaunchAdd(Out<uint16_t>(a), In<uint16_t>(a), In<uint16_t>(b), n, stream);
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

void Convert(const Tensor& out, const Tensor& in, Stream stream) {
  const char* op = "convert_cuda";
  CheckCuda(op, out, "out");
  CheckCuda(op, in, "in");
  FATHOM_CHECK(out.numel() == in.numel(), "[", op, "] out ", out.shape_str(), " in ", in.shape_str());
  const int64_t n = in.numel();
  if (in.dtype() == DType::kF32 && out.dtype() == DType::kBF16) {
    if (n == 0) return;
    LaunchConvert(Out<uint16_t>(out), In<float>(in), n, stream);
  } else if (in.dtype() == DType::kBF16 && out.dtype() == DType::kF32) {
    if (n == 0) return;
    LaunchConvert(Out<float>(out), In<uint16_t>(in), n, stream);
  } else {
    FATHOM_CHECK(false, "[", op, "] ", DTypeName(in.dtype()), " -> ", DTypeName(out.dtype()),
                 " (supported: f32 -> bf16, bf16 -> f32)");
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

void ConcatLastDim(const Tensor& out, const Tensor& a, const Tensor& b, Stream stream) {
  const char* op = "concat_cuda";
  CheckCuda(op, out, "out");
  CheckCuda(op, a, "a");
  CheckCuda(op, b, "b");
  Tensor a2 = a.Flatten2D(), b2 = b.Flatten2D(), o2 = out.Flatten2D();
  const int64_t rows = a2.dim(0), ca = a2.dim(1), cb = b2.dim(1);
  FATHOM_CHECK(b2.dim(0) == rows && o2.dim(0) == rows && o2.dim(1) == ca + cb && a.dtype() == b.dtype() &&
                   out.dtype() == a.dtype(),
               "[", op, "] out ", out.shape_str(), " ", DTypeName(out.dtype()), " from ", a.shape_str(), " ",
               DTypeName(a.dtype()), " and ", b.shape_str(), " ", DTypeName(b.dtype()));
  const int64_t n = rows * (ca + cb);
  DispatchBits(op, a.dtype(), [&](auto tag) {
    using E = decltype(tag);
    if (n == 0) return;
    ConcatKernel<<<GridFor(n), kThreads, 0, stream>>>(Out<E>(out), In<E>(a), In<E>(b), rows, ca, cb);
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

void SplitLastDim(const Tensor& a, const Tensor& b, const Tensor& x, Stream stream) {
  const char* op = "split_cuda";
  CheckCuda(op, a, "a");
  CheckCuda(op, b, "b");
  CheckCuda(op, x, "x");
  Tensor a2 = a.Flatten2D(), b2 = b.Flatten2D(), x2 = x.Flatten2D();
  const int64_t rows = x2.dim(0), ca = a2.dim(1), cb = b2.dim(1);
  FATHOM_CHECK(a2.dim(0) == rows && b2.dim(0) == rows && x2.dim(1) == ca + cb && a.dtype() == x.dtype() &&
                   b.dtype() == x.dtype(),
               "[", op, "] ", x.shape_str(), " ", DTypeName(x.dtype()), " into ", a.shape_str(), " ",
               DTypeName(a.dtype()), " and ", b.shape_str(), " ", DTypeName(b.dtype()));
  const int64_t n = rows * (ca + cb);
  DispatchBits(op, x.dtype(), [&](auto tag) {
    using E = decltype(tag);
    if (n == 0) return;
    SplitKernel<<<GridFor(n), kThreads, 0, stream>>>(Out<E>(a), Out<E>(b), In<E>(x), rows, ca, cb);
    FATHOM_CUDA_CHECK_LAUNCH();
  });
}

void Fill(const Tensor& out, double value, Stream stream) {
  const char* op = "fill_cuda";
  CheckCuda(op, out, "out");
  const int64_t n = out.numel();
  if (out.dtype() == DType::kF32) {
    if (n == 0) return;
    FillKernel<<<GridFor(n), kThreads, 0, stream>>>(Out<uint32_t>(out), FloatBits(static_cast<float>(value)),
                                                    n);
  } else if (out.dtype() == DType::kBF16) {
    if (n == 0) return;
    FillKernel<<<GridFor(n), kThreads, 0, stream>>>(Out<uint16_t>(out),
                                                    FloatToBf16(static_cast<float>(value)).bits, n);
  } else {
    FATHOM_CHECK(false, "[", op, "] unsupported dtype ", DTypeName(out.dtype()), " (f32 or bf16)");
  }
  FATHOM_CUDA_CHECK_LAUNCH();
}

void Zero(const Tensor& out, Stream stream) {
  CheckCuda("zero_cuda", out, "out");
  if (out.nbytes() == 0) return;
  FATHOM_CUDA_CHECK(cudaMemsetAsync(out.raw(), 0, out.nbytes(), stream));
}

void AccumulateF64(const Tensor& sums, const std::vector<cpu::AccumulationTerm>& terms, Stream stream) {
  const char* op = "accumulate_f64_cuda";
  CheckCuda(op, sums, "sums");
  FATHOM_CHECK(sums.dtype() == DType::kF64 && sums.ndim() == 1, "[", op, "] sums ", sums.shape_str(), " ",
               DTypeName(sums.dtype()), ", expected (n) f64");
  const int64_t n = sums.numel();
  TermTable table{};
  auto launch = [&] {
    if (table.terms == 0 || n == 0) return;
    AccumulateF64Kernel<<<GridFor(n), kThreads, 0, stream>>>(Out<double>(sums), n, table);
    FATHOM_CUDA_CHECK_LAUNCH();
    table.terms = 0;
  };
  for (const cpu::AccumulationTerm& t : terms) {
    CheckCuda(op, t.values, "term values");
    FATHOM_CHECK(t.offset >= 0 && t.offset + t.values.numel() <= n, "[", op, "] term at ", t.offset, " of ",
                 t.values.numel(), " elements outside the ", n, " sums");
    const DType d = t.values.dtype();
    FATHOM_CHECK(d == DType::kF32 || d == DType::kF64 || d == DType::kI64, "[", op, "] term values are ",
                 DTypeName(d), ", expected f32, f64 or i64");
    if (t.values.numel() == 0) continue;
    const int k = table.terms++;
    table.values[k] = t.values.raw();
    table.offset[k] = t.offset;
    table.count[k] = t.values.numel();
    table.type[k] = d == DType::kF32 ? kTermF32 : d == DType::kF64 ? kTermF64 : kTermI64;
    if (table.terms == kMaxTerms) launch();
  }
  launch();
}

}  // namespace fathom::cuda
