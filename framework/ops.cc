#include "framework/ops.h"

#include "framework/kernels/cpu/activation.h"
#include "framework/kernels/cpu/attention.h"
#include "framework/kernels/cpu/columns.h"
#include "framework/kernels/cpu/cross_entropy.h"
#include "framework/kernels/cpu/elementwise.h"
#include "framework/kernels/cpu/embedding.h"
#include "framework/kernels/cpu/gemm.h"
#include "framework/kernels/cpu/norm.h"
#include "framework/kernels/cpu/rope.h"

namespace fathom::ops {
namespace {

thread_local OpContext* current_context = nullptr;

#ifndef FATHOM_WITH_CUDA
// Unconditional, so that value-returning callers need no dummy return after it.
[[noreturn]] void NoCudaBackend(const char* op) {
  CheckFailed(__FILE__, __LINE__, "CUDA tensor",
              StreamCat("[", op, "] CUDA tensor but this build has no CUDA backend"));
}
#endif

// The device checks: every tensor defined and on the first one's device, which is returned.
void SameDevice(const char*, const char*, const Tensor&) {}

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
void FloatsOn(const char*, Device, const char*, const Tensor&) {}

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

void Index(const char* op, const char* name, const Tensor& t, DType dtype) {
  FATHOM_CHECK(t.dtype() == dtype, "[", op, "] ", name, " ", t.shape_str(), " is ", DTypeName(t.dtype()),
               ", expected ", DTypeName(dtype));
}

void HostCounts(const char* op, const Tensor& counts) {
  FATHOM_CHECK(counts.defined() && counts.device() == Device::kCPU && counts.dtype() == DType::kI64 &&
                   counts.ndim() == 1,
               "[", op, "] counts must be a HOST (E) i64 tensor, got ", counts.shape_str(), " ",
               DTypeName(counts.dtype()), " on ", DeviceName(counts.device()));
}

}  // namespace

#ifdef FATHOM_WITH_CUDA
#define FATHOM_OPS_ON_CUDA(op, call) call
#else
#define FATHOM_OPS_ON_CUDA(op, call) NoCudaBackend(op)
#endif

OpContext::OpContext(cuda::Stream stream, size_t gemm_workspace_bytes)
    : stream_(stream), gemm_workspace_bytes_(gemm_workspace_bytes) {}

OpContext::~OpContext() = default;

#ifndef FATHOM_WITH_CUDA
// The CUDA builds define these in ops_cuda.cu.
cuda::GemmContext& OpContext::gemm() { NoCudaBackend("op_context gemm"); }
const Tensor& OpContext::pinned_counts(int64_t) { NoCudaBackend("op_context pinned_counts"); }
#endif

OpContextScope::OpContextScope(OpContext& context) : previous_(current_context) {
  current_context = &context;
}
OpContextScope::~OpContextScope() { current_context = previous_; }
OpContext* CurrentOpContext() { return current_context; }

DType StatsDType(DType activation) { return activation == DType::kBF16 ? DType::kF32 : activation; }

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

void GroupedMatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, const Tensor& counts) {
  const Device dev = OneDevice("grouped_matmul_tn", "out", out, "x", x, "y", y);
  Floats("grouped_matmul_tn", dev, "out", out, "x", x, "y", y);
  HostCounts("grouped_matmul_tn", counts);
  if (dev == Device::kCPU) return cpu::GroupedMatmulTN(out, x, y, counts);
  FATHOM_OPS_ON_CUDA("grouped_matmul_tn",
                     cuda_impl::GroupedMatmul(cuda_impl::Form::kTN, out, x, y, counts, /*accumulate=*/true));
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
                          const Tensor& rstd) {
  const char* op = "rms_norm_backward_input";
  const Device dev = OneDevice(op, "dx", dx, "dy", dy, "x", x, "w", w, "rstd", rstd);
  Floats(op, dev, "x", x, "dx", dx, "dy", dy, "w", w, "rstd", rstd);
  if (dev == Device::kCPU) return cpu::RmsNormBackwardInput(dx, dy, x, w, rstd);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::RmsNormBackwardInput(dx, dy, x, w, rstd));
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

double CrossEntropyForward(const Tensor& lse, const Tensor& logits, const Tensor& labels,
                           int64_t ignore_index) {
  const Device dev = OneDevice("cross_entropy", "lse", lse, "logits", logits, "labels", labels);
  Index("cross_entropy", "labels", labels, DType::kI32);
  Floats("cross_entropy", dev, "logits", logits, "lse", lse);
  if (dev == Device::kCPU) return cpu::CrossEntropyForward(lse, logits, labels, ignore_index);
#ifdef FATHOM_WITH_CUDA
  return cuda_impl::CrossEntropyForward(lse, logits, labels, ignore_index);
#else
  NoCudaBackend("cross_entropy");
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

// ---- Element-wise
// ------------------------------------------------------------------------------------------

Tensor Add(const Tensor& a, const Tensor& b) {
  const Device dev = OneDevice("add", "a", a, "b", b);
  Floats("add", dev, "a", a, "b", b);
  if (dev == Device::kCPU) return cpu::Add(a, b);
#ifdef FATHOM_WITH_CUDA
  return cuda_impl::Add(a, b);
#else
  NoCudaBackend("add");
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
  NoCudaBackend("concat_last_dim");
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

// ---- Router and balance loss
// -------------------------------------------------------------------------------

void RouterSelect(const Tensor& topk_index, const Tensor& topk_weight, const Tensor& scores,
                  const Tensor& logits, const Tensor& bias, const RouterDims& d) {
  const char* op = "router_select";
  const Device dev = OneDevice(op, "topk_index", topk_index, "topk_weight", topk_weight, "scores", scores,
                               "logits", logits, "bias", bias);
  Index(op, "topk_index", topk_index, DType::kI64);
  Floats(op, dev, "logits", logits, "scores", scores, "topk_weight", topk_weight, "bias", bias);
  if (dev == Device::kCPU) {
    cpu::SigmoidForward(scores, logits);
    return cpu::RouterSelect(topk_index, topk_weight, scores, bias, d);
  }
  FATHOM_OPS_ON_CUDA(op, cuda_impl::RouterSelect(topk_index, topk_weight, scores, logits, bias, d));
}

void RouterSelectBackward(const Tensor& dlogits, const Tensor& dweight, const Tensor& dscores,
                          const Tensor& scores, const Tensor& topk_index, const RouterDims& d) {
  const char* op = "router_select_backward";
  const Device dev =
      OneDevice(op, "dlogits", dlogits, "dweight", dweight, "scores", scores, "topk_index", topk_index);
  Index(op, "topk_index", topk_index, DType::kI64);
  Floats(op, dev, "scores", scores, "dlogits", dlogits, "dweight", dweight);
  if (dscores.defined()) {
    OneDevice(op, "dlogits", dlogits, "dscores", dscores);
    Floats(op, dev, "scores", scores, "dscores", dscores);
  }
  if (dev == Device::kCPU) {
    // The router's composition: the selection gradient accumulates onto dscores (or zeros), then the
    // sigmoid's derivative is applied in place.
    Tensor ds = dlogits;  // a view: Zero and CopyFrom are non-const members
    if (!dscores.defined()) {
      ds.Zero();
    } else if (dscores.raw() != dlogits.raw()) {
      ds.CopyFrom(dscores);
    }
    cpu::RouterSelectBackward(dlogits, dweight, scores, topk_index, d);
    return cpu::SigmoidBackward(dlogits, dlogits, scores);
  }
  FATHOM_OPS_ON_CUDA(op, cuda_impl::RouterSelectBackward(dlogits, dweight, dscores, scores, topk_index, d));
}

double SequenceBalanceLoss(const Tensor& scores, const Tensor& topk_index, int64_t batch, int64_t seq) {
  const char* op = "sequence_balance_loss";
  const Device dev = OneDevice(op, "scores", scores, "topk_index", topk_index);
  Index(op, "topk_index", topk_index, DType::kI64);
  Floats(op, dev, "scores", scores);
  if (dev == Device::kCPU) return cpu::SequenceBalanceLoss(scores, topk_index, batch, seq);
#ifdef FATHOM_WITH_CUDA
  return cuda_impl::SequenceBalanceLoss(scores, topk_index, batch, seq);
#else
  NoCudaBackend(op);
#endif
}

void SequenceBalanceLossBackward(const Tensor& dscores, const Tensor& scores, const Tensor& topk_index,
                                 int64_t batch, int64_t seq, double weight) {
  const char* op = "sequence_balance_loss_backward";
  const Device dev = OneDevice(op, "dscores", dscores, "scores", scores, "topk_index", topk_index);
  Index(op, "topk_index", topk_index, DType::kI64);
  Floats(op, dev, "scores", scores, "dscores", dscores);
  if (dev == Device::kCPU)
    return cpu::SequenceBalanceLossBackward(dscores, scores, topk_index, batch, seq, weight);
  FATHOM_OPS_ON_CUDA(op,
                     cuda_impl::SequenceBalanceLossBackward(dscores, scores, topk_index, batch, seq, weight));
}

// ---- Token permutation and combine -----------------------------------------------------------------------

void MoePermute(const Tensor& x_perm, const Tensor& row_slot, const Tensor& counts, const Tensor& x,
                const Tensor& topk_index) {
  const char* op = "moe_permute";
  const Device dev = OneDevice(op, "x_perm", x_perm, "row_slot", row_slot, "x", x, "topk_index", topk_index);
  Index(op, "row_slot", row_slot, DType::kI64);
  Index(op, "topk_index", topk_index, DType::kI64);
  Floats(op, dev, "x", x, "x_perm", x_perm);
  HostCounts(op, counts);
  if (dev == Device::kCPU) return cpu::MoePermute(x_perm, row_slot, counts, x, topk_index);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::MoePermute(x_perm, row_slot, counts, x, topk_index));
}

void MoePermuteBackward(const Tensor& dx, const Tensor& dx_perm, const Tensor& row_slot, bool accumulate) {
  const char* op = "moe_permute_backward";
  const Device dev = OneDevice(op, "dx", dx, "dx_perm", dx_perm, "row_slot", row_slot);
  Index(op, "row_slot", row_slot, DType::kI64);
  Floats(op, dev, "dx_perm", dx_perm, "dx", dx);
  if (dev == Device::kCPU) return cpu::MoePermuteBackward(dx, dx_perm, row_slot, accumulate);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::MoePermuteBackward(dx, dx_perm, row_slot, accumulate));
}

void MoeCombine(const Tensor& out, const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight) {
  const char* op = "moe_combine";
  const Device dev =
      OneDevice(op, "out", out, "y_perm", y_perm, "row_slot", row_slot, "topk_weight", topk_weight);
  Index(op, "row_slot", row_slot, DType::kI64);
  Floats(op, dev, "y_perm", y_perm, "out", out, "topk_weight", topk_weight);
  if (dev == Device::kCPU) return cpu::MoeCombine(out, y_perm, row_slot, topk_weight);
  FATHOM_OPS_ON_CUDA(op, cuda_impl::MoeCombine(out, y_perm, row_slot, topk_weight));
}

void MoeCombineBackward(const Tensor& dy_perm, const Tensor& dweight, const Tensor& dout,
                        const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight) {
  const char* op = "moe_combine_backward";
  const Device dev = OneDevice(op, "dy_perm", dy_perm, "dweight", dweight, "dout", dout, "y_perm", y_perm,
                               "row_slot", row_slot, "topk_weight", topk_weight);
  Index(op, "row_slot", row_slot, DType::kI64);
  Floats(op, dev, "dout", dout, "y_perm", y_perm, "dy_perm", dy_perm, "dweight", dweight, "topk_weight",
         topk_weight);
  if (dev == Device::kCPU)
    return cpu::MoeCombineBackward(dy_perm, dweight, dout, y_perm, row_slot, topk_weight);
  FATHOM_OPS_ON_CUDA(op,
                     cuda_impl::MoeCombineBackward(dy_perm, dweight, dout, y_perm, row_slot, topk_weight));
}

// ---- Copies
// ------------------------------------------------------------------------------------------------

void Copy(const Tensor& dst, const Tensor& src) {
  FATHOM_CHECK(dst.defined() && src.defined(), "[copy] undefined tensor");
  FATHOM_CHECK(dst.shape() == src.shape() && dst.dtype() == src.dtype(), "[copy] ", src.shape_str(), " ",
               DTypeName(src.dtype()), " into ", dst.shape_str(), " ", DTypeName(dst.dtype()));
  if (dst.device() == Device::kCPU && src.device() == Device::kCPU) {
    Tensor view = dst;
    return view.CopyFrom(src);
  }
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
  NoCudaBackend("to");
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
  NoCudaBackend("clone");
#endif
}

}  // namespace fathom::ops
