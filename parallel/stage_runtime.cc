#include "parallel/stage_runtime.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include "absl/strings/str_format.h"
#include "framework/file_io.h"
#include "framework/ops.h"
#include "nlohmann/json.hpp"
#include "optim/expert_bias.h"
#include "parallel/all_to_all_exchange.h"
#include "parallel/collective_status.h"
#include "parallel/memory_plan.h"
#include "parallel/phases.h"
#include "parallel/pipeline_executor.h"
#include "parallel/schedule_validate.h"
#include "parallel/stage_split.h"
#include "parallel/step_trace.h"
#include "parallel/zero.h"

#ifdef FATHOM_WITH_CUDA
#include "framework/cuda/device_arena.h"
#include "framework/cuda/device_pool.h"
#include "framework/kernels/cuda/attention.h"
#include "framework/kernels/cuda/fp8_gemm.h"
#include "framework/kernels/cuda/grouped_gemm.h"
#include "parallel/cuda/nccl_communicator.h"
#include "parallel/launch_env.h"
#endif

namespace fathom {
namespace {

// The embedding-gradient exchange between the first and the last stage, after the executor's run.
constexpr int kEmbeddingGradTag = Communicator::kMaxTag;

// Sums `values` over `comm` in f64 (host values).
std::vector<double> SumOver(Communicator& comm, const std::vector<double>& values) {
  Tensor t = Tensor::FromVector(values, {static_cast<int64_t>(values.size())}, DType::kF64);
  comm.AllReduce(t, ReduceOp::kSum);
  return std::vector<double>(t.data<double>(), t.data<double>() + t.numel());
}

int64_t CountMoeLayers(const ModelConfig& m) {
  int64_t n = 0;
  for (int64_t l = 0; l < m.num_hidden_layers + m.num_nextn_predict_layers; ++l) n += m.is_moe_layer(l);
  return n;
}

}  // namespace

#ifdef FATHOM_WITH_CUDA
// One GPU per rank. Every kernel and every NCCL operation is ordered on one stream (the legacy default
// stream, the ops' and the pools' stream). Memory: the parameters, gradients and compute copies sit in a
// pool of exactly their size; the optimizer moments in ZeRO's own arenas; everything of the step loop in
// the activation pool, sized from the start-up memory plan (parallel/memory_plan.h). No cudaMalloc after.
struct StageRuntime::DeviceState {
  DeviceState() : op_scope(context) {}
  ops::OpContext context;
  ops::OpContextScope op_scope;
  // The NCCL groups of the mesh (world > 1): the same layout as the host mesh, moving device tensors.
  std::unique_ptr<DeviceMesh> nccl;
  std::unique_ptr<cuda::DevicePool> static_pool, pool;
  std::optional<cuda::PoolScope> pool_scope;
  MemoryPlan plan;
};
#else
struct StageRuntime::DeviceState {};
#endif

struct StageRuntime::ReplicaGroups {
  Communicator* dp = nullptr;       // ZeRO-1 of attention and dense parameters (moves the tensors)
  Communicator* edp = nullptr;      // ZeRO-1 of the routed experts (moves the tensors)
  Communicator* dp_host = nullptr;  // host values summed over the replicas (expert loads)
  std::vector<std::unique_ptr<Communicator>> owned;  // DualPipe's pair groups
};

StageRuntime::~StageRuntime() = default;

absl::StatusOr<std::unique_ptr<StageRuntime>> StageRuntime::Create(const Recipe& recipe, DeviceMesh& mesh) {
  if (absl::Status s = recipe.Validate(); !s.ok()) return s;
  if (absl::Status s = ValidateParallelSchedule(recipe.parallel, recipe.model); !s.ok()) {
    return absl::Status(s.code(), absl::StrFormat("%s: %s", recipe.path, s.message()));
  }
  if (recipe.train.device == "cuda") {
#ifndef FATHOM_WITH_CUDA
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: train.device is cuda, but this build has no CUDA backend (configure with nvcc "
                        "present or -DFATHOM_CUDA=ON); or set train.device: cpu",
                        recipe.path));
#else
    if (cuda::DeviceCount() == 0) {
      return absl::FailedPreconditionError(
          absl::StrFormat("%s: train.device is cuda, but no CUDA device is visible", recipe.path));
    }
#endif
  }
  const MeshLayout& layout = mesh.layout();
  if (layout.pp() != recipe.parallel.pp || layout.ep() != recipe.parallel.ep) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: the mesh (pp %d, ep %d) does not match parallel.pp=%d, parallel.ep=%d",
                        recipe.path, layout.pp(), layout.ep(), recipe.parallel.pp, recipe.parallel.ep));
  }
  const ScheduleKind kind = *ParseScheduleKind(recipe.parallel.schedule);  // validated above
  const bool pairs = recipe.parallel.overlap == "two_micro_batch";
  if (pairs && ChunksPerRank(kind) != 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: parallel.overlap two_micro_batch pairs the micro-batches of a single-chunk schedule (1f1b or "
        "zb1p); parallel.schedule %s overlaps its forward and backward chunks by itself: set "
        "parallel.overlap: none",
        recipe.path, recipe.parallel.schedule));
  }
  if (!recipe.train.trace.empty()) {
    // Checked before anything runs (the file is written after the last traced step): a regular file or
    // nothing, in an existing directory.
    if (absl::Status s = CheckNotAnInput(recipe.train.trace, {recipe.path}, "train.trace"); !s.ok()) {
      return absl::Status(s.code(), absl::StrFormat("%s: %s", recipe.path, s.message()));
    }
    if (absl::Status s = CheckReplaceable(recipe.train.trace); !s.ok()) {
      return absl::Status(s.code(), absl::StrFormat("%s: train.trace: %s", recipe.path, s.message()));
    }
  }
  absl::StatusOr<std::vector<int64_t>> stages =
      SplitStages(recipe.model, recipe.parallel, recipe.train.seq_len);
  if (!stages.ok()) return stages.status();
  const int m = static_cast<int>(recipe.parallel.micro_batches);
  Schedule schedule =
      pairs ? TwoMicroBatchSchedule(m) : *MakeSchedule(kind, layout.pp(), m);  // shape validated above
  // Nothing runs that the validator has not proven complete, ordered and deadlock-free.
  if (absl::StatusOr<ValidationReport> v = ValidateSchedule(schedule); !v.ok()) {
    return absl::InternalError(
        absl::StrFormat("%s: the %s schedule for pp %d and %d micro-batches is not "
                        "valid: %s",
                        recipe.path, recipe.parallel.schedule, layout.pp(), m, v.status().message()));
  }
  auto runtime =
      std::unique_ptr<StageRuntime>(new StageRuntime(recipe, mesh, *std::move(stages), std::move(schedule)));
  if (absl::Status s = runtime->SetUp(); !s.ok()) return s;
  return runtime;
}

StageRuntime::StageRuntime(const Recipe& recipe, DeviceMesh& mesh, std::vector<int64_t> stage_layers,
                           Schedule schedule)
    : recipe_(recipe), mesh_(mesh), stage_layers_(std::move(stage_layers)), schedule_(std::move(schedule)) {}

StageRuntime::Chunk::Chunk() = default;
StageRuntime::Chunk::Chunk(Chunk&&) noexcept = default;
StageRuntime::Chunk::~Chunk() = default;

Model& StageRuntime::model(int chunk) {
  FATHOM_CHECK(chunk >= 0 && chunk < num_chunks(), "[stage runtime] chunk ", chunk, " of ", num_chunks());
  return *chunks_[chunk].model;
}

ZeroOptimizer& StageRuntime::optimizer(int chunk) {
  FATHOM_CHECK(chunk >= 0 && chunk < num_chunks(), "[stage runtime] chunk ", chunk, " of ", num_chunks());
  return *chunks_[chunk].optimizer;
}

int StageRuntime::chunk_model_stage(int chunk) const {
  FATHOM_CHECK(chunk >= 0 && chunk < num_chunks(), "[stage runtime] chunk ", chunk, " of ", num_chunks());
  return chunks_[chunk].model_stage;
}

const std::vector<Instruction>& StageRuntime::executed_program() const { return executor_->executed(); }

std::vector<int> StageRuntime::ChunksByStage() const {
  std::vector<int> order(chunks_.size());
  for (size_t c = 0; c < order.size(); ++c) order[c] = static_cast<int>(c);
  std::sort(order.begin(), order.end(),
            [this](int a, int b) { return chunks_[a].model_stage < chunks_[b].model_stage; });
  return order;
}

const MeshLayout& StageRuntime::layout() const { return mesh_.layout(); }
const MeshCoord& StageRuntime::coord() const { return mesh_.coord(); }

absl::Status StageRuntime::SetUp() {
  const MeshCoord& c = mesh_.coord();
  const int ep = mesh_.layout().ep();
  const int64_t experts = recipe_.model.n_routed_experts;
  // The groups that move tensors: the host mesh itself on the CPU (and for a single GPU, whose groups all
  // have one rank and move nothing), NCCL groups of the same layout for several GPUs.
  groups_ = &mesh_;
#ifdef FATHOM_WITH_CUDA
  size_t free_at_start = 0;
  if (recipe_.train.device == "cuda") {
    device_ = std::make_unique<DeviceState>();
    if (mesh_.layout().world() > 1) {
      // Picks this rank's GPU from its local rank (and fails the job when two ranks would share one).
      std::unique_ptr<Communicator> world = NcclCommunicator::Create(mesh_.world(), LaunchEnvFromMpi());
      absl::StatusOr<std::unique_ptr<DeviceMesh>> nccl =
          DeviceMesh::Create(std::move(world), recipe_.parallel.pp, recipe_.parallel.ep);
      if (!nccl.ok()) return nccl.status();
      device_->nccl = *std::move(nccl);
      groups_ = device_->nccl.get();
    }
    free_at_start = cuda::FreeDeviceMemory();  // this rank's GPU, before anything of the model
  }
#endif
  SetUpReplicaGroups();
  SetUpTrace();
  if (ep > 1) {
    // Rows travel over the tensor groups; host counts always over the host group.
    exchange_ = std::make_unique<AllToAllExpertExchange>(&groups_->ep(), experts, &mesh_.ep());
    exchange_->set_trace(trace_.get());
  }
  // Master weights are f32 (f64 for the CPU reference runs); bf16 compute reads bf16 copies of them. Every
  // tensor draws its values from its HF name, so DualPipe's two copies of a model stage start equal.
  for (int chunk = 0; chunk < schedule_.chunks(); ++chunk) {
    Chunk& k = chunks_.emplace_back();
    k.model_stage = schedule_.ModelStage(c.pp_rank, chunk);
    k.slice = SliceOfStage(k.model_stage);
    k.model = std::make_unique<Model>(recipe_.model, recipe_.loss, k.slice);
    k.model->Finalize(recipe_.train.dtype == "f64" ? DType::kF64 : DType::kF32, recipe_.train.seed);
  }
  Device device = Device::kCPU;
#ifdef FATHOM_WITH_CUDA
  if (device_) {
    device = Device::kCUDA;
    const bool bf16 = recipe_.train.dtype == "bf16";
    const bool fp8 = recipe_.train.precision == "fp8";
    // One plan for the rank: every chunk's parameters and optimizer shards; the activations of the
    // schedule's live micro-batch-chunks at the size of the larger chunk's.
    int64_t param_elements = 0, shard_elements = 0;
    for (const Chunk& k : chunks_) {
      param_elements += k.model->params().numel();
      shard_elements +=
          ZeroOptimizer::MaxShardElements(k.model->params(), replicas_->dp->size(), replicas_->edp->size());
    }
    const std::vector<Instruction>& program = schedule_.ranks[c.pp_rank];
    // Under fp8 the ops' FP8 GEMM context has its own cuBLASLt workspace beside the bf16 one.
    const int64_t workspace_bytes = (fp8 ? 2 : 1) * (int64_t{32} << 20);
    MemoryPlanInput input =
        MemoryPlanInputFor(recipe_, chunks_[0].slice, program, param_elements, shard_elements,
                           workspace_bytes, static_cast<int64_t>(free_at_start));
    for (const Chunk& k : chunks_) input.fp8_weight_bytes += fp8 ? k.model->params().Fp8WeightBytes() : 0;
    for (const Chunk& k : chunks_) {
      const MemoryPlanInput other = MemoryPlanInputFor(recipe_, k.slice, program, 0, 0, 0, 0);
      input.activation_bytes_per_micro_batch =
          std::max(input.activation_bytes_per_micro_batch, other.activation_bytes_per_micro_batch);
      input.transient_bytes = std::max(input.transient_bytes, other.transient_bytes);
    }
    absl::StatusOr<MemoryPlan> plan = PlanDeviceMemory(input);
    if (!plan.ok()) {
      return absl::Status(plan.status().code(),
                          absl::StrFormat("%s: rank %d: %s", recipe_.path, c.rank, plan.status().message()));
    }
    device_->plan = *plan;
    // Values, gradients and the compute copies of every chunk: one pool of exactly their blocks.
    size_t static_bytes = 0;
    for (const Chunk& k : chunks_) {
      const size_t n = static_cast<size_t>(k.model->params().numel());
      static_bytes +=
          2 * cuda::DevicePool::RoundedSize(n * 4) + (bf16 ? cuda::DevicePool::RoundedSize(n * 2) : 0);
      // The FP8 weight copies (train.precision fp8) live there too: four blocks per FP8 weight.
      for (const ParamSpec& s : k.model->params().specs()) {
        if (!fp8 || s.gemm != GemmPrecision::kFp8) continue;
        for (int64_t bytes : Fp8Weight::TensorBytes(s.shape))
          static_bytes += cuda::DevicePool::RoundedSize(bytes);
      }
    }
    device_->static_pool = std::make_unique<cuda::DevicePool>("parameters", static_bytes);
    {
      cuda::PoolScope scope(*device_->static_pool);
      for (Chunk& k : chunks_) {
        k.model->params().MoveTo(Device::kCUDA);
        k.model->params().SetComputeDType(bf16 ? DType::kBF16 : DType::kF32);
        if (fp8) k.model->params().EnableFp8Weights();  // quantised from the masters now, then every step
      }
    }
    device_->pool = std::make_unique<cuda::DevicePool>("activations", static_cast<size_t>(plan->pool_bytes));
    device_->pool_scope.emplace(*device_->pool);
    // Which kernels run attention; cuDNN's plans and workspace are made now, outside the step loop.
    const ModelConfig& mc = recipe_.model;
    const cuda::AttentionShape shape{recipe_.train.micro_batch_size, recipe_.train.seq_len,
                                     mc.num_attention_heads, mc.qk_head_dim(), mc.v_head_dim};
    // train.deterministic picks cuDNN's deterministic plans (or the own kernels) for the shapes prepared now.
    cuda::SetCudnnAttentionDeterministic(recipe_.train.deterministic);
    attention_path_ = cuda::DescribeAttentionPath(bf16 ? DType::kBF16 : DType::kF32, shape) + "\n";
    if (recipe_.train.deterministic) {
      attention_path_ +=
          "train.deterministic: attention on the deterministic path above, every other kernel summing in "
          "a fixed order\n";
    }
    // How the tiled expert kernels launch, said once at start-up where they run.
    const int cluster = static_cast<int>(recipe_.train.expert_gemm_cluster);
    cuda::SetTiledDefaults({cluster, recipe_.train.expert_gemm_tma_store});
    if (recipe_.train.RunsTiledExpertKernels()) {
      attention_path_ +=
          absl::StrFormat("tiled expert kernels: clusters of %d CTA(s)%s, %s stores\n", cluster,
                          cluster > 1 ? " sharing each row tile's loads by TMA multicast" : "",
                          recipe_.train.expert_gemm_tma_store ? "TMA (where the form has them)" : "register");
    }
    if (fp8) {
      // Which kernels run the routed experts' FP8 GEMMs (train.fp8_expert_gemm), said once at start-up.
      const std::string& which = recipe_.train.fp8_expert_gemm;
      cuda::Fp8GemmContext& f = device_->context.fp8_gemm();
      f.set_tiled_kernel(which != "cublaslt");
      f.set_tiled_wgrad(which == "own_all");
      // The own forward/dgrad kernel needs the padded layout (every expert's rows a multiple of 128), which
      // the MoE layer takes only without an expert all-to-all (layers/moe.h); otherwise cuBLASLt runs them.
      const char* own = "fathom's tiled kernel (one launch)";
      const char* per_expert = "one cuBLASLt matmul per expert";
      attention_path_ += absl::StrFormat(
          "fp8 expert GEMMs (train.fp8_expert_gemm %s): forward and dgrad %s%s, wgrad %s\n", which,
          which == "cublaslt" ? per_expert : own,
          which == "cublaslt" ? "" : " where the expert layout is padded (no expert all-to-all), else per expert",
          which == "own_all" ? own : per_expert);
    } else {
      // Which kernels run the routed experts' bf16 GEMMs (train.expert_gemm), said once at start-up.
      const std::string& which = recipe_.train.expert_gemm;
      const bool own = which == "own", own_wgrad = which == "own_wgrad";
      int local = 0, exchanged = 0;
      for (Chunk& k : chunks_) {
        for (MoE* moe : k.model->moe_layers()) {
          if (own) moe->set_expert_layout(MoE::ExpertLayout::kDevice);
          moe->set_own_wgrad(own_wgrad);
          (moe->has_exchange() ? exchanged : local) += 1;
        }
      }
      if (own || own_wgrad) {
        FATHOM_CHECK(cuda::TiledGroupedSupported(mc.moe_intermediate_size, mc.hidden_size) &&
                         cuda::TiledGroupedMnSupported(mc.hidden_size, mc.moe_intermediate_size),
                     "train.expert_gemm ", which, " needs an sm_90 GPU (H100/H200) and hidden_size / "
                     "moe_intermediate_size multiples of 64; use train.expert_gemm cublaslt");
      }
      attention_path_ += absl::StrFormat(
          "bf16 expert GEMMs (train.expert_gemm %s): %d MoE layer(s) %s%s\n", which, local,
          own         ? "on fathom's tiled kernels, laid out from the device counts (no host sync)"
          : own_wgrad ? "on cuBLASLt tile batches sized from the host counts (one host sync per layer and "
                        "micro-batch), weight gradients on fathom's tiled kernel"
                      : "on cuBLASLt tile batches sized from the host counts (one host sync per layer and micro-batch)",
          exchanged > 0 ? absl::StrFormat(", %d with an expert all-to-all on host counts", exchanged) : "");
    }
  }
#endif
  // train.precision fp8 on the CPU: the emulated FP8 GEMMs read copies quantised from the masters.
  for (Chunk& k : chunks_) {
    if (recipe_.train.precision == "fp8" && !k.model->params().fp8_enabled())
      k.model->params().EnableFp8Weights();
  }

  // A copy of the embedding held for MTP on the chunk with the head (and not the first model stage) has
  // the first stage's gradient added to it (SumEmbeddingGradients), so its norm is counted once, on the
  // first stage's chunk. DualPipe's two copies of a stage share their ZeRO groups (SetUpReplicaGroups).
  for (Chunk& k : chunks_) {
    ParamTable& params = k.model->params();
    std::vector<std::pair<int64_t, int64_t>> exclude;
    if (!k.slice.embedding && k.model->embedding_id() >= 0) {
      const ParamSpec& e = params.spec(k.model->embedding_id());
      exclude.push_back({e.offset, e.offset + NumElements(e.shape)});
    }
    k.optimizer =
        std::make_unique<ZeroOptimizer>(params, recipe_.optim, *replicas_->dp, *replicas_->edp, exclude);
  }
  // Activations travel in the compute dtype (bf16 compute sends bf16 while the parameters stay f32).
  const DType compute_dtype = chunks_[0].model->params().compute_dtype();
  std::vector<Model*> models;
  for (Chunk& k : chunks_) models.push_back(k.model.get());
  PipelineExecutor::Options options;
  options.overlap_pairs = recipe_.parallel.overlap == "two_micro_batch";
  executor_ = std::make_unique<PipelineExecutor>(
      std::move(models), schedule_, groups_->pp(),
      Shape{recipe_.train.micro_batch_size, recipe_.train.seq_len, recipe_.model.hidden_size}, compute_dtype,
      device, options);
  executor_->set_trace(trace_.get());
  return absl::OkStatus();
}

// DualPipe holds model stage s on chunk 0 of rank s and chunk 1 of rank pp-1-s: the two are replicas, as
// the planner models them (parallel/simulator.cc), so the groups of a stage's replicas span both ranks of
// the pair {r, pp-1-r}: its dp ranks on both (2 * dp) for attention and dense parameters, its edp ranks
// of the same ep position on both (2 * edp) for experts. Ordered by world rank, the same for both stages
// of the pair. Other schedules use the mesh's dp and edp groups.
void StageRuntime::SetUpReplicaGroups() {
  replicas_ = std::make_unique<ReplicaGroups>();
  if (schedule_.kind != ScheduleKind::kDualPipe) {
    replicas_->dp = &groups_->dp();
    replicas_->edp = &groups_->edp();
    replicas_->dp_host = &mesh_.dp();
    return;
  }
  const MeshCoord& c = mesh_.coord();
  const int pp = mesh_.layout().pp(), ep = mesh_.layout().ep();
  const int pair = std::min(c.pp_rank, pp - 1 - c.pp_rank);
  // Splits are collective over the world, the same on every rank: host groups, then (several GPUs) the
  // NCCL groups of the same membership.
  std::unique_ptr<Communicator> dp_host = mesh_.world().Split(pair, c.rank, "dp pair");
  std::unique_ptr<Communicator> edp_host = mesh_.world().Split(pair * ep + c.ep_rank, c.rank, "edp pair");
  replicas_->dp_host = dp_host.get();
  replicas_->dp = dp_host.get();
  replicas_->edp = edp_host.get();
  if (groups_ != &mesh_) {
    std::unique_ptr<Communicator> dp = groups_->world().Split(pair, c.rank, "dp pair");
    std::unique_ptr<Communicator> edp = groups_->world().Split(pair * ep + c.ep_rank, c.rank, "edp pair");
    replicas_->dp = dp.get();
    replicas_->edp = edp.get();
    replicas_->owned.push_back(std::move(dp));
    replicas_->owned.push_back(std::move(edp));
  }
  replicas_->owned.push_back(std::move(dp_host));
  replicas_->owned.push_back(std::move(edp_host));
}

void StageRuntime::SetUpTrace() {
  if (recipe_.train.trace.empty()) return;
  const MeshCoord& c = mesh_.coord();
  trace_ = std::make_unique<StepTrace>(
      device_ ? Device::kCUDA : Device::kCPU, c.rank,
      absl::StrFormat("rank %d (pp %d, ep %d, edp %d)", c.rank, c.pp_rank, c.ep_rank, c.edp_rank));
}

void StageRuntime::BeginStepTrace(int64_t step) {
  if (!trace_) return;
  mesh_.world().Barrier();  // the ranks' clocks start together (within the barrier's skew)
  trace_->BeginStep(step);
}

absl::Status StageRuntime::EndStepTrace() {
  if (!trace_ || !trace_->recording()) return absl::OkStatus();
  const int64_t step = trace_->step();
  trace_->EndStep();
  const std::vector<int64_t> steps = recipe_.train.TracedSteps();
  if (steps.empty() || step != steps.back()) return absl::OkStatus();
  nlohmann::json other = {{"recipe", recipe_.path},
                          {"schedule", recipe_.parallel.schedule},
                          {"overlap", recipe_.parallel.overlap},
                          {"mesh", mesh_.layout().Describe()},
                          {"device", recipe_.train.device},
                          {"micro_batches", recipe_.parallel.micro_batches},
                          {"steps", steps},
                          {"stage_layers", stage_layers_}};
  absl::Status s = WriteStepTrace(*trace_, mesh_.world(), recipe_.train.trace, other.dump());
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrFormat("train.trace: %s", s.message()));
}

ModelSlice StageRuntime::SliceOfStage(int stage) const {
  ModelSlice slice;
  for (int s = 0; s < stage; ++s) slice.first_layer += stage_layers_[s];
  slice.end_layer = slice.first_layer + stage_layers_[stage];
  slice.embedding = stage == 0;
  slice.head = stage == schedule_.num_stages() - 1;
  slice.experts = PlaceExperts(recipe_.model.n_routed_experts, mesh_.layout().ep(), mesh_.coord().ep_rank);
  slice.exchange = exchange_.get();
  return slice;
}

DeviceMemoryStats StageRuntime::device_memory() const {
  DeviceMemoryStats m;
#ifdef FATHOM_WITH_CUDA
  if (device_) {
    m.static_bytes = device_->static_pool->capacity();
    for (const Chunk& k : chunks_) m.static_bytes += k.optimizer->state_bytes();
    m.pool_capacity = device_->pool->capacity();
    m.pool_peak = device_->pool->peak();
  }
#endif
  return m;
}

void StageRuntime::ResetDeviceMemoryPeak() {
#ifdef FATHOM_WITH_CUDA
  if (device_) device_->pool->ResetPeak();
#endif
}

std::string StageRuntime::memory_plan_table() const {
#ifdef FATHOM_WITH_CUDA
  if (device_) return FormatMemoryPlan(device_->plan);
#endif
  return "";
}

std::vector<double> StageRuntime::SumOverWorld(const std::vector<double>& values) {
  return SumOver(mesh_.world(), values);
}

std::vector<double> StageRuntime::MaxOverWorld(const std::vector<double>& values) {
  Tensor t = Tensor::FromVector(values, {static_cast<int64_t>(values.size())}, DType::kF64);
  mesh_.world().AllReduce(t, ReduceOp::kMax);
  return std::vector<double>(t.data<double>(), t.data<double>() + t.numel());
}

absl::StatusOr<StepResult> StageRuntime::Step(const std::vector<MicroBatch>& batches, double lr) {
  const int m = static_cast<int>(recipe_.parallel.micro_batches);
  const int dp = mesh_.layout().dp();
  FATHOM_CHECK(static_cast<int>(batches.size()) == m, "[stage runtime] ", batches.size(),
               " micro-batches for parallel.micro_batches ", m);

  // Loss normalisers of the whole global batch.
  LossNormalizers norm = chunks_[0].model->Normalizers(batches, static_cast<int64_t>(m) * dp);
  std::vector<double> counts = {norm.main_tokens};
  counts.insert(counts.end(), norm.mtp_tokens.begin(), norm.mtp_tokens.end());
  counts = SumOver(mesh_.dp(), counts);
  norm.main_tokens = counts[0];
  std::copy(counts.begin() + 1, counts.end(), norm.mtp_tokens.begin());

  // Forward and backward of every micro-batch by this rank's pipeline program.
  for (Chunk& k : chunks_) k.model->params().ZeroGrads();
  const std::vector<std::vector<MicroBatchStats>> stats = executor_->Run(batches, norm);
  // The step tail on the trace's data-parallel lane (no-ops without a recording trace).
  auto begin_tail = [this](const char* name) {
    return trace_ ? trace_->Begin(TraceLane::kDataParallel, name) : -1;
  };
  auto end_tail = [this](int span) {
    if (trace_) trace_->End(span);
  };
  int span = begin_tail("embedding-gradient sum");
  SumEmbeddingGradients();
  end_tail(span);

  // ZeRO-1: reduce-scatter, global norm, clip + AdamW on the shards, all-gather. Every rank of a replica
  // group handles its chunks in model-stage order (DualPipe's pair holds both copies of two stages).
  StepResult r;
  const std::vector<int> by_stage = ChunksByStage();
  {
    ScopedPhase optimizer_phase(phases::kOptimizer);
    span = begin_tail("ZeRO reduce-scatter");
    for (int c : by_stage) chunks_[c].optimizer->ReduceGradients();
    end_tail(span);
    span = begin_tail("grad norm");
    double local = 0;
    for (int c : by_stage) local += chunks_[c].optimizer->LocalNormSquared();
    r.grad_norm = std::sqrt(SumOver(mesh_.world(), {local})[0]);
    end_tail(span);
    if (!std::isfinite(r.grad_norm)) {
      // No update; the caller counts the skipped steps (train.max_skipped_steps).
      r.skipped = true;
      r.nonfinite = FirstNonFiniteGradientOfJob();
    } else {
      span = begin_tail("AdamW (ZeRO-1 shard)");
      for (int c : by_stage) chunks_[c].optimizer->Step(lr, r.grad_norm, recipe_.optim.grad_clip);
      end_tail(span);
      span = begin_tail("param all-gather");
      for (int c : by_stage) chunks_[c].optimizer->GatherParameters();
      for (Chunk& k : chunks_)
        k.model->params().RefreshComputeValues();  // bf16 and FP8 copies follow the masters
      end_tail(span);
    }
  }
  StepResult reduced = ReduceStatistics(stats, norm);
  reduced.grad_norm = r.grad_norm;
  reduced.skipped = r.skipped;
  reduced.nonfinite = r.nonfinite;
  return reduced;
}

void StageRuntime::SyncLoadedParameters() {
  for (int c : ChunksByStage()) chunks_[c].optimizer->GatherParameters();
  for (Chunk& k : chunks_) k.model->params().RefreshComputeValues();
}

double StageRuntime::Evaluate(const std::vector<MicroBatch>& batches) {
  const int m = static_cast<int>(recipe_.parallel.micro_batches);
  FATHOM_CHECK(static_cast<int>(batches.size()) == m, "[stage runtime] ", batches.size(),
               " evaluation micro-batches for parallel.micro_batches ", m);
  LossNormalizers norm =
      chunks_[0].model->Normalizers(batches, static_cast<int64_t>(m) * mesh_.layout().dp());
  norm.main_tokens = SumOver(mesh_.dp(), {norm.main_tokens})[0];
  norm.balance_weight = 0;
  const std::vector<std::vector<MicroBatchStats>> stats = executor_->RunForwards(batches, norm);
  for (int mb = 0; mb < m; ++mb) DropSavedActivations(mb);
  double ce = 0;
  for (const std::vector<MicroBatchStats>& chunk : stats) {
    for (const MicroBatchStats& s : chunk) {
      if (s.main_ce.defined()) ce += ops::To(s.main_ce, Device::kCPU).Item(0);  // a device scalar
    }
  }
  return SumOver(mesh_.world(), {ce})[0] / std::max(norm.main_tokens, 1.0);
}

// The embedding lives on the first model stage and, for MTP, on the last; both copies get the summed
// gradient (a + b == b + a, so they stay bit-identical). Single-chunk schedules hold them on pipeline
// ranks 0 and pp-1, which exchange them. DualPipeV holds both on rank 0, DualPipe on ranks 0 and pp-1
// (one in each chunk): they are summed on the rank, and DualPipe's replica groups then add the other
// rank's sum to both copies in the ZeRO reduce-scatter.
void StageRuntime::SumEmbeddingGradients() {
  if (recipe_.model.num_nextn_predict_layers == 0) return;  // one copy only
  std::vector<Tensor> copies;
  for (Chunk& k : chunks_) {
    if (k.model->embedding_id() >= 0) copies.push_back(k.model->params().grad(k.model->embedding_id()));
  }
  if (copies.size() == 2) {
    ops::AddInPlace(copies[0], copies[1]);
    ops::Copy(copies[1], copies[0]);
    return;
  }
  const MeshCoord& coord = mesh_.coord();
  const int pp = mesh_.layout().pp();
  if (pp == 1 || copies.empty() || (coord.pp_rank != 0 && coord.pp_rank != pp - 1)) return;
  FATHOM_CHECK(schedule_.chunks() == 1, "[stage runtime] ", ScheduleKindName(schedule_.kind), " rank ",
               coord.pp_rank, " holds ", copies.size(), " embedding copies");
  Tensor g = copies[0];
  Tensor theirs = Tensor::Empty(g.shape(), g.dtype(), g.device());
  const int peer = coord.pp_rank == 0 ? pp - 1 : 0;
  Communicator& pp_group = groups_->pp();
  Request send = pp_group.ISend(g, peer, kEmbeddingGradTag);
  pp_group.Recv(theirs, peer, kEmbeddingGradTag);
  send.Wait();  // the send buffer may be written from here on (NCCL: in stream order)
  ops::AddInPlace(g, theirs);
}

namespace {

// The layout of a step's statistics in one f64 buffer: the main CE sum, the MTP CE sums per depth, each
// (chunk, micro-batch)'s balance sum over the chunk's MoE layers (chunk-major), then the expert loads of
// every MoE layer of every chunk (chunk-major, then layer).
struct StatisticsLayout {
  int64_t depth = 0, balance_slots = 0, experts = 0;
  std::vector<int64_t> first_balance;  // per chunk: its first balance slot
  std::vector<int64_t> first_layer;    // per chunk: its first MoE layer; back() = every chunk's layers
  int64_t main_ce() const { return 0; }
  int64_t mtp_ce(int64_t k) const { return 1 + k; }
  int64_t balance(size_t chunk, int64_t mb) const { return 1 + depth + first_balance[chunk] + mb; }
  int64_t loads(int64_t layer) const { return 1 + depth + balance_slots + layer * experts; }
  int64_t size() const { return loads(first_layer.back()); }
};

// Sums every micro-batch's statistics where they were made (the models' device) and brings the sums to the
// host in ONE copy: the step's only device-to-host transfer of statistics. The f64 additions run in the
// order of the former host loop (chunks, then micro-batches in order; a micro-batch's balance values layer
// by layer into its own slot), so the CPU results are unchanged bit for bit.
Tensor SumStatistics(const std::vector<std::vector<MicroBatchStats>>& stats, const StatisticsLayout& layout,
                     Device device) {
  std::vector<ops::AccumulationTerm> terms;
  for (size_t c = 0; c < stats.size(); ++c) {
    const int64_t moe_layers = layout.first_layer[c + 1] - layout.first_layer[c];
    for (size_t mb = 0; mb < stats[c].size(); ++mb) {
      const MicroBatchStats& s = stats[c][mb];
      if (s.main_ce.defined()) terms.push_back({layout.main_ce(), s.main_ce});
      for (size_t k = 0; k < s.mtp_ce.size() && static_cast<int64_t>(k) < layout.depth; ++k) {
        if (s.mtp_ce[k].defined()) terms.push_back({layout.mtp_ce(static_cast<int64_t>(k)), s.mtp_ce[k]});
      }
      FATHOM_CHECK(s.moe.empty() || static_cast<int64_t>(s.moe.size()) == moe_layers, "[stage runtime] ",
                   s.moe.size(), " MoE statistics for ", moe_layers, " MoE layers");
      for (const MoeStats& m : s.moe) {
        if (m.balance.defined()) terms.push_back({layout.balance(c, static_cast<int64_t>(mb)), m.balance});
      }
      for (size_t i = 0; i < s.moe.size(); ++i) {
        terms.push_back(
            {layout.loads(layout.first_layer[c] + static_cast<int64_t>(i)), s.moe[i].expert_counts});
      }
    }
  }
  const Tensor sums = Tensor::Zeros({layout.size()}, DType::kF64, device);
  ops::AccumulateF64(sums, terms);
  return device == Device::kCPU ? sums : ops::To(sums, Device::kCPU);  // SYNC POINT (CUDA): the one copy
}

}  // namespace

StepResult StageRuntime::ReduceStatistics(const std::vector<std::vector<MicroBatchStats>>& stats,
                                          const LossNormalizers& norm) {
  StepResult r;
  const int m = static_cast<int>(recipe_.parallel.micro_batches);
  const int dp = mesh_.layout().dp();
  const size_t depth = norm.mtp_tokens.size();
  FATHOM_CHECK(stats.size() == chunks_.size(), "[stage runtime] statistics of ", stats.size(),
               " chunks, the rank has ", chunks_.size());
  StatisticsLayout layout;
  layout.depth = static_cast<int64_t>(depth);
  layout.experts = recipe_.model.n_routed_experts;
  layout.first_layer.push_back(0);
  for (size_t c = 0; c < chunks_.size(); ++c) {
    layout.first_balance.push_back(layout.balance_slots);
    layout.balance_slots += static_cast<int64_t>(stats[c].size());
    layout.first_layer.push_back(layout.first_layer.back() +
                                 static_cast<int64_t>(chunks_[c].model->moe_layers().size()));
  }
  const Tensor sums = SumStatistics(stats, layout, chunks_[0].model->params().device());
  const double* h = sums.data<double>();

  // This rank's sums: CE on the chunk with the head, balance on every chunk with MoE layers.
  std::vector<double> loss_sums(2 + depth, 0.0);
  loss_sums[0] = h[layout.main_ce()];
  for (size_t c = 0; c < chunks_.size(); ++c) {
    for (size_t mb = 0; mb < stats[c].size(); ++mb)
      loss_sums[1] += h[layout.balance(c, static_cast<int64_t>(mb))];
  }
  for (size_t k = 0; k < depth; ++k) loss_sums[2 + k] = h[layout.mtp_ce(static_cast<int64_t>(k))];

  // Expert loads of the whole global batch: the replica group holds the other micro-batches of each model
  // stage (dp; DualPipe: both copies of the stage over the rank pair, reduced in model-stage order), one
  // reduction per chunk for all its layers. The f64 sums of i64 counts are exact (far below 2^53).
  const int64_t experts = layout.experts;
  Tensor loads = Tensor::Empty({layout.first_layer.back() * experts}, DType::kI64);
  for (int64_t i = 0; i < loads.numel(); ++i)
    loads.data<int64_t>()[i] = static_cast<int64_t>(h[layout.loads(0) + i]);
  for (int c : ChunksByStage()) {
    const int64_t begin = layout.first_layer[static_cast<size_t>(c)] * experts;
    const int64_t end = layout.first_layer[static_cast<size_t>(c) + 1] * experts;
    if (end > begin) {
      Tensor chunk_loads = loads.Rows(begin, end);
      replicas_->dp_host->AllReduce(chunk_loads, ReduceOp::kSum);
    }
  }
  for (size_t c = 0; c < chunks_.size(); ++c) {
    const std::vector<MoE*> moes = chunks_[c].model->moe_layers();
    for (size_t i = 0; i < moes.size(); ++i) {
      const int64_t* l = loads.data<int64_t>() + (layout.first_layer[c] + static_cast<int64_t>(i)) * experts;
      r.expert_loads.emplace_back(l, l + experts);
      r.moe_layers.push_back(moes[i]->layer());
      r.load_max_over_mean =
          std::max(r.load_max_over_mean, ComputeExpertLoadStats(r.expert_loads.back()).max_over_mean);
    }
  }
  // The worst MoE layer of any stage, and every MoE layer's busiest and mean load in the same reduction:
  // per layer of the model a slot triple (held, max, mean) that the ranks holding the layer fill (all with
  // the same global counts) and the others leave at zero.
  std::vector<int> model_layers;
  for (int64_t l = 0; l < recipe_.model.num_hidden_layers + recipe_.model.num_nextn_predict_layers; ++l) {
    if (recipe_.model.is_moe_layer(l)) model_layers.push_back(static_cast<int>(l));
  }
  std::vector<double> maxima(1 + 3 * model_layers.size(), 0.0);
  maxima[0] = r.load_max_over_mean;
  for (size_t i = 0; i < r.moe_layers.size(); ++i) {
    const auto at = std::find(model_layers.begin(), model_layers.end(), r.moe_layers[i]);
    FATHOM_CHECK(at != model_layers.end(), "[stage runtime] MoE layer ", r.moe_layers[i],
                 " outside the model");
    double* slot = &maxima[1 + 3 * static_cast<size_t>(at - model_layers.begin())];
    double total = 0, busiest = 0;
    for (int64_t v : r.expert_loads[i]) {
      total += static_cast<double>(v);
      busiest = std::max(busiest, static_cast<double>(v));
    }
    slot[0] = 1;
    slot[1] = busiest;
    slot[2] = experts > 0 ? total / static_cast<double>(experts) : 0.0;
  }
  maxima = MaxOverWorld(maxima);
  r.load_max_over_mean = maxima[0];
  for (size_t j = 0; j < model_layers.size(); ++j) {
    const double* slot = &maxima[1 + 3 * j];
    if (slot[0] > 0) r.layer_loads.push_back({model_layers[j], slot[1], slot[2]});
  }

  // Losses of the global batch (the CE sums live on the last stage, balance sums on every stage).
  loss_sums = SumOver(mesh_.world(), loss_sums);
  r.lm_loss = loss_sums[0] / std::max(norm.main_tokens, 1.0);
  double mtp_weighted = 0;
  for (size_t k = 0; k < depth; ++k) {
    const double lk = loss_sums[2 + k] / std::max(norm.mtp_tokens[k], 1.0);
    r.mtp_loss += lk / static_cast<double>(depth);
    mtp_weighted += recipe_.loss.mtp_lambda / static_cast<double>(depth) * lk;
  }
  const double sequences_mb = static_cast<double>(m) * dp;  // balance values are means over a micro-batch
  const int64_t moe_layers = CountMoeLayers(recipe_.model);
  r.balance = moe_layers ? loss_sums[1] / (sequences_mb * static_cast<double>(moe_layers)) : 0.0;
  r.loss = r.lm_loss + mtp_weighted + recipe_.loss.balance_alpha * loss_sums[1] / sequences_mb;
  return r;
}

// The bias rule runs where the biases live (ops::ExpertBiasUpdate); the step's global loads are already on
// the host (ReduceStatistics), so a GPU rank makes one asynchronous host-to-device copy of every layer's
// loads (no host wait) and no round trip.
void StageRuntime::UpdateExpertBiases(const StepResult& result, double speed) {
  const int64_t experts = recipe_.model.n_routed_experts;
  std::vector<std::pair<ParamTable*, MoE*>> layers;  // every MoE layer of the rank, in the loads' order
  for (Chunk& k : chunks_) {
    for (MoE* moe : k.model->moe_layers()) layers.push_back({&k.model->params(), moe});
  }
  FATHOM_CHECK(result.expert_loads.size() == layers.size(), "[stage runtime] loads for ",
               result.expert_loads.size(), " MoE layers, this rank has ", layers.size());
  if (layers.empty()) return;
  Tensor loads = Tensor::Empty({static_cast<int64_t>(layers.size()), experts}, DType::kI64);
  for (size_t i = 0; i < layers.size(); ++i) {
    FATHOM_CHECK(result.moe_layers[i] == layers[i].second->layer() &&
                     static_cast<int64_t>(result.expert_loads[i].size()) == experts,
                 "[stage runtime] the step's loads do not match this rank's MoE layers");
    std::copy(result.expert_loads[i].begin(), result.expert_loads[i].end(),
              loads.data<int64_t>() + static_cast<int64_t>(i) * experts);
  }
  if (layers[0].first->device() != Device::kCPU) loads = ops::ToDeviceAsync(loads);
  for (size_t i = 0; i < layers.size(); ++i) {
    const int64_t row = static_cast<int64_t>(i);
    ops::ExpertBiasUpdate(layers[i].first->value(layers[i].second->bias_id()),
                          loads.Rows(row, row + 1).Reshape({experts}), speed);
  }
}

}  // namespace fathom
