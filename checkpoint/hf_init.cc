#include "checkpoint/hf_init.h"

#include "checkpoint/hf_import.h"
#include "parallel/collective_status.h"
#include "parallel/zero.h"

namespace fathom {

absl::Status InitFromHfDirectory(const std::string& dir, StageRuntime& runtime) {
  absl::Status local = absl::OkStatus();
  // DualPipe ranks hold two chunks (two model stages); each loads its own shards.
  for (int chunk = 0; chunk < runtime.num_chunks() && local.ok(); ++chunk) {
    Model& model = runtime.model(chunk);
    const ParamTable& table = model.params();
    const ZeroOptimizer& zero = runtime.optimizer(chunk);
    for (ParamGroup g : {ParamGroup::kReplicated, ParamGroup::kExpert}) {
      const auto [begin, end] = zero.shard(g);
      if (begin == end || !local.ok()) continue;
      local = LoadHfDirectoryRange(dir, model.config(), table, begin, end, table.values().Rows(begin, end));
    }
  }
  if (absl::Status s = AgreeOnStatus(runtime.host_mesh().world(), local); !s.ok()) return s;
  runtime.SyncLoadedParameters();
  return absl::OkStatus();
}

}  // namespace fathom
