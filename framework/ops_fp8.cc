#include "framework/kernels/cpu/fp8_gemm.h"
#include "framework/ops.h"
#include "framework/ops_checks.h"
#include "framework/ops_cuda.h"

// The FP8 ops of framework/ops.h: quantisation into the GEMM operands and the block-scaled GEMMs.
namespace fathom::ops {

using checks::Floats;
using checks::OneDevice;

#ifndef FATHOM_WITH_CUDA
// The CUDA builds define it in ops_cuda_fp8.cu.
cuda::Fp8GemmContext& OpContext::fp8_gemm() { checks::NoCudaBackend("op_context fp8_gemm"); }
#endif

namespace {

// One group of every row where the caller passed no counts.
Tensor GroupsOr(const Tensor& counts, int64_t rows) {
  return counts.defined() ? counts : Fp8SingleGroup(rows);
}

void CheckOut(const char* op, Device dev, const Tensor& out, bool allow_bf16) {
  if (dev == Device::kCPU) {
    FATHOM_CHECK(out.dtype() == DType::kF32 || out.dtype() == DType::kF64, "[", op, "] out is ",
                 DTypeName(out.dtype()), ": the CPU emulation writes f32 or f64");
  } else {
    FATHOM_CHECK(out.dtype() == DType::kF32 || (allow_bf16 && out.dtype() == DType::kBF16), "[", op,
                 "] out is ", DTypeName(out.dtype()),
                 allow_bf16 ? ": the CUDA FP8 GEMM writes bf16 or f32"
                            : ": the CUDA FP8 weight-gradient GEMM accumulates in f32");
  }
}

}  // namespace

Fp8Rows QuantizeRows(const Tensor& x) {
  const char* op = "quantize_rows_1x128";
  const Device dev = OneDevice(op, "x", x);
  Floats(op, dev, "x", x);
  FATHOM_CHECK(x.ndim() == 2 && x.dim(1) > 0, "[", op, "] x ", x.shape_str(), ", expected (R, K) with K > 0");
  Fp8Rows q = Fp8Rows::Empty(x.dim(0), x.dim(1), dev);
  if (dev == Device::kCPU) {
    cpu::QuantizeRows1x128(q, x);
  } else {
    FATHOM_OPS_ON_CUDA(op, cuda_impl::QuantizeRows1x128(q, x));
  }
  return q;
}

Fp8Cols QuantizeCols(const Tensor& x, const Tensor& counts) {
  const char* op = "quantize_cols_1x128";
  const Device dev = OneDevice(op, "x", x);
  Floats(op, dev, "x", x);
  FATHOM_CHECK(x.ndim() == 2, "[", op, "] x ", x.shape_str(), ", expected (R, C)");
  Fp8Cols q = Fp8Cols::Empty(x.dim(1), GroupsOr(counts, x.dim(0)), dev);
  if (dev == Device::kCPU) {
    cpu::QuantizeCols1x128(q, x);
  } else {
    FATHOM_OPS_ON_CUDA(op, cuda_impl::QuantizeCols1x128(q, x));
  }
  return q;
}

Fp8Cols QuantizeCols(const Fp8Rows& x, const Tensor& counts) {
  const char* op = "quantize_cols_1x128";
  const Device dev = OneDevice(op, "x", x.data);
  Fp8Cols q = Fp8Cols::Empty(x.cols, GroupsOr(counts, x.rows()), dev);
  if (dev == Device::kCPU) {
    cpu::QuantizeCols1x128(q, x);
  } else {
    FATHOM_OPS_ON_CUDA(op, cuda_impl::QuantizeCols1x128(q, x));
  }
  return q;
}

void DequantizeRows(const Tensor& out, const Fp8Rows& q) {
  const char* op = "dequantize_rows_1x128";
  const Device dev = OneDevice(op, "out", out, "q", q.data);
  Floats(op, dev, "out", out);
  if (dev == Device::kCPU) return cpu::DequantizeRows1x128(out, q);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::DequantizeRows1x128(out, q));
}

void QuantizeWeight128x128(const Fp8Weight& q, const Tensor& w) {
  const char* op = "quantize_weight_128x128";
  const Device dev =
      OneDevice(op, "w", w, "q.w.codes", q.w.codes, "q.w.scales", q.w.scales, "q.wt.codes", q.wt.codes);
  OneDevice(op, "w", w, "q.wt.scales", q.wt.scales);
  Floats(op, dev, "w", w);
  if (dev == Device::kCPU) return cpu::QuantizeWeight128x128(q, w);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::QuantizeWeight128x128(q, w));
}

void Fp8GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w, const Tensor& counts,
                        bool accumulate) {
  const char* op = "fp8_grouped_matmul_nt";
  const Device dev = OneDevice(op, "out", out, "x", x.data, "w.codes", w.codes, "w.scales", w.scales);
  CheckOut(op, dev, out, /*allow_bf16=*/true);
  const Tensor groups = GroupsOr(counts, x.rows());
  if (dev == Device::kCPU) return cpu::Fp8GroupedMatmulNT(out, x, w, groups, accumulate);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::Fp8GroupedMatmulNT(out, x, w, groups, accumulate));
}

void Fp8GroupedMatmulTN(const Tensor& out, const Fp8Cols& a, const Fp8Cols& b, bool accumulate) {
  const char* op = "fp8_grouped_matmul_tn";
  const Device dev = OneDevice(op, "out", out, "a.codes", a.codes, "a.scales", a.scales, "b.codes", b.codes,
                               "b.scales", b.scales);
  CheckOut(op, dev, out, /*allow_bf16=*/false);
  if (dev == Device::kCPU) return cpu::Fp8GroupedMatmulTN(out, a, b, accumulate);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::Fp8GroupedMatmulTN(out, a, b, accumulate));
}

}  // namespace fathom::ops
