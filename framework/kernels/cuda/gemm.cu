#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <compare>
#include <map>
#include <unordered_map>
#include <vector>

#include "framework/cuda/check.h"
#include "framework/kernels/cuda/gemm.h"

namespace fathom::cuda {
namespace {

// Per-expert grouped calls create a plan per distinct row count, so the map would grow without bound over
// a long run; past this many plans it is emptied and refilled (dense shapes come back after one query).
constexpr size_t kMaxPlans = 4096;

// The bucketed grouped path spreads the experts of one call over this many internal streams, each with
// its own slice of the workspace, so that several small per-expert GEMMs run at once and fill the SMs
// (one expert's M ~ 1000 rows gives ~50 output tiles, well under the H100's 132 SMs).
constexpr int kGroupStreams = 4;

// Bound on the remembered (bucket plan, exact size) -> algorithm checks; past it they are forgotten and
// re-checked (cheap: cublasLtMatmulAlgoCheck, no heuristic query).
constexpr size_t kMaxCheckedSizes = size_t{1} << 16;

// Which dimension of a grouped call's cuBLASLt (column-major) problem varies with the expert's row count:
// n for the NT/NN forms (row-major M), k for the TN form (the reduction over the expert's rows).
enum class Ragged { kN, kK };

// Row-count bucket of the grouped path: 64, 96, 128, 192, 256, ... (two per octave); the heuristic is
// asked once per bucket, for the bucket's largest size, and each exact size is then validated with
// cublasLtMatmulAlgoCheck.
int64_t BucketSize(int64_t v) {
  int64_t b = 64;
  while (true) {
    if (v <= b) return b;
    if (v <= b + b / 2) return b + b / 2;
    b *= 2;
  }
}

// One problem as cuBLASLt sees it (column-major, after the row-major swap). The pointer alignments are
// part of the key because the heuristic may pick vectorised kernels that need them: the per-expert blocks
// of the grouped forms start at arbitrary row offsets.
struct PlanKey {
  int op_a, op_b;
  int64_t m, n, k, lda, ldb, ldc;
  int in, out;
  uint32_t align_a, align_b, align_c;
  // Strided batches (the padded expert layout): batch > 1 problems, matrix i of each operand at
  // i * stride elements from the first.
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
  auto operator<=>(const PlanKey&) const = default;
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

// Rewrites the rows/cols of a plan's three layouts for the column-major problem (m, n, k) of `key`'s
// transposes; the layouts' types and leading dimensions stay. cuBLASLt reads descriptors only inside a
// call, so rewriting them between calls is safe while earlier work is still queued.
void SetLayoutSizes(const Plan& p, const PlanKey& key, int64_t m, int64_t n, int64_t k) {
  const bool ta = key.op_a == CUBLAS_OP_T, tb = key.op_b == CUBLAS_OP_T;
  auto set = [](cublasLtMatrixLayout_t l, int64_t rows, int64_t cols) {
    const uint64_t r = static_cast<uint64_t>(rows), c = static_cast<uint64_t>(cols);
    FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_ROWS, &r, sizeof(r)));
    FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_COLS, &c, sizeof(c)));
  };
  set(p.a, ta ? k : m, ta ? m : k);
  set(p.b, tb ? n : k, tb ? k : n);
  set(p.c, m, n);
}

// One expert's row-major GEMM of a grouped call (the arguments of GemmContext::Gemm that vary).
struct ExpertGemm {
  int64_t m, n, k;
  const void* a;
  const void* b;
  void* c;
};

cudaDataType_t CudaType(DType t) { return t == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

uint32_t Alignment(const void* p) {
  auto addr = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && addr % align != 0) align /= 2;
  return align;
}

// The column-major problem cuBLASLt sees for the row-major C (M, N) = op(A) (M, K) . op(B) (K, N): B goes
// first (C^T = op(B)^T op(A)^T), so the transposes, sizes, leading dimensions and alignments swap.
PlanKey RowMajorKey(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb,
                    int64_t ldc, DType in, DType out, uint32_t align_a, uint32_t align_b, uint32_t align_c) {
  return PlanKey{trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                 trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                 n,
                 m,
                 k,
                 ldb,
                 lda,
                 ldc,
                 static_cast<int>(in),
                 static_cast<int>(out),
                 align_b,
                 align_a,
                 align_c};
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

// The rows of every expert block when all E > 1 blocks have the same non-zero count (the padded expert
// layout), else 0.
int64_t UniformRows(const std::vector<int64_t>& off) {
  const int64_t experts = static_cast<int64_t>(off.size()) - 1;
  if (experts < 2 || off[1] == 0) return 0;
  for (int64_t e = 1; e < experts; ++e)
    if (off[e + 1] - off[e] != off[1]) return 0;
  return off[1];
}

// True when every block's row count is a multiple of GemmContext::kTileRows (the tiled expert layout of
// layers/moe.h; empty experts allowed) and there are rows.
bool Tiled(const std::vector<int64_t>& off) {
  if (off.back() == 0) return false;
  for (size_t e = 0; e + 1 < off.size(); ++e)
    if ((off[e + 1] - off[e]) % GemmContext::kTileRows != 0) return false;
  return true;
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
  // A plan of the grouped path: descriptors whose sizes are rewritten per call; for the bucketed paths the
  // algorithm the heuristic gave for the bucket's largest size and, per exact ragged size, the algorithm
  // that passed cublasLtMatmulAlgoCheck (the bucket's, or an exact query's where the bucket's was
  // rejected); for kExactMultiStream, per exact ragged size, the heuristic's choice for that size.
  struct GroupPlan {
    Plan plan;
    bool bucket_queried = false;
    std::unordered_map<int64_t, cublasLtMatmulAlgo_t> checked, exact;
  };

  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::map<PlanKey, Plan> plans;
  std::map<PlanKey, GroupPlan> group_plans;  // keyed with the ragged dimension replaced by its bucket
  size_t checked_sizes = 0;
  int64_t heuristic_queries = 0;
  GroupedPath grouped_path = GroupedPath::kBucketedMultiStream;
  bool batch_uniform = true;
  // The pointer-array batches (Pointers: the tiled layout's tiles, and its wgrad's experts of one row
  // count): one plan per problem with the batch count left out of the key (rewritten per call), the
  // algorithms checked per batch count, and the device pointer arrays (A, B, C of every problem), refilled
  // per call on the caller's stream from a ring of pinned host slots. A copy from pageable memory may make
  // the driver wait for the stream (it stages the bytes first); from pinned memory it is queued like a
  // kernel, so the host keeps running ahead. A slot is refilled only after its previous copy has run (its
  // event), kPointerSlots calls later.
  struct TilePlan {
    Plan plan;
    std::unordered_map<int64_t, cublasLtMatmulAlgo_t> checked;
  };
  std::map<PlanKey, TilePlan> tile_plans;
  void* tile_pointers = nullptr;
  int64_t tile_capacity = 0;  // pointer triples the device buffer holds
  struct PointerSlot {
    const void** host = nullptr;  // pinned (cudaHostAlloc)
    int64_t capacity = 0;         // pointers
    cudaEvent_t copied = nullptr;
    bool pending = false;  // `copied` recorded after a copy from `host`
  };
  static constexpr int kPointerSlots = 64;
  std::array<PointerSlot, kPointerSlots> pointer_slots;
  int next_pointer_slot = 0;
  // The grouped path's internal streams, the events that fork them off and join them back to the caller's
  // stream, and the workspace slice each one uses (slice i at workspace + i * slice_bytes).
  std::array<cudaStream_t, kGroupStreams> streams{};
  cudaEvent_t fork = nullptr;
  std::array<cudaEvent_t, kGroupStreams> joins{};
  size_t slice_bytes = 0;

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
    for (auto& [key, tp] : tile_plans) Destroy(tp.plan);
    tile_plans.clear();
    for (auto& [key, gp] : group_plans) Destroy(gp.plan);
    group_plans.clear();
    checked_sizes = 0;
  }

  // Creates the matmul descriptor and the three layouts of `key`'s problem.
  static void Build(Plan& p, const PlanKey& key) {
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
    if (key.batch > 1) {
      const int32_t count = static_cast<int32_t>(key.batch);
      auto batch = [&](cublasLtMatrixLayout_t l, int64_t stride) {
        FATHOM_CUBLAS_CHECK(
            cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
        FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                             &stride, sizeof(stride)));
      };
      batch(p.a, key.stride_a);
      batch(p.b, key.stride_b);
      batch(p.c, key.stride_c);
    }
  }

  // The heuristic's best algorithm for the problem p's layouts currently describe (sizes as in `key`,
  // used for the error message), with at most ws bytes of workspace.
  cublasLtMatmulAlgo_t Query(const Plan& p, const PlanKey& key, size_t ws_bytes) {
    cublasLtMatmulPreference_t pref = nullptr;
    FATHOM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = ws_bytes;
    auto set = [&](cublasLtMatmulPreferenceAttributes_t attr, const void* value, size_t bytes) {
      const cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, attr, value, bytes);
      if (st != CUBLAS_STATUS_SUCCESS) cublasLtMatmulPreferenceDestroy(pref);
      FATHOM_CUBLAS_CHECK(st);
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
    return result.algo;
  }

  // The exact-problem plan of the dense forms (and of the kPerExpertExact grouped path).
  const Plan& Find(const PlanKey& key) {
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    if (plans.size() >= kMaxPlans) {
      for (auto& [k, plan] : plans) Destroy(plan);
      plans.clear();
    }
    // Emplace first so that a failed check below still leaves the handles to the destructor.
    Plan& p = plans.emplace(key, Plan{}).first->second;
    Build(p, key);
    p.algo = Query(p, key, workspace_bytes);
    return p;
  }

  // The grouped path's plan for the exact problem `key` (column-major sizes), its layouts set to key's
  // sizes, and the algorithm to run it with: with `exact_algos` the heuristic's choice for this exact size
  // (queried once per size), otherwise the bucket's algorithm where cublasLtMatmulAlgoCheck accepts it.
  // Steady state: two map look-ups and six attribute writes, no query.
  std::pair<const Plan*, const cublasLtMatmulAlgo_t*> FindGrouped(const PlanKey& key, Ragged ragged,
                                                                  bool exact_algos) {
    const int64_t size = ragged == Ragged::kN ? key.n : key.k;
    PlanKey bucket_key = key;
    (ragged == Ragged::kN ? bucket_key.n : bucket_key.k) = BucketSize(size);
    auto it = group_plans.find(bucket_key);
    if (it == group_plans.end()) {
      it = group_plans.emplace(bucket_key, GroupPlan{}).first;
      Build(it->second.plan, bucket_key);
    }
    GroupPlan& gp = it->second;
    auto& memo = exact_algos ? gp.exact : gp.checked;
    auto found = memo.find(size);
    if (found != memo.end()) {
      SetLayoutSizes(gp.plan, key, key.m, key.n, key.k);
      return {&gp.plan, &found->second};
    }
    if (checked_sizes >= kMaxCheckedSizes) {
      for (auto& [k, other] : group_plans) {
        other.checked.clear();
        other.exact.clear();
      }
      checked_sizes = 0;
    }
    ++checked_sizes;
    if (!exact_algos && !gp.bucket_queried) {
      // Layouts still at the bucket's sizes here (set at Build or restored below).
      SetLayoutSizes(gp.plan, bucket_key, bucket_key.m, bucket_key.n, bucket_key.k);
      gp.plan.algo = Query(gp.plan, bucket_key, slice_bytes);
      gp.bucket_queried = true;
    }
    SetLayoutSizes(gp.plan, key, key.m, key.n, key.k);
    if (exact_algos) return {&gp.plan, &memo.emplace(size, Query(gp.plan, key, slice_bytes)).first->second};
    // The bucket's algorithm may not fit this size (or want more workspace): then ask for this size exactly.
    return {&gp.plan, &memo.emplace(size, CheckedOrQueried(gp.plan, key, slice_bytes)).first->second};
  }

  // p.algo where cublasLtMatmulAlgoCheck accepts it for the sizes p's layouts now describe, within
  // ws_bytes of workspace; otherwise the heuristic's choice for those sizes.
  cublasLtMatmulAlgo_t CheckedOrQueried(const Plan& p, const PlanKey& key, size_t ws_bytes) {
    cublasLtMatmulHeuristicResult_t check{};
    const cublasStatus_t st = cublasLtMatmulAlgoCheck(handle, p.desc, p.a, p.b, p.c, p.c, &p.algo, &check);
    return st == CUBLAS_STATUS_SUCCESS && check.workspaceSize <= ws_bytes ? p.algo : Query(p, key, ws_bytes);
  }

  // One grouped call on the bucketed path: the experts' GEMMs (row-major, Gemm's argument convention,
  // every size > 0) with fixed transposes, leading dimensions and dtypes, on `s` or spread over the
  // internal streams.
  void RunGrouped(bool trans_a, bool trans_b, int64_t lda, int64_t ldb, int64_t ldc, DType in, DType out,
                  bool accumulate, Ragged ragged, const std::vector<ExpertGemm>& calls, cudaStream_t s) {
    if (calls.empty()) return;
    const bool spread = grouped_path != GroupedPath::kBucketed && calls.size() > 1;
    const int used = spread ? static_cast<int>(std::min<size_t>(kGroupStreams, calls.size())) : 1;
    if (spread) {
      FATHOM_CUDA_CHECK(cudaEventRecord(fork, s));
      for (int i = 0; i < used; ++i) FATHOM_CUDA_CHECK(cudaStreamWaitEvent(streams[i], fork, 0));
    }
    // Longest-processing-time assignment: each expert goes to the stream with the least work so far.
    std::array<double, kGroupStreams> load{};
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    for (const ExpertGemm& g : calls) {
      const int i = static_cast<int>(std::min_element(load.begin(), load.begin() + used) - load.begin());
      load[i] += static_cast<double>(g.m) * static_cast<double>(g.n) * static_cast<double>(g.k);
      const PlanKey key = RowMajorKey(trans_a, trans_b, g.m, g.n, g.k, lda, ldb, ldc, in, out, Alignment(g.a),
                                      Alignment(g.b), Alignment(g.c));
      auto [plan, algo] = FindGrouped(key, ragged, grouped_path == GroupedPath::kExactMultiStream);
      void* ws = slice_bytes ? static_cast<char*>(workspace) + static_cast<size_t>(i) * slice_bytes : nullptr;
      FATHOM_CUBLAS_CHECK(cublasLtMatmul(handle, plan->desc, &alpha, g.b, plan->a, g.a, plan->b, &beta, g.c,
                                         plan->c, g.c, plan->c, algo, ws, slice_bytes,
                                         spread ? streams[i] : s));
    }
    if (spread) {
      for (int i = 0; i < used; ++i) {
        FATHOM_CUDA_CHECK(cudaEventRecord(joins[i], streams[i]));
        FATHOM_CUDA_CHECK(cudaStreamWaitEvent(s, joins[i], 0));
      }
    }
  }

  // One cuBLASLt pointer-array batch of equal row-major problems (Gemm's convention), problem i reading
  // a[i], b[i] and writing c[i] (defined below).
  void Pointers(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                const std::vector<const void*>& a, int64_t lda, const std::vector<const void*>& b,
                int64_t ldb, const std::vector<void*>& c, int64_t ldc, DType in, DType out, bool accumulate,
                Stream stream);

  // The NT / NN grouped forms' common body (defined below).
  void RowBlocks(GemmContext& self, bool trans_b, int64_t nn, int64_t kk, const Tensor& out, const Tensor& x,
                 const Tensor& w, const std::vector<int64_t>& off, bool accumulate, Stream stream);

  // Gemm over `batch` strided problems (defined below).
  void Strided(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a, int64_t lda,
               int64_t stride_a, const void* b, int64_t ldb, int64_t stride_b, DType in, bool accumulate,
               void* c, int64_t ldc, int64_t stride_c, DType out, int64_t batch, Stream stream);

  // The grouped forms' common body (defined below, after Gemm).
  void Grouped(GemmContext& self, bool trans_a, bool trans_b, int64_t lda, int64_t ldb, int64_t ldc, DType in,
               DType out, bool accumulate, bool ragged_k, const std::vector<ExpertGemm>& calls,
               Stream stream);
};

GemmContext::GemmContext(size_t workspace_bytes) : impl_(std::make_unique<Impl>()) {
  FATHOM_CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  impl_->workspace_bytes = workspace_bytes;
  if (workspace_bytes) FATHOM_CUDA_CHECK(cudaMalloc(&impl_->workspace, workspace_bytes));
  impl_->slice_bytes = workspace_bytes / kGroupStreams / 256 * 256;
  for (cudaStream_t& st : impl_->streams)
    FATHOM_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&impl_->fork, cudaEventDisableTiming));
  for (cudaEvent_t& ev : impl_->joins)
    FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
}

GemmContext::~GemmContext() {
  impl_->Clear();
  for (cudaEvent_t ev : impl_->joins)
    if (ev) cudaEventDestroy(ev);
  if (impl_->fork) cudaEventDestroy(impl_->fork);
  for (cudaStream_t st : impl_->streams)
    if (st) cudaStreamDestroy(st);
  if (impl_->workspace) cudaFree(impl_->workspace);
  if (impl_->tile_pointers) cudaFree(impl_->tile_pointers);
  for (Impl::PointerSlot& slot : impl_->pointer_slots) {
    if (slot.copied) cudaEventDestroy(slot.copied);
    if (slot.host) cudaFreeHost(slot.host);
  }
  if (impl_->handle) cublasLtDestroy(impl_->handle);
}

size_t GemmContext::plan_count() const { return impl_->plans.size() + impl_->group_plans.size(); }
int64_t GemmContext::heuristic_queries() const { return impl_->heuristic_queries; }
void GemmContext::set_grouped_path(GroupedPath path) { impl_->grouped_path = path; }
void GemmContext::set_batch_uniform(bool on) { impl_->batch_uniform = on; }
GemmContext::GroupedPath GemmContext::grouped_path() const { return impl_->grouped_path; }

void GemmContext::Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a,
                       int64_t lda, const void* b, int64_t ldb, DType in, bool accumulate, void* c,
                       int64_t ldc, DType out, Stream stream) {
  impl_->Strided(trans_a, trans_b, m, n, k, a, lda, 0, b, ldb, 0, in, accumulate, c, ldc, 0, out, 1, stream);
}

// Gemm's body, for `batch` problems whose operands lie `stride_*` elements apart (batch 1: one problem, the
// strides unused).
void GemmContext::Impl::Strided(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a,
                                int64_t lda, int64_t stride_a, const void* b, int64_t ldb, int64_t stride_b,
                                DType in, bool accumulate, void* c, int64_t ldc, int64_t stride_c, DType out,
                                int64_t batch, Stream stream) {
  CheckDTypes("gemm", in, out);
  FATHOM_CHECK(m >= 0 && n >= 0 && k >= 0 && batch >= 1, "[gemm] negative size m ", m, " n ", n, " k ", k,
               " or batch ", batch, " < 1");
  FATHOM_CHECK(lda >= (trans_a ? m : k) && ldb >= (trans_b ? k : n) && ldc >= n,
               "[gemm] leading dimensions lda ", lda, " ldb ", ldb, " ldc ", ldc, " too small for m ", m,
               " n ", n, " k ", k, trans_a ? " (a transposed)" : "", trans_b ? " (b transposed)" : "");
  FATHOM_CHECK(batch == 1 || (stride_c >= m * ldc && batch < (int64_t{1} << 31)), "[gemm] batch ", batch,
               " with output stride ", stride_c, " < ", m * ldc, ": the outputs would overlap");
  if (m == 0 || n == 0) return;
  cudaStream_t s = stream;
  if (k == 0) {
    // An empty sum: cuBLASLt rejects k = 0 layouts, and the contract is simply C = 0 (or C unchanged).
    if (!accumulate) {
      const size_t es = DTypeSize(out);
      for (int64_t i = 0; i < batch; ++i) {
        FATHOM_CUDA_CHECK(cudaMemset2DAsync(static_cast<char*>(c) + static_cast<size_t>(i * stride_c) * es,
                                            static_cast<size_t>(ldc) * es, 0, static_cast<size_t>(n) * es,
                                            static_cast<size_t>(m), s));
      }
    }
    return;
  }
  FATHOM_CHECK(a != nullptr && b != nullptr && c != nullptr, "[gemm] null operand");
  PlanKey key = RowMajorKey(trans_a, trans_b, m, n, k, lda, ldb, ldc, in, out, Alignment(a), Alignment(b),
                            Alignment(c));
  if (batch > 1) {
    // Every matrix of the batch must meet the alignment the plan promises, not only the first.
    auto aligned = [](uint32_t base, int64_t stride, DType t) {
      const auto bytes = static_cast<uintptr_t>(stride) * DTypeSize(t);
      return std::min(base, Alignment(reinterpret_cast<const void*>(bytes == 0 ? 256 : bytes)));
    };
    key.batch = batch;
    key.stride_a = stride_b;
    key.stride_b = stride_a;
    key.stride_c = stride_c;
    key.align_a = aligned(key.align_a, stride_b, in);
    key.align_b = aligned(key.align_b, stride_a, in);
    key.align_c = aligned(key.align_c, stride_c, out);
  }
  const Plan& plan = Find(key);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  FATHOM_CUBLAS_CHECK(cublasLtMatmul(handle, plan.desc, &alpha, b, plan.a, a, plan.b, &beta, c, plan.c, c,
                                     plan.c, &plan.algo, workspace, workspace_bytes, s));
}

void GemmContext::Impl::Pointers(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                                 const std::vector<const void*>& a, int64_t lda,
                                 const std::vector<const void*>& b, int64_t ldb, const std::vector<void*>& c,
                                 int64_t ldc, DType in, DType out, bool accumulate, Stream stream) {
  const int64_t count = static_cast<int64_t>(a.size());
  FATHOM_CHECK(count >= 1 && count < (int64_t{1} << 31) && b.size() == a.size() && c.size() == a.size(),
               "[gemm] pointer batch of ", count, " problems");
  cudaStream_t s = stream;
  // The pointer triples of this call in the next pinned slot; cuBLASLt's A is our B, its B our A (the
  // row-major swap).
  PointerSlot& slot = pointer_slots[static_cast<size_t>(next_pointer_slot)];
  next_pointer_slot = (next_pointer_slot + 1) % kPointerSlots;
  if (slot.pending) FATHOM_CUDA_CHECK(cudaEventSynchronize(slot.copied));  // kPointerSlots calls ago
  if (!slot.copied) FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&slot.copied, cudaEventDisableTiming));
  if (3 * count > slot.capacity) {
    if (slot.host) FATHOM_CUDA_CHECK(cudaFreeHost(slot.host));
    slot.capacity = std::max<int64_t>(6 * count, 768);
    FATHOM_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&slot.host),
                                    static_cast<size_t>(slot.capacity) * sizeof(void*), cudaHostAllocDefault));
  }
  std::copy(b.begin(), b.end(), slot.host);
  std::copy(a.begin(), a.end(), slot.host + count);
  std::copy(c.begin(), c.end(), slot.host + 2 * count);
  if (count > tile_capacity) {
    // Grows to the largest batch once (a rare cudaMalloc; the wait orders it after the work that read the
    // old array).
    FATHOM_CUDA_CHECK(cudaStreamSynchronize(s));
    if (tile_pointers) FATHOM_CUDA_CHECK(cudaFree(tile_pointers));
    tile_capacity = std::max<int64_t>(2 * count, 1024);
    FATHOM_CUDA_CHECK(cudaMalloc(&tile_pointers, static_cast<size_t>(3 * tile_capacity) * sizeof(void*)));
  }
  auto** dev = static_cast<const void**>(tile_pointers);
  // Ordered on `s` before this call's matmul and after the previous one's (which read the device array).
  FATHOM_CUDA_CHECK(cudaMemcpyAsync(dev, slot.host, static_cast<size_t>(3 * count) * sizeof(void*),
                                    cudaMemcpyHostToDevice, s));
  FATHOM_CUDA_CHECK(cudaEventRecord(slot.copied, s));
  slot.pending = true;
  auto align = [](auto& ptrs) {
    uint32_t v = 256;
    for (const void* p : ptrs) v = std::min(v, Alignment(p));
    return v;
  };
  PlanKey key = RowMajorKey(trans_a, trans_b, m, n, k, lda, ldb, ldc, in, out, align(a), align(b), align(c));
  key.batch = -1;  // the pointer-array plans (the batch count is set per call)
  auto it = tile_plans.find(key);
  if (it == tile_plans.end()) {
    it = tile_plans.emplace(key, TilePlan{}).first;
    Build(it->second.plan, key);
  }
  TilePlan& tp = it->second;
  const int32_t batch = static_cast<int32_t>(count);
  const uint32_t mode = CUBLASLT_BATCH_MODE_POINTER_ARRAY;
  for (cublasLtMatrixLayout_t l : {tp.plan.a, tp.plan.b, tp.plan.c}) {
    FATHOM_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_MODE, &mode, sizeof(mode)));
    FATHOM_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch)));
  }
  auto found = tp.checked.find(count);
  if (found == tp.checked.end()) {
    if (tp.checked.empty()) tp.plan.algo = Query(tp.plan, key, workspace_bytes);
    const cublasLtMatmulAlgo_t algo = CheckedOrQueried(tp.plan, key, workspace_bytes);
    if (tp.checked.size() >= kMaxCheckedSizes) tp.checked.clear();
    found = tp.checked.emplace(count, algo).first;
  }
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  FATHOM_CUBLAS_CHECK(cublasLtMatmul(handle, tp.plan.desc, &alpha, dev, tp.plan.a, dev + count, tp.plan.b,
                                     &beta, dev + 2 * count, tp.plan.c, dev + 2 * count, tp.plan.c,
                                     &found->second, workspace, workspace_bytes, s));
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

// The grouped forms: the per-expert GEMMs go through Gemm (kPerExpertExact: one exact plan per row
// count) or through RunGrouped (bucketed plans, optionally spread over the internal streams). Empty
// experts are skipped either way; a zero fixed dimension (K = 0: zeros or untouched output, N = 0:
// nothing) is Gemm's special case and takes it on every path.
void GemmContext::Impl::Grouped(GemmContext& self, bool trans_a, bool trans_b, int64_t lda, int64_t ldb,
                                int64_t ldc, DType in, DType out, bool accumulate, bool ragged_k,
                                const std::vector<ExpertGemm>& calls, Stream stream) {
  bool degenerate = false;
  for (const ExpertGemm& g : calls) degenerate = degenerate || g.m == 0 || g.n == 0 || g.k == 0;
  if (grouped_path == GroupedPath::kPerExpertExact || degenerate) {
    for (const ExpertGemm& g : calls)
      self.Gemm(trans_a, trans_b, g.m, g.n, g.k, g.a, lda, g.b, ldb, in, accumulate, g.c, ldc, out, stream);
    return;
  }
  RunGrouped(trans_a, trans_b, lda, ldb, ldc, in, out, accumulate, ragged_k ? Ragged::kK : Ragged::kN, calls,
             stream);
}

void GemmContext::GroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                                  bool accumulate, Stream stream) {
  CheckOperands("grouped_matmul_nt_cuda", out, x, w);
  FATHOM_CHECK(w.ndim() == 3 && x.ndim() == 2 && out.ndim() == 2 && x.dim(1) == w.dim(2) &&
                   out.dim(0) == x.dim(0) && out.dim(1) == w.dim(1),
               "[grouped_matmul_nt_cuda] out ", out.shape_str(), " x ", x.shape_str(), " w ", w.shape_str());
  const int64_t experts = w.dim(0), nn = w.dim(1), kk = w.dim(2);
  const std::vector<int64_t> off = BlockOffsets("grouped_matmul_nt_cuda", counts, experts, x.dim(0));
  impl_->RowBlocks(*this, /*trans_b=*/true, nn, kk, out, x, w, off, accumulate, stream);
}

void GemmContext::GroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                                  bool accumulate, Stream stream) {
  CheckOperands("grouped_matmul_nn_cuda", out, x, w);
  FATHOM_CHECK(w.ndim() == 3 && x.ndim() == 2 && out.ndim() == 2 && x.dim(1) == w.dim(1) &&
                   out.dim(0) == x.dim(0) && out.dim(1) == w.dim(2),
               "[grouped_matmul_nn_cuda] out ", out.shape_str(), " x ", x.shape_str(), " w ", w.shape_str());
  const int64_t experts = w.dim(0), kk = w.dim(1), nn = w.dim(2);
  const std::vector<int64_t> off = BlockOffsets("grouped_matmul_nn_cuda", counts, experts, x.dim(0));
  impl_->RowBlocks(*this, /*trans_b=*/false, nn, kk, out, x, w, off, accumulate, stream);
}

// NT (trans_b: w[e] is (N, K)) and NN (w[e] is (K, N)): out (R, N) (=/+=) block_e of x (R, K) . op(w[e]), on
// the strided, tiled or per-expert path (see set_batch_uniform).
void GemmContext::Impl::RowBlocks(GemmContext& self, bool trans_b, int64_t nn, int64_t kk, const Tensor& out,
                                  const Tensor& x, const Tensor& w, const std::vector<int64_t>& off,
                                  bool accumulate, Stream stream) {
  const int64_t experts = static_cast<int64_t>(off.size()) - 1, ldb = trans_b ? kk : nn;
  if (const int64_t c = batch_uniform ? UniformRows(off) : 0) {
    return Strided(false, trans_b, c, nn, kk, x.raw(), kk, c * kk, w.raw(), ldb, nn * kk, x.dtype(),
                   accumulate, out.raw(), nn, c * nn, out.dtype(), experts, stream);
  }
  if (batch_uniform && Tiled(off) && nn > 0 && kk > 0) {
    std::vector<const void*> pa, pb;
    std::vector<void*> pc;
    for (int64_t e = 0; e < experts; ++e) {
      for (int64_t r = off[e]; r < off[e + 1]; r += kTileRows) {
        pa.push_back(Offset(x, r * kk));
        pb.push_back(Offset(w, e * nn * kk));
        pc.push_back(MutableOffset(out, r * nn));
      }
    }
    return Pointers(false, trans_b, kTileRows, nn, kk, pa, kk, pb, ldb, pc, nn, x.dtype(), out.dtype(),
                    accumulate, stream);
  }
  std::vector<ExpertGemm> calls;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t rows = off[e + 1] - off[e];
    if (rows == 0) continue;
    calls.push_back(
        {rows, nn, kk, Offset(x, off[e] * kk), Offset(w, e * nn * kk), MutableOffset(out, off[e] * nn)});
  }
  Grouped(self, false, trans_b, kk, ldb, nn, x.dtype(), out.dtype(), accumulate, false, calls, stream);
}

void GemmContext::GroupedMatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, const Tensor& counts,
                                  bool accumulate, Stream stream) {
  CheckOperands("grouped_matmul_tn_cuda", out, x, y);
  FATHOM_CHECK(out.ndim() == 3 && x.ndim() == 2 && y.ndim() == 2 && x.dim(0) == y.dim(0) &&
                   x.dim(1) == out.dim(1) && y.dim(1) == out.dim(2),
               "[grouped_matmul_tn_cuda] out ", out.shape_str(), " x ", x.shape_str(), " y ", y.shape_str());
  const int64_t experts = out.dim(0), mm = out.dim(1), nn = out.dim(2);
  std::vector<int64_t> off = BlockOffsets("grouped_matmul_tn_cuda", counts, experts, x.dim(0));
  if (const int64_t c = impl_->batch_uniform ? UniformRows(off) : 0) {
    return impl_->Strided(true, false, mm, nn, c, x.raw(), mm, c * mm, y.raw(), nn, c * nn, x.dtype(),
                          accumulate, out.raw(), nn, mm * nn, out.dtype(), experts, stream);
  }
  if (impl_->batch_uniform && Tiled(off) && mm > 0 && nn > 0) {
    // The reduction runs over each expert's rows, so experts go in one pointer-array batch per distinct
    // (tile-multiple) row count; an expert without rows gets the empty sum when overwriting.
    std::map<int64_t, std::vector<int64_t>> by_rows;
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t rows = off[e + 1] - off[e];
      if (rows > 0) {
        by_rows[rows].push_back(e);
      } else if (!accumulate) {
        FATHOM_CUDA_CHECK(cudaMemsetAsync(MutableOffset(out, e * mm * nn), 0,
                                          static_cast<size_t>(mm * nn) * DTypeSize(out.dtype()), stream));
      }
    }
    for (const auto& [rows, group] : by_rows) {
      std::vector<const void*> pa, pb;
      std::vector<void*> pc;
      for (int64_t e : group) {
        pa.push_back(Offset(x, off[e] * mm));
        pb.push_back(Offset(y, off[e] * nn));
        pc.push_back(MutableOffset(out, e * mm * nn));
      }
      impl_->Pointers(true, false, mm, nn, rows, pa, mm, pb, nn, pc, nn, x.dtype(), out.dtype(), accumulate,
                      stream);
    }
    return;
  }
  std::vector<ExpertGemm> calls;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t rows = off[e + 1] - off[e];
    if (rows == 0) {
      // Overwriting: an expert without rows gets the empty sum. (Accumulating leaves it as it is.)
      if (!accumulate && mm * nn > 0) {
        FATHOM_CUDA_CHECK(cudaMemsetAsync(MutableOffset(out, e * mm * nn), 0,
                                          static_cast<size_t>(mm * nn) * DTypeSize(out.dtype()), stream));
      }
      continue;
    }
    calls.push_back(
        {mm, nn, rows, Offset(x, off[e] * mm), Offset(y, off[e] * nn), MutableOffset(out, e * mm * nn)});
  }
  impl_->Grouped(*this, true, false, mm, nn, nn, x.dtype(), out.dtype(), accumulate, true, calls, stream);
}

}  // namespace fathom::cuda
