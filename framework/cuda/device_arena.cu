#include "framework/cuda/check.h"
#include "framework/cuda/device_arena.h"

namespace fathom::cuda {

DeviceArena::DeviceArena(std::string name, size_t bytes) : name_(std::move(name)), capacity_(bytes) {
  if (bytes) FATHOM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&base_), bytes));
}

DeviceArena::~DeviceArena() {
  if (base_) cudaFree(base_);  // no check: destructors run during error unwinding too
}

Tensor DeviceArena::Alloc(const Shape& shape, DType dtype) {
  size_t bytes = static_cast<size_t>(NumElements(shape)) * DTypeSize(dtype);
  size_t offset = (used_ + 255) / 256 * 256;
  FATHOM_CHECK(offset + bytes <= capacity_, "device arena '", name_, "' exhausted: ", ShapeString(shape), " ",
               DTypeName(dtype), " needs ", bytes, " bytes at offset ", offset, ", capacity ", capacity_);
  used_ = offset + bytes;
  if (used_ > high_water_) high_water_ = used_;
  return Tensor::Wrap(base_ + offset, shape, dtype, Device::kCUDA, nullptr);
}

Tensor DeviceArena::Zeros(const Shape& shape, DType dtype, void* stream) {
  Tensor t = Alloc(shape, dtype);
  FATHOM_CUDA_CHECK(cudaMemsetAsync(t.raw(), 0, t.nbytes(), static_cast<cudaStream_t>(stream)));
  return t;
}

void CopyToDevice(const Tensor& dst, const Tensor& src) {
  FATHOM_CHECK(dst.device() == Device::kCUDA && src.device() == Device::kCPU && dst.shape() == src.shape() &&
                   dst.dtype() == src.dtype(),
               "CopyToDevice ", src.shape_str(), " -> ", dst.shape_str());
  FATHOM_CUDA_CHECK(cudaMemcpy(dst.raw(), src.raw(), src.nbytes(), cudaMemcpyHostToDevice));
}

void CopyToHost(const Tensor& dst, const Tensor& src) {
  FATHOM_CHECK(dst.device() == Device::kCPU && src.device() == Device::kCUDA && dst.shape() == src.shape() &&
                   dst.dtype() == src.dtype(),
               "CopyToHost ", src.shape_str(), " -> ", dst.shape_str());
  FATHOM_CUDA_CHECK(cudaMemcpy(dst.raw(), src.raw(), src.nbytes(), cudaMemcpyDeviceToHost));
}

size_t FreeDeviceMemory() {
  size_t free = 0, total = 0;
  FATHOM_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return free;
}

int CurrentDevice() {
  int device = 0;
  FATHOM_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

}  // namespace fathom::cuda
