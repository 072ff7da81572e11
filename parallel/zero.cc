#include "parallel/zero.h"

#include <algorithm>
#include <cmath>

#include "framework/ops.h"
#include "optim/grad_clip.h"

#ifdef FATHOM_WITH_CUDA
#include "framework/cuda/device_arena.h"
#include "optim/cuda/device_adamw.h"
#include "parallel/cuda/nccl_communicator.h"
#endif

namespace fathom {

#ifdef FATHOM_WITH_CUDA
struct ZeroOptimizer::DeviceState {
  std::unique_ptr<DeviceAdamW> adamw[2];  // per group; null when this rank's shard is empty
  int64_t first_term[2] = {0, 0};         // where each optimizer's norm terms start in `terms`
  std::unique_ptr<cuda::DeviceArena> arena;
  Tensor terms;  // (every optimizer's norm_terms()) f64 on the GPU: one copy to the host per step
};
#else
struct ZeroOptimizer::DeviceState {};
#endif

namespace {

// Elements [begin, begin + count) of a flat buffer: a view sharing its memory, on its device.
Tensor Slice(const Tensor& flat, int64_t begin, int64_t count) { return flat.Rows(begin, begin + count); }

#ifdef FATHOM_WITH_CUDA
// Device work runs on the current OpContext's stream, like every op of framework/ops.h.
cuda::Stream DeviceStream(const char* op) {
  const ops::OpContext* ctx = ops::CurrentOpContext();
  FATHOM_CHECK(ctx != nullptr, "[zero] ", op,
               " on a CUDA parameter table needs a current ops::OpContext (framework/ops.h): its stream runs "
               "the optimizer's kernels and copies");
  return ctx->stream();
}
#endif

// A (total) copy of flat[range], zero padded: the equal-chunk layout of the collectives when the range is
// shorter than the chunks.
Tensor Padded(const Tensor& flat, std::pair<int64_t, int64_t> range, int64_t total) {
  const int64_t len = range.second - range.first;
  Tensor out = Tensor::Empty({total}, flat.dtype(), flat.device());
  if (len > 0) ops::Copy(out.Rows(0, len), Slice(flat, range.first, len));
  if (total > len) ops::Zero(out.Rows(len, total));
  return out;
}

// The equal-chunk layout: ceil(range / group size) elements per rank.
int64_t ChunkElements(std::pair<int64_t, int64_t> range, int group_size) {
  return (range.second - range.first + group_size - 1) / group_size;
}

}  // namespace

int64_t ZeroOptimizer::MaxShardElements(const ParamTable& table, int dp_size, int edp_size) {
  return ChunkElements(table.GroupRange(ParamGroup::kReplicated), dp_size) +
         ChunkElements(table.GroupRange(ParamGroup::kExpert), edp_size);
}

ZeroOptimizer::ZeroOptimizer(ParamTable& table, const OptimConfig& cfg, Communicator& dp, Communicator& edp,
                             std::vector<std::pair<int64_t, int64_t>> exclude_from_norm)
    : table_(table), exclude_(std::move(exclude_from_norm)) {
  const bool on_device = table.device() == Device::kCUDA;
  for (ParamGroup g : {ParamGroup::kReplicated, ParamGroup::kExpert}) {
    Shard& s = shards_[static_cast<int>(g)];
    s.comm = g == ParamGroup::kReplicated ? &dp : &edp;
    s.range = table.GroupRange(g);
    s.chunk = ChunkElements(s.range, s.comm->size());
    const int64_t begin = std::min(s.range.first + s.comm->rank() * s.chunk, s.range.second);
    s.owned = {begin, std::min(begin + s.chunk, s.range.second)};
    if (s.owned.second > s.owned.first && !on_device)
      s.adamw = std::make_unique<AdamW>(table, cfg, s.owned.first, s.owned.second);
  }
  if (!on_device) return;
#ifdef FATHOM_WITH_CUDA
  device_ = std::make_unique<DeviceState>();
  int64_t terms = 0;
  for (int g = 0; g < 2; ++g) {
    const Shard& s = shards_[g];
    if (s.owned.second <= s.owned.first) continue;
    device_->adamw[g] = std::make_unique<DeviceAdamW>(table, cfg, s.owned.first, s.owned.second, exclude_);
    device_->first_term[g] = terms;
    terms += device_->adamw[g]->norm_terms();
  }
  device_->arena = std::make_unique<cuda::DeviceArena>("zero-1 norm terms",
                                                       static_cast<size_t>(terms) * sizeof(double) + 256);
  device_->terms = device_->arena->Alloc({terms}, DType::kF64);
#else
  FATHOM_CHECK(false,
               "[zero] the parameter table is on the GPU, but this build has no CUDA backend (configure "
               "with nvcc present or -DFATHOM_CUDA=ON)");
#endif
}

ZeroOptimizer::~ZeroOptimizer() = default;

void ZeroOptimizer::ReduceGradients() {
  const Tensor grads = table_.grads();
  for (Shard& s : shards_) {
    const int64_t n = s.comm->size();
    // A group of one: the shard is the whole range and its gradients are already the sums.
    if (s.chunk == 0 || n == 1) continue;
#ifdef FATHOM_WITH_CUDA
    if (device_) CheckOnComputeStream(*s.comm, "zero reduce_gradients");
#endif
    // When the equal chunks cover the range exactly (a group size that divides it: every power of two up to
    // 16, since ParamTable aligns its tensors to 16 elements) the grads buffer itself is sent, so the GPU
    // holds no second copy of the gradients; otherwise a zero-padded copy.
    const int64_t len = s.range.second - s.range.first;
    Tensor send = len == n * s.chunk ? Slice(grads, s.range.first, len) : Padded(grads, s.range, n * s.chunk);
    Tensor recv = Tensor::Empty({s.chunk}, grads.dtype(), grads.device());
    s.comm->ReduceScatter(send, recv, ReduceOp::kSum);
    const int64_t owned = s.owned.second - s.owned.first;
    if (owned > 0) ops::Copy(Slice(grads, s.owned.first, owned), recv.Rows(0, owned));
  }
}

double ZeroOptimizer::LocalNormSquared() const {
  double total = 0;
  if (!device_) {
    for (const Shard& s : shards_) {
      if (s.owned.second <= s.owned.first) continue;
      total += GradNormSquared(table_, s.owned.first, s.owned.second);
      for (auto [b, e] : exclude_) {
        int64_t lo = std::max(b, s.owned.first), hi = std::min(e, s.owned.second);
        if (hi > lo) total -= GradNormSquared(table_, lo, hi);
      }
    }
    return total;
  }
#ifdef FATHOM_WITH_CUDA
  const DeviceState& d = *device_;
  if (d.terms.numel() == 0) return 0.0;  // no shard on this rank
  cuda::Stream stream = DeviceStream("local_norm_squared");
  for (int g = 0; g < 2; ++g) {
    if (!d.adamw[g]) continue;
    d.adamw[g]->QueueGradNormTerms(d.terms.Rows(d.first_term[g], d.first_term[g] + d.adamw[g]->norm_terms()),
                                   stream);
  }
  // The host is about to wait for the compute stream, which waits for the reduce-scatters: wait for those
  // through the communicators first, so that a dead or stuck peer ends the job with their message.
  for (const Shard& s : shards_) {
    if (auto* nccl = dynamic_cast<NcclCommunicator*>(s.comm)) nccl->Synchronize();
  }
  const Tensor host = ops::To(d.terms, Device::kCPU);  // SYNC POINT: the step's one copy of the norm
  const double* t = host.data<double>();
  // The CPU's order: per shard, add its norm^2, then subtract its excluded parts.
  for (int g = 0; g < 2; ++g) {
    if (!d.adamw[g]) continue;
    total += t[d.first_term[g]];
    for (int64_t k = 1; k < d.adamw[g]->norm_terms(); ++k) total -= t[d.first_term[g] + k];
  }
#endif
  return total;
}

void ZeroOptimizer::Step(double lr, double total_norm, double max_norm) {
  if (!device_) {
    // Clipping scales the whole gradient buffer: only the owned shards are read by AdamW, so scaling the
    // stale remainder too is harmless and keeps the one clipping routine.
    ClipGradients(table_, max_norm, total_norm);
    for (Shard& s : shards_)
      if (s.adamw) s.adamw->Step(lr);
    return;
  }
#ifdef FATHOM_WITH_CUDA
  // ClipGradients' factor, applied inside the fused pass as the gradients are read (only the owned shards:
  // AdamW reads nothing else, and the rest of the grads buffer is overwritten by the next step's backward).
  const double scale = ClipScale(max_norm, total_norm);
  cuda::Stream stream = DeviceStream("step");
  // When this rank owns every range (groups of one), the pass also leaves the compute copy fresh and the
  // table skips its own refresh; otherwise GatherParameters brings other ranks' values, so the refresh must
  // cover everything afterwards. The gradients are not zeroed here: ParamTable::ZeroGrads zeroes lazily,
  // and the routed experts' gradients (most of the table) are overwritten by their first writer instead.
  const bool whole_table = OwnsWholeTable();
  const bool refresh = whole_table && table_.compute_values().defined();
  for (std::unique_ptr<DeviceAdamW>& adamw : device_->adamw) {
    if (adamw) adamw->FusedStep(lr, scale, refresh, stream);
  }
  if (refresh) table_.MarkComputeValuesRefreshed();
#endif
}

bool ZeroOptimizer::OwnsWholeTable() const {
  for (const Shard& s : shards_)
    if (s.owned != s.range) return false;
  return true;
}

OptimizerTraffic ZeroOptimizer::StepTraffic(const ParamTable& table, const OptimConfig& cfg, int dp_size,
                                            int edp_size) {
  const double moment = cfg.moment_dtype == "bf16" ? 2.0 : 4.0;
  const bool compute_copy = table.compute_values().defined();
  OptimizerTraffic t;
  for (ParamGroup g : {ParamGroup::kReplicated, ParamGroup::kExpert}) {
    const auto range = table.GroupRange(g);
    const int size = g == ParamGroup::kReplicated ? dp_size : edp_size;
    // Trainable elements of the largest shard (the first), which bounds the step's time.
    const int64_t chunk = ChunkElements(range, size);
    for (const ParamSpec& s : table.specs()) {
      if (!s.trainable) continue;
      const int64_t lo = std::max(range.first, s.offset),
                    hi = std::min(range.first + chunk, s.offset + NumElements(s.shape));
      if (hi > lo) t.elements += hi - lo;
    }
  }
  const bool whole_table = dp_size == 1 && edp_size == 1;
  const double e = static_cast<double>(t.elements);
  // The norm reads the gradients; the fused pass reads gradient, value, moments and writes value, moments,
  // and (whole table) the compute copy. Gradients are zeroed outside the optimizer (lazily, see
  // ParamTable::ZeroGrads), not counted here.
  t.bytes = e * (4.0 + (4.0 + 4.0 + 2.0 * moment) + (4.0 + 2.0 * moment));
  // FP8 weights (every one on this rank, the table's refresh quantises them all): no compute copy is kept
  // for them, and the refresh reads their values and writes both e4m3 copies (scales not counted).
  int64_t fp8_elements = 0;
  for (int id = 0; id < table.size(); ++id) {
    const ParamSpec& s = table.spec(id);
    if (!s.trainable || !table.fp8(id)) continue;
    fp8_elements += NumElements(s.shape);
  }
  t.bytes += static_cast<double>(fp8_elements) * (4.0 + 2.0);
  if (whole_table) {  // one rank owns every shard: the pass refreshes the copy of all but the FP8 weights
    t.bytes += (e - static_cast<double>(fp8_elements)) * (compute_copy ? 2.0 : 0.0);
  } else if (compute_copy) {
    // RefreshComputeValues converts the whole table afterwards.
    t.bytes += static_cast<double>(table.numel()) * (4.0 + 2.0);
  }
  return t;
}

void ZeroOptimizer::GatherParameters() {
  const Tensor values = table_.values();
  for (Shard& s : shards_) {
    const int64_t n = s.comm->size();
    if (s.chunk == 0 || n == 1) continue;  // a group of one already holds its whole range
#ifdef FATHOM_WITH_CUDA
    if (device_) CheckOnComputeStream(*s.comm, "zero gather_parameters");
#endif
    const int64_t owned = s.owned.second - s.owned.first, len = s.range.second - s.range.first;
    // A full shard is sent from the values buffer itself; a short (last) one is zero padded.
    Tensor send = owned == s.chunk ? Slice(values, s.owned.first, owned) : Padded(values, s.owned, s.chunk);
    Tensor recv = Tensor::Empty({n * s.chunk}, values.dtype(), values.device());
    s.comm->AllGather(send, recv);
    ops::Copy(Slice(values, s.range.first, len), recv.Rows(0, len));
  }
}

ZeroOptimizer::MomentViews ZeroOptimizer::moments(ParamGroup group) const {
  const int g = static_cast<int>(group);
  if (shards_[g].adamw) return {shards_[g].adamw->exp_avg(), shards_[g].adamw->exp_avg_sq()};
#ifdef FATHOM_WITH_CUDA
  if (device_ && device_->adamw[g]) return {device_->adamw[g]->exp_avg(), device_->adamw[g]->exp_avg_sq()};
#endif
  return {};
}

int64_t ZeroOptimizer::step() const {
  for (const Shard& s : shards_)
    if (s.adamw) return s.adamw->step();
#ifdef FATHOM_WITH_CUDA
  if (device_) {
    for (const std::unique_ptr<DeviceAdamW>& adamw : device_->adamw)
      if (adamw) return adamw->step();
  }
#endif
  return restored_step_;  // no shard on this rank: the step it was told
}

void ZeroOptimizer::set_step(int64_t step) {
  FATHOM_CHECK(step >= 0, "[zero] step ", step);
  restored_step_ = step;
  for (Shard& s : shards_)
    if (s.adamw) s.adamw->set_step(step);
#ifdef FATHOM_WITH_CUDA
  if (device_) {
    for (std::unique_ptr<DeviceAdamW>& adamw : device_->adamw)
      if (adamw) adamw->set_step(step);
  }
#endif
}

size_t ZeroOptimizer::state_bytes() const {
  size_t b = 0;
  for (const Shard& s : shards_)
    if (s.adamw) b += s.adamw->state_bytes();
#ifdef FATHOM_WITH_CUDA
  if (device_) {
    for (const std::unique_ptr<DeviceAdamW>& adamw : device_->adamw)
      if (adamw) b += adamw->state_bytes();
  }
#endif
  return b;
}

}  // namespace fathom
