#include "parallel/stage_runtime.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/strings/str_format.h"
#include "framework/ops.h"
#include "framework/phase_timer.h"
#include "optim/expert_bias.h"
#include "parallel/all_to_all_exchange.h"
#include "parallel/memory_plan.h"
#include "parallel/pipeline_executor.h"
#include "parallel/stage_split.h"
#include "parallel/zero.h"

#ifdef FATHOM_WITH_CUDA
#include "framework/cuda/device_arena.h"
#include "framework/cuda/device_pool.h"
#include "framework/kernels/cuda/attention.h"
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
  if (ChunksPerRank(kind) != 1) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: parallel.schedule %s places two model chunks on every rank; the pipeline executor runs the "
        "single-chunk schedules 1f1b and zb1p (`fathom simulate` models %s)",
        recipe.path, recipe.parallel.schedule, recipe.parallel.schedule));
  }
  absl::StatusOr<std::vector<int64_t>> stages =
      SplitStages(recipe.model, recipe.parallel, recipe.train.seq_len);
  if (!stages.ok()) return stages.status();
  std::vector<Instruction> program =
      MakeSchedule(kind, layout.pp(), static_cast<int>(recipe.parallel.micro_batches))
          ->ranks[mesh.coord().pp_rank];
  auto runtime =
      std::unique_ptr<StageRuntime>(new StageRuntime(recipe, mesh, *std::move(stages), std::move(program)));
  if (absl::Status s = runtime->SetUp(); !s.ok()) return s;
  return runtime;
}

StageRuntime::StageRuntime(const Recipe& recipe, DeviceMesh& mesh, std::vector<int64_t> stage_layers,
                           std::vector<Instruction> program)
    : recipe_(recipe), mesh_(mesh), stage_layers_(std::move(stage_layers)), program_(std::move(program)) {}

const MeshLayout& StageRuntime::layout() const { return mesh_.layout(); }
const MeshCoord& StageRuntime::coord() const { return mesh_.coord(); }

absl::Status StageRuntime::SetUp() {
  const MeshCoord& c = mesh_.coord();
  const int pp = mesh_.layout().pp(), ep = mesh_.layout().ep();
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
  ModelSlice slice;
  for (int s = 0; s < c.pp_rank; ++s) slice.first_layer += stage_layers_[s];
  slice.end_layer = slice.first_layer + stage_layers_[c.pp_rank];
  slice.embedding = c.pp_rank == 0;
  slice.head = c.pp_rank == pp - 1;
  slice.experts = PlaceExperts(experts, ep, c.ep_rank);
  if (ep > 1) {
    // Rows travel over the tensor groups; host counts always over the host group.
    exchange_ = std::make_unique<AllToAllExpertExchange>(&groups_->ep(), experts, &mesh_.ep());
    slice.exchange = exchange_.get();
  }
  model_ = std::make_unique<Model>(recipe_.model, recipe_.loss, slice);
  // Master weights are f32 (f64 for the CPU reference runs); bf16 compute reads bf16 copies of them.
  model_->Finalize(recipe_.train.dtype == "f64" ? DType::kF64 : DType::kF32, recipe_.train.seed);
  ParamTable& params = model_->params();
  Device device = Device::kCPU;
#ifdef FATHOM_WITH_CUDA
  if (device_) {
    device = Device::kCUDA;
    const int64_t shard_elements =
        ZeroOptimizer::MaxShardElements(params, mesh_.layout().dp(), mesh_.layout().edp());
    const bool bf16 = recipe_.train.dtype == "bf16";
    const bool fp8 = recipe_.train.precision == "fp8";
    // Under fp8 the ops' FP8 GEMM context has its own cuBLASLt workspace beside the bf16 one.
    const int64_t workspace_bytes = (fp8 ? 2 : 1) * (int64_t{32} << 20);
    MemoryPlanInput plan_input = MemoryPlanInputFor(recipe_, slice, program_, params.numel(), shard_elements,
                                                    workspace_bytes, static_cast<int64_t>(free_at_start));
    plan_input.fp8_weight_bytes = fp8 ? params.Fp8WeightBytes() : 0;
    absl::StatusOr<MemoryPlan> plan = PlanDeviceMemory(plan_input);
    if (!plan.ok()) {
      return absl::Status(plan.status().code(),
                          absl::StrFormat("%s: rank %d: %s", recipe_.path, c.rank, plan.status().message()));
    }
    device_->plan = *plan;
    // Values, gradients and the compute copy: one pool of exactly their blocks.
    const size_t value_bytes = cuda::DevicePool::RoundedSize(static_cast<size_t>(params.numel()) * 4);
    const size_t copy_bytes =
        bf16 ? cuda::DevicePool::RoundedSize(static_cast<size_t>(params.numel()) * 2) : 0;
    // The FP8 weight copies (train.precision fp8) live there too: four blocks per FP8 weight.
    size_t fp8_bytes = 0;
    for (const ParamSpec& s : params.specs()) {
      if (!fp8 || s.gemm != GemmPrecision::kFp8) continue;
      for (int64_t b : Fp8Weight::TensorBytes(s.shape)) fp8_bytes += cuda::DevicePool::RoundedSize(b);
    }
    device_->static_pool =
        std::make_unique<cuda::DevicePool>("parameters", 2 * value_bytes + copy_bytes + fp8_bytes);
    {
      cuda::PoolScope scope(*device_->static_pool);
      params.MoveTo(Device::kCUDA);
      params.SetComputeDType(bf16 ? DType::kBF16 : DType::kF32);
      if (fp8) params.EnableFp8Weights();  // quantised from the masters now, then after every step
    }
    device_->pool = std::make_unique<cuda::DevicePool>("activations", static_cast<size_t>(plan->pool_bytes));
    device_->pool_scope.emplace(*device_->pool);
    // Which kernels run attention; cuDNN's plans and workspace are made now, outside the step loop.
    const ModelConfig& mc = recipe_.model;
    const cuda::AttentionShape shape{recipe_.train.micro_batch_size, recipe_.train.seq_len,
                                     mc.num_attention_heads, mc.qk_head_dim(), mc.v_head_dim};
    attention_path_ = cuda::DescribeAttentionPath(bf16 ? DType::kBF16 : DType::kF32, shape) + "\n";
  }
#endif
  // train.precision fp8 on the CPU: the emulated FP8 GEMMs read copies quantised from the masters.
  if (recipe_.train.precision == "fp8" && !params.fp8_enabled()) params.EnableFp8Weights();

  // The last stage's copy of the embedding (for MTP) has the first stage's gradient added to it, so its
  // norm is counted once, on the first stage.
  std::vector<std::pair<int64_t, int64_t>> exclude;
  if (pp > 1 && slice.head && model_->embedding_id() >= 0) {
    const ParamSpec& e = params.spec(model_->embedding_id());
    exclude.push_back({e.offset, e.offset + NumElements(e.shape)});
  }
  optimizer_ = std::make_unique<ZeroOptimizer>(params, recipe_.optim, groups_->dp(), groups_->edp(), exclude);
  executor_ = std::make_unique<PipelineExecutor>(
      *model_, groups_->pp(),
      Shape{recipe_.train.micro_batch_size, recipe_.train.seq_len, recipe_.model.hidden_size},
      params.compute_dtype(), device);
  return absl::OkStatus();
}

DeviceMemoryStats StageRuntime::device_memory() const {
  DeviceMemoryStats m;
#ifdef FATHOM_WITH_CUDA
  if (device_) {
    m.static_bytes = device_->static_pool->capacity() + optimizer_->state_bytes();
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
  LossNormalizers norm = model_->Normalizers(batches, static_cast<int64_t>(m) * dp);
  std::vector<double> counts = {norm.main_tokens};
  counts.insert(counts.end(), norm.mtp_tokens.begin(), norm.mtp_tokens.end());
  counts = SumOver(mesh_.dp(), counts);
  norm.main_tokens = counts[0];
  std::copy(counts.begin() + 1, counts.end(), norm.mtp_tokens.begin());

  // Forward and backward of every micro-batch by this rank's pipeline program.
  ParamTable& params = model_->params();
  params.ZeroGrads();
  const std::vector<MicroBatchStats> stats = executor_->Run(program_, batches, norm);
  SumEmbeddingGradients();

  // ZeRO-1: reduce-scatter, global norm, clip + AdamW on the shards, all-gather.
  StepResult r;
  {
    ScopedPhase optimizer_phase(Phase::kOptimizer);
    optimizer_->ReduceGradients();
    r.grad_norm = std::sqrt(SumOver(mesh_.world(), {optimizer_->LocalNormSquared()})[0]);
    if (!std::isfinite(r.grad_norm)) {
      return absl::InternalError(
          absl::StrFormat("the global gradient norm is %f: training diverged; lower optim.lr or raise "
                          "optim.warmup_steps",
                          r.grad_norm));
    }
    optimizer_->Step(lr, r.grad_norm, recipe_.optim.grad_clip);
    optimizer_->GatherParameters();
    params.RefreshComputeValues();  // the bf16 (and FP8) weight copies follow the updated masters
  }
  StepResult reduced = ReduceStatistics(stats, norm);
  reduced.grad_norm = r.grad_norm;
  return reduced;
}

double StageRuntime::Evaluate(const std::vector<MicroBatch>& batches) {
  const int m = static_cast<int>(recipe_.parallel.micro_batches);
  FATHOM_CHECK(static_cast<int>(batches.size()) == m, "[stage runtime] ", batches.size(),
               " evaluation micro-batches for parallel.micro_batches ", m);
  LossNormalizers norm = model_->Normalizers(batches, static_cast<int64_t>(m) * mesh_.layout().dp());
  norm.main_tokens = SumOver(mesh_.dp(), {norm.main_tokens})[0];
  norm.balance_weight = 0;
  std::vector<Instruction> forwards;
  for (int mb = 0; mb < m; ++mb) forwards.push_back(Instruction::F(mb, 0));
  const std::vector<MicroBatchStats> stats = executor_->Run(forwards, batches, norm);
  for (int mb = 0; mb < m; ++mb) DropSavedActivations(mb);
  double ce = 0;
  for (const MicroBatchStats& s : stats) ce += s.main_ce;
  return SumOver(mesh_.world(), {ce})[0] / std::max(norm.main_tokens, 1.0);
}

// The embedding lives on the first stage and, for MTP, on the last: both copies get the summed gradient
// (a + b == b + a, so the two stay bit-identical).
void StageRuntime::SumEmbeddingGradients() {
  const MeshCoord& coord = mesh_.coord();
  const int pp = mesh_.layout().pp();
  if (pp == 1 || model_->embedding_id() < 0 || (coord.pp_rank != 0 && coord.pp_rank != pp - 1)) return;
  Tensor g = model_->params().grad(model_->embedding_id());
  Tensor theirs = Tensor::Empty(g.shape(), g.dtype(), g.device());
  const int peer = coord.pp_rank == 0 ? pp - 1 : 0;
  Communicator& pp_group = groups_->pp();
  Request send = pp_group.ISend(g, peer, kEmbeddingGradTag);
  pp_group.Recv(theirs, peer, kEmbeddingGradTag);
  send.Wait();  // the send buffer may be written from here on (NCCL: in stream order)
  ops::AddInPlace(g, theirs);
}

StepResult StageRuntime::ReduceStatistics(const std::vector<MicroBatchStats>& stats,
                                          const LossNormalizers& norm) {
  StepResult r;
  const int m = static_cast<int>(recipe_.parallel.micro_batches);
  const int dp = mesh_.layout().dp();
  const size_t depth = norm.mtp_tokens.size();
  // This rank's sums: CE on the last stage, balance on every stage with MoE layers; loads per layer.
  std::vector<double> loss_sums(2 + depth, 0.0);
  const std::vector<MoE*> moes = model_->moe_layers();
  std::vector<std::vector<int64_t>> loads(moes.size(),
                                          std::vector<int64_t>(recipe_.model.n_routed_experts, 0));
  for (const MicroBatchStats& s : stats) {
    loss_sums[0] += s.main_ce;
    loss_sums[1] += s.balance_sum();
    for (size_t k = 0; k < s.mtp_ce.size() && k < depth; ++k) loss_sums[2 + k] += s.mtp_ce[k];
    FATHOM_CHECK(s.moe.empty() || s.moe.size() == moes.size(), "[stage runtime] ", s.moe.size(),
                 " MoE statistics for ", moes.size(), " MoE layers");
    for (size_t i = 0; i < s.moe.size(); ++i) {
      const Tensor& c = s.moe[i].expert_counts;
      for (int64_t e = 0; e < c.numel(); ++e) loads[i][e] += c.data<int64_t>()[e];
    }
  }
  // Expert loads of the whole global batch (dp holds the other micro-batches of the stage).
  for (size_t i = 0; i < moes.size(); ++i) {
    Tensor load = Tensor::Empty({static_cast<int64_t>(loads[i].size())}, DType::kI64);
    std::copy(loads[i].begin(), loads[i].end(), load.data<int64_t>());
    mesh_.dp().AllReduce(load, ReduceOp::kSum);
    r.expert_loads.emplace_back(load.data<int64_t>(), load.data<int64_t>() + load.numel());
    r.moe_layers.push_back(moes[i]->layer());
    r.load_max_over_mean =
        std::max(r.load_max_over_mean, ComputeExpertLoadStats(r.expert_loads.back()).max_over_mean);
  }
  r.load_max_over_mean = MaxOverWorld({r.load_max_over_mean})[0];  // the worst MoE layer of any stage

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

void StageRuntime::UpdateExpertBiases(const StepResult& result, double speed) {
  const std::vector<MoE*> moes = model_->moe_layers();
  FATHOM_CHECK(result.expert_loads.size() == moes.size(), "[stage runtime] loads for ",
               result.expert_loads.size(), " MoE layers, the stage has ", moes.size());
  ParamTable& params = model_->params();
  for (size_t i = 0; i < moes.size(); ++i) {
    // The bias rule runs on the host (E values); a device bias makes the round trip.
    Tensor bias = params.value(moes[i]->bias_id());
    Tensor host = bias.device() == Device::kCPU ? bias : ops::To(bias, Device::kCPU);
    UpdateExpertBias(host, result.expert_loads[i], speed);
    if (bias.device() != Device::kCPU) ops::Copy(bias, host);
  }
}

}  // namespace fathom
