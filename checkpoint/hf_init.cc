#include "checkpoint/hf_init.h"

#include "checkpoint/hf_import.h"
#include "parallel/collective_status.h"
#include "parallel/zero.h"

namespace fathom {

absl::Status InitFromHfDirectory(const std::string& dir, StageRuntime& runtime) {
  const ParamTable& table = runtime.model().params();
  const ZeroOptimizer& zero = runtime.optimizer();
  absl::Status local = absl::OkStatus();
  for (ParamGroup g : {ParamGroup::kReplicated, ParamGroup::kExpert}) {
    const auto [begin, end] = zero.shard(g);
    if (begin == end || !local.ok()) continue;
    local = LoadHfDirectoryRange(dir, runtime.model().config(), table, begin, end,
                                 table.values().Rows(begin, end));
  }
  if (absl::Status s = AgreeOnStatus(runtime.host_mesh().world(), local); !s.ok()) return s;
  runtime.SyncLoadedParameters();
  return absl::OkStatus();
}

}  // namespace fathom
