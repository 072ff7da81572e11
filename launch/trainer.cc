#include "launch/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "data/demo_corpus.h"
#include "data/tokenizer.h"
#include "framework/ops.h"
#include "framework/phase_timer.h"
#include "launch/memory_plan.h"
#include "optim/expert_bias.h"
#include "optim/lr_schedule.h"
#include "parallel/expert_exchange_mpi.h"
#include "parallel/fault.h"
#include "parallel/launch_env.h"
#include "parallel/stage_split.h"

#ifdef FATHOM_WITH_CUDA
#include "framework/cuda/device_arena.h"
#include "framework/cuda/device_pool.h"
#include "parallel/cuda/nccl_communicator.h"
#endif

namespace fathom {

#ifdef FATHOM_WITH_CUDA
// One GPU per rank. Every kernel and every NCCL operation is ordered on one stream (the legacy default
// stream, the ops' and the pools' stream). Memory: the parameters, gradients and compute copies sit in a
// pool of exactly their size; the optimizer moments in ZeRO's own arenas; everything of the step loop in
// the activation pool, sized from the start-up memory plan (launch/memory_plan.h). No cudaMalloc after.
struct Trainer::GpuState {
  GpuState() : op_scope(context) {}
  ops::OpContext context;
  ops::OpContextScope op_scope;
  // The NCCL groups of the mesh (world > 1): the same layout as the host mesh, moving device tensors.
  // The host mesh keeps the host values (loss sums, loads, normalisers, counts).
  std::unique_ptr<DeviceMesh> nccl;
  std::unique_ptr<cuda::DevicePool> static_pool, pool;
  std::optional<cuda::PoolScope> pool_scope;
  MemoryPlan plan;
};
#else
struct Trainer::GpuState {};
#endif

Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const Recipe& recipe, DeviceMesh& mesh) {
  if (absl::Status s = recipe.Validate(); !s.ok()) return s;
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
        absl::StrFormat("%s: the mesh (pp %d, ep %d) does not match parallel.pp=%d, "
                        "parallel.ep=%d",
                        recipe.path, layout.pp(), layout.ep(), recipe.parallel.pp, recipe.parallel.ep));
  }
  absl::StatusOr<ScheduleKind> kind = ParseScheduleKind(recipe.parallel.schedule);
  if (!kind.ok()) return kind.status();
  if (ChunksPerRank(*kind) != 1) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: parallel.schedule %s places two model chunks on every rank; the pipeline executor runs the "
        "single-chunk schedules 1f1b and zb1p (`fathom simulate` models %s)",
        recipe.path, recipe.parallel.schedule, recipe.parallel.schedule));
  }
  if (absl::Status s =
          CheckScheduleShape(*kind, layout.pp(), static_cast<int>(recipe.parallel.micro_batches));
      !s.ok()) {
    return s;
  }
  absl::StatusOr<std::vector<int64_t>> stages =
      SplitStages(recipe.model, recipe.parallel, recipe.train.seq_len);
  if (!stages.ok()) return stages.status();

  std::vector<int32_t> tokens;
  if (recipe.data.source == "demo") {
    tokens = EncodeBytes(DemoCorpus());
  } else {
    tokens = SyntheticTokens(std::max<int64_t>(1 << 20, 4 * recipe.train.seq_len), recipe.model.vocab_size,
                             recipe.train.seed);
  }
  auto trainer = std::unique_ptr<Trainer>(new Trainer(recipe, mesh, std::move(tokens), *std::move(stages)));
  auto sampler = SequenceSampler::Create(&trainer->tokens_, recipe.train.seq_len, recipe.train.seed);
  if (!sampler.ok()) return sampler.status();
  trainer->sampler_ = std::make_unique<SequenceSampler>(*std::move(sampler));
  trainer->program_ = MakeSchedule(*kind, layout.pp(), static_cast<int>(recipe.parallel.micro_batches))
                          ->ranks[mesh.coord().pp_rank];
  if (absl::Status s = trainer->SetUp(); !s.ok()) return s;
  return trainer;
}

Trainer::Trainer(const Recipe& recipe, DeviceMesh& mesh, std::vector<int32_t> tokens,
                 std::vector<int64_t> stage_layers)
    : recipe_(recipe), mesh_(mesh), tokens_(std::move(tokens)), stage_layers_(std::move(stage_layers)) {}

absl::Status Trainer::SetUp() {
  const MeshCoord& c = mesh_.coord();
  const int pp = mesh_.layout().pp(), ep = mesh_.layout().ep();
  const int64_t experts = recipe_.model.n_routed_experts;
  // The groups that move tensors: the host mesh itself on the CPU (and for a single GPU, whose groups all
  // have one rank and move nothing), NCCL groups of the same layout for several GPUs.
  groups_ = &mesh_;
#ifdef FATHOM_WITH_CUDA
  size_t free_at_start = 0;
  if (recipe_.train.device == "cuda") {
    gpu_ = std::make_unique<GpuState>();
    if (mesh_.layout().world() > 1) {
      // Picks this rank's GPU from its local rank (and fails the job when two ranks would share one).
      std::unique_ptr<Communicator> world = NcclCommunicator::Create(mesh_.world(), LaunchEnvFromMpi());
      absl::StatusOr<std::unique_ptr<DeviceMesh>> nccl =
          DeviceMesh::Create(std::move(world), recipe_.parallel.pp, recipe_.parallel.ep);
      if (!nccl.ok()) return nccl.status();
      gpu_->nccl = *std::move(nccl);
      groups_ = gpu_->nccl.get();
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
    Communicator* rows = &groups_->ep();
    Communicator* counts = &mesh_.ep();  // host counts always travel over the host group
    slice.make_exchange = [rows, counts, experts]() {
      return std::make_unique<CommExpertExchange>(rows, experts, counts);
    };
  }
  model_ = std::make_unique<Model>(recipe_.model, recipe_.loss, slice);
  // Master weights are f32 (f64 for the CPU reference runs); bf16 compute reads bf16 copies of them.
  model_->Finalize(recipe_.train.dtype == "f64" ? DType::kF64 : DType::kF32, recipe_.train.seed);
  ParamTable& params = model_->params();
  Device device = Device::kCPU;
#ifdef FATHOM_WITH_CUDA
  if (gpu_) {
    device = Device::kCUDA;
    const int64_t shard_elements =
        ZeroOptimizer::MaxShardElements(params, mesh_.layout().dp(), mesh_.layout().edp());
    const bool bf16 = recipe_.train.dtype == "bf16";
    absl::StatusOr<MemoryPlan> plan =
        PlanDeviceMemory(MemoryPlanInputFor(recipe_, slice, program_, params.numel(), shard_elements,
                                            int64_t{32} << 20, static_cast<int64_t>(free_at_start)));
    if (!plan.ok()) {
      return absl::Status(plan.status().code(),
                          absl::StrFormat("%s: rank %d: %s", recipe_.path, c.rank, plan.status().message()));
    }
    gpu_->plan = *plan;
    // Values, gradients and the compute copy: one pool of exactly their blocks.
    const size_t value_bytes = cuda::DevicePool::RoundedSize(static_cast<size_t>(params.numel()) * 4);
    const size_t copy_bytes =
        bf16 ? cuda::DevicePool::RoundedSize(static_cast<size_t>(params.numel()) * 2) : 0;
    gpu_->static_pool = std::make_unique<cuda::DevicePool>("parameters", 2 * value_bytes + copy_bytes);
    {
      cuda::PoolScope scope(*gpu_->static_pool);
      params.MoveTo(Device::kCUDA);
      params.SetComputeDType(bf16 ? DType::kBF16 : DType::kF32);
    }
    gpu_->pool = std::make_unique<cuda::DevicePool>("activations", static_cast<size_t>(plan->pool_bytes));
    gpu_->pool_scope.emplace(*gpu_->pool);
  }
#endif

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

DeviceMemoryStats Trainer::device_memory() const {
  DeviceMemoryStats m;
#ifdef FATHOM_WITH_CUDA
  if (gpu_) {
    m.static_bytes = gpu_->static_pool->capacity() + optimizer_->state_bytes();
    m.pool_capacity = gpu_->pool->capacity();
    m.pool_peak = gpu_->pool->peak();
  }
#endif
  return m;
}

void Trainer::ResetDeviceMemoryPeak() {
#ifdef FATHOM_WITH_CUDA
  if (gpu_) gpu_->pool->ResetPeak();
#endif
}

std::string Trainer::memory_plan_table() const {
#ifdef FATHOM_WITH_CUDA
  if (gpu_) return FormatMemoryPlan(gpu_->plan);
#endif
  return "";
}

MicroBatch Trainer::SampleMicroBatch(int64_t step, int mb) const {
  // Global sequence index: data-parallel rank d takes micro-batches [d * M, (d + 1) * M) of the step, so
  // any mesh sees the same global batch as one rank with dp * M micro-batches.
  const int64_t b = recipe_.train.micro_batch_size, t = recipe_.train.seq_len;
  const int64_t first = (mesh_.coord().dp_rank * recipe_.parallel.micro_batches + mb) * b;
  MicroBatch batch{Tensor::Empty({b, t}, DType::kI32), Tensor::Empty({b, t}, DType::kI32)};
  for (int64_t s = 0; s < b; ++s) {
    sampler_->Sample(step, first + s, batch.input_ids.data<int32_t>() + s * t,
                     batch.labels.data<int32_t>() + s * t);
  }
  return batch;
}

namespace {

// Sums `values` over `comm` in f64.
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

absl::StatusOr<StepStats> Trainer::Step(int64_t step) {
  auto start = std::chrono::steady_clock::now();
  const MeshCoord& coord = mesh_.coord();
  if (ShouldInjectFault(coord.rank, step)) InjectFault(coord.rank, step);
  const int m = static_cast<int>(recipe_.parallel.micro_batches);
  const int dp = mesh_.layout().dp(), pp = mesh_.layout().pp();
  std::vector<MicroBatch> batches;
  for (int mb = 0; mb < m; ++mb) batches.push_back(SampleMicroBatch(step, mb));

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
  std::vector<MoE*> moes = model_->moe_layers();
  for (MoE* moe : moes) moe->ResetStats();
  LossSums sums = executor_->Run(program_, batches, norm);

  // The embedding lives on the first stage and, for MTP, on the last: both copies get the summed gradient
  // (a + b == b + a, so the two stay bit-identical).
  if (pp > 1 && model_->embedding_id() >= 0 && (coord.pp_rank == 0 || coord.pp_rank == pp - 1)) {
    Tensor g = params.grad(model_->embedding_id());
    Tensor theirs = Tensor::Empty(g.shape(), g.dtype(), g.device());
    const int peer = coord.pp_rank == 0 ? pp - 1 : 0;
    Communicator& pp_group = groups_->pp();
    Request send = pp_group.ISend(g, peer, Communicator::kMaxTag);
    pp_group.Recv(theirs, peer, Communicator::kMaxTag);
    send.Wait();  // the send buffer may be written from here on (NCCL: in stream order)
    ops::AddInPlace(g, theirs);
  }

  // ZeRO-1: reduce-scatter, global norm, clip + AdamW on the shards, all-gather.
  StepStats st;
  st.step = step;
  std::optional<ScopedPhase> optimizer_phase(Phase::kOptimizer);
  optimizer_->ReduceGradients();
  st.grad_norm = std::sqrt(SumOver(mesh_.world(), {optimizer_->LocalNormSquared()})[0]);
  if (!std::isfinite(st.grad_norm)) {
    return absl::InternalError(
        absl::StrFormat("step %d: the global gradient norm is %f: training diverged; lower optim.lr or raise "
                        "optim.warmup_steps",
                        step + 1, st.grad_norm));
  }
  st.lr = LearningRate(recipe_.optim, step, recipe_.train.steps);
  optimizer_->Step(st.lr, st.grad_norm, recipe_.optim.grad_clip);
  optimizer_->GatherParameters();
  params.RefreshComputeValues();  // the bf16 weight copies follow the updated masters
  optimizer_phase.reset();

  // Auxiliary-loss-free balancing from the loads of the whole global batch.
  for (MoE* moe : moes) {
    Tensor load = Tensor::Empty({moe->num_experts()}, DType::kI64);
    std::copy(moe->expert_load().begin(), moe->expert_load().end(), load.data<int64_t>());
    mesh_.dp().AllReduce(load, ReduceOp::kSum);
    std::vector<int64_t> global(load.data<int64_t>(), load.data<int64_t>() + load.numel());
    // The bias rule runs on the host (E values); a device bias makes the round trip.
    Tensor bias = params.value(moe->bias_id());
    Tensor host = bias.device() == Device::kCPU ? bias : ops::To(bias, Device::kCPU);
    UpdateExpertBias(host, global, recipe_.optim.bias_update_speed);
    if (bias.device() != Device::kCPU) ops::Copy(bias, host);
    st.load_max_over_mean = std::max(st.load_max_over_mean, ComputeExpertLoadStats(global).max_over_mean);
    st.expert_loads.push_back(std::move(global));
  }
  Tensor worst = Tensor::FromVector({st.load_max_over_mean}, {1}, DType::kF64);
  mesh_.world().AllReduce(worst, ReduceOp::kMax);  // the worst MoE layer of any stage
  st.load_max_over_mean = worst.data<double>()[0];

  // Losses of the global batch (the CE sums live on the last stage, balance sums on every stage).
  std::vector<double> loss_sums = {sums.main_ce, sums.balance};
  loss_sums.insert(loss_sums.end(), sums.mtp_ce.begin(), sums.mtp_ce.end());
  loss_sums = SumOver(mesh_.world(), loss_sums);
  st.lm_loss = loss_sums[0] / std::max(norm.main_tokens, 1.0);
  double mtp_weighted = 0;
  const size_t depth = norm.mtp_tokens.size();
  for (size_t k = 0; k < depth; ++k) {
    double lk = loss_sums[2 + k] / std::max(norm.mtp_tokens[k], 1.0);
    st.mtp_loss += lk / static_cast<double>(depth);
    mtp_weighted += recipe_.loss.mtp_lambda / static_cast<double>(depth) * lk;
  }
  const double sequences_mb = static_cast<double>(m) * dp;  // balance values are means over a micro-batch
  const int64_t moe_layers = CountMoeLayers(recipe_.model);
  st.balance = moe_layers ? loss_sums[1] / (sequences_mb * static_cast<double>(moe_layers)) : 0.0;
  st.loss = st.lm_loss + mtp_weighted + recipe_.loss.balance_alpha * loss_sums[1] / sequences_mb;
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  st.tokens_per_s =
      static_cast<double>(sequences_mb * recipe_.train.micro_batch_size * recipe_.train.seq_len) / seconds;
  return st;
}

std::string FormatStepLine(const StepStats& s, int64_t total_steps) {
  return absl::StrFormat(
      "step %5d/%d | lm %.4f | mtp %.4f | bal %.4f | loss %.4f | lr %.3e | gnorm %.4f | %8.0f tok/s | "
      "load max/mean %.2f",
      s.step + 1, total_steps, s.lm_loss, s.mtp_loss, s.balance, s.loss, s.lr, s.grad_norm, s.tokens_per_s,
      s.load_max_over_mean);
}

absl::StatusOr<std::vector<StepStats>> Trainer::Run(std::ostream& log) {
  const int64_t steps = recipe_.train.steps;
  const ModelConfig& mc = recipe_.model;
  const bool logs = mesh_.coord().rank == 0;
  const int64_t global_sequences =
      recipe_.parallel.micro_batches * recipe_.train.micro_batch_size * mesh_.layout().dp();
  if (logs) {
    const std::string split = absl::StrJoin(stage_layers_, "+");
    log << absl::StrFormat(
        "fathom train %s: %d layers (%d dense), %d routed experts top-%d, MTP depth %d, %s; stage layers %s; "
        "%d sequences x %d tokens per step, %d steps\n",
        recipe_.path, mc.num_hidden_layers, mc.first_k_dense_replace, mc.n_routed_experts,
        mc.num_experts_per_tok, mc.num_nextn_predict_layers, recipe_.train.dtype, split, global_sequences,
        recipe_.train.seq_len, steps);
    log << memory_plan_table();
  }
  std::vector<StepStats> all;
  auto start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    absl::StatusOr<StepStats> st = Step(step);
    if (!st.ok()) return st.status();
    all.push_back(*st);
    if (logs && ((step + 1) % recipe_.train.log_every == 0 || step + 1 == steps)) {
      log << FormatStepLine(all.back(), steps) << "\n";
      log.flush();
    }
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const size_t window = std::min<size_t>(10, all.size());
  double first = 0, last = 0;
  for (size_t i = 0; i < window; ++i) {
    first += all[i].lm_loss / static_cast<double>(window);
    last += all[all.size() - window + i].lm_loss / static_cast<double>(window);
  }
  double tokens = static_cast<double>(steps * global_sequences * recipe_.train.seq_len);
  if (logs) {
    log << absl::StrFormat(
        "summary: %d steps, %.0f tokens in %.1f s (%.0f tok/s); lm loss %.4f -> %.4f (mean of first/last %d "
        "steps), ln(vocab) = %.4f\n",
        steps, tokens, seconds, tokens / seconds, first, last, window,
        std::log(static_cast<double>(mc.vocab_size)));
  }
  return all;
}

}  // namespace fathom
