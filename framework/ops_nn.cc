#include "framework/kernels/cpu/activation.h"
#include "framework/kernels/cpu/attention.h"
#include "framework/kernels/cpu/cross_entropy.h"
#include "framework/kernels/cpu/embedding.h"
#include "framework/kernels/cpu/gemm.h"
#include "framework/kernels/cpu/norm.h"
#include "framework/kernels/cpu/rope.h"
#include "framework/ops.h"
#include "framework/ops_checks.h"
#include "framework/ops_cuda.h"

// The neural-network ops of framework/ops.h: GEMMs (dense and grouped), RMSNorm, RoPE, causal attention,
// activations, embedding and cross-entropy.
namespace fathom::ops {

using checks::Floats;
using checks::FloatsOn;
using checks::HostCounts;
using checks::Index;
using checks::OneDevice;
using checks::SameDevice;

// ---- GEMMs
// -------------------------------------------------------------------------------------------------

void MatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate) {
  const Device dev = OneDevice("matmul_nt", "out", out, "x", x, "w", w);
  Floats("matmul_nt", dev, "out", out, "x", x, "w", w);
  if (dev == Device::kCPU) return cpu::MatmulNT(out, x, w, accumulate);
  FATHOM_OPS_ON_CUDA("matmul_nt", cuda_impl::Matmul(cuda_impl::Form::kNT, out, x, w, accumulate));
}

void MatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate) {
  const Device dev = OneDevice("matmul_nn", "out", out, "x", x, "w", w);
  Floats("matmul_nn", dev, "out", out, "x", x, "w", w);
  if (dev == Device::kCPU) return cpu::MatmulNN(out, x, w, accumulate);
  FATHOM_OPS_ON_CUDA("matmul_nn", cuda_impl::Matmul(cuda_impl::Form::kNN, out, x, w, accumulate));
}

void MatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, bool accumulate) {
  const Device dev = OneDevice("matmul_tn", "out", out, "x", x, "y", y);
  Floats("matmul_tn", dev, "out", out, "x", x, "y", y);
  if (dev == Device::kCPU) return cpu::MatmulTN(out, x, y, accumulate);
  FATHOM_OPS_ON_CUDA("matmul_tn", cuda_impl::Matmul(cuda_impl::Form::kTN, out, x, y, accumulate));
}

void GroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                     bool accumulate) {
  const Device dev = OneDevice("grouped_matmul_nt", "out", out, "x", x, "w", w);
  Floats("grouped_matmul_nt", dev, "out", out, "x", x, "w", w);
  HostCounts("grouped_matmul_nt", counts);
  if (dev == Device::kCPU) return cpu::GroupedMatmulNT(out, x, w, counts, accumulate);
  FATHOM_OPS_ON_CUDA("grouped_matmul_nt",
                     cuda_impl::GroupedMatmul(cuda_impl::Form::kNT, out, x, w, counts, accumulate));
}

void GroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                     bool accumulate) {
  const Device dev = OneDevice("grouped_matmul_nn", "out", out, "x", x, "w", w);
  Floats("grouped_matmul_nn", dev, "out", out, "x", x, "w", w);
  HostCounts("grouped_matmul_nn", counts);
  if (dev == Device::kCPU) return cpu::GroupedMatmulNN(out, x, w, counts, accumulate);
  FATHOM_OPS_ON_CUDA("grouped_matmul_nn",
                     cuda_impl::GroupedMatmul(cuda_impl::Form::kNN, out, x, w, counts, accumulate));
}

void GroupedMatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, const Tensor& counts,
                     bool accumulate) {
  const Device dev = OneDevice("grouped_matmul_tn", "out", out, "x", x, "y", y);
  Floats("grouped_matmul_tn", dev, "out", out, "x", x, "y", y);
  HostCounts("grouped_matmul_tn", counts);
  if (dev == Device::kCPU) return cpu::GroupedMatmulTN(out, x, y, counts, accumulate);
  FATHOM_OPS_ON_CUDA("grouped_matmul_tn",
                     cuda_impl::GroupedMatmul(cuda_impl::Form::kTN, out, x, y, counts, accumulate));
}

// ---- RMSNorm
// -----------------------------------------------------------------------------------------------

void RmsNormForward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w, double eps) {
  const Device dev = OneDevice("rms_norm", "out", out, "rstd", rstd, "x", x, "w", w);
  Floats("rms_norm", dev, "x", x, "out", out, "w", w, "rstd", rstd);
  if (dev == Device::kCPU) return cpu::RmsNormForward(out, rstd, x, w, eps);
  FATHOM_OPS_ON_CUDA("rms_norm", cuda_impl::RmsNormForward(out, rstd, x, w, eps));
}

void RmsNormBackwardInput(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& w,
                          const Tensor& rstd, const Tensor& residual) {
  const char* op = "rms_norm_backward_input";
  const Device dev = OneDevice(op, "dx", dx, "dy", dy, "x", x, "w", w, "rstd", rstd);
  Floats(op, dev, "x", x, "dx", dx, "dy", dy, "w", w, "rstd", rstd);
  if (residual.defined()) {
    FATHOM_CHECK(residual.device() == dev && residual.dtype() == dx.dtype() && residual.shape() == dx.shape(),
                 "[", op, "] residual ", residual.shape_str(), " ", DTypeName(residual.dtype()), " on ",
                 DeviceName(residual.device()), ", expected dx's ", dx.shape_str(), " ",
                 DTypeName(dx.dtype()), " on ", DeviceName(dev));
  }
  if (dev == Device::kCPU) return cpu::RmsNormBackwardInput(dx, dy, x, w, rstd, residual);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::RmsNormBackwardInput(dx, dy, x, w, rstd, residual));
}

void RmsNormBackwardWeight(const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& rstd) {
  const char* op = "rms_norm_backward_weight";
  const Device dev = OneDevice(op, "dw", dw, "dy", dy, "x", x, "rstd", rstd);
  Floats(op, dev, "x", x, "dw", dw, "dy", dy, "rstd", rstd);
  if (dev == Device::kCPU) return cpu::RmsNormBackwardWeight(dw, dy, x, rstd);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::RmsNormBackwardWeight(dw, dy, x, rstd));
}

// ---- RoPE
// ----------------------------------------------------------------------------------------------------

void RopeForward(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved) {
  const Device dev = OneDevice("rope", "out", out, "x", x, "cos", cos, "sin", sin);
  Floats("rope", dev, "x", x, "out", out, "cos", cos, "sin", sin);
  if (dev == Device::kCPU) return cpu::RopeForward(out, x, cos, sin, interleaved);
  FATHOM_OPS_ON_CUDA("rope", cuda_impl::Rope(/*backward=*/false, out, x, cos, sin, interleaved));
}

void RopeBackward(const Tensor& dx, const Tensor& dout, const Tensor& cos, const Tensor& sin,
                  bool interleaved) {
  const Device dev = OneDevice("rope_backward", "dx", dx, "dout", dout, "cos", cos, "sin", sin);
  Floats("rope_backward", dev, "dout", dout, "dx", dx, "cos", cos, "sin", sin);
  if (dev == Device::kCPU) return cpu::RopeBackward(dx, dout, cos, sin, interleaved);
  FATHOM_OPS_ON_CUDA("rope_backward", cuda_impl::Rope(/*backward=*/true, dx, dout, cos, sin, interleaved));
}

// ---- Causal attention
// --------------------------------------------------------------------------------------

void CausalAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, double scale) {
  const char* op = "causal_attention";
  const Device dev = OneDevice(op, "out", out, "lse", lse, "q", q, "k", k, "v", v);
  Floats(op, dev, "q", q, "k", k, "v", v, "out", out, "lse", lse);
  if (dev == Device::kCPU) return cpu::CausalAttentionForward(out, lse, q, k, v, scale);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::CausalAttentionForward(out, lse, q, k, v, scale));
}

void CausalAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                             const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, double scale) {
  const char* op = "causal_attention_backward";
  const Device dev = OneDevice(op, "dq", dq, "dk", dk, "dv", dv, "dout", dout, "q", q, "k", k, "v", v, "out",
                               out, "lse", lse);
  Floats(op, dev, "q", q, "k", k, "v", v, "out", out, "dout", dout, "dq", dq, "dk", dk, "dv", dv, "lse", lse);
  if (dev == Device::kCPU) return cpu::CausalAttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, scale);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::CausalAttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, scale));
}

// ---- Activations
// -------------------------------------------------------------------------------------------

void SigmoidForward(const Tensor& out, const Tensor& x) {
  const Device dev = OneDevice("sigmoid", "out", out, "x", x);
  Floats("sigmoid", dev, "x", x, "out", out);
  if (dev == Device::kCPU) return cpu::SigmoidForward(out, x);
  FATHOM_OPS_ON_CUDA("sigmoid", cuda_impl::SigmoidForward(out, x));
}

void SigmoidBackward(const Tensor& dx, const Tensor& dy, const Tensor& y) {
  const Device dev = OneDevice("sigmoid_backward", "dx", dx, "dy", dy, "y", y);
  Floats("sigmoid_backward", dev, "y", y, "dx", dx, "dy", dy);
  if (dev == Device::kCPU) return cpu::SigmoidBackward(dx, dy, y);
  FATHOM_OPS_ON_CUDA("sigmoid_backward", cuda_impl::SigmoidBackward(dx, dy, y));
}

void SwiGluForward(const Tensor& out, const Tensor& gate, const Tensor& up) {
  const Device dev = OneDevice("swiglu", "out", out, "gate", gate, "up", up);
  Floats("swiglu", dev, "gate", gate, "up", up, "out", out);
  if (dev == Device::kCPU) return cpu::SwiGluForward(out, gate, up);
  FATHOM_OPS_ON_CUDA("swiglu", cuda_impl::SwiGluForward(out, gate, up));
}

void SwiGluBackward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                    const Tensor& up) {
  const char* op = "swiglu_backward";
  const Device dev = OneDevice(op, "dgate", dgate, "dup", dup, "dout", dout, "gate", gate, "up", up);
  Floats(op, dev, "gate", gate, "up", up, "dout", dout, "dgate", dgate, "dup", dup);
  if (dev == Device::kCPU) return cpu::SwiGluBackward(dgate, dup, dout, gate, up);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::SwiGluBackward(dgate, dup, dout, gate, up));
}

// ---- Embedding
// ---------------------------------------------------------------------------------------------

void EmbeddingForward(const Tensor& out, const Tensor& ids, const Tensor& table) {
  const Device dev = OneDevice("embedding", "out", out, "ids", ids, "table", table);
  Index("embedding", "ids", ids, DType::kI32);
  // The twin copies rows as bytes, so it would not notice a dtype mismatch on its own.
  FATHOM_CHECK(out.dtype() == table.dtype(), "[embedding] out is ", DTypeName(out.dtype()), " but table is ",
               DTypeName(table.dtype()));
  if (dev == Device::kCPU) return cpu::EmbeddingForward(out, ids, table);
  FATHOM_OPS_ON_CUDA("embedding", cuda_impl::EmbeddingForward(out, ids, table));
}

void EmbeddingBackward(const Tensor& dtable, const Tensor& ids, const Tensor& dy) {
  const Device dev = OneDevice("embedding_backward", "dtable", dtable, "ids", ids, "dy", dy);
  Index("embedding_backward", "ids", ids, DType::kI32);
  Floats("embedding_backward", dev, "dtable", dtable, "dy", dy);
  if (dev == Device::kCPU) return cpu::EmbeddingBackward(dtable, ids, dy);
  FATHOM_OPS_ON_CUDA("embedding_backward", cuda_impl::EmbeddingBackward(dtable, ids, dy));
}

// ---- Cross-entropy
// -----------------------------------------------------------------------------------------

Tensor CrossEntropyForward(const Tensor& lse, const Tensor& logits, const Tensor& labels,
                           int64_t ignore_index) {
  const Device dev = OneDevice("cross_entropy", "lse", lse, "logits", logits, "labels", labels);
  Index("cross_entropy", "labels", labels, DType::kI32);
  Floats("cross_entropy", dev, "logits", logits, "lse", lse);
  if (dev == Device::kCPU) {
    return Tensor::FromVector({cpu::CrossEntropyForward(lse, logits, labels, ignore_index)}, {1},
                              DType::kF64);
  }
#ifdef FATHOM_WITH_CUDA
  return cuda_impl::CrossEntropyForward(lse, logits, labels, ignore_index);
#else
  checks::NoCudaBackend("cross_entropy");
#endif
}

void CrossEntropyBackward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                          const Tensor& labels, int64_t ignore_index, double scale) {
  const char* op = "cross_entropy_backward";
  const Device dev = OneDevice(op, "dlogits", dlogits, "logits", logits, "lse", lse, "labels", labels);
  Index(op, "labels", labels, DType::kI32);
  Floats(op, dev, "logits", logits, "dlogits", dlogits, "lse", lse);
  if (dev == Device::kCPU)
    return cpu::CrossEntropyBackward(dlogits, logits, lse, labels, ignore_index, scale);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::CrossEntropyBackward(dlogits, logits, lse, labels, ignore_index, scale));
}

}  // namespace fathom::ops
