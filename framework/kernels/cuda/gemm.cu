#include <cublasLt.h>
#include <cuda_runtime.h>

#include <compare>
#include <map>
#include <vector>

#include "framework/cuda/check.h"
#include "framework/kernels/cuda/gemm.h"

namespace fathom::cuda {
namespace {

// Per-expert grouped calls create a plan per distinct row count, so the map would grow without bound over
// a long run; past this many plans it is emptied and refilled (dense shapes come back after one query).
constexpr size_t kMaxPlans = 4096;

// One problem as cuBLASLt sees it (column-major, after the row-major swap). The pointer alignments are
// part of the key because the heuristic may pick vectorised kernels that need them: the per-expert blocks
// of the grouped forms start at arbitrary row offsets.
struct PlanKey {
  int op_a, op_b;
  int64_t m, n, k, lda, ldb, ldc;
  int in, out;
  uint32_t align_a, align_b, align_c;
  auto operator<=>(const PlanKey&) const = default;
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

cudaDataType_t CudaType(DType t) { return t == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

uint32_t Alignment(const void* p) {
  auto addr = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && addr % align != 0) align /= 2;
  return align;
}

void CheckDTypes(const char* op, DType in, DType out) {
  const bool ok = (in == DType::kF32 && out == DType::kF32) ||
                  (in == DType::kBF16 && (out == DType::kBF16 || out == DType::kF32));
  FATHOM_CHECK(ok, "[", op, "] unsupported dtypes: inputs ", DTypeName(in), ", output ", DTypeName(out),
               " (supported: f32 -> f32, bf16 -> bf16, bf16 -> f32)");
}

void CheckDevice(const char* op, const Tensor& t, const char* name) {
  FATHOM_CHECK(t.device() == Device::kCUDA, "[", op, "] ", name, " ", t.shape_str(), " is on ",
               DeviceName(t.device()), ", expected a CUDA tensor");
}

// The operand pair of one call: both inputs share a dtype; the output decides the result precision.
void CheckOperands(const char* op, const Tensor& out, const Tensor& a, const Tensor& b) {
  CheckDevice(op, out, "out");
  CheckDevice(op, a, "x");
  CheckDevice(op, b, "w/y");
  FATHOM_CHECK(a.dtype() == b.dtype(), "[", op, "] inputs have different dtypes: ", DTypeName(a.dtype()),
               " and ", DTypeName(b.dtype()));
  CheckDTypes(op, a.dtype(), out.dtype());
}

// Host-side row offsets of the expert blocks; counts is the CPU i64 tensor of the grouped forms.
std::vector<int64_t> BlockOffsets(const char* op, const Tensor& counts, int64_t experts, int64_t rows) {
  FATHOM_CHECK(counts.device() == Device::kCPU && counts.dtype() == DType::kI64 && counts.numel() == experts,
               "[", op, "] counts must be a host i64 tensor of ", experts, " experts, got ",
               counts.shape_str(), " ", DTypeName(counts.dtype()), " on ", DeviceName(counts.device()));
  std::vector<int64_t> off(static_cast<size_t>(experts) + 1, 0);
  const int64_t* c = counts.data<int64_t>();
  for (int64_t e = 0; e < experts; ++e) {
    FATHOM_CHECK(c[e] >= 0, "[", op, "] expert ", e, " has a negative count ", c[e]);
    off[e + 1] = off[e] + c[e];
  }
  FATHOM_CHECK(off[experts] == rows, "[", op, "] counts sum to ", off[experts], " but there are ", rows,
               " rows");
  return off;
}

const char* Offset(const Tensor& t, int64_t elements) {
  return static_cast<const char*>(t.raw()) + static_cast<size_t>(elements) * DTypeSize(t.dtype());
}
char* MutableOffset(const Tensor& t, int64_t elements) {
  return static_cast<char*>(t.raw()) + static_cast<size_t>(elements) * DTypeSize(t.dtype());
}

}  // namespace

struct GemmContext::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::map<PlanKey, Plan> plans;
  int64_t heuristic_queries = 0;

  static void Destroy(Plan& p) {
    // No checks: this also runs while an error unwinds.
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.c) cublasLtMatrixLayoutDestroy(p.c);
    if (p.desc) cublasLtMatmulDescDestroy(p.desc);
  }

  void Clear() {
    for (auto& [key, plan] : plans) Destroy(plan);
    plans.clear();
  }

  const Plan& Find(const PlanKey& key) {
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    if (plans.size() >= kMaxPlans) Clear();
    Plan plan;
    // Emplace first so that a failed check below still leaves the handles to the destructor.
    Plan& p = plans.emplace(key, plan).first->second;
    // f32 compute for every dtype pair: CUBLAS_COMPUTE_32F never lowers f32 inputs to TF32.
    FATHOM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = static_cast<cublasOperation_t>(key.op_a);
    const cublasOperation_t op_b = static_cast<cublasOperation_t>(key.op_b);
    FATHOM_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    FATHOM_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    const cudaDataType_t in = CudaType(static_cast<DType>(key.in));
    const cudaDataType_t out = CudaType(static_cast<DType>(key.out));
    // Stored (pre-op) shapes, column-major.
    const bool ta = op_a == CUBLAS_OP_T, tb = op_b == CUBLAS_OP_T;
    FATHOM_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.a, in, ta ? key.k : key.m, ta ? key.m : key.k, key.lda));
    FATHOM_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.b, in, tb ? key.n : key.k, tb ? key.k : key.n, key.ldb));
    FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, out, key.m, key.n, key.ldc));

    cublasLtMatmulPreference_t pref = nullptr;
    FATHOM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = workspace_bytes;
    auto set = [&](cublasLtMatmulPreferenceAttributes_t attr, const void* value, size_t bytes) {
      FATHOM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, value, bytes));
    };
    set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align_a, sizeof(key.align_a));
    set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align_b, sizeof(key.align_b));
    set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align_c, sizeof(key.align_c));
    set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align_c, sizeof(key.align_c));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    ++heuristic_queries;
    FATHOM_CUBLAS_CHECK(st);
    FATHOM_CHECK(found > 0, "[gemm] cuBLASLt has no algorithm for the column-major problem m ", key.m, " n ",
                 key.n, " k ", key.k, " lda ", key.lda, " ldb ", key.ldb, " ldc ", key.ldc, " op_a ",
                 key.op_a, " op_b ", key.op_b, " in ", DTypeName(static_cast<DType>(key.in)), " out ",
                 DTypeName(static_cast<DType>(key.out)), " alignments ", key.align_a, "/", key.align_b, "/",
                 key.align_c);
    p.algo = result.algo;
    return p;
  }
};

GemmContext::GemmContext(size_t workspace_bytes) : impl_(std::make_unique<Impl>()) {
  FATHOM_CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  impl_->workspace_bytes = workspace_bytes;
  if (workspace_bytes) FATHOM_CUDA_CHECK(cudaMalloc(&impl_->workspace, workspace_bytes));
}

GemmContext::~GemmContext() {
  impl_->Clear();
  if (impl_->workspace) cudaFree(impl_->workspace);
  if (impl_->handle) cublasLtDestroy(impl_->handle);
}

size_t GemmContext::plan_count() const { return impl_->plans.size(); }
int64_t GemmContext::heuristic_queries() const { return impl_->heuristic_queries; }

void GemmContext::Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a,
                       int64_t lda, const void* b, int64_t ldb, DType in, bool accumulate, void* c,
                       int64_t ldc, DType out, Stream stream) {
  CheckDTypes("gemm", in, out);
  FATHOM_CHECK(m >= 0 && n >= 0 && k >= 0, "[gemm] negative size m ", m, " n ", n, " k ", k);
  FATHOM_CHECK(lda >= (trans_a ? m : k) && ldb >= (trans_b ? k : n) && ldc >= n,
               "[gemm] leading dimensions lda ", lda, " ldb ", ldb, " ldc ", ldc, " too small for m ", m,
               " n ", n, " k ", k, trans_a ? " (a transposed)" : "", trans_b ? " (b transposed)" : "");
  if (m == 0 || n == 0) return;
  cudaStream_t s = stream;
  if (k == 0) {
    // An empty sum: cuBLASLt rejects k = 0 layouts, and the contract is simply C = 0 (or C unchanged).
    if (!accumulate) {
      const size_t es = DTypeSize(out);
      FATHOM_CUDA_CHECK(cudaMemset2DAsync(c, static_cast<size_t>(ldc) * es, 0, static_cast<size_t>(n) * es,
                                          static_cast<size_t>(m), s));
    }
    return;
  }
  FATHOM_CHECK(a != nullptr && b != nullptr && c != nullptr, "[gemm] null operand");
  // Row-major C (M, N) = op(A) op(B) is column-major C^T (N, M) = op(B)^T op(A)^T: B goes first.
  PlanKey key{trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
              trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
              n,
              m,
              k,
              ldb,
              lda,
              ldc,
              static_cast<int>(in),
              static_cast<int>(out),
              Alignment(b),
              Alignment(a),
              Alignment(c)};
  const Plan& plan = impl_->Find(key);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  FATHOM_CUBLAS_CHECK(cublasLtMatmul(impl_->handle, plan.desc, &alpha, b, plan.a, a, plan.b, &beta, c, plan.c,
                                     c, plan.c, &plan.algo, impl_->workspace, impl_->workspace_bytes, s));
}

void GemmContext::MatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate,
                           Stream stream) {
  CheckOperands("matmul_nt_cuda", out, x, w);
  FATHOM_CHECK(out.ndim() == 2 && x.ndim() == 2 && w.ndim() == 2 && x.dim(1) == w.dim(1) &&
                   out.dim(0) == x.dim(0) && out.dim(1) == w.dim(0),
               "[matmul_nt_cuda] out ", out.shape_str(), " x ", x.shape_str(), " w ", w.shape_str());
  Gemm(false, true, x.dim(0), w.dim(0), x.dim(1), x.raw(), x.dim(1), w.raw(), w.dim(1), x.dtype(), accumulate,
       out.raw(), out.dim(1), out.dtype(), stream);
}

void GemmContext::MatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate,
                           Stream stream) {
  CheckOperands("matmul_nn_cuda", out, x, w);
  FATHOM_CHECK(out.ndim() == 2 && x.ndim() == 2 && w.ndim() == 2 && x.dim(1) == w.dim(0) &&
                   out.dim(0) == x.dim(0) && out.dim(1) == w.dim(1),
               "[matmul_nn_cuda] out ", out.shape_str(), " x ", x.shape_str(), " w ", w.shape_str());
  Gemm(false, false, x.dim(0), w.dim(1), x.dim(1), x.raw(), x.dim(1), w.raw(), w.dim(1), x.dtype(),
       accumulate, out.raw(), out.dim(1), out.dtype(), stream);
}

void GemmContext::MatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, bool accumulate,
                           Stream stream) {
  CheckOperands("matmul_tn_cuda", out, x, y);
  FATHOM_CHECK(out.ndim() == 2 && x.ndim() == 2 && y.ndim() == 2 && x.dim(0) == y.dim(0) &&
                   out.dim(0) == x.dim(1) && out.dim(1) == y.dim(1),
               "[matmul_tn_cuda] out ", out.shape_str(), " x ", x.shape_str(), " y ", y.shape_str());
  Gemm(true, false, x.dim(1), y.dim(1), x.dim(0), x.raw(), x.dim(1), y.raw(), y.dim(1), x.dtype(), accumulate,
       out.raw(), out.dim(1), out.dtype(), stream);
}

void GemmContext::GroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                                  bool accumulate, Stream stream) {
  CheckOperands("grouped_matmul_nt_cuda", out, x, w);
  FATHOM_CHECK(w.ndim() == 3 && x.ndim() == 2 && out.ndim() == 2 && x.dim(1) == w.dim(2) &&
                   out.dim(0) == x.dim(0) && out.dim(1) == w.dim(1),
               "[grouped_matmul_nt_cuda] out ", out.shape_str(), " x ", x.shape_str(), " w ", w.shape_str());
  const int64_t experts = w.dim(0), nn = w.dim(1), kk = w.dim(2);
  std::vector<int64_t> off = BlockOffsets("grouped_matmul_nt_cuda", counts, experts, x.dim(0));
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t rows = off[e + 1] - off[e];
    if (rows == 0) continue;
    Gemm(false, true, rows, nn, kk, Offset(x, off[e] * kk), kk, Offset(w, e * nn * kk), kk, x.dtype(),
         accumulate, MutableOffset(out, off[e] * nn), nn, out.dtype(), stream);
  }
}

void GemmContext::GroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                                  bool accumulate, Stream stream) {
  CheckOperands("grouped_matmul_nn_cuda", out, x, w);
  FATHOM_CHECK(w.ndim() == 3 && x.ndim() == 2 && out.ndim() == 2 && x.dim(1) == w.dim(1) &&
                   out.dim(0) == x.dim(0) && out.dim(1) == w.dim(2),
               "[grouped_matmul_nn_cuda] out ", out.shape_str(), " x ", x.shape_str(), " w ", w.shape_str());
  const int64_t experts = w.dim(0), kk = w.dim(1), nn = w.dim(2);
  std::vector<int64_t> off = BlockOffsets("grouped_matmul_nn_cuda", counts, experts, x.dim(0));
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t rows = off[e + 1] - off[e];
    if (rows == 0) continue;
    Gemm(false, false, rows, nn, kk, Offset(x, off[e] * kk), kk, Offset(w, e * kk * nn), nn, x.dtype(),
         accumulate, MutableOffset(out, off[e] * nn), nn, out.dtype(), stream);
  }
}

void GemmContext::GroupedMatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, const Tensor& counts,
                                  Stream stream) {
  CheckOperands("grouped_matmul_tn_cuda", out, x, y);
  FATHOM_CHECK(out.ndim() == 3 && x.ndim() == 2 && y.ndim() == 2 && x.dim(0) == y.dim(0) &&
                   x.dim(1) == out.dim(1) && y.dim(1) == out.dim(2),
               "[grouped_matmul_tn_cuda] out ", out.shape_str(), " x ", x.shape_str(), " y ", y.shape_str());
  const int64_t experts = out.dim(0), mm = out.dim(1), nn = out.dim(2);
  std::vector<int64_t> off = BlockOffsets("grouped_matmul_tn_cuda", counts, experts, x.dim(0));
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t rows = off[e + 1] - off[e];
    if (rows == 0) continue;
    Gemm(true, false, mm, nn, rows, Offset(x, off[e] * mm), mm, Offset(y, off[e] * nn), nn, x.dtype(),
         /*accumulate=*/true, MutableOffset(out, e * mm * nn), nn, out.dtype(), stream);
  }
}

}  // namespace fathom::cuda
