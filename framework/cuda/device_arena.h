// DeviceArena: one cudaMalloc at start-up, bump allocation afterwards, so nothing is allocated inside the
// step loop (DESIGN.md idea 8). Tensors it hands out are views (Device::kCUDA) that stay valid until
// Reset() or the arena's destruction; the arena must outlive them. Allocations are 256-byte aligned.
// Not thread safe. Exhausting the arena is a planning bug: FATHOM_CHECK names the request and the sizes.
#ifndef FATHOM_FRAMEWORK_CUDA_DEVICE_ARENA_H_
#define FATHOM_FRAMEWORK_CUDA_DEVICE_ARENA_H_

#include <cstddef>
#include <string>

#include "framework/tensor.h"

namespace fathom::cuda {

class DeviceArena {
 public:
  DeviceArena(std::string name, size_t bytes);  // cudaMalloc on the current device
  ~DeviceArena();
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;

  Tensor Alloc(const Shape& shape, DType dtype);
  Tensor Zeros(const Shape& shape, DType dtype, void* stream = nullptr);  // cudaMemsetAsync on `stream`
  void Reset() { used_ = 0; }  // every tensor handed out becomes invalid
  size_t used() const { return used_; }
  size_t capacity() const { return capacity_; }
  size_t high_water() const { return high_water_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  char* base_ = nullptr;
  size_t capacity_ = 0, used_ = 0, high_water_ = 0;
};

// Host <-> device copies of whole tensors (same shape and dtype), synchronous; for set-up and tests.
void CopyToDevice(const Tensor& dst, const Tensor& src_host);
void CopyToHost(const Tensor& dst_host, const Tensor& src);
// Number of visible CUDA devices; 0 when there is no driver or no device (never aborts).
int DeviceCount();
// The current device's ordinal (cudaGetDevice).
int CurrentDevice();
// Free bytes on the current device (cudaMemGetInfo).
size_t FreeDeviceMemory();

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_CUDA_DEVICE_ARENA_H_
