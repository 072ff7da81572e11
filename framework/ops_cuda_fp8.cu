// The CUDA half of framework/ops.h's FP8 ops: each queues its kernel on the current OpContext's stream; the
// block-scaled GEMMs run through the context's Fp8GemmContext and take the scratch for the gathered tile
// scales from the current DevicePool (released after the call, reused in the pool's stream order).
#include "framework/kernels/cuda/fp8_gemm.h"
#include "framework/kernels/cuda/fp8_operands.h"
#include "framework/ops.h"
#include "framework/ops_cuda.h"

namespace fathom::ops {

cuda::Fp8GemmContext& OpContext::fp8_gemm() {
  if (!fp8_gemm_) fp8_gemm_ = std::make_shared<cuda::Fp8GemmContext>(gemm_workspace_bytes_);
  return *fp8_gemm_;
}

namespace cuda_impl {
namespace {

OpContext& Context(const char* op) {
  OpContext* c = CurrentOpContext();
  FATHOM_CHECK(c != nullptr, "[", op,
               "] CUDA tensors but no ops::OpContext on this thread: install one with ops::OpContextScope "
               "(framework/ops.h)");
  return *c;
}

}  // namespace

void QuantizeRows1x128(const Fp8Rows& q, const Tensor& x) {
  cuda::QuantizeRows1x128(q, x, Context("quantize_rows_1x128").stream());
}

void DequantizeRows1x128(const Tensor& out, const Fp8Rows& q) {
  cuda::DequantizeRows1x128(out, q, Context("dequantize_rows_1x128").stream());
}

void QuantizeCols1x128(const Fp8Cols& q, const Tensor& x) {
  cuda::QuantizeCols1x128(q, x, Context("quantize_cols_1x128").stream());
}

void QuantizeCols1x128(const Fp8Cols& q, const Fp8Rows& x) {
  cuda::QuantizeCols1x128(q, x, Context("quantize_cols_1x128").stream());
}

void QuantizeWeight128x128(const Fp8Weight& q, const Tensor& w) {
  cuda::QuantizeWeight128x128(q, w, Context("quantize_weight_128x128").stream());
}

void Fp8GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w, const Tensor& counts,
                        bool accumulate) {
  const char* op = "fp8_grouped_matmul_nt";
  OpContext& ctx = Context(op);
  const int64_t elements = cuda::Fp8GemmContext::TileScaleElements(counts, x.cols);
  const Tensor scratch = Empty(op, {std::max<int64_t>(elements, 1)}, DType::kF32);
  ctx.fp8_gemm().GroupedMatmulNT(out, x, w, counts, accumulate, scratch, ctx.stream());
}

void Fp8GroupedMatmulTN(const Tensor& out, const Fp8Cols& a, const Fp8Cols& b, bool accumulate) {
  OpContext& ctx = Context("fp8_grouped_matmul_tn");
  ctx.fp8_gemm().GroupedMatmulTN(out, a, b, accumulate, ctx.stream());
}

}  // namespace cuda_impl
}  // namespace fathom::ops
