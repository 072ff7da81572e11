#include "launch/memory_check.h"

#include <algorithm>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "parallel/rank_agreement.h"
#include "parallel/schedule.h"
#include "parallel/stage_split.h"

#ifdef FATHOM_WITH_CUDA
#include <cuda_runtime.h>

#include "framework/cuda/device_arena.h"
#endif

namespace fathom {
namespace {

// A product of several counts, saturating.
int64_t Product(std::initializer_list<int64_t> factors) {
  int64_t p = 1;
  for (int64_t f : factors) p = SaturatingMul(p, f);
  return p;
}

int64_t Sum(std::initializer_list<int64_t> terms) {
  int64_t s = 0;
  for (int64_t t : terms) s = SaturatingAdd(s, t);
  return s;
}

// Elements of one decoder block's attention part (projections and the four norms).
int64_t AttentionElements(const ModelConfig& m) {
  const int64_t H = m.hidden_size, nh = m.num_attention_heads, ql = m.q_lora_rank, kvl = m.kv_lora_rank;
  const int64_t qk = SaturatingAdd(m.qk_nope_head_dim, m.qk_rope_head_dim);
  const int64_t q = ql > 0 ? Sum({Product({H, ql}), Product({ql, nh, qk})}) : Product({H, nh, qk});
  const int64_t kv = Sum({Product({H, SaturatingAdd(kvl, m.qk_rope_head_dim)}),
                          Product({kvl, nh, SaturatingAdd(m.qk_nope_head_dim, m.v_head_dim)})});
  const int64_t o = Product({nh, m.v_head_dim, H});
  const int64_t norms = Sum({Product({2, H}), ql > 0 ? ql : 0, kvl});
  return Sum({q, kv, o, norms});
}

// Elements of a dense block and of a MoE block holding `local_experts` routed experts.
int64_t DenseBlockElements(const ModelConfig& m) {
  return Sum({AttentionElements(m), Product({3, m.hidden_size, m.intermediate_size})});
}

int64_t MoeBlockElements(const ModelConfig& m, int64_t local_experts) {
  const int64_t expert = Product({3, m.hidden_size, m.moe_intermediate_size});
  return Sum({AttentionElements(m), Product({m.n_shared_experts, expert}), Product({local_experts, expert}),
              Product({m.n_routed_experts, m.hidden_size}), m.n_routed_experts});  // router, bias
}

// How many of the layers [first, end) are dense (the first first_k_dense_replace of the model).
int64_t DenseLayersIn(const ModelConfig& m, int64_t first, int64_t end) {
  return std::clamp<int64_t>(m.first_k_dense_replace - first, 0, end - first);
}

// Activation elements one token keeps per decoder block (see the header for the list).
int64_t BlockActivationElements(const ModelConfig& m, bool moe) {
  const int64_t H = m.hidden_size, nh = m.num_attention_heads, ql = m.q_lora_rank, kvl = m.kv_lora_rank;
  const int64_t qk = SaturatingAdd(m.qk_nope_head_dim, m.qk_rope_head_dim);
  const int64_t attention =
      Sum({Product({3, H}), Product({2, ql}), Product({2, kvl}), m.qk_rope_head_dim,
           Product({nh, m.v_head_dim}), nh, Product({nh, Sum({qk, qk, m.v_head_dim})})});
  if (!moe) return Sum({attention, H, Product({2, m.intermediate_size})});
  const int64_t k = m.num_experts_per_tok;
  return Sum({attention, H, m.n_routed_experts, Product({2, k}), Product({k, H}),
              Product({SaturatingAdd(k, m.n_shared_experts), 2, m.moe_intermediate_size})});
}

// The final norm's input and output and the logit gradient the loss keeps from its forward (bf16 on GPU;
// the logits themselves are dropped).
int64_t HeadActivationElements(const ModelConfig& m) {
  return Sum({Product({2, m.hidden_size}), m.vocab_size});
}

int64_t ParameterWidth(const Recipe& r, bool device) { return !device && r.train.dtype == "f64" ? 8 : 4; }
int64_t ActivationWidth(const Recipe& r, bool device) {
  if (device) return r.train.dtype == "bf16" ? 2 : 4;
  return r.train.dtype == "f64" ? 8 : 4;
}

std::string Knobs() {
  return "reduce the model's sizes, train.micro_batch_size or train.seq_len, set optim.moment_dtype: bf16, "
         "or "
         "spread the model over more ranks (parallel.pp, parallel.ep)";
}

}  // namespace

int64_t SaturatingAdd(int64_t a, int64_t b) {
  int64_t s = 0;
  return __builtin_add_overflow(a, b, &s) ? kSaturatedBytes : s;
}

int64_t SaturatingMul(int64_t a, int64_t b) {
  int64_t p = 0;
  return __builtin_mul_overflow(a, b, &p) ? kSaturatedBytes : p;
}

std::vector<RankSlice> SlicesOfRank(const Recipe& recipe, const MeshLayout& layout, int rank) {
  const ModelConfig& m = recipe.model;
  absl::StatusOr<ScheduleKind> kind = ParseScheduleKind(recipe.parallel.schedule);
  // The placement of the runtime's schedule (parallel/schedule.h): which model stage each chunk holds.
  Schedule placement;
  placement.kind = kind.ok() ? *kind : ScheduleKind::k1F1B;
  placement.pp = layout.pp();
  const int stages = placement.num_stages();
  // The runtime's split (parallel.stage_layers, else the cost-balanced one), or an even one when the
  // recipe's split is invalid (the recipe check reports that) or the model is too deep for a split that
  // costs each layer (this check stays closed-form: a recipe of 10^8 layers is refused, not enumerated).
  constexpr int64_t kMaxLayersToSplit = 4096;
  absl::StatusOr<std::vector<int64_t>> split =
      m.num_hidden_layers <= kMaxLayersToSplit
          ? SplitStages(m, recipe.parallel, recipe.train.seq_len)
          : absl::StatusOr<std::vector<int64_t>>(absl::UnimplementedError(""));
  std::vector<RankSlice> slices;
  for (int chunk = 0; chunk < placement.chunks(); ++chunk) {
    RankSlice s;
    s.stage = placement.ModelStage(layout.Coord(rank).pp_rank, chunk);
    if (split.ok() && static_cast<int>(split->size()) == stages) {
      for (int i = 0; i < s.stage; ++i) s.first_layer += (*split)[static_cast<size_t>(i)];
      s.end_layer = s.first_layer + (*split)[static_cast<size_t>(s.stage)];
    } else {
      const int64_t per_stage = (m.num_hidden_layers + stages - 1) / stages;
      s.first_layer = std::min(m.num_hidden_layers, per_stage * s.stage);
      s.end_layer = std::min(m.num_hidden_layers, s.first_layer + per_stage);
    }
    s.embedding = s.stage == 0;
    s.head = s.stage == stages - 1;
    s.local_experts = m.n_routed_experts / layout.ep();
    slices.push_back(s);
  }
  return slices;
}

RankSlice SliceOfRank(const Recipe& recipe, const MeshLayout& layout, int rank) {
  return SlicesOfRank(recipe, layout, rank).front();
}

int64_t SliceParameterElements(const ModelConfig& m, const RankSlice& s) {
  const int64_t layers = s.end_layer - s.first_layer;
  const int64_t dense = DenseLayersIn(m, s.first_layer, s.end_layer);
  int64_t n = Sum({Product({dense, DenseBlockElements(m)}),
                   Product({layers - dense, MoeBlockElements(m, s.local_experts)})});
  const int64_t embedding = Product({m.vocab_size, m.hidden_size});
  const bool mtp = m.num_nextn_predict_layers > 0;
  if (s.embedding || (s.head && mtp)) n = SaturatingAdd(n, embedding);  // the last stage's copy for MTP
  if (s.head) {
    n = Sum({n, m.hidden_size, embedding});  // final norm, lm_head
    // MTP module d: enorm, hnorm, shared_head.norm, eh_proj (2H -> H), and a block of the kind of layer
    // num_hidden_layers + d.
    const int64_t depth = m.num_nextn_predict_layers;
    const int64_t dense_mtp =
        DenseLayersIn(m, m.num_hidden_layers, SaturatingAdd(m.num_hidden_layers, depth));
    const int64_t own = Sum({Product({3, m.hidden_size}), Product({2, m.hidden_size, m.hidden_size})});
    n = Sum({n, Product({depth, own}), Product({dense_mtp, DenseBlockElements(m)}),
             Product({depth - dense_mtp, MoeBlockElements(m, s.local_experts)})});
  }
  return n;
}

int64_t SliceRoutedExpertElements(const ModelConfig& m, const RankSlice& s) {
  const int64_t moe_layers = (s.end_layer - s.first_layer) - DenseLayersIn(m, s.first_layer, s.end_layer);
  const int64_t depth = s.head ? m.num_nextn_predict_layers : 0;
  const int64_t mtp_moe =
      depth - DenseLayersIn(m, m.num_hidden_layers, SaturatingAdd(m.num_hidden_layers, depth));
  return Product(
      {SaturatingAdd(moe_layers, mtp_moe), s.local_experts, 3, m.hidden_size, m.moe_intermediate_size});
}

int64_t MemoryNeed::total() const { return Sum({parameters, gradients, optimizer, activations}); }

std::string FormatBytes(int64_t bytes) {
  if (bytes >= kSaturatedBytes) return absl::StrCat("more than ", kSaturatedBytes, " bytes (8 EiB)");
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(bytes, " bytes") : absl::StrFormat("%d bytes (%.1f %s)", bytes, v, units[u]);
}

std::string MemoryNeed::Describe() const {
  auto short_bytes = [](int64_t b) {
    return b >= kSaturatedBytes ? std::string("> 8 EiB") : absl::StrFormat("%.3g", static_cast<double>(b));
  };
  return absl::StrCat(FormatBytes(total()), ": parameters ", short_bytes(parameters), ", gradients ",
                      short_bytes(gradients), ", optimizer moments ", short_bytes(optimizer),
                      ", activations ", short_bytes(activations), " (est.)");
}

MemoryNeed EstimateRankMemory(const Recipe& recipe, const MeshLayout& layout, int rank, bool device) {
  const ModelConfig& m = recipe.model;
  const std::vector<RankSlice> slices = SlicesOfRank(recipe, layout, rank);
  int64_t elements = 0, expert_elements = 0;
  for (const RankSlice& s : slices) {
    elements = SaturatingAdd(elements, SliceParameterElements(m, s));
    expert_elements = SaturatingAdd(expert_elements, SliceRoutedExpertElements(m, s));
  }
  MemoryNeed need;
  const int64_t width = ParameterWidth(recipe, device);
  need.gradients = SaturatingMul(elements, width);
  // On the GPU the bf16 compute copy sits beside the f32 values.
  need.parameters = SaturatingMul(elements, width + (device && recipe.train.dtype == "bf16" ? 2 : 0));
  if (recipe.train.device == "cuda" && !device) return need;  // the host only builds the model
  const int64_t moment = recipe.optim.moment_dtype == "bf16" ? 2 : 4;
  // ZeRO-1: the replicated parameters' moments sharded over dp, the routed experts' over edp.
  const int64_t shard =
      SaturatingAdd((elements - expert_elements) / layout.dp(), expert_elements / layout.edp());
  need.optimizer = SaturatingMul(SaturatingAdd(shard, 1), 2 * moment);
  auto chunk_per_token = [&](const RankSlice& s) {
    const int64_t layers = s.end_layer - s.first_layer;
    const int64_t dense = DenseLayersIn(m, s.first_layer, s.end_layer);
    int64_t per_token = Sum({Product({dense, BlockActivationElements(m, false)}),
                             Product({layers - dense, BlockActivationElements(m, true)})});
    if (s.head) {
      const int64_t depth = m.num_nextn_predict_layers;
      per_token = Sum({per_token, HeadActivationElements(m),
                       Product({depth, Sum({Product({4, m.hidden_size}), BlockActivationElements(m, true),
                                            HeadActivationElements(m)})})});
    }
    return per_token;
  };
  const RankSlice& first = slices.front();
  int64_t per_token = chunk_per_token(first);
  // 1F1B and ZB-H1 keep pp - stage micro-batches in flight on a stage (fewer when there are fewer).
  int64_t in_flight = std::min<int64_t>(layout.pp() - first.stage, recipe.parallel.micro_batches);
  if (slices.size() == 2) {
    // DualPipe and DualPipeV hold up to pp + 1 chunk-micro-batches (the DeepSeek-V3 report's table), counted
    // at the lighter chunk's activations: a floor, like the rest.
    per_token = std::min(per_token, chunk_per_token(slices[1]));
    in_flight = std::min<int64_t>(layout.pp() + 1, recipe.parallel.micro_batches);
  }
  need.activations = Product({per_token, recipe.train.micro_batch_size, recipe.train.seq_len, in_flight,
                              ActivationWidth(recipe, device)});
  return need;
}

absl::Status CheckNodeHostMemory(const Recipe& recipe, const MeshLayout& layout, int rank, int local_rank,
                                 int local_size, int64_t available_bytes) {
  const int first = local_size >= 1 ? std::max(0, rank - local_rank) : rank;
  const int last = local_size >= 1 ? std::min(layout.world(), first + local_size) : rank + 1;
  int64_t node = 0;
  for (int r = first; r < last; ++r)
    node = SaturatingAdd(node, EstimateRankMemory(recipe, layout, r, false).total());
  if (node <= available_bytes) return absl::OkStatus();
  const MemoryNeed mine = EstimateRankMemory(recipe, layout, rank, false);
  std::string out = absl::StrCat(
      recipe.path, ": the recipe needs more host memory than this machine has: rank ", rank,
      " (pipeline stage ", layout.Coord(rank).pp_rank, " of ", layout.pp(), ") needs ", mine.Describe());
  if (last - first > 1)
    absl::StrAppend(&out, "; the ", last - first, " ranks on its node need ", FormatBytes(node));
  absl::StrAppend(&out, "; available: ", FormatBytes(available_bytes), " (MemAvailable, /proc/meminfo); ",
                  Knobs());
  return absl::ResourceExhaustedError(out);
}

absl::Status CheckRankDeviceMemory(const Recipe& recipe, const MeshLayout& layout, int rank,
                                   int64_t free_bytes) {
  const MemoryNeed need = EstimateRankMemory(recipe, layout, rank, true);
  if (need.total() <= free_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      recipe.path, ": the recipe needs more GPU memory than the device has: rank ", rank, " (pipeline stage ",
      layout.Coord(rank).pp_rank, " of ", layout.pp(), ") needs ", need.Describe(),
      "; free on its GPU: ", FormatBytes(free_bytes), " (cudaMemGetInfo); ", Knobs()));
}

absl::StatusOr<int64_t> HostMemoryAvailable() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key, unit;
    int64_t value = 0;
    if (fields >> key >> value >> unit && key == "MemAvailable:" && unit == "kB") {
      return SaturatingMul(value, 1024);
    }
  }
  return absl::FailedPreconditionError("cannot read MemAvailable from /proc/meminfo");
}

absl::Status CheckMemory(const Recipe& recipe, const MeshLayout& layout, Communicator& world, int local_rank,
                         int local_size) {
  const int rank = world.rank();
  absl::Status mine;
  // Without /proc/meminfo (not Linux) there is nothing to compare with: the host check is skipped.
  if (absl::StatusOr<int64_t> available = HostMemoryAvailable(); available.ok()) {
    mine = CheckNodeHostMemory(recipe, layout, rank, local_rank, local_size, *available);
  }
#ifdef FATHOM_WITH_CUDA
  const int devices = cuda::DeviceCount();
  if (mine.ok() && recipe.train.device == "cuda" && devices > 0) {
    // The GPU this rank will use (NcclCommunicator::DeviceForLocalRank's choice), before anything is on it.
    if (cudaSetDevice(local_rank % devices) == cudaSuccess) {
      mine = CheckRankDeviceMemory(recipe, layout, rank, static_cast<int64_t>(cuda::FreeDeviceMemory()));
    }
  }
#endif
  return AgreeOnStatus(world, mine);
}

}  // namespace fathom
