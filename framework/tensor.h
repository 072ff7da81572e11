// Tensor: a dense, contiguous, row-major view of typed memory.
//
// Ownership: a Tensor shares its storage (reference counted); Reshape and Rows return views of the same
// memory. Memory may be owned by the tensor (Empty/Zeros) or borrowed from an arena or a parameter
// table (Wrap), in which case the owner is kept alive by the `keepalive` handle.
// Thread safety: none beyond that of the underlying memory.
#ifndef FATHOM_FRAMEWORK_TENSOR_H_
#define FATHOM_FRAMEWORK_TENSOR_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "framework/check.h"
#include "framework/dtype.h"
#include "framework/numeric.h"

namespace fathom {

using Shape = std::vector<int64_t>;
std::string ShapeString(const Shape& s);
int64_t NumElements(const Shape& s);

template <class T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::kF32;
};
template <>
struct DTypeOf<double> {
  static constexpr DType value = DType::kF64;
};
template <>
struct DTypeOf<Bf16> {
  static constexpr DType value = DType::kBF16;
};
template <>
struct DTypeOf<Fp8E4M3> {
  static constexpr DType value = DType::kF8E4M3;
};
template <>
struct DTypeOf<Fp8E5M2> {
  static constexpr DType value = DType::kF8E5M2;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::kI32;
};
template <>
struct DTypeOf<int64_t> {
  static constexpr DType value = DType::kI64;
};

// Bytes of host memory that CPU tensors made by Tensor::Empty/Zeros own now, and the most since the last
// ResetHostTensorPeak(), over all threads (atomic counters): tests measure what a computation keeps alive
// (the activation model of layers/cost.h against the CPU layers). Views and wrapped memory do not count.
int64_t HostTensorBytesInUse();
int64_t HostTensorBytesPeak();
void ResetHostTensorPeak();  // the peak restarts from the bytes in use now

class Tensor {
 public:
  Tensor() = default;

  // Owned, uninitialised. CPU: malloc'd, 64-byte aligned. CUDA: a block of the calling thread's current
  // cuda::DevicePool (installed with cuda::PoolScope, framework/cuda/device_pool.h), returned to that pool
  // when the last tensor sharing it dies; no current pool, or a build without the CUDA backend, fails a
  // FATHOM_CHECK. Zeros on CUDA clears with cudaMemsetAsync on the pool's stream (queued, not waited for).
  static Tensor Empty(const Shape& shape, DType dtype, Device device = Device::kCPU);
  static Tensor Zeros(const Shape& shape, DType dtype, Device device = Device::kCPU);
  // A view of memory owned elsewhere; `keepalive` (may be null) keeps the owner alive.
  static Tensor Wrap(void* data, const Shape& shape, DType dtype, Device device,
                     std::shared_ptr<void> keepalive);
  // A CPU tensor from values, converted to `dtype` as SetItem does.
  static Tensor FromVector(const std::vector<double>& values, const Shape& shape, DType dtype);

  bool defined() const { return data_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return NumElements(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  std::string shape_str() const { return ShapeString(shape_); }

  void* raw() const { return data_; }
  template <class T>
  T* data() const {
    FATHOM_CHECK(DTypeOf<T>::value == dtype_, "tensor holds ", DTypeName(dtype_), ", accessed as ",
                 DTypeName(DTypeOf<T>::value));
    return static_cast<T*>(data_);
  }

  Tensor Reshape(const Shape& shape) const;       // same elements, new shape
  Tensor Rows(int64_t begin, int64_t end) const;  // rows [begin, end) of dim 0, shared memory
  Tensor Flatten2D() const;                       // (prod of leading dims, last dim)
  Tensor Clone() const;                           // deep copy, CPU
  Tensor To(DType dtype) const;                   // converting copy, CPU (any dtype, via SetItem)
  void CopyFrom(const Tensor& src);               // same shape and dtype, CPU
  void Zero();
  void Fill(double v);                    // f32/f64/i32/i64
  double Item(int64_t flat_index) const;  // element as double (any numeric dtype)
  // Writes element `flat_index` from a double, rounding as To() does (bf16 / fp8: nearest even).
  void SetItem(int64_t flat_index, double v) const;

 private:
  std::shared_ptr<void> owner_;
  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCPU;
};

// Calls f(T{}) with T = float or double for the tensor's dtype; any other dtype is a bug at the caller.
template <class F>
decltype(auto) DispatchFloat(DType t, const char* op, F&& f) {
  if (t == DType::kF64) return f(double{});
  FATHOM_CHECK(t == DType::kF32, "[", op, "] expects f32 or f64, got ", DTypeName(t));
  return f(float{});
}

}  // namespace fathom

#endif  // FATHOM_FRAMEWORK_TENSOR_H_
