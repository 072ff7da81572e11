#include "parallel/simulator_memory.h"

#include <algorithm>
#include <set>

namespace fathom {

std::vector<LiveState> LiveStates(const std::vector<Instruction>& program) {
  std::set<LiveState> seen;
  LiveState now;
  auto record = [&](int f, int b, int w, bool b_with_w = false) {
    LiveState st = now;
    st.f = f, st.b = b, st.w = w, st.b_with_w = b_with_w;
    seen.insert(st);
  };
  for (const Instruction& ins : program) {
    switch (ins.kind) {
      case OpKind::kF:
        record(ins.chunk, -1, -1);
        ++now.forwarded[ins.chunk];
        break;
      case OpKind::kB:
        --now.forwarded[ins.chunk];
        record(-1, ins.chunk, -1);
        ++now.backwarded[ins.chunk];
        break;
      case OpKind::kW:
        --now.backwarded[ins.chunk];
        record(-1, -1, ins.chunk);
        break;
      case OpKind::kBW:
        --now.forwarded[ins.chunk];
        record(-1, ins.chunk, -1, /*b_with_w=*/true);
        break;
      case OpKind::kFB:
        --now.forwarded[ins.chunk_b];
        record(ins.chunk, ins.chunk_b, -1, /*b_with_w=*/true);
        ++now.forwarded[ins.chunk];
        break;
    }
  }
  // Keep the states no other state with the same running passes dominates (every count at least as large).
  std::vector<LiveState> out;
  for (const LiveState& st : seen) {
    bool dominated = false;
    for (const LiveState& o : seen) {
      if (&o == &st || o.f != st.f || o.b != st.b || o.w != st.w || o.b_with_w != st.b_with_w) continue;
      bool ge = true;
      for (int c = 0; c < 2; ++c)
        ge = ge && o.forwarded[c] >= st.forwarded[c] && o.backwarded[c] >= st.backwarded[c];
      if (ge && o != st) {
        dominated = true;
        break;
      }
    }
    if (!dominated) out.push_back(st);
  }
  return out;
}

LiveProfile LiveCounts(const Schedule& s) {
  LiveProfile out(s.pp);
  for (int r = 0; r < s.pp; ++r) out[r] = LiveStates(s.ranks[r]);
  return out;
}

double LiveBytes(const LiveState& st, const std::array<ActivationBytes, 2>& chunk) {
  double bytes = 0;
  for (int c = 0; c < 2; ++c) {
    bytes += st.forwarded[c] * chunk[c].held_f + st.backwarded[c] * chunk[c].held_b;
  }
  if (st.f >= 0) bytes += chunk[st.f].peak_f;
  if (st.b >= 0) bytes += st.b_with_w ? chunk[st.b].peak_bw : chunk[st.b].peak_b;
  if (st.w >= 0) bytes += chunk[st.w].held_b;  // W frees what B left as it goes
  return bytes;
}

double ActivationPeak(const std::vector<LiveState>& states, const std::array<ActivationBytes, 2>& chunk) {
  double peak = 0;
  for (const LiveState& st : states) peak = std::max(peak, LiveBytes(st, chunk));
  return peak;
}

ReplicaGroups Replicas(const ParallelPlan& plan, int64_t dp) {
  const int64_t copies = plan.schedule == ScheduleKind::kDualPipe ? 2 : 1;
  return {dp * copies, dp / plan.ep * copies};
}

RankMemory MemoryOfRank(const Schedule& s, const LiveProfile& live, const std::vector<StageCost>& stages,
                        int r, const PrecisionPolicy& p, const ReplicaGroups& groups,
                        const ClusterConfig& cluster) {
  RankMemory mem;
  std::array<ActivationBytes, 2> chunk_bytes;
  for (int chunk = 0; chunk < s.chunks(); ++chunk) {
    const StageCost& st = stages[s.ModelStage(r, chunk)];
    const ParameterStateBytes dense =
        ParameterState(static_cast<double>(st.params_replicated), p, static_cast<double>(groups.dense));
    const ParameterStateBytes expert =
        ParameterState(static_cast<double>(st.params_expert), p, static_cast<double>(groups.expert));
    mem.params += dense.params + expert.params;
    mem.grads += dense.grads + expert.grads;
    mem.optimizer += dense.optimizer + expert.optimizer;
    chunk_bytes[static_cast<size_t>(chunk)] = st.activations;
  }
  mem.activations = ActivationPeak(live[r], chunk_bytes);
  mem.estimate_error = cluster.EstimateError() * mem.activations;
  mem.fragmentation = cluster.Fragmentation() * mem.activations;
  return mem;
}

}  // namespace fathom
