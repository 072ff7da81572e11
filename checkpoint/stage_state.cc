#include "checkpoint/stage_state.h"

#include "checkpoint/checkpoint_index.h"
#include "checkpoint/param_slices.h"
#include "framework/ops.h"
#include "parallel/collective_status.h"
#include "parallel/zero.h"

namespace fathom {
namespace {

constexpr ParamGroup kGroups[] = {ParamGroup::kReplicated, ParamGroup::kExpert};

// The values buffer's elements [begin, end): a view on the table's device.
Tensor ValuesRange(const ParamTable& table, int64_t begin, int64_t end) {
  return table.values().Rows(begin, end);
}

// Reads `pieces` of `kind` into `dst` (flat: table elements [begin, begin + dst.numel())), through a host
// buffer when `dst` lives on the GPU.
absl::Status ReadInto(CheckpointReader& reader, const std::string& kind,
                      const std::vector<TensorPiece>& pieces, const Tensor& dst, int64_t begin) {
  if (dst.device() == Device::kCPU) return reader.ReadPieces(kind, pieces, dst, begin);
  Tensor host = Tensor::Empty(dst.shape(), dst.dtype());
  ops::Copy(host, dst);  // elements no piece covers (padding) keep their values
  if (absl::Status s = reader.ReadPieces(kind, pieces, host, begin); !s.ok()) return s;
  ops::Copy(dst, host);
  return absl::OkStatus();
}

bool HasKind(const CheckpointReader& reader, const std::string& kind) {
  for (const auto& [name, record] : reader.index().tensors) {
    if (record.kinds.count(kind)) return true;
  }
  return false;
}

// One model chunk's shards (a rank holds two with DualPipe and DualPipeV; DualPipe's copies of a stage
// share their ZeRO groups, so each element of a stage is still owned, and written, once).
std::vector<ShardSource> ChunkSources(const ParamTable& table, const ZeroOptimizer& zero) {
  std::vector<ShardSource> sources;
  for (ParamGroup g : kGroups) {
    const auto [begin, end] = zero.shard(g);
    if (begin == end) continue;
    sources.push_back({kKindValue, TablePieces(table, begin, end), ValuesRange(table, begin, end), begin});
    const ZeroOptimizer::MomentViews m = zero.moments(g);
    if (!m.exp_avg.defined()) continue;
    const std::vector<TensorPiece> trainable = TablePieces(table, begin, end, PieceFilter::kTrainableOnly);
    sources.push_back({kKindAdamM, trainable, m.exp_avg, begin});
    sources.push_back({kKindAdamV, trainable, m.exp_avg_sq, begin});
  }
  return sources;
}

absl::Status RestoreChunk(CheckpointReader& reader, const ParamTable& table, ZeroOptimizer& zero,
                          bool with_moments) {
  absl::Status local = absl::OkStatus();
  for (ParamGroup g : kGroups) {
    const auto [begin, end] = zero.shard(g);
    if (begin == end || !local.ok()) continue;
    local =
        ReadInto(reader, kKindValue, TablePieces(table, begin, end), ValuesRange(table, begin, end), begin);
    const ZeroOptimizer::MomentViews m = zero.moments(g);
    if (!local.ok() || !with_moments || !m.exp_avg.defined()) continue;
    const std::vector<TensorPiece> trainable = TablePieces(table, begin, end, PieceFilter::kTrainableOnly);
    local = ReadInto(reader, kKindAdamM, trainable, m.exp_avg, begin);
    if (local.ok()) local = ReadInto(reader, kKindAdamV, trainable, m.exp_avg_sq, begin);
  }
  return local;
}

}  // namespace

std::vector<ShardSource> StageStateSources(StageRuntime& runtime) {
  std::vector<ShardSource> sources;
  for (int chunk = 0; chunk < runtime.num_chunks(); ++chunk) {
    std::vector<ShardSource> mine = ChunkSources(runtime.model(chunk).params(), runtime.optimizer(chunk));
    for (ShardSource& s : mine) sources.push_back(std::move(s));
  }
  return sources;
}

absl::Status RestoreStageState(CheckpointReader& reader, StageRuntime& runtime, int64_t adam_step,
                               bool* moments_loaded) {
  const bool with_moments = HasKind(reader, kKindAdamM) && HasKind(reader, kKindAdamV);
  absl::Status local = absl::OkStatus();
  for (int chunk = 0; chunk < runtime.num_chunks() && local.ok(); ++chunk) {
    local = RestoreChunk(reader, runtime.model(chunk).params(), runtime.optimizer(chunk), with_moments);
  }
  if (absl::Status s = AgreeOnStatus(runtime.host_mesh().world(), local); !s.ok()) return s;
  for (int chunk = 0; chunk < runtime.num_chunks(); ++chunk) {
    runtime.optimizer(chunk).set_step(with_moments ? adam_step : 0);
  }
  runtime.SyncLoadedParameters();
  *moments_loaded = with_moments;
  return absl::OkStatus();
}

}  // namespace fathom
