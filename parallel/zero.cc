#include "parallel/zero.h"

#include <algorithm>
#include <cstring>

#include "optim/grad_clip.h"

namespace fathom {

ZeroOptimizer::ZeroOptimizer(ParamTable& table, const OptimConfig& cfg, Communicator& dp, Communicator& edp,
                             std::vector<std::pair<int64_t, int64_t>> exclude_from_norm)
    : table_(table), exclude_(std::move(exclude_from_norm)) {
  for (ParamGroup g : {ParamGroup::kReplicated, ParamGroup::kExpert}) {
    Shard& s = shards_[static_cast<int>(g)];
    s.comm = g == ParamGroup::kReplicated ? &dp : &edp;
    s.range = table.GroupRange(g);
    const int64_t len = s.range.second - s.range.first, n = s.comm->size();
    s.chunk = (len + n - 1) / n;
    const int64_t begin = std::min(s.range.first + s.comm->rank() * s.chunk, s.range.second);
    s.owned = {begin, std::min(begin + s.chunk, s.range.second)};
    if (s.owned.second > s.owned.first)
      s.adamw = std::make_unique<AdamW>(table, cfg, s.owned.first, s.owned.second);
  }
}

namespace {

// A (size * chunk) copy of flat[range], zero padded: the equal-chunk layout the collectives need.
Tensor Padded(const Tensor& flat, std::pair<int64_t, int64_t> range, int64_t total) {
  Tensor out = Tensor::Zeros({total}, flat.dtype());
  const size_t es = DTypeSize(flat.dtype());
  std::memcpy(out.raw(), static_cast<const char*>(flat.raw()) + range.first * es,
              static_cast<size_t>(range.second - range.first) * es);
  return out;
}

void CopyRange(const Tensor& dst, int64_t dst_offset, const Tensor& src, int64_t count) {
  const size_t es = DTypeSize(dst.dtype());
  if (count > 0)
    std::memcpy(static_cast<char*>(dst.raw()) + dst_offset * es, src.raw(), static_cast<size_t>(count) * es);
}

}  // namespace

void ZeroOptimizer::ReduceGradients() {
  for (Shard& s : shards_) {
    if (s.chunk == 0) continue;
    const int64_t n = s.comm->size();
    Tensor send = Padded(table_.grads(), s.range, n * s.chunk);
    Tensor recv = Tensor::Empty({s.chunk}, send.dtype());
    s.comm->ReduceScatter(send, recv, ReduceOp::kSum);
    CopyRange(table_.grads(), s.owned.first, recv, s.owned.second - s.owned.first);
  }
}

double ZeroOptimizer::LocalNormSquared() const {
  double total = 0;
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

void ZeroOptimizer::Step(double lr, double total_norm, double max_norm) {
  // Clipping scales the whole gradient buffer: only the owned shards are read by AdamW, so scaling the
  // stale remainder too is harmless and keeps the one clipping routine.
  ClipGradients(table_, max_norm, total_norm);
  for (Shard& s : shards_)
    if (s.adamw) s.adamw->Step(lr);
}

void ZeroOptimizer::GatherParameters() {
  for (Shard& s : shards_) {
    if (s.chunk == 0) continue;
    const int64_t n = s.comm->size();
    Tensor send = Tensor::Zeros({s.chunk}, table_.dtype());
    CopyRange(
        send, 0,
        Tensor::Wrap(static_cast<char*>(table_.values().raw()) + s.owned.first * DTypeSize(table_.dtype()),
                     {s.owned.second - s.owned.first}, table_.dtype(), Device::kCPU, nullptr),
        s.owned.second - s.owned.first);
    Tensor recv = Tensor::Empty({n * s.chunk}, table_.dtype());
    s.comm->AllGather(send, recv);
    CopyRange(table_.values(), s.range.first, recv, s.range.second - s.range.first);
  }
}

size_t ZeroOptimizer::state_bytes() const {
  size_t b = 0;
  for (const Shard& s : shards_)
    if (s.adamw) b += s.adamw->state_bytes();
  return b;
}

}  // namespace fathom
