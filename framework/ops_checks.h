// Argument checks shared by the op families of framework/ops.h (ops.cc, ops_nn.cc, ops_moe.cc): devices,
// float dtypes per backend, index dtypes and host counts, each failing a FATHOM_CHECK that names the op.
// Private to the op layer: included only by framework/ops*.cc, never by users of ops.h.
#ifndef FATHOM_FRAMEWORK_OPS_CHECKS_H_
#define FATHOM_FRAMEWORK_OPS_CHECKS_H_

#include "framework/check.h"
#include "framework/tensor.h"

namespace fathom::ops::checks {
#ifndef FATHOM_WITH_CUDA
// Unconditional, so that value-returning callers need no dummy return after it.
[[noreturn]] inline void NoCudaBackend(const char* op) {
  CheckFailed(__FILE__, __LINE__, "CUDA tensor",
              StreamCat("[", op, "] CUDA tensor but this build has no CUDA backend"));
}
#endif

// The device checks: every tensor defined and on the first one's device, which is returned.
inline void SameDevice(const char*, const char*, const Tensor&) {}

template <class... Rest>
void SameDevice(const char* op, const char* first_name, const Tensor& first, const char* name,
                const Tensor& t, const Rest&... rest) {
  FATHOM_CHECK(t.defined(), "[", op, "] ", name, " is undefined");
  FATHOM_CHECK(t.device() == first.device(), "[", op, "] ", name, " is on ", DeviceName(t.device()), " but ",
               first_name, " is on ", DeviceName(first.device()),
               ": the tensors of one op live on one device");
  SameDevice(op, first_name, first, rest...);
}

template <class... Rest>
Device OneDevice(const char* op, const char* name, const Tensor& t, const Rest&... rest) {
  FATHOM_CHECK(t.defined(), "[", op, "] ", name, " is undefined");
  SameDevice(op, name, t, rest...);
  return t.device();
}

// Float dtypes by backend (ops.h, "dtypes"): the CPU computes in f32 or f64, one dtype per call; CUDA
// takes f32 or bf16 per tensor and its kernels check the combinations.
inline void FloatsOn(const char*, Device, const char*, const Tensor&) {}

template <class... Rest>
void FloatsOn(const char* op, Device device, const char* first_name, const Tensor& first, const char* name,
              const Tensor& t, const Rest&... rest) {
  if (device == Device::kCPU) {
    FATHOM_CHECK(t.dtype() == first.dtype(), "[", op, "] ", name, " is ", DTypeName(t.dtype()), " but ",
                 first_name, " is ", DTypeName(first.dtype()), ": one float dtype per call on the CPU");
  } else {
    FATHOM_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kBF16, "[", op, "] ", name, " is ",
                 DTypeName(t.dtype()), ": the CUDA backend takes f32 or bf16");
  }
  FloatsOn(op, device, first_name, first, rest...);
}

template <class... Rest>
void Floats(const char* op, Device device, const char* name, const Tensor& t, const Rest&... rest) {
  if (device == Device::kCPU) {
    FATHOM_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kF64, "[", op, "] ", name, " is ",
                 DTypeName(t.dtype()), ": the CPU backend computes in f32 or f64");
  } else {
    FATHOM_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kBF16, "[", op, "] ", name, " is ",
                 DTypeName(t.dtype()), ": the CUDA backend takes f32 or bf16");
  }
  FloatsOn(op, device, name, t, rest...);
}

inline void Index(const char* op, const char* name, const Tensor& t, DType dtype) {
  FATHOM_CHECK(t.dtype() == dtype, "[", op, "] ", name, " ", t.shape_str(), " is ", DTypeName(t.dtype()),
               ", expected ", DTypeName(dtype));
}

inline void HostCounts(const char* op, const Tensor& counts) {
  FATHOM_CHECK(counts.defined() && counts.device() == Device::kCPU && counts.dtype() == DType::kI64 &&
                   counts.ndim() == 1,
               "[", op, "] counts must be a HOST (E) i64 tensor, got ", counts.shape_str(), " ",
               DTypeName(counts.dtype()), " on ", DeviceName(counts.device()));
}

}  // namespace fathom::ops::checks

// The CUDA branch of an op: the call in CUDA builds, a loud failure naming the op elsewhere.
#ifdef FATHOM_WITH_CUDA
#define FATHOM_OPS_ON_CUDA(op, call) call
#else
#define FATHOM_OPS_ON_CUDA(op, call) ::fathom::ops::checks::NoCudaBackend(op)
#endif

#endif  // FATHOM_FRAMEWORK_OPS_CHECKS_H_
