// Element types. f64 exists on CPU only (gradient checks); bf16 and fp8 are storage types whose
// conversions live in framework/numeric.h.
#ifndef FATHOM_FRAMEWORK_DTYPE_H_
#define FATHOM_FRAMEWORK_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace fathom {

enum class DType : uint8_t { kF32, kF64, kBF16, kF8E4M3, kF8E5M2, kI32, kI64 };

size_t DTypeSize(DType t);
std::string_view DTypeName(DType t);
absl::StatusOr<DType> ParseDType(std::string_view name);  // "f32", "f64", "bf16", "e4m3", "e5m2", ...
inline bool IsFloatingCompute(DType t) { return t == DType::kF32 || t == DType::kF64; }

enum class Device : uint8_t { kCPU, kCUDA };
std::string_view DeviceName(Device d);

}  // namespace fathom

#endif  // FATHOM_FRAMEWORK_DTYPE_H_
