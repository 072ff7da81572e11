#include "parallel/simulator_memory.h"

#include <algorithm>

namespace fathom {

LiveProfile LiveCounts(const Schedule& s) {
  LiveProfile out(s.pp);
  for (int r = 0; r < s.pp; ++r) {
    std::array<int, 2> live = {0, 0};
    std::vector<std::array<int, 2>> seen;
    auto record = [&] {
      for (const auto& v : seen) {
        if (v[0] >= live[0] && v[1] >= live[1]) return;
      }
      std::erase_if(seen, [&](const std::array<int, 2>& v) { return v[0] <= live[0] && v[1] <= live[1]; });
      seen.push_back(live);
    };
    for (const Instruction& ins : s.ranks[r]) {
      switch (ins.kind) {
        case OpKind::kF:
          ++live[ins.chunk];
          break;
        case OpKind::kB:
          break;
        case OpKind::kW:
        case OpKind::kBW:
          --live[ins.chunk];
          break;
        case OpKind::kFB:
          ++live[ins.chunk];
          record();
          --live[ins.chunk_b];
          break;
      }
      record();
    }
    out[r] = std::move(seen);
  }
  return out;
}

ReplicaGroups Replicas(const ParallelPlan& plan, int64_t dp) {
  const int64_t copies = plan.schedule == ScheduleKind::kDualPipe ? 2 : 1;
  return {dp * copies, dp / plan.ep * copies};
}

RankMemory MemoryOfRank(const Schedule& s, const LiveProfile& live, const std::vector<StageCost>& stages,
                        int r, const PrecisionPolicy& p, const ReplicaGroups& groups) {
  RankMemory mem;
  double transient = 0;
  for (int chunk = 0; chunk < s.chunks(); ++chunk) {
    const StageCost& st = stages[s.ModelStage(r, chunk)];
    const ParameterStateBytes dense =
        ParameterState(static_cast<double>(st.params_replicated), p, static_cast<double>(groups.dense));
    const ParameterStateBytes expert =
        ParameterState(static_cast<double>(st.params_expert), p, static_cast<double>(groups.expert));
    mem.params += dense.params + expert.params;
    mem.grads += dense.grads + expert.grads;
    mem.optimizer += dense.optimizer + expert.optimizer;
    transient += st.transient_bytes;
  }
  double peak = 0;
  for (const auto& v : live[r]) {
    double bytes = 0;
    for (int chunk = 0; chunk < s.chunks(); ++chunk)
      bytes += v[chunk] * stages[s.ModelStage(r, chunk)].activation_bytes;
    peak = std::max(peak, bytes);
  }
  mem.activations = peak + transient;
  return mem;
}

}  // namespace fathom
