#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <compare>
#include <map>
#include <numeric>
#include <unordered_map>
#include <vector>

#include "framework/cuda/check.h"
#include "framework/kernels/cuda/fp8_gemm.h"
#include "framework/kernels/cuda/grouped_gemm.h"
#include "framework/kernels/cuda/fp8_operands.h"
#include "framework/kernels/cuda/kernel_common.cuh"

namespace fathom::cuda {
namespace {

constexpr int kStreams = 4;
constexpr int kThreads = 256;
// Bounds on the remembered plans and (plan, exact size) algorithm checks; past them they are forgotten and
// rebuilt (a query or a check each, no correctness impact).
constexpr size_t kMaxPlans = 1024;
constexpr size_t kMaxCheckedSizes = size_t{1} << 16;

// Ragged-dimension buckets: 64, 96, 128, 192, 256, ... (two per octave), as in gemm.cu.
int64_t BucketSize(int64_t v) {
  int64_t b = 64;
  while (true) {
    if (v <= b) return b;
    if (v <= b + b / 2) return b + b / 2;
    b *= 2;
  }
}

uint32_t Alignment(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && addr % align != 0) align /= 2;
  return align;
}

// One column-major cuBLASLt problem: A (k x m, stored K-major, op T), B (k x n, op N), C = D (m x n).
struct PlanKey {
  int a_mode, b_mode;
  int64_t m, n, k, lda, ldb, ldc;
  int out;
  bool accumulate;
  uint32_t align_a, align_b, align_c;
  auto operator<=>(const PlanKey&) const = default;
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};  // the bucket's, once queried
  bool queried = false;
  std::unordered_map<int64_t, cublasLtMatmulAlgo_t> checked;  // exact ragged size -> algorithm
};

// One group's product (column-major sizes and pointers).
struct GroupCall {
  int64_t m, n, k;
  const void* a;
  const float* a_scale;
  const void* b;
  const float* b_scale;
  void* c;
};

// The groups' row and tile-scale offsets, by value (a kernel parameter).
struct ScaleTable {
  int32_t groups = 0;
  int32_t row_begin[kMaxFp8Groups + 1];
  int32_t scale_begin[kMaxFp8Groups + 1];
};

using common::FindGroup;

// cuBLASLt's VEC128 scales of the B operand are N-major (one row of n floats per 128-wide block of K),
// and its Hopper kernels accept n only in multiples of kTailPad (measured: n 129 and 1703 are refused, 192
// accepted; the scale rows must stay 16-byte aligned). So each group of rows_g rows runs as a main product
// over its first Main(rows_g) rows (a multiple of kTailPad) and, when rows remain, a tail product over
// kTailPad rows copied into a zero-padded buffer (Fp8GemmContext::GroupedMatmulNT).
constexpr int64_t kTailPad = 16;
__host__ __device__ inline int64_t Main(int64_t rows) { return rows / kTailPad * kTailPad; }

// Group g's scale block at scale_begin[g]: the main rows' scales [kb][Main(rows_g)], then, when there is a
// tail, its scales [kb][kTailPad] (the padding columns' scales stay as the caller zeroed them). Threads run
// along r, so the writes are mostly coalesced.
__global__ void GatherTileScalesKernel(float* out, const uint8_t* data, ScaleTable table, int64_t rows,
                                       int blocks, int64_t row_bytes, int64_t padded_cols) {
  const int64_t n = rows * blocks;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t kb = i / rows, r = i % rows;
    const int g = FindGroup(table.row_begin, table.groups, r);
    const int64_t group_rows = table.row_begin[g + 1] - table.row_begin[g];
    const int64_t j = r - table.row_begin[g], main = Main(group_rows);
    const float* scales = reinterpret_cast<const float*>(data + r * row_bytes + padded_cols);
    const int64_t at = j < main ? kb * main + j : blocks * main + kb * kTailPad + (j - main);
    out[table.scale_begin[g] + at] = scales[kb];
  }
}

// Offsets of each group's scale block (see GatherTileScalesKernel), each rounded up to 4 floats (16 bytes).
std::vector<int64_t> ScaleOffsets(const std::vector<int64_t>& counts, int64_t blocks) {
  std::vector<int64_t> off(counts.size() + 1, 0);
  for (size_t g = 0; g < counts.size(); ++g) {
    const int64_t main = Main(counts[g]), tail = counts[g] > main ? kTailPad : 0;
    off[g + 1] = off[g] + (blocks * (main + tail) + 3) / 4 * 4;
  }
  return off;
}

using common::CheckCuda;

}  // namespace

struct Fp8GemmContext::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0, slice_bytes = 0;
  std::map<PlanKey, Plan> plans;  // keyed with the ragged dimension replaced by its bucket
  size_t checked_sizes = 0;
  int64_t heuristic_queries = 0;
  bool multi_stream = true;
  bool tiled_kernel = false;
  bool tiled_wgrad = false;
  std::array<cudaStream_t, kStreams> streams{};
  cudaEvent_t fork = nullptr;
  std::array<cudaEvent_t, kStreams> joins{};
  // The tails' zero-padded operand rows and output (GroupedMatmulNT), grown on first need.
  void* tail = nullptr;
  size_t tail_bytes = 0;

  // At least `bytes` of tail buffer. Growing frees the old buffer (cudaFree waits for the device).
  char* Tail(size_t bytes) {
    if (bytes > tail_bytes) {
      if (tail) FATHOM_CUDA_CHECK(cudaFree(tail));
      tail_bytes = std::max(bytes, tail_bytes * 2);
      FATHOM_CUDA_CHECK(cudaMalloc(&tail, tail_bytes));
    }
    return static_cast<char*>(tail);
  }

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
    checked_sizes = 0;
  }

  // The descriptor (TN, f32 compute and scale type, the two block-scaling modes) and the layouts of `key`.
  static void Build(Plan& p, const PlanKey& key) {
    FATHOM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = CUBLAS_OP_T, op_b = CUBLAS_OP_N;
    auto set = [&](cublasLtMatmulDescAttributes_t attr, const void* v, size_t bytes) {
      FATHOM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, attr, v, bytes));
    };
    set(CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a));
    set(CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b));
    const int32_t a_mode = key.a_mode, b_mode = key.b_mode;
    set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof(a_mode));
    set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof(b_mode));
    const cudaDataType_t out = static_cast<DType>(key.out) == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
    FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, key.k, key.m, key.lda));
    FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, key.k, key.n, key.ldb));
    FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, out, key.m, key.n, key.ldc));
  }

  static void SetSizes(const Plan& p, int64_t m, int64_t n, int64_t k) {
    auto set = [](cublasLtMatrixLayout_t l, int64_t rows, int64_t cols) {
      const uint64_t r = static_cast<uint64_t>(rows), c = static_cast<uint64_t>(cols);
      FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_ROWS, &r, sizeof(r)));
      FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_COLS, &c, sizeof(c)));
    };
    set(p.a, k, m);
    set(p.b, k, n);
    set(p.c, m, n);
  }

  // The heuristic's best algorithm for p's layouts as they stand (sizes of `key`, for the message).
  cublasLtMatmulAlgo_t Query(const Plan& p, const PlanKey& key, const char* op) {
    cublasLtMatmulPreference_t pref = nullptr;
    FATHOM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = slice_bytes;
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
    FATHOM_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, "[", op,
                 "] cuBLASLt has no block-scaled FP8 algorithm (status ", static_cast<int>(st),
                 ") for the "
                 "column-major TN problem m ",
                 key.m, " n ", key.n, " k ", key.k, " lda ", key.lda, " ldb ", key.ldb, " ldc ", key.ldc,
                 " scale modes A ", key.a_mode, " B ", key.b_mode, " out ",
                 DTypeName(static_cast<DType>(key.out)), key.accumulate ? " (accumulating)" : "",
                 " alignments ", key.align_a, "/", key.align_b, "/", key.align_c,
                 ": block-scaled FP8 needs an sm_90 GPU and cuBLASLt 12.9 or newer");
    return result.algo;
  }

  // The bucket plan for `key` (ragged dimension n, or k when ragged_k), its layouts set to key's exact sizes,
  // and the algorithm for them. The scale pointers must be set on the descriptor before (see Run).
  std::pair<Plan*, cublasLtMatmulAlgo_t> Find(const PlanKey& key, bool ragged_k, const char* op,
                                              const GroupCall& call) {
    PlanKey bucket = key;
    if (ragged_k) {
      // k is the rows of both operands' layouts: a bucket past their leading dimension is an invalid layout
      // (the H200 run's CUBLAS_STATUS_INVALID_VALUE: k 768 over lda 640), so the bucket stops there.
      bucket.k = std::min(Fp8Padded(BucketSize(key.k)), std::min(key.lda, key.ldb));
    } else {
      bucket.n = BucketSize(key.n);
    }
    auto it = plans.find(bucket);
    if (it == plans.end()) {
      if (plans.size() >= kMaxPlans) Clear();
      it = plans.emplace(bucket, Plan{}).first;
      Build(it->second, bucket);
    }
    Plan& p = it->second;
    SetScalePointers(p, call);
    const int64_t size = ragged_k ? key.k : key.n;
    auto found = p.checked.find(size);
    if (found != p.checked.end()) {
      SetSizes(p, key.m, key.n, key.k);
      return {&p, found->second};
    }
    if (checked_sizes >= kMaxCheckedSizes) {
      for (auto& [k, other] : plans) other.checked.clear();
      checked_sizes = 0;
    }
    ++checked_sizes;
    if (!p.queried) {
      SetSizes(p, bucket.m, bucket.n, bucket.k);
      p.algo = Query(p, bucket, op);
      p.queried = true;
    }
    SetSizes(p, key.m, key.n, key.k);
    cublasLtMatmulHeuristicResult_t check{};
    const cublasStatus_t st = cublasLtMatmulAlgoCheck(handle, p.desc, p.a, p.b, p.c, p.c, &p.algo, &check);
    // The bucket's algorithm may not fit this exact size (or want more workspace): ask for it exactly.
    const cublasLtMatmulAlgo_t algo =
        st == CUBLAS_STATUS_SUCCESS && check.workspaceSize <= slice_bytes ? p.algo : Query(p, key, op);
    p.checked.emplace(size, algo);
    return {&p, algo};
  }

  static void SetScalePointers(const Plan& p, const GroupCall& call) {
    const void* a = call.a_scale;
    const void* b = call.b_scale;
    FATHOM_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a, sizeof(a)));
    FATHOM_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b, sizeof(b)));
  }

  // The groups' products on `s`, or spread over the internal streams (each with its slice of the workspace).
  void Run(const char* op, int a_mode, int b_mode, int64_t lda, int64_t ldb, int64_t ldc, DType out,
           bool accumulate, bool ragged_k, std::vector<GroupCall> calls, cudaStream_t s) {
    if (calls.empty()) return;
    // Longest first, each to the stream with the least work so far.
    std::stable_sort(calls.begin(), calls.end(), [](const GroupCall& x, const GroupCall& y) {
      return x.m * x.n * x.k > y.m * y.n * y.k;
    });
    const bool spread = multi_stream && calls.size() > 1;
    const int used = spread ? static_cast<int>(std::min<size_t>(kStreams, calls.size())) : 1;
    if (spread) {
      FATHOM_CUDA_CHECK(cudaEventRecord(fork, s));
      for (int i = 0; i < used; ++i) FATHOM_CUDA_CHECK(cudaStreamWaitEvent(streams[i], fork, 0));
    }
    std::array<double, kStreams> load{};
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    for (const GroupCall& g : calls) {
      const int i = static_cast<int>(std::min_element(load.begin(), load.begin() + used) - load.begin());
      load[i] += static_cast<double>(g.m) * static_cast<double>(g.n) * static_cast<double>(g.k);
      const PlanKey key{a_mode,
                        b_mode,
                        g.m,
                        g.n,
                        g.k,
                        lda,
                        ldb,
                        ldc,
                        static_cast<int>(out),
                        accumulate,
                        Alignment(g.a),
                        Alignment(g.b),
                        Alignment(g.c)};
      auto [plan, algo] = Find(key, ragged_k, op, g);
      void* ws = slice_bytes ? static_cast<char*>(workspace) + static_cast<size_t>(i) * slice_bytes : nullptr;
      FATHOM_CUBLAS_CHECK(cublasLtMatmul(handle, plan->desc, &alpha, g.a, plan->a, g.b, plan->b, &beta, g.c,
                                         plan->c, g.c, plan->c, &algo, ws, slice_bytes,
                                         spread ? streams[i] : s));
    }
    if (spread) {
      for (int i = 0; i < used; ++i) {
        FATHOM_CUDA_CHECK(cudaEventRecord(joins[i], streams[i]));
        FATHOM_CUDA_CHECK(cudaStreamWaitEvent(s, joins[i], 0));
      }
    }
  }
};

Fp8GemmContext::Fp8GemmContext(size_t workspace_bytes) : impl_(std::make_unique<Impl>()) {
  FATHOM_CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  impl_->workspace_bytes = workspace_bytes;
  if (workspace_bytes) FATHOM_CUDA_CHECK(cudaMalloc(&impl_->workspace, workspace_bytes));
  impl_->slice_bytes = workspace_bytes / kStreams / 256 * 256;
  for (cudaStream_t& st : impl_->streams)
    FATHOM_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&impl_->fork, cudaEventDisableTiming));
  for (cudaEvent_t& ev : impl_->joins)
    FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
}

Fp8GemmContext::~Fp8GemmContext() {
  impl_->Clear();
  for (cudaEvent_t ev : impl_->joins)
    if (ev) cudaEventDestroy(ev);
  if (impl_->fork) cudaEventDestroy(impl_->fork);
  for (cudaStream_t st : impl_->streams)
    if (st) cudaStreamDestroy(st);
  if (impl_->workspace) cudaFree(impl_->workspace);
  if (impl_->tail) cudaFree(impl_->tail);
  if (impl_->handle) cublasLtDestroy(impl_->handle);
}

size_t Fp8GemmContext::plan_count() const { return impl_->plans.size(); }
int64_t Fp8GemmContext::heuristic_queries() const { return impl_->heuristic_queries; }
void Fp8GemmContext::set_multi_stream(bool on) { impl_->multi_stream = on; }

void Fp8GemmContext::set_tiled_kernel(bool on) { impl_->tiled_kernel = on; }
bool Fp8GemmContext::tiled_kernel() const { return impl_->tiled_kernel; }
void Fp8GemmContext::set_tiled_wgrad(bool on) { impl_->tiled_wgrad = on; }
bool Fp8GemmContext::tiled_wgrad() const { return impl_->tiled_wgrad; }

int64_t Fp8GemmContext::TileScaleElements(const Tensor& counts, int64_t cols) {
  return ScaleOffsets(Fp8GroupCounts(counts, "fp8_tile_scales"), Fp8Blocks(cols)).back();
}

void Fp8GemmContext::GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w,
                                     const Tensor& counts, bool accumulate, const Tensor& scratch,
                                     Stream stream) {
  const char* op = "fp8_grouped_matmul_nt_cuda";
  CheckCuda(op, out, "out");
  CheckCuda(op, x.data, "x");
  CheckCuda(op, w.codes, "w.codes");
  CheckCuda(op, w.scales, "w.scales");
  FATHOM_CHECK(out.dtype() == DType::kBF16 || out.dtype() == DType::kF32, "[", op,
               "] out must be bf16 or f32, got ", DTypeName(out.dtype()));
  const std::vector<int64_t> groups = CheckFp8MatmulNT(op, out, x, w, counts);
  FATHOM_CHECK(
      w.rows % 16 == 0, "[", op, "] ", w.rows,
      " output columns: cuBLASLt's FP8 kernels need the non-reduction dimensions to be multiples of 16");
  FATHOM_CHECK(groups.size() <= static_cast<size_t>(kMaxFp8Groups), "[", op, "] ", groups.size(),
               " groups; at most ", kMaxFp8Groups);
  const int64_t rows = x.rows(), blocks = x.blocks();
  if (rows == 0) return;
  // Routed experts in the padded layout (every count a multiple of 128): fathom's own tiled kernel, one
  // launch for all experts (see grouped_gemm.h), instead of a cuBLASLt matmul per expert.
  if (impl_->tiled_kernel && w.matrices() > 1 && TiledCountsOk(groups) && TiledFp8Supported(w.rows)) {
    TiledFp8GroupedMatmulNT(out, x, w, groups, accumulate, stream);
    return;
  }
  const std::vector<int64_t> scale_off = ScaleOffsets(groups, blocks);
  CheckCuda(op, scratch, "scratch");
  FATHOM_CHECK(scratch.dtype() == DType::kF32 && scratch.numel() >= scale_off.back(), "[", op, "] scratch ",
               scratch.shape_str(), " ", DTypeName(scratch.dtype()), ", expected at least ", scale_off.back(),
               " f32 elements");
  FATHOM_CHECK(rows < (int64_t{1} << 31) && scale_off.back() < (int64_t{1} << 31), "[", op, "] ", rows,
               " rows exceed the 32-bit offsets of the scale gather");
  ScaleTable table;
  table.groups = static_cast<int32_t>(groups.size());
  std::vector<int64_t> row_begin(groups.size() + 1, 0);
  std::partial_sum(groups.begin(), groups.end(), row_begin.begin() + 1);
  for (size_t g = 0; g <= groups.size(); ++g) {
    table.row_begin[g] = static_cast<int32_t>(row_begin[g]);
    table.scale_begin[g] = static_cast<int32_t>(scale_off[g]);
  }
  const uint8_t* data = static_cast<const uint8_t*>(x.data.raw());
  float* tile_scales = scratch.data<float>();
  // The tails' padding columns get scale 0 (their codes are zero too).
  FATHOM_CUDA_CHECK(
      cudaMemsetAsync(tile_scales, 0, static_cast<size_t>(scale_off.back()) * sizeof(float), stream));
  const int64_t n = rows * blocks;
  GatherTileScalesKernel<<<static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 132 * 16)),
                           kThreads, 0, stream>>>(tile_scales, data, table, rows, static_cast<int>(blocks),
                                                  x.row_bytes(), x.padded_cols());
  FATHOM_CUDA_CHECK_LAUNCH();

  const int64_t nn = w.rows, kp = Fp8Padded(w.cols), nb = Fp8Blocks(w.rows);
  const int64_t scale_stride = Fp8ScaleStride(Fp8Blocks(w.cols));
  const size_t es = DTypeSize(out.dtype());
  const uint8_t* wcodes = static_cast<const uint8_t*>(w.codes.raw());
  const float* wscales = w.scales.data<float>();
  std::vector<GroupCall> calls;
  std::vector<size_t> tails;
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t main = Main(groups[g]);
    if (groups[g] > main) tails.push_back(g);
    if (main == 0) continue;
    calls.push_back({nn, main, kp, wcodes + static_cast<int64_t>(g) * nn * kp,
                     wscales + static_cast<int64_t>(g) * nb * scale_stride,
                     data + row_begin[g] * x.row_bytes(), tile_scales + scale_off[g],
                     static_cast<char*>(out.raw()) + row_begin[g] * nn * es});
  }
  const auto a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  const auto b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  impl_->Run(op, a_mode, b_mode, kp, x.row_bytes(), nn, out.dtype(), accumulate, /*ragged_k=*/false,
             std::move(calls), stream);
  if (tails.empty()) return;
  // Each tail, in turn on `stream`: its rows into the zero-padded buffer (kTailPad rows), the product into
  // the buffer's output part (holding the current output first when accumulating), its columns back to `out`.
  const size_t b_bytes = static_cast<size_t>(kTailPad * x.row_bytes());
  const size_t d_offset = (b_bytes + 255) / 256 * 256;
  char* buffer = impl_->Tail(d_offset + static_cast<size_t>(kTailPad * nn) * es);
  for (size_t g : tails) {
    const int64_t main = Main(groups[g]), t = groups[g] - main, first = row_begin[g] + main;
    char* out_tail = static_cast<char*>(out.raw()) + first * nn * es;
    const size_t out_bytes = static_cast<size_t>(t * nn) * es;
    FATHOM_CUDA_CHECK(cudaMemsetAsync(buffer, 0, b_bytes, stream));
    FATHOM_CUDA_CHECK(cudaMemcpyAsync(buffer, data + first * x.row_bytes(),
                                      static_cast<size_t>(t * x.row_bytes()), cudaMemcpyDeviceToDevice,
                                      stream));
    if (accumulate) {
      FATHOM_CUDA_CHECK(
          cudaMemcpyAsync(buffer + d_offset, out_tail, out_bytes, cudaMemcpyDeviceToDevice, stream));
    }
    impl_->Run(op, a_mode, b_mode, kp, x.row_bytes(), nn, out.dtype(), accumulate, /*ragged_k=*/false,
               {{nn, kTailPad, kp, wcodes + static_cast<int64_t>(g) * nn * kp,
                 wscales + static_cast<int64_t>(g) * nb * scale_stride, buffer,
                 tile_scales + scale_off[g] + blocks * main, buffer + d_offset}},
               stream);
    FATHOM_CUDA_CHECK(
        cudaMemcpyAsync(out_tail, buffer + d_offset, out_bytes, cudaMemcpyDeviceToDevice, stream));
  }
}

void Fp8GemmContext::GroupedMatmulTN(const Tensor& out, const Fp8Cols& a, const Fp8Cols& b, bool accumulate,
                                     Stream stream) {
  const char* op = "fp8_grouped_matmul_tn_cuda";
  CheckCuda(op, out, "out");
  for (const Tensor* t : {&a.codes, &a.scales, &b.codes, &b.scales}) CheckCuda(op, *t, "operand");
  FATHOM_CHECK(out.dtype() == DType::kF32, "[", op, "] out must be f32 (gradients accumulate in f32), got ",
               DTypeName(out.dtype()));
  const std::vector<int64_t> groups = CheckFp8MatmulTN(op, out, a, b);
  FATHOM_CHECK(a.cols() % 16 == 0 && b.cols() % 16 == 0, "[", op, "] (", a.cols(), ", ", b.cols(),
               ") outputs: cuBLASLt's FP8 kernels need the non-reduction dimensions to be multiples of 16");
  // Routed experts (several groups), when asked for: fathom's own tiled kernel, one launch for every
  // expert's weight gradient (see grouped_gemm.h), instead of a cuBLASLt matmul per expert.
  if (impl_->tiled_wgrad && groups.size() > 1 &&
      TiledFp8TNSupported(b.cols(), static_cast<int64_t>(groups.size()))) {
    TiledFp8GroupedMatmulTN(out, a, b, accumulate, stream);
    return;
  }
  const int64_t m = a.cols(), nn = b.cols(), tp = a.padded_tokens();
  const uint8_t* acodes = static_cast<const uint8_t*>(a.codes.raw());
  const uint8_t* bcodes = static_cast<const uint8_t*>(b.codes.raw());
  std::vector<GroupCall> calls;
  int64_t t0 = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t k = Fp8Padded(groups[g]);
    float* out_g = out.data<float>() + static_cast<int64_t>(g) * m * nn;
    if (k > 0) {
      const int64_t tile = t0 / kFp8Block;
      calls.push_back({nn, m, k, bcodes + t0, b.scales.data<float>() + tile * nn, acodes + t0,
                       a.scales.data<float>() + tile * m, out_g});
    } else if (!accumulate) {  // an expert without tokens: its overwritten gradient is zero
      FATHOM_CUDA_CHECK(cudaMemsetAsync(out_g, 0, static_cast<size_t>(m * nn) * sizeof(float), stream));
    }
    t0 += k;
  }
  impl_->Run(op, CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F, CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F, tp, tp, nn,
             DType::kF32, accumulate, /*ragged_k=*/true, std::move(calls), stream);
}

}  // namespace fathom::cuda
