// DevicePool: a caching allocator over one cudaMalloc made at construction, so temporaries of the GPU step
// (op outputs, workspaces) cost no cudaMalloc/cudaFree after start-up (DESIGN.md idea 8) and a freed block
// is reused by the next request that fits.
//
// Algorithm: blocks are sized in units of kBlockBytes (512 B; a request of 0 bytes takes one unit, so every
// block has a distinct, non-null address). Free blocks sit in a list ordered by (size, address); a request
// takes the smallest free block that fits (best fit, the lowest address among equals) and splits off the
// remainder. A released block is merged with its free neighbours at once, so the free list never holds two
// adjacent blocks and a pool with nothing allocated is one free block of the whole capacity.
// Addresses are aligned to 512 bytes relative to the base, which cudaMalloc aligns to at least 256.
//
// Streams: the pool assumes that every kernel touching its blocks runs on ONE stream, stream(). A block
// may then be released while work queued on that stream still reads or writes it: any later user of the
// block is queued on the same stream, after that work, so stream order makes the reuse safe without a
// synchronisation. Work on another stream must not touch pool memory unless that stream is joined to
// stream() by events around the use and the release (the pool cannot see other streams).
//
// Ownership: Empty/Zeros tensors own their block through a shared_ptr deleter that returns it to the pool
// when the last tensor (or view) sharing it dies. REQUIRES: the pool outlives every block it handed out;
// destroying a pool that still has blocks allocated is a bug and fails a FATHOM_CHECK.
// Errors: exhaustion is a planning bug: a FATHOM_CHECK names the request, the bytes in use, the peak, the
// capacity and the largest free block. Not thread safe (one pool per thread or external locking).
//
// PoolScope installs a pool as the calling thread's current pool (nestable, restored on destruction);
// Tensor::Empty/Zeros(..., Device::kCUDA) allocate from it and fail a FATHOM_CHECK when there is none.
// This header includes no CUDA header, so plain C++ (tensor.cc) can use it; the code exists only in builds
// with the CUDA backend (FATHOM_WITH_CUDA).
#ifndef FATHOM_FRAMEWORK_CUDA_DEVICE_POOL_H_
#define FATHOM_FRAMEWORK_CUDA_DEVICE_POOL_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "framework/cuda/stream.h"
#include "framework/tensor.h"

namespace fathom::cuda {

class DevicePool {
 public:
  static constexpr size_t kBlockBytes = 512;

  // Start-up code: cudaMalloc of `capacity` bytes (rounded down to a multiple of kBlockBytes) on the
  // current device. `stream` is the one stream the pool's memory is used on (not owned; nullptr is the
  // legacy default stream).
  DevicePool(std::string name, size_t capacity, Stream stream = nullptr);
  ~DevicePool();  // REQUIRES: num_blocks() == 0 (checked)
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // A block of at least `bytes` device bytes; `what` names the request in the exhaustion message.
  void* Allocate(size_t bytes, const char* what = "raw allocation");
  // Returns a block from Allocate to the pool. REQUIRES: `block` came from this pool and is allocated
  // (checked). Work already queued on stream() may still use it (see "Streams" above).
  void Release(void* block);

  // Device tensors owning a fresh block, released when the last tensor sharing it dies. Empty: contents
  // undefined. Zeros: cleared by cudaMemsetAsync on stream() (queued, not waited for).
  Tensor Empty(const Shape& shape, DType dtype);
  Tensor Zeros(const Shape& shape, DType dtype);

  const std::string& name() const { return name_; }
  Stream stream() const { return stream_; }
  size_t capacity() const { return capacity_; }
  size_t in_use() const { return in_use_; }  // bytes of allocated blocks (rounded sizes)
  size_t peak() const { return peak_; }      // the most in_use() since construction or ResetPeak()
  int64_t num_blocks() const { return allocated_blocks_; }  // allocated blocks
  int64_t num_free_blocks() const { return static_cast<int64_t>(free_by_size_.size()); }
  size_t largest_free_block() const;  // bytes; 0 when full
  void ResetPeak() { peak_ = in_use_; }
  bool Contains(const void* p) const;  // p lies inside the pool's memory

  // Bytes a request of `bytes` occupies: rounded up to kBlockBytes, at least one unit.
  static size_t RoundedSize(size_t bytes);

 private:
  struct Block {
    size_t size;
    bool free;
  };
  void* TryAllocate(size_t rounded);  // nullptr when no free block fits
  [[noreturn]] void Exhausted(size_t bytes, const std::string& what) const;
  void InsertFree(size_t offset, size_t size);
  void EraseFree(size_t offset, size_t size);

  std::string name_;
  Stream stream_;
  char* base_ = nullptr;
  size_t capacity_ = 0, in_use_ = 0, peak_ = 0;
  int64_t allocated_blocks_ = 0;
  std::map<size_t, Block> blocks_;                    // every block by offset (the address order)
  std::set<std::pair<size_t, size_t>> free_by_size_;  // free blocks as (size, offset)
};

// Makes `pool` the calling thread's current pool for its lifetime; the previous one (or none) comes back
// on destruction. Scopes nest; REQUIRES: destroyed in reverse order of construction (they are locals).
class PoolScope {
 public:
  explicit PoolScope(DevicePool& pool);
  ~PoolScope();
  PoolScope(const PoolScope&) = delete;
  PoolScope& operator=(const PoolScope&) = delete;

 private:
  DevicePool* previous_;
};

// The calling thread's current pool, or nullptr outside every PoolScope.
DevicePool* CurrentPool();
// The current pool; without one, a FATHOM_CHECK naming `op` and how to install one.
DevicePool& RequireCurrentPool(const std::string& op);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_CUDA_DEVICE_POOL_H_
