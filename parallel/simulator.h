// Simulates one training step of a parallel plan on a cluster: the schedule's instruction lists run in
// time (parallel/schedule_validate.h's ExecuteSchedule) with per-instruction durations from the cost model
// (layers/cost.h) and the cluster (parallel/cluster.h), then the data-parallel gradient sync (ZeRO-1) and
// the optimizer step. Results: step time, bubble, per-rank memory, tokens/s/GPU and MFU.
//
// The mesh (DESIGN.md, "The mesh"): world = pp x dp, dp = ep x edp; ep innermost, so an expert group of
// ep <= gpus_per_node GPUs sits in one node and a larger one spans ep / gpus_per_node whole nodes; a
// pipeline stage occupies dp consecutive GPUs. No tensor parallelism.
//
// Timing model (per micro-batch of b sequences of T tokens, per stage = the stage's graph nodes):
//   compute   FLOPs / (peak x efficiency): GEMMs at the FP8 peak (PrecisionPolicy::fp8_gemm) or bf16,
//             bf16 GEMMs (router, head, MTP projection) at the bf16 peak, attention at the bf16 peak x
//             efficiency.attention. B includes recomputation; memory-bound kernels are folded into the
//             efficiencies. With a calibration profile (cluster.h `profile:`, parallel/profile.h) the
//             measured rates instead: dense, head and grouped-expert GEMMs (at the plan's rows per expert;
//             FP8 GEMMs at the measured bf16 efficiency times the FP8 peak), attention forward and backward,
//             and the measured elementwise share on top; its all-to-all and p2p GB/s replace NVLink x comm
//             efficiency inside a node, its optimizer GB/s the HBM estimate.
//   all-to-all   per MoE node and pass (forward: dispatch + combine; backward: the mirror), with DeepEP-style
//             node deduplication: a token crosses the network once per distinct remote node its experts
//             live on (node-limited routing: expert groups aligned to nodes, top-k groups uniformly
//             chosen), then NVLink forwards it inside the node; time = max(network, NVLink) / comm
//             efficiency + latency.
//   F, B, W, BW   compute + that pass's all-to-all (nothing to overlap with);
//   FB        DualPipe's pair: max((F + BW compute) / (1 - comm_sm_fraction), F + BW all-to-all): each
//             half's communication hides under the other half's compute on the SMs left to compute.
//   point-to-point   B*T*H*2 bytes over the network (NVLink when the whole pipeline sits in one node),
//             + latency, added to the consumer's wait.
//   step tail ZeRO-1: per chunk, a ring reduce-scatter of the f32 gradients over the parameter's replicas
//             (dp for replicated parameters, edp for experts; DualPipe doubles both: its two copies of a
//             stage are replicas too) starts when the chunk's last W ends; then the AdamW step over the
//             local shard (memory-bound at HBM speed) and the ring all-gather of the bf16 parameters.
// Memory per rank (the memory model, parallel/simulator_memory.cc; the event simulation is simulator.cc):
// parameters and gradients of its chunks, the optimizer shard (master weights when sharded, two moments /
// replicas), and the activations of every micro-batch-chunk from its F until its W (or BW) ends, with the
// running pass's working set (layers/activations.h); with the headroom for the activation estimate's
// error and fragmentation (cluster.h) checked against HBM less the reserve.
#ifndef FATHOM_PARALLEL_SIMULATOR_H_
#define FATHOM_PARALLEL_SIMULATOR_H_

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "framework/config.h"
#include "layers/cost.h"
#include "parallel/cluster.h"
#include "parallel/schedule.h"
#include "parallel/schedule_validate.h"

namespace fathom {

struct ParallelPlan {
  ScheduleKind schedule = ScheduleKind::k1F1B;
  int pp = 1;
  int ep = 1;
  int micro_batches = 1;         // per pipeline per step (DualPipe: both directions)
  int64_t micro_batch_size = 1;  // sequences per micro-batch
  int64_t seq_len = 1;
  std::vector<int64_t> stage_layers;  // decoder layers per stage (NumStages entries); empty: balanced
  Recompute recompute = Recompute::NormAndMlaUp();
  PrecisionPolicy precision;
  // The routed experts take the device layout (train.expert_gemm own, layers/moe.h): its worst-case tile
  // budget's pad rows instead of the padded layout's expected ones (ep = 1 only; DeviceLayoutPaddingFactor).
  bool device_expert_layout = false;

  std::string Describe() const;  // "dualpipe pp=16 ep=64 mbs=1 m=120 recompute=norm+mla_up"
};

// Per stage, per micro-batch, in seconds.
struct StageCost {
  std::vector<int> nodes;         // indices into the cost graph
  double f = 0, b = 0, w = 0;     // compute of F, B (input grad, with recomputation), W
  double f_comm = 0, b_comm = 0;  // exposed all-to-all of the forward and backward passes
  int64_t params_replicated = 0;  // per GPU
  int64_t params_expert = 0;      // per GPU (the stage's experts / ep)
  ActivationBytes activations;    // one micro-batch through the stage's passes (layers/activations.h)
};

// The stage costs for `stage_layers` (one entry per stage; stage 0 also holds the embedding, the last stage
// the head and the MTP modules).
std::vector<StageCost> ComputeStageCosts(const std::vector<NodeCost>& graph, const ModelConfig& model,
                                         const ClusterConfig& cluster, const ParallelPlan& plan,
                                         const std::vector<int64_t>& stage_layers);

// Duration of one instruction of `rank` given the stage costs of plan's placement.
double InstructionSeconds(const Schedule& schedule, const std::vector<StageCost>& stages,
                          const ClusterConfig& cluster, int rank, const Instruction& ins);

// Decoder layers per stage minimising the busiest rank's steady-state cycle (per micro-batch: F + BW of
// its stage; DualPipe/DualPipeV: the two FB pairs of its two stages), then the spread; every stage gets
// at least one layer. REQUIRES: num_hidden_layers >= NumStages(plan.schedule, plan.pp).
std::vector<int64_t> BalanceStageLayers(const std::vector<NodeCost>& graph, const ModelConfig& model,
                                        const ClusterConfig& cluster, const ParallelPlan& plan);

struct RankMemory {
  double params = 0;       // working weights (and unsharded master weights)
  double grads = 0;        // f32 gradients
  double optimizer = 0;    // ZeRO-1 shard: (sharded master weights +) moments
  double activations = 0;  // peak over the step, the running pass's working set included
  // Headroom the plan leaves on top (cluster.h memory_headroom): the activation estimate's error and the
  // allocator's fragmentation, each a share of `activations`.
  double estimate_error = 0;
  double fragmentation = 0;
  double total() const { return params + grads + optimizer + activations; }     // the estimate
  double required() const { return total() + estimate_error + fragmentation; }  // what must fit
};

struct SimulationResult {
  ParallelPlan plan;  // with stage_layers filled in
  int dp = 1, edp = 1;
  Schedule schedule;
  ScheduleTimes times;  // per instruction, seconds
  std::vector<StageCost> stages;
  double makespan_s = 0;                // pipeline part of the step
  double bubble_s = 0;                  // the DualPipe README's bubble: max over ranks of makespan - busy
  double bubble_fraction = 0;           // bubble_s / makespan_s
  std::vector<double> busy_s;           // per rank
  std::vector<double> grad_sync_end_s;  // per rank: when its last reduce-scatter ends
  double grad_sync_exposed_s = 0;       // reduce-scatter time past the makespan
  double optimizer_s = 0;
  double all_gather_s = 0;
  double step_s = 0;
  std::vector<RankMemory> memory;  // per pipeline rank
  int peak_memory_rank = 0;        // the rank with the most required memory
  double peak_memory_bytes = 0;    // its estimate (RankMemory::total)
  double required_bytes = 0;       // its estimate with the headroom (RankMemory::required)
  double usable_bytes = 0;         // HBM less the reserve
  bool fits = false;               // required_bytes <= usable_bytes
  double tokens_per_step = 0;
  double tokens_per_s_per_gpu = 0;
  double model_flops_per_token = 0;
  double mfu_bf16 = 0;  // model FLOPs / bf16 peak
  // SimulateForPlanning: the two short micro-batch counts the result was extended from ({0, 0}: simulated
  // in full, `schedule` and `times` hold every instruction; else both are empty).
  std::array<int, 2> extrapolated_from = {0, 0};
};

// What the many simulations of one planning run share: each (schedule, pp, micro-batches)'s instruction
// lists, their dependencies and live-activation profile are made once. Optional everywhere; results do not
// depend on it. Not thread safe.
class ScheduleCache {
 public:
  struct Entry;  // parallel/simulator.cc
  ScheduleCache();
  ~ScheduleCache();
  ScheduleCache(const ScheduleCache&) = delete;
  ScheduleCache& operator=(const ScheduleCache&) = delete;
  // Made on first use; MakeSchedule's InvalidArgument for a shape the schedule rejects.
  absl::StatusOr<const Entry*> Get(ScheduleKind kind, int pp, int micro_batches);

 private:
  std::map<std::tuple<int, int, int>, std::unique_ptr<Entry>> entries_;
};

// Simulates `plan` (dp = world / pp). InvalidArgument naming the key for a plan the cluster or model cannot
// run (pp does not divide the world, ep does not divide dp or the experts, a schedule shape it rejects,
// stage_layers of the wrong length or sum); the result says whether the memory fits.
absl::StatusOr<SimulationResult> Simulate(const ModelConfig& model, const ClusterConfig& cluster,
                                          const ParallelPlan& plan, ScheduleCache* cache = nullptr);

// Simulate for plans with thousands of micro-batches, in the time of a short one: the schedule runs in time
// at three short micro-batch counts past its warm-up (from 4 x the stages, steps of 2 x the stages,
// congruent to plan.micro_batches) and every per-step time (makespan, busy time per rank, the end of each
// rank's gradient sync) is extended linearly to plan.micro_batches: in the steady phase a schedule repeats
// its pattern (the closed-form loop counts of schedule.h), so each step of micro-batches adds the same time.
// When the three runs are not in that steady phase (their increments differ), it simulates in full. The
// extension is exact once the steady phase repeats; a pipeline whose critical cycle takes over only after
// hundreds of micro-batches (a max-plus transient) drifts by a hair more (DeepSeek-V3 on 2048 H800s, 4096
// micro-batches: 0.09% of the step), so the planner re-simulates its leaders in full. Memory is the short
// run's: the live activations peak in the warm-up. Plans with few micro-batches are simulated in full. The
// result's schedule and times are empty when extended (no Chrome trace; use Simulate).
absl::StatusOr<SimulationResult> SimulateForPlanning(const ModelConfig& model, const ClusterConfig& cluster,
                                                     const ParallelPlan& plan,
                                                     ScheduleCache* cache = nullptr);

// Memory only (no timing): cheap enough for the planner to prune with. Same errors as Simulate. With many
// micro-batches the memory is that of two short schedules past the warm-up when they agree (the live
// activations peak in the warm-up); the result's schedule then has no instruction lists.
absl::StatusOr<SimulationResult> SimulateMemory(const ModelConfig& model, const ClusterConfig& cluster,
                                                const ParallelPlan& plan, ScheduleCache* cache = nullptr);

// Expected distinct remote nodes a token's routed copies reach, for an expert group of `ep` GPUs (see the
// all-to-all model above); 0 when the group fits one node.
double RemoteNodesPerToken(const ModelConfig& model, int64_t gpus_per_node, int ep);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_SIMULATOR_H_
