#include <iterator>

#include "framework/cuda/check.h"
#include "framework/cuda/device_pool.h"

namespace fathom::cuda {
namespace {

// One pointer per thread: the pool is not thread safe, so each thread installs its own.
thread_local DevicePool* current_pool = nullptr;

}  // namespace

size_t DevicePool::RoundedSize(size_t bytes) {
  return bytes == 0 ? kBlockBytes : (bytes + kBlockBytes - 1) / kBlockBytes * kBlockBytes;
}

DevicePool::DevicePool(std::string name, size_t capacity, Stream stream)
    : name_(std::move(name)), stream_(stream), capacity_(capacity / kBlockBytes * kBlockBytes) {
  FATHOM_CHECK(capacity_ > 0, "[device_pool '", name_, "'] capacity ", capacity,
               " bytes is below one block of ", kBlockBytes);
  FATHOM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&base_), capacity_));
  blocks_.emplace(0, Block{capacity_, true});
  free_by_size_.emplace(capacity_, 0);
}

DevicePool::~DevicePool() {
  // A live block would be released into a dead pool by its tensor's deleter later: catch the bug here.
  FATHOM_CHECK(allocated_blocks_ == 0, "[device_pool '", name_, "'] destroyed with ", allocated_blocks_,
               " blocks (", in_use_, " bytes) still allocated: tensors outlive their pool");
  cudaFree(base_);  // no check: nothing useful can be done about a failing free at shutdown
}

void DevicePool::InsertFree(size_t offset, size_t size) {
  blocks_[offset] = Block{size, true};
  free_by_size_.emplace(size, offset);
}

void DevicePool::EraseFree(size_t offset, size_t size) { free_by_size_.erase({size, offset}); }

void* DevicePool::TryAllocate(size_t rounded) {
  // Best fit: the smallest free block that holds the request, the lowest address among equal sizes.
  auto it = free_by_size_.lower_bound({rounded, 0});
  if (it == free_by_size_.end()) return nullptr;
  const auto [size, offset] = *it;
  free_by_size_.erase(it);
  blocks_[offset] = Block{rounded, false};
  if (size > rounded) InsertFree(offset + rounded, size - rounded);
  in_use_ += rounded;
  if (in_use_ > peak_) peak_ = in_use_;
  ++allocated_blocks_;
  return base_ + offset;
}

void DevicePool::Exhausted(size_t bytes, const std::string& what) const {
  FATHOM_CHECK(false, "[device_pool '", name_, "'] exhausted: request of ", bytes, " bytes (",
               RoundedSize(bytes), " rounded) for ", what, "; in use ", in_use_, " bytes in ",
               allocated_blocks_, " blocks, peak ", peak_, ", capacity ", capacity_, ", largest free block ",
               largest_free_block(), " (size the pool from the plan's peak)");
}

void* DevicePool::Allocate(size_t bytes, const char* what) {
  void* p = TryAllocate(RoundedSize(bytes));
  if (p == nullptr) Exhausted(bytes, what);
  return p;
}

void DevicePool::Release(void* block) {
  FATHOM_CHECK(Contains(block), "[device_pool '", name_, "'] release of ", block,
               ", which is not in the pool");
  size_t offset = static_cast<size_t>(static_cast<char*>(block) - base_);
  auto it = blocks_.find(offset);
  FATHOM_CHECK(it != blocks_.end() && !it->second.free, "[device_pool '", name_, "'] release of ", block,
               " (offset ", offset, "), which is not an allocated block (double release?)");
  size_t size = it->second.size;
  in_use_ -= size;
  --allocated_blocks_;
  // Merge with the free neighbours so that free space never stays cut into adjacent pieces.
  auto next = std::next(it);
  if (next != blocks_.end() && next->second.free) {
    EraseFree(next->first, next->second.size);
    size += next->second.size;
    blocks_.erase(next);
  }
  if (it != blocks_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.free) {
      EraseFree(prev->first, prev->second.size);
      offset = prev->first;
      size += prev->second.size;
      blocks_.erase(it);
    }
  }
  InsertFree(offset, size);
}

Tensor DevicePool::Empty(const Shape& shape, DType dtype) {
  for (int64_t d : shape) FATHOM_CHECK(d >= 0, "negative dimension in ", ShapeString(shape));
  const size_t bytes = static_cast<size_t>(NumElements(shape)) * DTypeSize(dtype);
  void* p = TryAllocate(RoundedSize(bytes));
  if (p == nullptr)
    Exhausted(bytes, "a " + ShapeString(shape) + " " + std::string(DTypeName(dtype)) + " tensor");
  return Tensor::Wrap(p, shape, dtype, Device::kCUDA,
                      std::shared_ptr<void>(p, [this](void* q) { Release(q); }));
}

Tensor DevicePool::Zeros(const Shape& shape, DType dtype) {
  Tensor t = Empty(shape, dtype);
  if (t.nbytes()) FATHOM_CUDA_CHECK(cudaMemsetAsync(t.raw(), 0, t.nbytes(), stream_));
  return t;
}

size_t DevicePool::largest_free_block() const {
  return free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
}

bool DevicePool::Contains(const void* p) const {
  const char* c = static_cast<const char*>(p);
  return c >= base_ && c < base_ + capacity_;
}

PoolScope::PoolScope(DevicePool& pool) : previous_(current_pool) { current_pool = &pool; }

PoolScope::~PoolScope() { current_pool = previous_; }

DevicePool* CurrentPool() { return current_pool; }

DevicePool& RequireCurrentPool(const std::string& op) {
  FATHOM_CHECK(current_pool != nullptr, "[", op,
               "] no current device pool on this thread: CUDA tensors are allocated from a cuda::DevicePool "
               "installed with cuda::PoolScope (framework/cuda/device_pool.h)");
  return *current_pool;
}

}  // namespace fathom::cuda
