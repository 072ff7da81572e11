#include "framework/kernels/cuda/attention_cudnn.h"

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "framework/check.h"
#include "framework/cuda/check.h"

#ifdef FATHOM_WITH_CUDNN
#include <cudnn.h>
#endif

namespace fathom::cuda {

std::string AttentionShapeName(const AttentionShape& s) {
  return absl::StrFormat("B%d T%d H%d Dk%d Dv%d", s.b, s.t, s.h, s.dk, s.dv);
}

namespace {
std::atomic<bool> g_deterministic{false};
}  // namespace

void SetCudnnAttentionDeterministic(bool on) { g_deterministic.store(on); }
bool CudnnAttentionDeterministic() { return g_deterministic.load(); }

#ifndef FATHOM_WITH_CUDNN

bool CudnnAttentionCompiled() { return false; }

absl::Status PrepareCudnnAttention(const AttentionShape&) {
  return absl::UnimplementedError(
      "this build does not link cuDNN (cudnn.h or libcudnn not found at configure time)");
}

std::string CudnnAttentionSummary(const AttentionShape& shape) {
  FATHOM_CHECK(false, "[cudnn_attention] no cuDNN in this build (", AttentionShapeName(shape), ")");
}

void CudnnAttentionForward(const Tensor&, const Tensor&, const Tensor& q, const Tensor&, const Tensor&,
                           double, Stream) {
  FATHOM_CHECK(false, "[cudnn_attention] no cuDNN in this build, q ", q.shape_str());
}

void CudnnAttentionBackward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor& q,
                            const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, Stream) {
  FATHOM_CHECK(false, "[cudnn_attention] no cuDNN in this build, q ", q.shape_str());
}

#else  // FATHOM_WITH_CUDNN

namespace {

std::string CudnnError(cudnnStatus_t st) {
  char last[1024] = {0};
  cudnnGetLastErrorString(last, sizeof(last));
  std::string msg = cudnnGetErrorString(st);
  if (last[0] != '\0') msg += std::string(" (") + last + ")";
  return msg;
}

#define FATHOM_CUDNN_CHECK(call)                                                                    \
  do {                                                                                              \
    cudnnStatus_t st_ = (call);                                                                     \
    FATHOM_CHECK(st_ == CUDNN_STATUS_SUCCESS, #call, ": cuDNN status ", static_cast<int>(st_), " ", \
                 CudnnError(st_));                                                                  \
  } while (0)

// Owns one backend descriptor.
class Desc {
 public:
  Desc() = default;
  explicit Desc(cudnnBackendDescriptorType_t type) {
    if (cudnnBackendCreateDescriptor(type, &d_) != CUDNN_STATUS_SUCCESS) d_ = nullptr;
  }
  ~Desc() {
    if (d_ != nullptr) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(Desc&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Desc& operator=(Desc&& o) noexcept {
    if (this != &o) {
      if (d_ != nullptr) cudnnBackendDestroyDescriptor(d_);
      d_ = std::exchange(o.d_, nullptr);
    }
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  cudnnBackendDescriptor_t get() const { return d_; }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

// Unique ids of the tensors the caller binds (or the workspace holds); virtual tensors count from
// kFirstVirtual.
enum Uid : int64_t {
  kQ = 1,
  kK,
  kV,
  kO,
  kLse,
  kDO,
  kDQ,
  kDK,
  kDV,
  kScale,
  kNegInf,
  kOne,
  kRowDot,   // backward: rowsum(dO * O), workspace
  kDqAccum,  // backward: f32 dq accumulator, workspace
  kFirstVirtual = 100,
};

// How one graph is spelled. The fused engines recognise a pattern; variants differ in details on which
// cuDNN releases may disagree, and are tried in order until one gets an execution plan. By-value scalars
// are always (1, 1, 1, 1): cuDNN 9.14 rejects rank-1 scalars against rank-4 tensors ("xDesc.getNbDims() !=
// bDesc.getNbDims()"), measured on the H200 machine, where variant 0 of each direction is taken.
struct Variant {
  bool bf16_k_reshape = true;     // backward: the K view for dQ = dS K typed bf16 (else f32)
  bool deterministic_dq = false;  // backward: dQ = dS K straight into dq (no f32 accumulator)
};
const Variant kForwardVariants[] = {{true, false}};
const Variant kBackwardVariants[] = {{true, false}, {false, false}, {true, true}};

struct Plan {
  Desc plan;
  int64_t workspace = 0;  // bytes the engine needs
  int64_t engine = -1;    // cuDNN's global engine index
  int variant = -1;
};

// Whether cuDNN's numerical notes of `engine` leave out CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC (false when
// they cannot be read).
bool NotedDeterministic(cudnnBackendDescriptor_t engine) {
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  int64_t count = 0;
  if (cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                               CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &count, notes) != CUDNN_STATUS_SUCCESS)
    return false;
  for (int64_t i = 0; i < count; ++i) {
    if (notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) return false;
  }
  return true;
}

// Builds one operation graph from cuDNN's primitive operations. Errors are sticky: the first failing call
// is recorded with the step that failed and later calls do nothing, so the graph code reads straight.
class GraphBuilder {
 public:
  // A tensor bound at execution (device memory, or a host scalar when by_value).
  int64_t Io(int64_t uid, std::vector<int64_t> dims, std::vector<int64_t> strides, cudnnDataType_t type) {
    return Add(uid, std::move(dims), std::move(strides), type, false, false);
  }
  int64_t Scalar(int64_t uid) {
    const std::vector<int64_t> one(4, 1);
    return Add(uid, one, one, CUDNN_DATA_FLOAT, false, true);
  }
  int64_t Virtual(std::vector<int64_t> dims, std::vector<int64_t> strides, cudnnDataType_t type) {
    return Add(next_virtual_++, std::move(dims), std::move(strides), type, true, false);
  }

  // y = mode(x[, b[, t]]); b, t < 0: absent. axis: GEN_INDEX's dimension.
  void Pointwise(const char* name, cudnnPointwiseMode_t mode, cudnnDataType_t math, int64_t x, int64_t b,
                 int64_t t, int64_t y, int64_t axis = -1) {
    step_ = name;
    Desc pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    Created(pw);
    Set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    Set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &math);
    if (mode == CUDNN_POINTWISE_GEN_INDEX) Set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    Finalize(pw);
    Desc op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    Created(op);
    cudnnBackendDescriptor_t raw = pw.get();
    Set(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
    SetTensor(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
    if (b >= 0) SetTensor(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b);
    if (t >= 0) SetTensor(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t);
    SetTensor(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
    Finalize(op);
    Keep(std::move(pw), std::move(op));
  }

  // c = a b over the last two dimensions, f32 accumulation.
  void Matmul(const char* name, int64_t a, int64_t b, int64_t c) {
    step_ = name;
    Desc mm(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    Created(mm);
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    Set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    Finalize(mm);
    Desc op(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    Created(op);
    SetTensor(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a);
    SetTensor(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b);
    SetTensor(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c);
    cudnnBackendDescriptor_t raw = mm.get();
    Set(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
    Finalize(op);
    Keep(std::move(mm), std::move(op));
  }

  // y = reduce(x) over the dimensions where y has extent 1.
  void Reduction(const char* name, cudnnReduceTensorOp_t mode, int64_t x, int64_t y) {
    step_ = name;
    Desc red(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    Created(red);
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    Set(red, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    Set(red, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
    Finalize(red);
    Desc op(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    Created(op);
    cudnnBackendDescriptor_t raw = red.get();
    Set(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
    SetTensor(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x);
    SetTensor(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y);
    Finalize(op);
    Keep(std::move(red), std::move(op));
  }

  // y: a view of x with other dimensions and strides (the transposes of the backward).
  void Reshape(const char* name, int64_t x, int64_t y) {
    step_ = name;
    Desc op(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    Created(op);
    SetTensor(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x);
    SetTensor(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
    Finalize(op);
    Keep(Desc(), std::move(op));
  }

  // The operation graph, cuDNN's engine configurations for it (heuristics mode A, then the fallback list)
  // and the first execution plan that finalizes.
  // deterministic: engine configurations whose engine cuDNN notes as non-deterministic are passed over.
  absl::StatusOr<Plan> Build(cudnnHandle_t handle, bool deterministic) {
    step_ = "operation graph";
    Desc graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    Created(graph);
    std::vector<cudnnBackendDescriptor_t> raw;
    for (const Desc& op : ops_) raw.push_back(op.get());
    Set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(raw.size()),
        raw.data());
    Set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
    Finalize(graph);
    if (!status_.ok()) return status_;
    std::string tried;
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      absl::StatusOr<Plan> plan = PlanFromHeuristics(handle, graph, mode, deterministic);
      if (plan.ok()) return plan;
      tried += std::string(tried.empty() ? "" : "; ") + std::string(plan.status().message());
    }
    return absl::NotFoundError(tried);
  }

 private:
  int64_t Add(int64_t uid, std::vector<int64_t> dims, std::vector<int64_t> strides, cudnnDataType_t type,
              bool is_virtual, bool by_value) {
    step_ = "tensor";
    Desc t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    Created(t);
    const int64_t alignment = 16;
    Set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
    Set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, static_cast<int64_t>(dims.size()), dims.data());
    Set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, static_cast<int64_t>(strides.size()), strides.data());
    Set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    Set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
    if (is_virtual) Set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) Set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    Finalize(t);
    tensors_.emplace(uid, std::move(t));
    return uid;
  }

  void Created(const Desc& d) {
    if (status_.ok() && d.get() == nullptr)
      status_ = absl::InternalError(absl::StrFormat("%s: cudnnBackendCreateDescriptor failed", step_));
  }
  void Set(const Desc& d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
           const void* values) {
    if (!status_.ok()) return;
    const cudnnStatus_t st = cudnnBackendSetAttribute(d.get(), name, type, count, values);
    if (st != CUDNN_STATUS_SUCCESS)
      status_ = absl::InvalidArgumentError(
          absl::StrFormat("%s: set attribute %d: %s", step_, static_cast<int>(name), CudnnError(st)));
  }
  void SetTensor(const Desc& op, cudnnBackendAttributeName_t name, int64_t uid) {
    auto it = tensors_.find(uid);
    FATHOM_CHECK(it != tensors_.end(), "[cudnn_attention] ", step_, " uses undeclared tensor ", uid);
    cudnnBackendDescriptor_t raw = it->second.get();
    Set(op, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
  }
  void Finalize(const Desc& d) {
    if (!status_.ok()) return;
    const cudnnStatus_t st = cudnnBackendFinalize(d.get());
    if (st != CUDNN_STATUS_SUCCESS)
      status_ = absl::InvalidArgumentError(absl::StrFormat("%s: finalize: %s", step_, CudnnError(st)));
  }
  void Keep(Desc inner, Desc op) {
    if (inner.get() != nullptr) inner_.push_back(std::move(inner));
    ops_.push_back(std::move(op));
  }

  absl::StatusOr<Plan> PlanFromHeuristics(cudnnHandle_t handle, const Desc& graph,
                                          cudnnBackendHeurMode_t mode, bool deterministic) {
    const char* mode_name = mode == CUDNN_HEUR_MODE_A ? "heuristics A" : "fallback";
    Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    if (heur.get() == nullptr) return absl::InternalError("engine heuristics descriptor");
    cudnnBackendDescriptor_t raw_graph = graph.get();
    cudnnStatus_t st = cudnnBackendSetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH,
                                                CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw_graph);
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnBackendSetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(heur.get());
    int64_t count = 0;
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                    0, &count, nullptr);
    if (st != CUDNN_STATUS_SUCCESS)
      return absl::NotFoundError(absl::StrFormat("%s: %s", mode_name, CudnnError(st)));
    if (count == 0) return absl::NotFoundError(absl::StrFormat("%s: no engine configuration", mode_name));
    std::vector<Desc> configs;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < count; ++i) {
      configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
      raw.push_back(configs.back().get());
    }
    int64_t got = 0;
    st = cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                  count, &got, raw.data());
    if (st != CUDNN_STATUS_SUCCESS)
      return absl::NotFoundError(absl::StrFormat("%s results: %s", mode_name, CudnnError(st)));
    std::string why;
    int64_t passed_over = 0;  // deterministic: configurations refused for their engine's note
    for (int64_t i = 0; i < got; ++i) {
      Plan p;
      int64_t n = 0;
      // The engine: its global index (for the start-up line, best effort) and its numerical notes.
      Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
      cudnnBackendDescriptor_t raw_engine = engine.get();
      const bool have_engine =
          raw_engine != nullptr &&
          cudnnBackendGetAttribute(raw[i], CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n,
                                   &raw_engine) == CUDNN_STATUS_SUCCESS;
      if (have_engine)
        cudnnBackendGetAttribute(raw_engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n,
                                 &p.engine);
      if (deterministic) {
        // An engine whose notes cannot be read is not known to be deterministic: passed over too.
        if (!have_engine || !NotedDeterministic(raw_engine)) {
          ++passed_over;
          why = absl::StrFormat("engine %d is not deterministic", p.engine);
          continue;
        }
      }
      p.plan = Desc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      st = cudnnBackendSetAttribute(p.plan.get(), CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1,
                                    &handle);
      if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(p.plan.get(), CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                      CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw[i]);
      if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(p.plan.get());
      if (st != CUDNN_STATUS_SUCCESS) {
        why = CudnnError(st);
        continue;
      }
      if (cudnnBackendGetAttribute(p.plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64,
                                   1, &n, &p.workspace) != CUDNN_STATUS_SUCCESS)
        p.workspace = 0;
      return p;
    }
    if (deterministic && passed_over > 0) {
      return absl::NotFoundError(absl::StrFormat(
          "%s: none of %d engine configurations finalized, %d of them passed over as not deterministic "
          "(last: %s)",
          mode_name, got, passed_over, why));
    }
    return absl::NotFoundError(
        absl::StrFormat("%s: none of %d engine configurations finalized (last: %s)", mode_name, got, why));
  }

  std::string step_;
  absl::Status status_;
  std::map<int64_t, Desc> tensors_;
  std::vector<Desc> inner_, ops_;
  int64_t next_virtual_ = kFirstVirtual;
};

// Dimensions and strides of fathom's row-major tensors as cuDNN's (b, h, s, d) views.
struct Views {
  std::vector<int64_t> q, q_strides;          // (B, H, T, Dk) over (B, T, H, Dk)
  std::vector<int64_t> kt, kt_strides;        // (B, H, Dk, T): K transposed, same memory
  std::vector<int64_t> v, v_strides;          // (B, H, T, Dv) over (B, T, H, Dv): v, out, dout, dv
  std::vector<int64_t> vt, vt_strides;        // (B, H, Dv, T)
  std::vector<int64_t> stat, stat_strides;    // (B, H, T, 1) over lse (B, H, T)
  std::vector<int64_t> score, score_strides;  // (B, H, T, T), virtual
  std::vector<int64_t> score_t_strides;       // the transposed scores' strides (same dims)
};

Views MakeViews(const AttentionShape& s) {
  const int64_t b = s.b, t = s.t, h = s.h, dk = s.dk, dv = s.dv;
  Views w;
  w.q = {b, h, t, dk};
  w.q_strides = {t * h * dk, dk, h * dk, 1};
  w.kt = {b, h, dk, t};
  w.kt_strides = {t * h * dk, dk, 1, h * dk};
  w.v = {b, h, t, dv};
  w.v_strides = {t * h * dv, dv, h * dv, 1};
  w.vt = {b, h, dv, t};
  w.vt_strides = {t * h * dv, dv, 1, h * dv};
  w.stat = {b, h, t, 1};
  w.stat_strides = {h * t, t, 1, 1};
  w.score = {b, h, t, t};
  w.score_strides = {h * t * t, t * t, t, 1};
  w.score_t_strides = {h * t * t, t * t, 1, t};
  return w;
}

// The causal mask of cudnn_frontend's composite diagonal band: keep (row >= column), else -inf.
int64_t CausalMask(GraphBuilder& g, const Views& w, int64_t scores, int64_t neg_inf) {
  const int64_t row = g.Virtual(w.score, w.score_strides, CUDNN_DATA_INT32);
  g.Pointwise("row index", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, scores, -1, -1, row, 2);
  const int64_t col = g.Virtual(w.score, w.score_strides, CUDNN_DATA_INT32);
  g.Pointwise("column index", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, scores, -1, -1, col, 3);
  const int64_t keep = g.Virtual(w.score, w.score_strides, CUDNN_DATA_BOOLEAN);
  g.Pointwise("row >= column", CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, -1, keep);
  const int64_t masked = g.Virtual(w.score, w.score_strides, CUDNN_DATA_FLOAT);
  g.Pointwise("causal select", CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, scores, neg_inf, keep,
              masked);
  return masked;
}

absl::StatusOr<Plan> BuildForward(cudnnHandle_t handle, const AttentionShape& s, const Variant&,
                                  bool deterministic) {
  const Views w = MakeViews(s);
  const auto f32 = CUDNN_DATA_FLOAT, bf16 = CUDNN_DATA_BFLOAT16;
  GraphBuilder g;
  const int64_t q = g.Io(kQ, w.q, w.q_strides, bf16);
  const int64_t kt = g.Io(kK, w.kt, w.kt_strides, bf16);
  const int64_t v = g.Io(kV, w.v, w.v_strides, bf16);
  const int64_t o = g.Io(kO, w.v, w.v_strides, bf16);
  const int64_t lse = g.Io(kLse, w.stat, w.stat_strides, f32);
  const int64_t scale = g.Scalar(kScale), neg_inf = g.Scalar(kNegInf);

  const int64_t s_raw = g.Virtual(w.score, w.score_strides, f32);
  g.Matmul("Q K^T", q, kt, s_raw);
  const int64_t s_scaled = g.Virtual(w.score, w.score_strides, f32);
  g.Pointwise("scale", CUDNN_POINTWISE_MUL, f32, s_raw, scale, -1, s_scaled);
  const int64_t s_masked = CausalMask(g, w, s_scaled, neg_inf);
  const int64_t row_max = g.Virtual(w.stat, w.stat_strides, f32);
  g.Reduction("row max", CUDNN_REDUCE_TENSOR_MAX, s_masked, row_max);
  const int64_t shifted = g.Virtual(w.score, w.score_strides, f32);
  g.Pointwise("subtract max", CUDNN_POINTWISE_SUB, f32, s_masked, row_max, -1, shifted);
  const int64_t e = g.Virtual(w.score, w.score_strides, f32);
  g.Pointwise("exp", CUDNN_POINTWISE_EXP, f32, shifted, -1, -1, e);
  const int64_t row_sum = g.Virtual(w.stat, w.stat_strides, f32);
  g.Reduction("row sum", CUDNN_REDUCE_TENSOR_ADD, e, row_sum);
  const int64_t log_sum = g.Virtual(w.stat, w.stat_strides, f32);
  g.Pointwise("log sum", CUDNN_POINTWISE_LOG, f32, row_sum, -1, -1, log_sum);
  g.Pointwise("lse", CUDNN_POINTWISE_ADD, f32, row_max, log_sum, -1, lse);
  const int64_t p = g.Virtual(w.score, w.score_strides, bf16);
  g.Pointwise("normalise", CUDNN_POINTWISE_DIV, f32, e, row_sum, -1, p);
  g.Matmul("P V", p, v, o);
  return g.Build(handle, deterministic);
}

absl::StatusOr<Plan> BuildBackward(cudnnHandle_t handle, const AttentionShape& s, const Variant& variant,
                                   bool deterministic) {
  const Views w = MakeViews(s);
  const auto f32 = CUDNN_DATA_FLOAT, bf16 = CUDNN_DATA_BFLOAT16;
  GraphBuilder g;
  const int64_t q = g.Io(kQ, w.q, w.q_strides, bf16);
  const int64_t kt = g.Io(kK, w.kt, w.kt_strides, bf16);
  const int64_t vt = g.Io(kV, w.vt, w.vt_strides, bf16);
  const int64_t o = g.Io(kO, w.v, w.v_strides, bf16);
  const int64_t d_o = g.Io(kDO, w.v, w.v_strides, bf16);
  const int64_t lse = g.Io(kLse, w.stat, w.stat_strides, f32);
  const int64_t dq = g.Io(kDQ, w.q, w.q_strides, bf16);
  const int64_t dk = g.Io(kDK, w.q, w.q_strides, bf16);
  const int64_t dv = g.Io(kDV, w.v, w.v_strides, bf16);
  const int64_t row_dot = g.Io(kRowDot, w.stat, w.stat_strides, f32);
  const int64_t scale = g.Scalar(kScale), neg_inf = g.Scalar(kNegInf), one = g.Scalar(kOne);

  // D = rowsum(dO * O).
  const int64_t prod = g.Virtual(w.v, {s.h * s.t * s.dv, s.t * s.dv, s.h * s.dv, 1}, f32);
  g.Pointwise("dO * O", CUDNN_POINTWISE_MUL, f32, d_o, o, -1, prod);
  const int64_t dot = g.Virtual(w.stat, w.stat_strides, f32);
  g.Reduction("rowsum dO * O", CUDNN_REDUCE_TENSOR_ADD, prod, dot);
  g.Pointwise("D", CUDNN_POINTWISE_MUL, f32, dot, one, -1, row_dot);

  // P = exp(mask(scale Q K^T - lse)); dV = P^T dO.
  const int64_t s_raw = g.Virtual(w.score, w.score_strides, f32);
  g.Matmul("Q K^T", q, kt, s_raw);
  const int64_t s_scaled = g.Virtual(w.score, w.score_strides, f32);
  g.Pointwise("scale", CUDNN_POINTWISE_MUL, f32, s_raw, scale, -1, s_scaled);
  const int64_t s_shifted = g.Virtual(w.score, w.score_strides, f32);
  g.Pointwise("subtract lse", CUDNN_POINTWISE_SUB, f32, s_scaled, lse, -1, s_shifted);
  const int64_t s_masked = CausalMask(g, w, s_shifted, neg_inf);
  const int64_t p = g.Virtual(w.score, w.score_strides, f32);
  g.Pointwise("exp", CUDNN_POINTWISE_EXP, f32, s_masked, -1, -1, p);
  const int64_t p_t = g.Virtual(w.score, w.score_t_strides, bf16);
  g.Reshape("P^T", p, p_t);
  g.Matmul("P^T dO", p_t, d_o, dv);

  // dS = P (dO V^T - D) scale; dK = dS^T Q.
  const int64_t dp = g.Virtual(w.score, w.score_strides, f32);
  g.Matmul("dO V^T", d_o, vt, dp);
  const int64_t dp_centred = g.Virtual(w.score, w.score_strides, f32);
  g.Pointwise("dP - D", CUDNN_POINTWISE_SUB, f32, dp, row_dot, -1, dp_centred);
  const int64_t ds_unscaled = g.Virtual(w.score, w.score_strides, f32);
  g.Pointwise("* P", CUDNN_POINTWISE_MUL, f32, dp_centred, p, -1, ds_unscaled);
  const int64_t ds = g.Virtual(w.score, w.score_strides, f32);
  g.Pointwise("* scale", CUDNN_POINTWISE_MUL, f32, ds_unscaled, scale, -1, ds);
  const int64_t ds_t = g.Virtual(w.score, w.score_t_strides, bf16);
  g.Reshape("dS^T", ds, ds_t);
  g.Matmul("dS^T Q", ds_t, q, dk);

  // dQ = dS K, through an f32 accumulator in the workspace unless the deterministic spelling is asked for.
  const int64_t k = g.Virtual(w.q, w.q_strides, variant.bf16_k_reshape ? bf16 : f32);
  g.Reshape("K", kt, k);
  if (variant.deterministic_dq) {
    g.Matmul("dS K", ds, k, dq);
  } else {
    const int64_t acc = g.Io(kDqAccum, w.q, {s.h * s.t * s.dk, s.t * s.dk, s.dk, 1}, f32);
    g.Matmul("dS K", ds, k, acc);
    g.Pointwise("dq", CUDNN_POINTWISE_IDENTITY, f32, acc, -1, -1, dq);
  }
  return g.Build(handle, deterministic);
}

size_t AlignUp(size_t n) { return (n + 255) / 256 * 256; }

// The cached plans of one (device, shape) and their workspaces.
struct Entry {
  bool deterministic = false;  // built in deterministic mode (SetCudnnAttentionDeterministic)
  absl::Status status;
  Plan forward, backward;
  void* forward_ws = nullptr;
  void* backward_ws = nullptr;  // [engine workspace | D (B, H, T) f32 | dq accumulator (B, H, T, Dk) f32]
  size_t row_dot_offset = 0, dq_accum_offset = 0, dq_accum_bytes = 0, total_bytes = 0;
};

struct Cache {
  std::mutex mu;
  std::map<int, cudnnHandle_t> handles;  // per device, never destroyed
  // (device, deterministic mode, b, t, h, dk, dv)
  std::map<std::tuple<int, bool, int64_t, int64_t, int64_t, int64_t, int64_t>, std::unique_ptr<Entry> >
      entries;
};

Cache& TheCache() {
  static Cache* cache = new Cache();  // never destroyed: plans and workspaces die with the CUDA context
  return *cache;
}

size_t Version() { return cudnnGetVersion(); }

// -inf for masked scores; releases before 9.10 want the lowest finite float (cudnn_frontend does the same).
float MaskValue() {
  return Version() < 91000 ? std::numeric_limits<float>::lowest() : -std::numeric_limits<float>::infinity();
}

void BuildEntry(Entry& e, cudnnHandle_t handle, const AttentionShape& s) {
  std::string why;
  for (size_t i = 0; i < std::size(kForwardVariants); ++i) {
    absl::StatusOr<Plan> p = BuildForward(handle, s, kForwardVariants[i], e.deterministic);
    if (p.ok()) {
      e.forward = *std::move(p);
      e.forward.variant = static_cast<int>(i);
      break;
    }
    why += absl::StrFormat("%sforward variant %d: %s", why.empty() ? "" : "; ", i, p.status().message());
  }
  if (e.forward.variant >= 0) {
    for (size_t i = 0; i < std::size(kBackwardVariants); ++i) {
      // Deterministic mode: only the spelling without the atomically accumulated dq.
      if (e.deterministic && !kBackwardVariants[i].deterministic_dq) continue;
      absl::StatusOr<Plan> p = BuildBackward(handle, s, kBackwardVariants[i], e.deterministic);
      if (p.ok()) {
        e.backward = *std::move(p);
        e.backward.variant = static_cast<int>(i);
        break;
      }
      why += absl::StrFormat("%sbackward variant %d: %s", why.empty() ? "" : "; ", i, p.status().message());
    }
  }
  if (e.forward.variant < 0 || e.backward.variant < 0) {
    e.status = absl::NotFoundError(absl::StrFormat("cuDNN %d refused %scausal attention %s: %s", Version(),
                                                   e.deterministic ? "deterministic " : "",
                                                   AttentionShapeName(s), why));
    return;
  }
  const size_t f32 = sizeof(float);
  e.row_dot_offset = AlignUp(static_cast<size_t>(e.backward.workspace));
  e.dq_accum_offset = e.row_dot_offset + AlignUp(static_cast<size_t>(s.b * s.h * s.t) * f32);
  e.dq_accum_bytes = kBackwardVariants[e.backward.variant].deterministic_dq
                         ? 0
                         : static_cast<size_t>(s.b * s.h * s.t * s.dk) * f32;
  const size_t backward_bytes = e.dq_accum_offset + AlignUp(e.dq_accum_bytes);
  const size_t forward_bytes = AlignUp(static_cast<size_t>(e.forward.workspace));
  e.total_bytes = forward_bytes + backward_bytes;
  if (forward_bytes > 0 && cudaMalloc(&e.forward_ws, forward_bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    e.status =
        absl::ResourceExhaustedError(absl::StrFormat("cuDNN attention workspace of %d bytes", forward_bytes));
    return;
  }
  if (cudaMalloc(&e.backward_ws, backward_bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    e.status = absl::ResourceExhaustedError(
        absl::StrFormat("cuDNN attention workspace of %d bytes", backward_bytes));
  }
}

// The entry of `s` on the current device, built on first use. The returned pointer stays valid (entries
// are never erased).
Entry& Lookup(const AttentionShape& s) {
  Cache& c = TheCache();
  int device = 0;
  FATHOM_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(c.mu);
  const bool deterministic = CudnnAttentionDeterministic();
  auto key = std::make_tuple(device, deterministic, s.b, s.t, s.h, s.dk, s.dv);
  auto it = c.entries.find(key);
  if (it != c.entries.end()) return *it->second;
  auto entry = std::make_unique<Entry>();
  entry->deterministic = deterministic;
  if (Version() < 90000) {
    entry->status = absl::FailedPreconditionError(
        absl::StrFormat("cuDNN %d is older than 9.0, which the fused SDPA graphs need", Version()));
  } else {
    auto h = c.handles.find(device);
    if (h == c.handles.end()) {
      cudnnHandle_t handle = nullptr;
      const cudnnStatus_t st = cudnnCreate(&handle);
      if (st != CUDNN_STATUS_SUCCESS) {
        entry->status = absl::FailedPreconditionError("cudnnCreate: " + CudnnError(st));
      } else {
        h = c.handles.emplace(device, handle).first;
      }
    }
    if (entry->status.ok()) BuildEntry(*entry, h->second, s);
  }
  return *c.entries.emplace(key, std::move(entry)).first->second;
}

cudnnHandle_t HandleOfCurrentDevice() {
  Cache& c = TheCache();
  int device = 0;
  FATHOM_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(c.mu);
  return c.handles.at(device);
}

AttentionShape ShapeOf(const char* op, const Tensor& q, const Tensor& v) {
  FATHOM_CHECK(q.ndim() == 4 && v.ndim() == 4 && q.dtype() == DType::kBF16 && v.dtype() == DType::kBF16 &&
                   q.device() == Device::kCUDA && v.device() == Device::kCUDA,
               "[", op, "] q ", q.shape_str(), " ", DTypeName(q.dtype()), ", v ", v.shape_str(), " ",
               DTypeName(v.dtype()), ": expected bf16 (B, T, H, D) tensors on the GPU");
  return {q.dim(0), q.dim(1), q.dim(2), q.dim(3), v.dim(3)};
}

void CheckOperand(const char* op, const char* name, const Tensor& x, const Shape& shape, DType dtype) {
  FATHOM_CHECK(x.shape() == shape && x.dtype() == dtype && x.device() == Device::kCUDA, "[", op, "] ", name,
               " ", x.shape_str(), " ", DTypeName(x.dtype()), " on ", DeviceName(x.device()), ", expected ",
               ShapeString(shape), " ", DTypeName(dtype), " on cuda");
  FATHOM_CHECK(reinterpret_cast<uintptr_t>(x.raw()) % 16 == 0, "[", op, "] ", name,
               " must be 16-byte aligned, got ", x.raw());
}

// The handle is shared by every caller on its device: its stream is set and the plan queued under one
// lock, so two threads on different streams cannot interleave the two calls.
void Execute(cudnnHandle_t handle, const Plan& plan, void* workspace, const std::vector<int64_t>& uids,
             const std::vector<void*>& pointers, Stream stream) {
  static std::mutex* execute_mu = new std::mutex();  // never destroyed, as the cache
  std::lock_guard<std::mutex> lock(*execute_mu);
  FATHOM_CUDNN_CHECK(cudnnSetStream(handle, stream));
  Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  FATHOM_CHECK(pack.get() != nullptr, "[cudnn_attention] variant pack descriptor");
  FATHOM_CUDNN_CHECK(cudnnBackendSetAttribute(pack.get(), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
                                              CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()),
                                              uids.data()));
  FATHOM_CUDNN_CHECK(cudnnBackendSetAttribute(pack.get(), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                                              CUDNN_TYPE_VOID_PTR, static_cast<int64_t>(pointers.size()),
                                              pointers.data()));
  FATHOM_CUDNN_CHECK(cudnnBackendSetAttribute(pack.get(), CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
                                              CUDNN_TYPE_VOID_PTR, 1, &workspace));
  FATHOM_CUDNN_CHECK(cudnnBackendFinalize(pack.get()));
  FATHOM_CUDNN_CHECK(cudnnBackendExecute(handle, plan.plan.get(), pack.get()));
}

Entry& ReadyEntry(const char* op, const AttentionShape& s) {
  Entry& e = Lookup(s);
  FATHOM_CHECK(e.status.ok(), "[", op, "] ", e.status.message());
  return e;
}

}  // namespace

bool CudnnAttentionCompiled() { return true; }

absl::Status PrepareCudnnAttention(const AttentionShape& shape) { return Lookup(shape).status; }

std::string CudnnAttentionSummary(const AttentionShape& shape) {
  const Entry& e = ReadyEntry("cudnn_attention", shape);
  return absl::StrFormat(
      "cuDNN %d fused SDPA (forward engine %d variant %d, backward engine %d variant %d%s; workspace %.1f "
      "MiB)",
      Version(), e.forward.engine, e.forward.variant, e.backward.engine, e.backward.variant,
      e.deterministic                                          ? ", deterministic"
      : kBackwardVariants[e.backward.variant].deterministic_dq ? ", deterministic dq"
                                                               : "",
      static_cast<double>(e.total_bytes) / (1 << 20));
}

void CudnnAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                           const Tensor& v, double scale, Stream stream) {
  const char* op = "cudnn_attention";
  const AttentionShape s = ShapeOf(op, q, v);
  CheckOperand(op, "q", q, {s.b, s.t, s.h, s.dk}, DType::kBF16);
  CheckOperand(op, "k", k, {s.b, s.t, s.h, s.dk}, DType::kBF16);
  CheckOperand(op, "v", v, {s.b, s.t, s.h, s.dv}, DType::kBF16);
  CheckOperand(op, "out", out, {s.b, s.t, s.h, s.dv}, DType::kBF16);
  CheckOperand(op, "lse", lse, {s.b, s.h, s.t}, DType::kF32);
  Entry& e = ReadyEntry(op, s);
  float scale_f = static_cast<float>(scale), neg_inf = MaskValue();
  Execute(HandleOfCurrentDevice(), e.forward, e.forward_ws, {kQ, kK, kV, kO, kLse, kScale, kNegInf},
          {q.raw(), k.raw(), v.raw(), out.raw(), lse.raw(), &scale_f, &neg_inf}, stream);
}

void CudnnAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                            const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse, double scale, Stream stream) {
  const char* op = "cudnn_attention_backward";
  const AttentionShape s = ShapeOf(op, q, v);
  const Shape qk{s.b, s.t, s.h, s.dk}, vo{s.b, s.t, s.h, s.dv};
  CheckOperand(op, "q", q, qk, DType::kBF16);
  CheckOperand(op, "k", k, qk, DType::kBF16);
  CheckOperand(op, "v", v, vo, DType::kBF16);
  CheckOperand(op, "out", out, vo, DType::kBF16);
  CheckOperand(op, "dout", dout, vo, DType::kBF16);
  CheckOperand(op, "lse", lse, {s.b, s.h, s.t}, DType::kF32);
  CheckOperand(op, "dq", dq, qk, DType::kBF16);
  CheckOperand(op, "dk", dk, qk, DType::kBF16);
  CheckOperand(op, "dv", dv, vo, DType::kBF16);
  Entry& e = ReadyEntry(op, s);
  char* ws = static_cast<char*>(e.backward_ws);
  // Releases before 9.6 expect the dq accumulator zeroed by the caller (cudnn_frontend does the same).
  if (e.dq_accum_bytes > 0 && Version() < 90600)
    FATHOM_CUDA_CHECK(cudaMemsetAsync(ws + e.dq_accum_offset, 0, e.dq_accum_bytes, stream));
  float scale_f = static_cast<float>(scale), neg_inf = MaskValue(), one = 1.0f;
  std::vector<int64_t> uids = {kQ, kK, kV, kO, kDO, kLse, kDQ, kDK, kDV, kRowDot, kScale, kNegInf, kOne};
  std::vector<void*> ptrs = {q.raw(),   k.raw(),  v.raw(),  out.raw(), dout.raw(),
                             lse.raw(), dq.raw(), dk.raw(), dv.raw(),  ws + e.row_dot_offset,
                             &scale_f,  &neg_inf, &one};
  if (e.dq_accum_bytes > 0) {
    uids.push_back(kDqAccum);
    ptrs.push_back(ws + e.dq_accum_offset);
  }
  Execute(HandleOfCurrentDevice(), e.backward, ws, uids, ptrs, stream);
}

#endif  // FATHOM_WITH_CUDNN

}  // namespace fathom::cuda
