#include "framework/tensor.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#ifdef FATHOM_WITH_CUDA
#include "framework/cuda/device_pool.h"
#endif

namespace fathom {
namespace {

std::atomic<int64_t> host_bytes_in_use{0};
std::atomic<int64_t> host_bytes_peak{0};

void CountHostBytes(int64_t bytes) {
  const int64_t now = host_bytes_in_use.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  int64_t peak = host_bytes_peak.load(std::memory_order_relaxed);
  while (now > peak && !host_bytes_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

}  // namespace

int64_t HostTensorBytesInUse() { return host_bytes_in_use.load(std::memory_order_relaxed); }
int64_t HostTensorBytesPeak() { return host_bytes_peak.load(std::memory_order_relaxed); }
void ResetHostTensorPeak() { host_bytes_peak.store(HostTensorBytesInUse(), std::memory_order_relaxed); }

std::string ShapeString(const Shape& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

int64_t NumElements(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  FATHOM_CHECK(i >= 0 && i < n, "dim ", i, " of tensor ", shape_str());
  return shape_[i];
}

Tensor Tensor::Empty(const Shape& shape, DType dtype, Device device) {
  if (device == Device::kCUDA) {
#ifdef FATHOM_WITH_CUDA
    return cuda::RequireCurrentPool("Tensor::Empty").Empty(shape, dtype);
#else
    FATHOM_CHECK(false, "[Tensor::Empty] CUDA tensor but this build has no CUDA backend");
#endif
  }
  for (int64_t d : shape) FATHOM_CHECK(d >= 0, "negative dimension in ", ShapeString(shape));
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  size_t bytes = (t.nbytes() + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes ? bytes : 64);
  FATHOM_CHECK(p != nullptr, "out of host memory allocating ", bytes, " bytes");
  const int64_t counted = static_cast<int64_t>(t.nbytes());
  CountHostBytes(counted);
  t.owner_ = std::shared_ptr<void>(p, [counted](void* q) {
    CountHostBytes(-counted);
    std::free(q);
  });
  t.data_ = p;
  return t;
}

Tensor Tensor::Zeros(const Shape& shape, DType dtype, Device device) {
  if (device == Device::kCUDA) {
#ifdef FATHOM_WITH_CUDA
    return cuda::RequireCurrentPool("Tensor::Zeros").Zeros(shape, dtype);
#else
    FATHOM_CHECK(false, "[Tensor::Zeros] CUDA tensor but this build has no CUDA backend");
#endif
  }
  Tensor t = Empty(shape, dtype, device);
  t.Zero();
  return t;
}

Tensor Tensor::Wrap(void* data, const Shape& shape, DType dtype, Device device,
                    std::shared_ptr<void> keepalive) {
  Tensor t;
  t.owner_ = std::move(keepalive);
  t.data_ = data;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::FromVector(const std::vector<double>& values, const Shape& shape, DType dtype) {
  FATHOM_CHECK(static_cast<int64_t>(values.size()) == NumElements(shape), "FromVector: ", values.size(),
               " values for shape ", ShapeString(shape));
  Tensor t = Empty(shape, dtype);
  for (size_t i = 0; i < values.size(); ++i) t.SetItem(static_cast<int64_t>(i), values[i]);
  return t;
}

Tensor Tensor::Reshape(const Shape& shape) const {
  FATHOM_CHECK(NumElements(shape) == numel(), "reshape ", shape_str(), " to ", ShapeString(shape));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::Rows(int64_t begin, int64_t end) const {
  FATHOM_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "rows [", begin, ", ", end,
               ") of ", shape_str());
  Tensor t = *this;
  int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  t.data_ = static_cast<char*>(data_) + static_cast<size_t>(begin * row) * DTypeSize(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::Flatten2D() const {
  FATHOM_CHECK(ndim() >= 1, "flatten a scalar");
  int64_t last = shape_.back();
  return Reshape({last ? numel() / last : 0, last});
}

Tensor Tensor::Clone() const {
  FATHOM_CHECK(device_ == Device::kCPU, "host-side tensor operation on a ", DeviceName(device_), " tensor");
  Tensor t = Empty(shape_, dtype_, device_);
  if (nbytes()) std::memcpy(t.data_, data_, nbytes());
  return t;
}

void Tensor::CopyFrom(const Tensor& src) {
  FATHOM_CHECK(device_ == Device::kCPU, "host-side tensor operation on a ", DeviceName(device_), " tensor");
  FATHOM_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, "copy ", src.shape_str(), " ",
               DTypeName(src.dtype_), " into ", shape_str(), " ", DTypeName(dtype_));
  if (nbytes()) std::memmove(data_, src.data_, nbytes());
}

void Tensor::Zero() {
  FATHOM_CHECK(device_ == Device::kCPU, "host-side tensor operation on a ", DeviceName(device_), " tensor");
  if (nbytes()) std::memset(data_, 0, nbytes());
}

void Tensor::Fill(double v) {
  FATHOM_CHECK(device_ == Device::kCPU, "host-side tensor operation on a ", DeviceName(device_), " tensor");
  int64_t n = numel();
  switch (dtype_) {
    case DType::kF32:
      for (int64_t i = 0; i < n; ++i) data<float>()[i] = static_cast<float>(v);
      break;
    case DType::kF64:
      for (int64_t i = 0; i < n; ++i) data<double>()[i] = v;
      break;
    case DType::kI32:
      for (int64_t i = 0; i < n; ++i) data<int32_t>()[i] = static_cast<int32_t>(v);
      break;
    case DType::kI64:
      for (int64_t i = 0; i < n; ++i) data<int64_t>()[i] = static_cast<int64_t>(v);
      break;
    default:
      FATHOM_CHECK(false, "Fill: unsupported dtype ", DTypeName(dtype_));
  }
}

double Tensor::Item(int64_t i) const {
  FATHOM_CHECK(device_ == Device::kCPU, "Item() of a ", DeviceName(device_),
               " tensor: copy it to the host first");
  FATHOM_CHECK(i >= 0 && i < numel(), "Item(", i, ") of ", shape_str());
  switch (dtype_) {
    case DType::kF32:
      return static_cast<const float*>(data_)[i];
    case DType::kF64:
      return static_cast<const double*>(data_)[i];
    case DType::kBF16:
      return Bf16ToFloat(static_cast<const Bf16*>(data_)[i]);
    case DType::kF8E4M3:
      return E4M3ToFloat(static_cast<const Fp8E4M3*>(data_)[i]);
    case DType::kF8E5M2:
      return E5M2ToFloat(static_cast<const Fp8E5M2*>(data_)[i]);
    case DType::kI32:
      return static_cast<const int32_t*>(data_)[i];
    case DType::kI64:
      return static_cast<double>(static_cast<const int64_t*>(data_)[i]);
  }
  return 0;
}

void Tensor::SetItem(int64_t i, double v) const {
  FATHOM_CHECK(device_ == Device::kCPU, "SetItem() of a ", DeviceName(device_), " tensor");
  FATHOM_CHECK(i >= 0 && i < numel(), "SetItem(", i, ") of ", shape_str());
  switch (dtype_) {
    case DType::kF32:
      static_cast<float*>(data_)[i] = static_cast<float>(v);
      break;
    case DType::kF64:
      static_cast<double*>(data_)[i] = v;
      break;
    case DType::kBF16:
      static_cast<Bf16*>(data_)[i] = FloatToBf16(static_cast<float>(v));
      break;
    case DType::kF8E4M3:
      static_cast<Fp8E4M3*>(data_)[i] = FloatToE4M3(static_cast<float>(v));
      break;
    case DType::kF8E5M2:
      static_cast<Fp8E5M2*>(data_)[i] = FloatToE5M2(static_cast<float>(v));
      break;
    case DType::kI32:
      static_cast<int32_t*>(data_)[i] = static_cast<int32_t>(v);
      break;
    case DType::kI64:
      static_cast<int64_t*>(data_)[i] = static_cast<int64_t>(v);
      break;
  }
}

Tensor Tensor::To(DType dtype) const {
  FATHOM_CHECK(device_ == Device::kCPU, "host-side tensor operation on a ", DeviceName(device_), " tensor");
  if (dtype == dtype_) return Clone();
  Tensor t = Empty(shape_, dtype);
  for (int64_t i = 0; i < numel(); ++i) t.SetItem(i, Item(i));
  return t;
}

}  // namespace fathom
