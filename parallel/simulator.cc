#include "parallel/simulator.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "framework/check.h"
#include "layers/moe.h"
#include "parallel/simulator_memory.h"

namespace fathom {

struct ScheduleCache::Entry {
  Schedule schedule;
  ScheduleDeps deps;
  LiveProfile live;
};

namespace {

// AdamW's step streams every local shard parameter through HBM; such kernels reach about this share of
// the nominal bandwidth (uncalibrated; a profile's optimizer_gbps replaces it).
constexpr double kHbmEfficiency = 0.8;

double Choose(int64_t n, int64_t k) {
  if (k < 0 || k > n) return 0;
  double c = 1;
  for (int64_t i = 1; i <= k; ++i) c = c * static_cast<double>(n - k + i) / static_cast<double>(i);
  return c;
}

bool IsDual(ScheduleKind k) { return k == ScheduleKind::kDualPipe || k == ScheduleKind::kDualPipeV; }

// Achieved FLOP/s per kernel class, and the factor on compute time for the kernels the classes leave out.
struct Rates {
  double dense, experts, dense_bf16, head, attn_f, attn_b;
  double overhead = 1;
};

// Uncalibrated: the cluster's efficiencies against the peaks (memory-bound kernels folded in). With a
// profile: its measured bf16 rates (the expert GEMM's at this plan's rows per expert) and its elementwise
// share on top; FP8 GEMMs at the profile's measured FP8 rates, or where it has none at the bf16
// efficiency at the FP8 peak (ClusterConfig::Fp8Caveat says so).
Rates ComputeRates(const ClusterConfig& c, const ModelConfig& m, const ParallelPlan& plan) {
  const PrecisionPolicy& p = plan.precision;
  if (!c.profile) {
    const double bf16 = c.peak_bf16_tflops * 1e12 * c.efficiency.gemm;
    const double gemm = p.fp8_gemm ? c.peak_fp8_tflops * 1e12 * c.efficiency.gemm : bf16;
    const double attn = c.peak_bf16_tflops * 1e12 * c.efficiency.attention;
    return {gemm, gemm, bf16, bf16, attn, attn, 1.0};
  }
  const CalibrationProfile& prof = *c.profile;
  const double rows =
      static_cast<double>(plan.micro_batch_size * plan.seq_len * m.num_experts_per_tok * plan.ep) /
      static_cast<double>(m.n_routed_experts);
  const double fp8 = p.fp8_gemm ? c.peak_fp8_tflops / c.peak_bf16_tflops : 1.0;
  const bool measured_fp8 = p.fp8_gemm && prof.has_fp8();
  const double dense = measured_fp8 ? prof.fp8_dense_gemm_tflops : prof.dense_gemm_tflops * fp8;
  const double experts = measured_fp8 ? prof.Fp8ExpertGemmTflops(rows) : prof.ExpertGemmTflops(rows) * fp8;
  return {dense * 1e12,                         experts * 1e12,
          prof.dense_gemm_tflops * 1e12,        prof.head_gemm_tflops * 1e12,
          prof.attention_forward_tflops * 1e12, prof.attention_backward_tflops * 1e12,
          1.0 + prof.elementwise_fraction};
}

// Achieved bandwidth inside a node for all-to-all and point-to-point traffic, bytes/s.
double NvlinkAllToAll(const ClusterConfig& c) {
  return c.profile && c.profile->all_to_all_gbps > 0 ? c.profile->all_to_all_gbps * 1e9
                                                     : c.nvlink_gbps * 1e9 * c.efficiency.comm;
}
double NvlinkP2p(const ClusterConfig& c) {
  return c.profile && c.profile->p2p_gbps > 0 ? c.profile->p2p_gbps * 1e9
                                              : c.nvlink_gbps * 1e9 * c.efficiency.comm;
}

// Seconds of one all-to-all pass (dispatch + combine, or the backward's mirror) of one MoE node for one
// micro-batch.
double AllToAllSeconds(const NodeCost& n, const ModelConfig& m, const ClusterConfig& c, int ep,
                       double tokens) {
  if (n.routed_copies == 0 || ep <= 1) return 0;
  const double per_copy = n.dispatch_bytes + n.combine_bytes;
  const double remote = RemoteNodesPerToken(m, c.gpus_per_node, ep);
  const double nvlink_share = ep <= c.gpus_per_node
                                  ? static_cast<double>(ep - 1) / ep
                                  : static_cast<double>(c.gpus_per_node - 1) / c.gpus_per_node;
  const double network_s = tokens * remote * per_copy / (c.network_gbps_per_gpu * 1e9 * c.efficiency.comm);
  const double nvlink_s =
      tokens * static_cast<double>(n.routed_copies) * nvlink_share * per_copy / NvlinkAllToAll(c);
  const double latency = (remote > 0 ? c.network_latency_us : c.nvlink_latency_us) * 1e-6;
  return std::max(network_s, nvlink_s) + 2 * latency;
}

// Ring collective (reduce-scatter or all-gather) of `bytes` per GPU over `n` GPUs.
double RingSeconds(double bytes, int64_t n, double gbps, double latency_us, double efficiency) {
  if (n <= 1 || bytes <= 0) return 0;
  const double share = static_cast<double>(n - 1) / static_cast<double>(n);
  return bytes * share / (gbps * 1e9 * efficiency) + static_cast<double>(n - 1) * latency_us * 1e-6;
}

// Per-node costs for one micro-batch, the units that stage costs add up.
struct NodeSeconds {
  double f = 0, b = 0, w = 0, f_comm = 0, b_comm = 0;
};

NodeSeconds NodeTimes(const NodeCost& n, const ModelConfig& m, const ClusterConfig& c,
                      const ParallelPlan& plan) {
  const Rates r = ComputeRates(c, m, plan);
  const double tokens = static_cast<double>(plan.micro_batch_size * plan.seq_len);
  // One pass of every GEMM (forward, dgrad and wgrad each cost the forward's FLOPs).
  const double gemms = (n.gemm_flops - n.routed_gemm_flops) / r.dense + n.routed_gemm_flops / r.experts +
                       (n.gemm_bf16_flops - n.head_gemm_flops) / r.dense_bf16 + n.head_gemm_flops / r.head;
  const double recompute = plan.recompute.mla_up ? n.mla_up_flops / r.dense : 0.0;
  NodeSeconds t;
  t.f = tokens * r.overhead * (gemms + n.attn_flops / r.attn_f);
  t.b = tokens * r.overhead * (gemms + recompute + kAttentionBackwardFactor * n.attn_flops / r.attn_b);
  t.w = tokens * r.overhead * gemms;
  t.f_comm = t.b_comm = AllToAllSeconds(n, m, c, plan.ep, tokens);
  return t;
}

double PairSeconds(const ClusterConfig& c, double compute, double comm) {
  if (comm <= 0) return compute;
  return std::max(compute / (1.0 - c.comm_sm_fraction), comm);
}

// F&B of forward stage `a` with full backward of stage `b`.
double OverlappedSeconds(const ClusterConfig& c, const StageCost& a, const StageCost& b) {
  return PairSeconds(c, a.f + b.b + b.w, a.f_comm + b.b_comm);
}

absl::Status CheckPlan(const ModelConfig& m, const ClusterConfig& c, const ParallelPlan& plan) {
  const int64_t world = c.world();
  if (plan.pp < 1 || world % plan.pp != 0) {
    return absl::InvalidArgumentError(absl::StrCat("parallel.pp (", plan.pp, ") must divide the cluster's ",
                                                   world, " GPUs (", c.nodes, " nodes x ", c.gpus_per_node,
                                                   ")"));
  }
  const int64_t dp = world / plan.pp;
  if (plan.ep < 1 || dp % plan.ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel.ep (", plan.ep, ") must divide the data-parallel size dp = world / pp = ", dp));
  }
  if (m.n_routed_experts % plan.ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel.ep (", plan.ep, ") must divide model.n_routed_experts (", m.n_routed_experts, ")"));
  }
  if (absl::Status s = CheckScheduleShape(plan.schedule, plan.pp, plan.micro_batches); !s.ok()) return s;
  const int stages = NumStages(plan.schedule, plan.pp);
  if (m.num_hidden_layers < stages) {
    return absl::InvalidArgumentError(absl::StrCat("parallel.pp: ", ScheduleKindName(plan.schedule),
                                                   " with pp ", plan.pp, " needs ", stages,
                                                   " stages of at least one layer, but "
                                                   "model.num_hidden_layers is ",
                                                   m.num_hidden_layers));
  }
  if (plan.micro_batch_size < 1 || plan.seq_len < 1) {
    return absl::InvalidArgumentError(absl::StrCat("train.micro_batch_size (", plan.micro_batch_size,
                                                   ") and train.seq_len (", plan.seq_len, ") must be >= 1"));
  }
  if (!plan.stage_layers.empty()) {
    if (static_cast<int>(plan.stage_layers.size()) != stages) {
      return absl::InvalidArgumentError(absl::StrCat("parallel.stage_layers has ", plan.stage_layers.size(),
                                                     " entries; ", ScheduleKindName(plan.schedule),
                                                     " with pp ", plan.pp, " has ", stages, " stages"));
    }
    int64_t sum = 0;
    for (int64_t l : plan.stage_layers) {
      if (l < 1) return absl::InvalidArgumentError("parallel.stage_layers: every stage needs >= 1 layer");
      sum += l;
    }
    if (sum != m.num_hidden_layers) {
      return absl::InvalidArgumentError(absl::StrCat("parallel.stage_layers sums to ", sum,
                                                     ", must sum to model.num_hidden_layers (",
                                                     m.num_hidden_layers, ")"));
    }
  }
  return absl::OkStatus();
}

// Per-node costs of one micro-batch: what stage costs add up.
struct NodeUnit {
  NodeKind kind = NodeKind::kEmbedding;
  int64_t layer = -1;
  NodeSeconds t;
  int64_t params_replicated = 0, params_expert = 0;
  ActivationBytes activations;  // per micro-batch
};

std::vector<NodeUnit> NodeUnits(const std::vector<NodeCost>& graph, const ModelConfig& m,
                                const ClusterConfig& c, const ParallelPlan& plan) {
  const double tokens = static_cast<double>(plan.micro_batch_size * plan.seq_len);
  std::vector<NodeUnit> units(graph.size());
  for (size_t i = 0; i < graph.size(); ++i) {
    const NodeCost& n = graph[i];
    units[i].kind = n.kind;
    units[i].layer = n.layer;
    units[i].t = NodeTimes(n, m, c, plan);
    units[i].params_replicated = n.params - n.expert_params;
    units[i].params_expert = n.expert_params / plan.ep;
    const ActivationBytes a = n.activations(plan.recompute, plan.ep > 1);
    units[i].activations = {a.held_f * tokens, a.held_b * tokens, a.peak_f * tokens, a.peak_b * tokens};
    if (plan.ep == 1) {  // the tiled expert layout's pad rows (layers/moe.h), per micro-batch
      const ActivationBytes& pad = n.act_tiled_padding;
      const double s =
          plan.device_expert_layout && n.moe
              ? DeviceLayoutPaddingFactor(m, plan.micro_batch_size * plan.seq_len, MoE::kTileRows)
              : 1.0;
      units[i].activations.held_f += pad.held_f * s;
      units[i].activations.held_b += pad.held_b * s;
      units[i].activations.peak_f += pad.peak_f * s;
      units[i].activations.peak_b += pad.peak_b * s;
    }
  }
  return units;
}

// The stage costs of a split: the embedding with stage 0, decoder layers in order by stage_layers, the head
// and the MTP modules with the last stage. `list_nodes`: fill StageCost::nodes (the balancing search, which
// calls this for every split it tries, does not need them).
std::vector<StageCost> SumStages(const std::vector<NodeUnit>& units, const std::vector<int64_t>& stage_layers,
                                 bool list_nodes = true) {
  std::vector<StageCost> stages(stage_layers.size());
  // Each stage runs its nodes' forwards in order and their B in reverse (layers/activations.h's Sequence):
  // peak_b = held_b of the stage + max over its nodes of (held_f before - held_b up to and with + peak_b);
  // a BW pass does each node's W after the node's B: peak_bw = max over its nodes of (held_f before + peak_b),
  // the head group's held_b on top within it.
  std::vector<double> b_offset(stages.size(), -std::numeric_limits<double>::infinity());
  // The head and the MTP modules (the last stage's last nodes) run their W together after the head's B
  // (layers/activations.h, Sequence's w_group): what they keep after B that the B of the group's later
  // nodes in forward order (run earlier) left.
  auto in_head_group = [](const NodeUnit& u) { return u.kind == NodeKind::kHead || u.kind == NodeKind::kMtp; };
  double group_after_b = 0;
  for (const NodeUnit& u : units)
    if (in_head_group(u)) group_after_b += u.activations.held_b;
  size_t block_stage = 0;
  int64_t left = stage_layers[0];  // decoder layers still to place in block_stage
  for (size_t i = 0; i < units.size(); ++i) {
    const NodeUnit& u = units[i];
    size_t s = 0;
    if (u.kind == NodeKind::kDenseBlock || u.kind == NodeKind::kMoeBlock) {
      while (left == 0) {
        FATHOM_CHECK(block_stage + 1 < stage_layers.size(), "[simulator] stage_layers hold fewer layers");
        left = stage_layers[++block_stage];
      }
      s = block_stage;
      --left;
    } else if (u.kind != NodeKind::kEmbedding) {
      s = stages.size() - 1;
    }
    StageCost& st = stages[s];
    if (list_nodes) st.nodes.push_back(static_cast<int>(i));
    st.f += u.t.f, st.b += u.t.b, st.w += u.t.w, st.f_comm += u.t.f_comm, st.b_comm += u.t.b_comm;
    st.params_replicated += u.params_replicated;
    st.params_expert += u.params_expert;
    ActivationBytes& a = st.activations;
    a.peak_f = std::max(a.peak_f, a.held_f + u.activations.peak_f);
    a.held_b += u.activations.held_b;
    b_offset[s] = std::max(b_offset[s], a.held_f - a.held_b + u.activations.peak_b);
    if (in_head_group(u)) group_after_b -= u.activations.held_b;
    a.peak_bw = std::max(a.peak_bw, a.held_f + u.activations.peak_b + (in_head_group(u) ? group_after_b : 0.0));
    a.held_f += u.activations.held_f;
  }
  for (size_t s = 0; s < stages.size(); ++s) {
    ActivationBytes& a = stages[s].activations;
    a.peak_b = std::max(0.0, a.held_b + b_offset[s]);
  }
  return stages;
}

// Layers per stage as even as possible, the extra layers on the later stages (which hold the head).
std::vector<int64_t> EvenSplit(int stages, int64_t layers) {
  std::vector<int64_t> split(stages, layers / stages);
  for (int64_t i = 0; i < layers % stages; ++i) ++split[stages / 2 + (i % (stages - stages / 2))];
  return split;
}

// Decoder layers per stage, by local search from an even split: first the memory excess over the usable
// HBM of the worst rank, then the busiest rank's steady-state cycle per micro-batch (F + BW of its stage;
// DualPipe/DualPipeV: the two FB pairs of its two stages), then the sum of squared cycles.
std::vector<int64_t> Balance(const std::vector<NodeUnit>& units, const ModelConfig& m, const ClusterConfig& c,
                             const ParallelPlan& plan, const Schedule& s, const LiveProfile& live) {
  const int stages = NumStages(plan.schedule, plan.pp);
  const int64_t layers = m.num_hidden_layers;
  FATHOM_CHECK(layers >= stages, "[balance_stages] ", layers, " layers for ", stages, " stages");
  const ReplicaGroups groups = Replicas(plan, c.world() / plan.pp);
  const double usable = c.usable_bytes();
  auto objective = [&](const std::vector<int64_t>& split) {
    const std::vector<StageCost> st = SumStages(units, split, /*list_nodes=*/false);
    double excess = 0, worst = 0, squares = 0;
    for (int r = 0; r < plan.pp; ++r) {
      excess = std::max(excess, MemoryOfRank(s, live, st, r, plan.precision, groups, c).required() - usable);
      double cycle;
      if (IsDual(plan.schedule)) {
        const int other = plan.schedule == ScheduleKind::kDualPipe ? plan.pp - 1 - r : 2 * plan.pp - 1 - r;
        cycle = OverlappedSeconds(c, st[r], st[other]) + OverlappedSeconds(c, st[other], st[r]);
      } else {
        cycle = st[r].f + st[r].f_comm + st[r].b + st[r].w + st[r].b_comm;
      }
      worst = std::max(worst, cycle);
      squares += cycle * cycle;
    }
    return std::array<double, 3>{std::max(excess, 0.0), worst, squares};
  };
  auto better = [](const std::array<double, 3>& a, const std::array<double, 3>& b) {
    for (int i = 0; i < 3; ++i) {
      if (a[i] < b[i] * (1 - 1e-12) - 1e-300) return true;
      if (a[i] > b[i] * (1 + 1e-12) + 1e-300) return false;
    }
    return false;
  };
  std::vector<int64_t> split = EvenSplit(stages, layers);
  auto best = objective(split);
  // Take one layer from any stage and give it to any other (the layers between shift by one stage) while
  // that strictly improves the objective: the light first stage and the heavy last one (head, MTP) trade
  // directly.
  for (bool improved = true; improved;) {
    improved = false;
    for (int from = 0; from < stages; ++from) {
      for (int to = 0; to < stages; ++to) {
        if (from == to || split[from] <= 1) continue;
        --split[from], ++split[to];
        const auto cand = objective(split);
        if (better(cand, best)) {
          best = cand;
          improved = true;
        } else {
          ++split[from], --split[to];
        }
      }
    }
  }
  return split;
}

// Everything but the timing: stage costs, the schedule, the memory of every rank. `entry`: where the
// schedule came from (its dependencies for the timing).
absl::StatusOr<SimulationResult> Prepare(const ModelConfig& m, const ClusterConfig& c,
                                         const ParallelPlan& plan_in, ScheduleCache* cache,
                                         const ScheduleCache::Entry** entry = nullptr) {
  if (absl::Status s = CheckPlan(m, c, plan_in); !s.ok()) return s;
  ScheduleCache local;
  absl::StatusOr<const ScheduleCache::Entry*> cached =
      (cache ? cache : &local)->Get(plan_in.schedule, plan_in.pp, plan_in.micro_batches);
  if (!cached.ok()) return cached.status();
  if (entry) *entry = cache ? *cached : nullptr;
  SimulationResult res;
  res.plan = plan_in;
  ParallelPlan& plan = res.plan;
  res.schedule = (*cached)->schedule;
  const Schedule& s = res.schedule;
  const LiveProfile& live = (*cached)->live;
  const std::vector<NodeCost> graph = BuildCostGraph(m, plan.seq_len, plan.precision);
  const std::vector<NodeUnit> units = NodeUnits(graph, m, c, plan);
  if (plan.stage_layers.empty()) plan.stage_layers = Balance(units, m, c, plan, s, live);
  res.dp = static_cast<int>(c.world() / plan.pp);
  res.edp = res.dp / plan.ep;
  res.stages = SumStages(units, plan.stage_layers);
  res.model_flops_per_token = SumGraph(graph).model_flops;
  res.usable_bytes = c.usable_bytes();
  const ReplicaGroups groups = Replicas(plan, res.dp);
  res.memory.resize(s.pp);
  res.peak_memory_bytes = res.required_bytes = 0;
  for (int r = 0; r < s.pp; ++r) {
    res.memory[r] = MemoryOfRank(s, live, res.stages, r, plan.precision, groups, c);
    if (res.memory[r].required() > res.required_bytes) {
      res.required_bytes = res.memory[r].required();
      res.peak_memory_bytes = res.memory[r].total();
      res.peak_memory_rank = r;
    }
  }
  res.fits = res.required_bytes <= res.usable_bytes;
  res.tokens_per_step = static_cast<double>(res.dp) * plan.micro_batches *
                        static_cast<double>(plan.micro_batch_size) * static_cast<double>(plan.seq_len);
  return res;
}

}  // namespace

ScheduleCache::ScheduleCache() = default;
ScheduleCache::~ScheduleCache() = default;

absl::StatusOr<const ScheduleCache::Entry*> ScheduleCache::Get(ScheduleKind kind, int pp, int micro_batches) {
  std::unique_ptr<Entry>& e = entries_[{static_cast<int>(kind), pp, micro_batches}];
  if (!e) {
    absl::StatusOr<Schedule> schedule = MakeSchedule(kind, pp, micro_batches);
    if (!schedule.ok()) {
      entries_.erase({static_cast<int>(kind), pp, micro_batches});
      return schedule.status();
    }
    absl::StatusOr<ScheduleDeps> deps = ResolveDependencies(*schedule);
    if (!deps.ok()) {
      entries_.erase({static_cast<int>(kind), pp, micro_batches});
      return absl::InternalError(absl::StrCat("generated schedule is invalid: ", deps.status().message()));
    }
    e = std::make_unique<Entry>();
    e->live = LiveCounts(*schedule);
    e->schedule = *std::move(schedule);
    e->deps = *std::move(deps);
  }
  return e.get();
}

std::string ParallelPlan::Describe() const {
  std::string rc = recompute.norm && recompute.mla_up ? "norm+mla_up"
                   : recompute.norm                   ? "norm"
                   : recompute.mla_up                 ? "mla_up"
                                                      : "none";
  return absl::StrCat(ScheduleKindName(schedule), " pp=", pp, " ep=", ep, " mbs=", micro_batch_size,
                      " m=", micro_batches, " recompute=", rc);
}

double RemoteNodesPerToken(const ModelConfig& m, int64_t gpus_per_node, int ep) {
  if (ep <= gpus_per_node) return 0;
  const double nodes = std::ceil(static_cast<double>(ep) / static_cast<double>(gpus_per_node));
  const int64_t n = static_cast<int64_t>(nodes);
  const int64_t groups = m.n_group, top_groups = m.topk_group, k = m.num_experts_per_tok;
  double distinct;
  if (groups > 1 && groups % n == 0) {
    // Groups aligned with nodes (groups / n per node): a node is reached when one of its groups is chosen.
    const int64_t per_node = groups / n;
    distinct = nodes * (1.0 - Choose(groups - per_node, top_groups) / Choose(groups, top_groups));
  } else if (groups > 1 && n % groups == 0) {
    // A group spans n / groups nodes; its k / topk_group experts land on them uniformly.
    const double span = nodes / static_cast<double>(groups);
    const double per_group = static_cast<double>(k) / static_cast<double>(top_groups);
    distinct = static_cast<double>(top_groups) * span * (1.0 - std::pow(1.0 - 1.0 / span, per_group));
  } else {
    distinct = nodes * (1.0 - std::pow(1.0 - 1.0 / nodes, static_cast<double>(k)));
  }
  return distinct * (nodes - 1.0) / nodes;  // by symmetry the token's own node is one of them w.p. 1/nodes
}

std::vector<StageCost> ComputeStageCosts(const std::vector<NodeCost>& graph, const ModelConfig& m,
                                         const ClusterConfig& c, const ParallelPlan& plan,
                                         const std::vector<int64_t>& stage_layers) {
  return SumStages(NodeUnits(graph, m, c, plan), stage_layers);
}

double InstructionSeconds(const Schedule& s, const std::vector<StageCost>& stages, const ClusterConfig& c,
                          int rank, const Instruction& ins) {
  const StageCost& a = stages[s.ModelStage(rank, ins.chunk)];
  switch (ins.kind) {
    case OpKind::kF:
      return a.f + a.f_comm;
    case OpKind::kB:
      return a.b + a.b_comm;
    case OpKind::kW:
      return a.w;
    case OpKind::kBW:
      return a.b + a.w + a.b_comm;
    case OpKind::kFB:
      return OverlappedSeconds(c, a, stages[s.ModelStage(rank, ins.chunk_b)]);
  }
  return 0;
}

std::vector<int64_t> BalanceStageLayers(const std::vector<NodeCost>& graph, const ModelConfig& m,
                                        const ClusterConfig& c, const ParallelPlan& plan) {
  const Schedule s = *MakeSchedule(plan.schedule, plan.pp, plan.micro_batches);
  return Balance(NodeUnits(graph, m, c, plan), m, c, plan, s, LiveCounts(s));
}

absl::StatusOr<SimulationResult> SimulateMemory(const ModelConfig& m, const ClusterConfig& c,
                                                const ParallelPlan& plan, ScheduleCache* cache) {
  if (absl::Status s = CheckPlan(m, c, plan); !s.ok()) return s;
  // The live activations peak during a schedule's warm-up: with many micro-batches, the memory of two short
  // schedules past the warm-up is the plan's when they agree (and the plan's schedule is never built).
  const int stages = NumStages(plan.schedule, plan.pp);
  const int m1 = 4 * stages + plan.micro_batches % 2, m2 = m1 + 2 * stages;
  const bool shorten = plan.micro_batches > m2;
  auto as_planned = [&](SimulationResult res) {
    res.plan.micro_batches = plan.micro_batches;
    res.schedule = Schedule{plan.schedule, plan.pp, plan.micro_batches, {}};
    res.tokens_per_step = static_cast<double>(res.dp) * plan.micro_batches *
                          static_cast<double>(plan.micro_batch_size) * static_cast<double>(plan.seq_len);
    return res;
  };
  ParallelPlan shortened = plan;
  if (shorten) shortened.micro_batches = m1;
  if (plan.stage_layers.empty()) {
    // Parameters, gradients and optimizer state summed over the ranks do not depend on the split: when
    // their mean per rank already exceeds the usable memory no split fits, and the even split stands for
    // the result without the balancing search (most of a large cluster's candidates end here).
    ParallelPlan even = shortened;
    even.stage_layers = EvenSplit(stages, m.num_hidden_layers);
    absl::StatusOr<SimulationResult> r = Prepare(m, c, even, cache);
    if (!r.ok()) return r.status();
    double state = 0;
    for (const RankMemory& mem : r->memory) state += mem.params + mem.grads + mem.optimizer;
    if (state / static_cast<double>(plan.pp) > r->usable_bytes)
      return shorten ? as_planned(*std::move(r)) : *r;
  }
  if (shorten) {
    std::array<absl::StatusOr<SimulationResult>, 2> runs;
    for (int i = 0; i < 2; ++i) {
      shortened.micro_batches = i == 0 ? m1 : m2;
      runs[i] = Prepare(m, c, shortened, cache);
      if (!runs[i].ok()) return runs[i].status();
      shortened.stage_layers = runs[i]->plan.stage_layers;
    }
    bool same = true;
    for (size_t r = 0; same && r < runs[0]->memory.size(); ++r) {
      same = runs[0]->memory[r].total() == runs[1]->memory[r].total();
    }
    if (same) return as_planned(*std::move(runs[1]));
  }
  return Prepare(m, c, plan, cache);
}

absl::StatusOr<SimulationResult> Simulate(const ModelConfig& m, const ClusterConfig& c,
                                          const ParallelPlan& plan, ScheduleCache* cache) {
  ScheduleCache local;
  if (!cache) cache = &local;
  const ScheduleCache::Entry* entry = nullptr;
  absl::StatusOr<SimulationResult> prepared = Prepare(m, c, plan, cache, &entry);
  if (!prepared.ok()) return prepared.status();
  SimulationResult res = *std::move(prepared);
  const Schedule& s = res.schedule;
  const ScheduleDeps* deps = &entry->deps;

  // Pipeline neighbours are dp GPUs apart: once the world spans nodes, some hop crosses a node boundary
  // and every micro-batch's path takes it.
  const bool p2p_network = c.world() > c.gpus_per_node;
  const double p2p_bytes = PipelineMessageBytes(m, res.plan.micro_batch_size, res.plan.seq_len);
  const double p2p_s =
      p2p_bytes / (p2p_network ? c.network_gbps_per_gpu * 1e9 * c.efficiency.comm : NvlinkP2p(c)) +
      (p2p_network ? c.network_latency_us : c.nvlink_latency_us) * 1e-6;
  absl::StatusOr<ScheduleTimes> times = ExecuteSchedule(
      s, *deps,
      [&](int rank, const Instruction& ins) { return InstructionSeconds(s, res.stages, c, rank, ins); },
      [&](const Dependency&, int, int) { return p2p_s; });
  if (!times.ok())
    return absl::InternalError(absl::StrCat("generated schedule deadlocks: ", times.status().message()));
  res.times = *std::move(times);

  res.makespan_s = 0;
  for (const auto& rank : res.times) {
    for (const TimedInstruction& t : rank) res.makespan_s = std::max(res.makespan_s, t.end);
  }
  res.busy_s.assign(s.pp, 0.0);
  res.bubble_s = 0;
  for (int r = 0; r < s.pp; ++r) {
    for (const TimedInstruction& t : res.times[r]) res.busy_s[r] += t.end - t.start;
    res.bubble_s = std::max(res.bubble_s, res.makespan_s - res.busy_s[r]);
  }
  res.bubble_fraction = res.makespan_s > 0 ? res.bubble_s / res.makespan_s : 0;

  // Step tail: per chunk, reduce-scatter after its last weight gradient; then AdamW on the shard and the
  // all-gather of the updated bf16 weights.
  const PrecisionPolicy& p = res.plan.precision;
  const ReplicaGroups groups = Replicas(res.plan, res.dp);
  const int64_t dense_group = groups.dense, expert_group = groups.expert;
  const bool dp_network = c.world() > c.gpus_per_node && (res.dp > c.gpus_per_node || dense_group > res.dp);
  const double bw = dp_network ? c.network_gbps_per_gpu : c.nvlink_gbps;
  const double lat = dp_network ? c.network_latency_us : c.nvlink_latency_us;
  const double gathered = static_cast<double>(GatheredBytesPerParameter(p));
  const double optimizer_rate =
      c.profile ? c.profile->optimizer_gbps * 1e9 : c.hbm_tbps * 1e12 * kHbmEfficiency;  // bytes/s
  res.grad_sync_end_s.assign(s.pp, 0.0);
  double grads_ready = res.makespan_s, optimizer = 0, gather = 0;
  for (int r = 0; r < s.pp; ++r) {
    std::vector<std::pair<double, int>> last_w;  // (end of the chunk's last weight gradient, chunk)
    for (int chunk = 0; chunk < s.chunks(); ++chunk) {
      double end = 0;
      for (size_t i = 0; i < s.ranks[r].size(); ++i) {
        const Instruction& ins = s.ranks[r][i];
        const bool weight = ((ins.kind == OpKind::kW || ins.kind == OpKind::kBW) && ins.chunk == chunk) ||
                            (ins.kind == OpKind::kFB && ins.chunk_b == chunk);
        if (weight) end = std::max(end, res.times[r][i].end);
      }
      last_w.push_back({end, chunk});
    }
    std::sort(last_w.begin(), last_w.end());
    double t = 0, shard = 0, local = 0, rank_gather = 0;
    for (const auto& [end, chunk] : last_w) {
      const StageCost& st = res.stages[s.ModelStage(r, chunk)];
      const double dense = static_cast<double>(st.params_replicated),
                   expert = static_cast<double>(st.params_expert);
      t = std::max(t, end) +
          RingSeconds(dense * static_cast<double>(p.grad_bytes), dense_group, bw, lat, c.efficiency.comm) +
          RingSeconds(expert * static_cast<double>(p.grad_bytes), expert_group, bw, lat, c.efficiency.comm);
      shard += dense / static_cast<double>(dense_group) + expert / static_cast<double>(expert_group);
      local += dense + expert;
      rank_gather += RingSeconds(dense * gathered, dense_group, bw, lat, c.efficiency.comm) +
                     RingSeconds(expert * gathered, expert_group, bw, lat, c.efficiency.comm);
    }
    res.grad_sync_end_s[r] = t;
    grads_ready = std::max(grads_ready, t);
    optimizer = std::max(optimizer, OptimizerStepBytes(p, shard, local) / optimizer_rate);
    gather = std::max(gather, rank_gather);
  }
  res.grad_sync_exposed_s = grads_ready - res.makespan_s;
  res.optimizer_s = optimizer;
  res.all_gather_s = gather;
  res.step_s = grads_ready + optimizer + gather;
  res.tokens_per_s_per_gpu = res.tokens_per_step / (res.step_s * static_cast<double>(c.world()));
  res.mfu_bf16 = res.model_flops_per_token * res.tokens_per_s_per_gpu / (c.peak_bf16_tflops * 1e12);
  return res;
}

namespace {

// The short micro-batch counts the planner's simulation runs for a step of `step` micro-batches: past every
// schedule's warm-up (at least 4 x the stages), then two steps more, congruent to the plan's count modulo
// the step, so that the plan's count is a whole number of steps away from them.
std::array<int, 3> ShortMicroBatches(const ParallelPlan& plan, int step) {
  const int first = 4 * NumStages(plan.schedule, plan.pp);
  const int m1 = first + (plan.micro_batches - first) % step;
  return {m1, m1 + step, m1 + 2 * step};
}

// The time-per-step quantities of `r2` extended by `k` steps, given the same run one step shorter (`r1`).
SimulationResult Extend(const SimulationResult& r1, const SimulationResult& r2, double k,
                        const ClusterConfig& c, const ParallelPlan& plan) {
  auto extend = [k](double a1, double a2) { return a2 + k * (a2 - a1); };
  SimulationResult res = r2;
  res.plan = plan;
  res.plan.stage_layers = r2.plan.stage_layers;
  res.extrapolated_from = {r1.plan.micro_batches, r2.plan.micro_batches};
  res.schedule.micro_batches = plan.micro_batches;
  res.schedule.ranks.clear();
  res.times.clear();
  res.makespan_s = extend(r1.makespan_s, r2.makespan_s);
  res.bubble_s = 0;
  double grads_ready = res.makespan_s;
  for (size_t r = 0; r < res.busy_s.size(); ++r) {
    res.busy_s[r] = extend(r1.busy_s[r], r2.busy_s[r]);
    res.grad_sync_end_s[r] = extend(r1.grad_sync_end_s[r], r2.grad_sync_end_s[r]);
    res.bubble_s = std::max(res.bubble_s, res.makespan_s - res.busy_s[r]);
    grads_ready = std::max(grads_ready, res.grad_sync_end_s[r]);
  }
  res.bubble_fraction = res.makespan_s > 0 ? res.bubble_s / res.makespan_s : 0;
  res.grad_sync_exposed_s = grads_ready - res.makespan_s;
  res.step_s = grads_ready + res.optimizer_s + res.all_gather_s;
  res.tokens_per_step = static_cast<double>(res.dp) * plan.micro_batches *
                        static_cast<double>(plan.micro_batch_size) * static_cast<double>(plan.seq_len);
  res.tokens_per_s_per_gpu = res.tokens_per_step / (res.step_s * static_cast<double>(c.world()));
  res.mfu_bf16 = res.model_flops_per_token * res.tokens_per_s_per_gpu / (c.peak_bf16_tflops * 1e12);
  return res;
}

}  // namespace

absl::StatusOr<SimulationResult> SimulateForPlanning(const ModelConfig& m, const ClusterConfig& c,
                                                     const ParallelPlan& plan, ScheduleCache* cache) {
  if (absl::Status s = CheckPlan(m, c, plan); !s.ok()) return s;
  ParallelPlan shortened = plan;
  // A steady phase repeats its pattern every few micro-batches: every one for 1F1B, every 2, 3 or 4 for
  // the DualPipes in practice (the cyclicity of the schedule's critical dependency cycle). Steps of
  // 2 x stages times an odd factor cover those periods; the first step whose three runs grow by the same
  // time is taken.
  const int stages = NumStages(plan.schedule, plan.pp);
  for (int factor : {1, 3, 5, 15}) {
    const int step = 2 * stages * factor;
    const std::array<int, 3> short_m = ShortMicroBatches(plan, step);
    if (plan.micro_batches <= short_m[2]) break;
    if (shortened.stage_layers.empty()) {
      // The split depends on the micro-batch count only through the live activations, which the short
      // schedule already holds at their peak.
      shortened.micro_batches = short_m[0];
      absl::StatusOr<SimulationResult> split = Prepare(m, c, shortened, cache);
      if (!split.ok()) return split.status();
      shortened.stage_layers = split->plan.stage_layers;
    }
    std::array<SimulationResult, 3> runs;
    for (int i = 0; i < 3; ++i) {
      shortened.micro_batches = short_m[i];
      absl::StatusOr<SimulationResult> r = Simulate(m, c, shortened, cache);
      if (!r.ok()) return r.status();
      runs[i] = *std::move(r);
    }
    auto steady = [&](double SimulationResult::*time) {
      const double d1 = runs[1].*time - runs[0].*time, d2 = runs[2].*time - runs[1].*time;
      return std::abs(d2 - d1) <= 1e-9 * runs[2].*time;
    };
    if (!steady(&SimulationResult::makespan_s) || !steady(&SimulationResult::step_s)) continue;
    const double k = static_cast<double>(plan.micro_batches - short_m[2]) / step;
    return Extend(runs[1], runs[2], k, c, plan);
  }
  return Simulate(m, c, plan, cache);
}

}  // namespace fathom
