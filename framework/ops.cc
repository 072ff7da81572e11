#include "framework/ops.h"

#include <atomic>
#include <utility>

#include "framework/kernels/cpu/columns.h"
#include "framework/kernels/cpu/elementwise.h"
#include "framework/ops_checks.h"
#include "framework/ops_cuda.h"

// The op layer's context and its element-wise, statistics, column-block and copy ops; the neural-network
// ops live in ops_nn.cc, the MoE ops in ops_moe.cc.
namespace fathom::ops {
namespace {

thread_local OpContext* current_context = nullptr;

}  // namespace

using checks::Floats;
using checks::FloatsOn;
using checks::HostCounts;
using checks::Index;
using checks::OneDevice;
using checks::SameDevice;

OpContext::OpContext(cuda::Stream stream, size_t gemm_workspace_bytes)
    : stream_(stream), gemm_workspace_bytes_(gemm_workspace_bytes) {}

OpContext::~OpContext() = default;

#ifndef FATHOM_WITH_CUDA
// The CUDA builds define these in ops_cuda.cu.
cuda::GemmContext& OpContext::gemm() { checks::NoCudaBackend("op_context gemm"); }
cuda::HostStaging& OpContext::staging() { checks::NoCudaBackend("op_context staging"); }
#endif

OpContextScope::OpContextScope(OpContext& context) : previous_(current_context) {
  current_context = &context;
}
OpContextScope::~OpContextScope() { current_context = previous_; }
OpContext* CurrentOpContext() { return current_context; }

DType StatsDType(DType activation) { return activation == DType::kBF16 ? DType::kF32 : activation; }

// ---- Element-wise
// ------------------------------------------------------------------------------------------

Tensor Add(const Tensor& a, const Tensor& b) {
  const Device dev = OneDevice("add", "a", a, "b", b);
  Floats("add", dev, "a", a, "b", b);
  if (dev == Device::kCPU) return cpu::Add(a, b);
#ifdef FATHOM_WITH_CUDA
  return cuda_impl::Add(a, b);
#else
  checks::NoCudaBackend("add");
#endif
}

void AddInPlace(const Tensor& a, const Tensor& b) {
  const Device dev = OneDevice("add_in_place", "a", a, "b", b);
  Floats("add_in_place", dev, "a", a, "b", b);
  if (dev == Device::kCPU) return cpu::AddInPlace(a, b);
  FATHOM_OPS_ON_CUDA("add_in_place", cuda_impl::AddInPlace(a, b));
}

Tensor ConcatLastDim(const Tensor& a, const Tensor& b) {
  const Device dev = OneDevice("concat_last_dim", "a", a, "b", b);
  FATHOM_CHECK(a.dtype() == b.dtype(), "[concat_last_dim] a is ", DTypeName(a.dtype()), " but b is ",
               DTypeName(b.dtype()));
  if (dev == Device::kCPU) return cpu::ConcatLastDim(a, b);
#ifdef FATHOM_WITH_CUDA
  return cuda_impl::ConcatLastDim(a, b);
#else
  checks::NoCudaBackend("concat_last_dim");
#endif
}

void SplitLastDim(const Tensor& x, const Tensor& a, const Tensor& b) {
  const Device dev = OneDevice("split_last_dim", "x", x, "a", a, "b", b);
  // The twin copies bytes and checks shapes only.
  FATHOM_CHECK(a.dtype() == x.dtype() && b.dtype() == x.dtype(), "[split_last_dim] x is ",
               DTypeName(x.dtype()), ", a ", DTypeName(a.dtype()), ", b ", DTypeName(b.dtype()));
  if (dev == Device::kCPU) return cpu::SplitLastDim(x, a, b);
  FATHOM_OPS_ON_CUDA("split_last_dim", cuda_impl::SplitLastDim(x, a, b));
}

void Fill(const Tensor& t, double value) {
  const Device dev = OneDevice("fill", "t", t);
  if (dev == Device::kCPU) {
    Tensor view = t;  // Fill and Zero are non-const members; the view shares t's memory
    return view.Fill(value);
  }
  FATHOM_OPS_ON_CUDA("fill", cuda_impl::Fill(t, value));
}

void Zero(const Tensor& t) {
  const Device dev = OneDevice("zero", "t", t);
  if (dev == Device::kCPU) {
    Tensor view = t;
    return view.Zero();
  }
  FATHOM_OPS_ON_CUDA("zero", cuda_impl::Zero(t));
}

// ---- Step statistics
// -----------------------------------------------------------------------------------------

void AccumulateF64(const Tensor& sums, const std::vector<AccumulationTerm>& terms) {
  const char* op = "accumulate_f64";
  const Device dev = OneDevice(op, "sums", sums);
  for (const AccumulationTerm& t : terms) SameDevice(op, "sums", sums, "term values", t.values);
  if (dev == Device::kCPU) return cpu::AccumulateF64(sums, terms);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::AccumulateF64(sums, terms));
}

// ---- Column blocks
// -----------------------------------------------------------------------------------------

void CopyColumns(const Tensor& dst, int64_t d0, const Tensor& src, int64_t s0, int64_t w) {
  const Device dev = OneDevice("copy_columns", "dst", dst, "src", src);
  Floats("copy_columns", dev, "src", src, "dst", dst);
  if (dev == Device::kCPU) return cpu::CopyColumns(dst, d0, src, s0, w);
  FATHOM_OPS_ON_CUDA("copy_columns", cuda_impl::CopyColumns(dst, d0, src, s0, w));
}

void BroadcastColumnsToHeads(const Tensor& k, int64_t off, const Tensor& src, int64_t s0) {
  const char* op = "broadcast_columns_to_heads";
  const Device dev = OneDevice(op, "k", k, "src", src);
  Floats(op, dev, "src", src, "k", k);
  if (dev == Device::kCPU) return cpu::BroadcastColumnsToHeads(k, off, src, s0);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::BroadcastColumnsToHeads(k, off, src, s0));
}

void SumHeadsToColumns(const Tensor& dst, int64_t d0, const Tensor& dk, int64_t off) {
  const char* op = "sum_heads_to_columns";
  const Device dev = OneDevice(op, "dst", dst, "dk", dk);
  Floats(op, dev, "dk", dk, "dst", dst);
  if (dev == Device::kCPU) return cpu::SumHeadsToColumns(dst, d0, dk, off);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::SumHeadsToColumns(dst, d0, dk, off));
}

// ---- Copies
// ------------------------------------------------------------------------------------------------

namespace {
std::atomic<int64_t> host_waits{0};
}  // namespace

int64_t HostWaits() { return host_waits.load(std::memory_order_relaxed); }

void Copy(const Tensor& dst, const Tensor& src) {
  FATHOM_CHECK(dst.defined() && src.defined(), "[copy] undefined tensor");
  FATHOM_CHECK(dst.shape() == src.shape() && dst.dtype() == src.dtype(), "[copy] ", src.shape_str(), " ",
               DTypeName(src.dtype()), " into ", dst.shape_str(), " ", DTypeName(dst.dtype()));
  if (dst.device() == Device::kCPU && src.device() == Device::kCPU) {
    Tensor view = dst;
    return view.CopyFrom(src);
  }
  if (dst.device() == Device::kCPU || src.device() == Device::kCPU) host_waits.fetch_add(1, std::memory_order_relaxed);
  FATHOM_OPS_ON_CUDA("copy", cuda_impl::Copy(dst, src));
}

void Convert(const Tensor& dst, const Tensor& src) {
  const Device dev = OneDevice("convert", "dst", dst, "src", src);
  FATHOM_CHECK(dst.shape() == src.shape(), "[convert] ", src.shape_str(), " into ", dst.shape_str());
  const DType a = src.dtype(), b = dst.dtype();
  auto is = [&](DType x, DType y) { return a == x && b == y; };
  const bool bf16 = is(DType::kF32, DType::kBF16) || is(DType::kBF16, DType::kF32);
  const bool f64 = is(DType::kF32, DType::kF64) || is(DType::kF64, DType::kF32);
  FATHOM_CHECK(bf16 || (f64 && dev == Device::kCPU), "[convert] ", DTypeName(a), " -> ", DTypeName(b), " on ",
               DeviceName(dev), ": expected f32 <-> bf16, or f32 <-> f64 on the CPU");
  if (dev == Device::kCPU) {
    Tensor view = dst;
    return view.CopyFrom(src.To(b));  // Tensor::To rounds as numeric.h does
  }
  FATHOM_OPS_ON_CUDA("convert", cuda_impl::Convert(dst, src));
}

Tensor To(const Tensor& x, Device device) {
  FATHOM_CHECK(x.defined(), "[to] undefined tensor");
  if (device == x.device()) return Clone(x);
  if (device == Device::kCPU) {
    Tensor host = Tensor::Empty(x.shape(), x.dtype());
    Copy(host, x);
    return host;
  }
#ifdef FATHOM_WITH_CUDA
  Tensor dev = cuda_impl::Empty("to", x.shape(), x.dtype());
  Copy(dev, x);
  return dev;
#else
  checks::NoCudaBackend("to");
#endif
}

Tensor Clone(const Tensor& x) {
  FATHOM_CHECK(x.defined(), "[clone] undefined tensor");
  if (x.device() == Device::kCPU) return x.Clone();
#ifdef FATHOM_WITH_CUDA
  Tensor t = cuda_impl::Empty("clone", x.shape(), x.dtype());
  Copy(t, x);
  return t;
#else
  checks::NoCudaBackend("clone");
#endif
}

PendingHostCopy::~PendingHostCopy() = default;  // the lease's deleter waits for an unwaited copy
PendingHostCopy::PendingHostCopy(PendingHostCopy&&) noexcept = default;
PendingHostCopy& PendingHostCopy::operator=(PendingHostCopy&&) noexcept = default;

Tensor PendingHostCopy::Wait() {
  FATHOM_CHECK(pending(), "[copy_to_host_async] Wait on an empty PendingHostCopy (waited for already?)");
  if (ready_.defined()) return std::exchange(ready_, Tensor());
#ifdef FATHOM_WITH_CUDA
  const std::shared_ptr<StagingLease> lease = std::exchange(lease_, nullptr);
  host_waits.fetch_add(1, std::memory_order_relaxed);
  return cuda_impl::FinishHostCopy(*lease);
#else
  checks::NoCudaBackend("copy_to_host_async");
#endif
}

Tensor ToDeviceAsync(const Tensor& src) {
  FATHOM_CHECK(src.defined() && src.device() == Device::kCPU, "[to_device_async] expects a host tensor");
#ifdef FATHOM_WITH_CUDA
  return cuda_impl::ToDeviceAsync(src);
#else
  checks::NoCudaBackend("to_device_async");
#endif
}

PendingHostCopy CopyToHostAsync(const Tensor& src) {
  FATHOM_CHECK(src.defined(), "[copy_to_host_async] undefined tensor");
  PendingHostCopy copy;
  if (src.device() == Device::kCPU) {
    copy.ready_ = src;
    return copy;
  }
#ifdef FATHOM_WITH_CUDA
  copy.lease_ = cuda_impl::StartHostCopy(src);
  return copy;
#else
  checks::NoCudaBackend("copy_to_host_async");
#endif
}

}  // namespace fathom::ops
