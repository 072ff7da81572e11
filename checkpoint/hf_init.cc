#include "checkpoint/hf_init.h"

#include "checkpoint/hf_import.h"
#include "parallel/collective_status.h"
#include "parallel/zero.h"

namespace fathom {

absl::Status InitFromHfDirectory(const std::string& dir, StageRuntime& runtime) {
  Communicator& world = runtime.host_mesh().world();
  // Copies that differ from the shared embedding/head would be lost without a word (one rank reads them).
  absl::Status copies =
      world.rank() == 0 ? CheckHfMtpCopies(dir, runtime.model(0).config()) : absl::OkStatus();
  if (absl::Status s = AgreeOnStatus(world, copies); !s.ok()) return s;
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
  if (absl::Status s = AgreeOnStatus(world, local); !s.ok()) return s;
  runtime.SyncLoadedParameters();
  return absl::OkStatus();
}

}  // namespace fathom
