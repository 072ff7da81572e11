#include "parallel/chrome_trace.h"

#include "absl/strings/str_cat.h"
#include "framework/check.h"
#include "framework/file_io.h"
#include "nlohmann/json.hpp"

namespace fathom {
namespace {

constexpr int kComputeThread = 0;
constexpr int kCommThread = 1;
constexpr int kDataParallelThread = 2;

nlohmann::json Complete(const std::string& name, const std::string& cat, int pid, int tid, double start_s,
                        double dur_s, nlohmann::json args = nlohmann::json::object()) {
  return {{"name", name}, {"cat", cat},          {"ph", "X"},          {"pid", pid},
          {"tid", tid},   {"ts", start_s * 1e6}, {"dur", dur_s * 1e6}, {"args", std::move(args)}};
}

nlohmann::json Metadata(const std::string& what, int pid, int tid, const std::string& name) {
  return {{"name", what}, {"ph", "M"}, {"pid", pid}, {"tid", tid}, {"args", {{"name", name}}}};
}

}  // namespace

std::string ChromeTraceJson(const SimulationResult& res, const ClusterConfig& cluster) {
  const Schedule& s = res.schedule;
  FATHOM_CHECK(static_cast<int>(res.times.size()) == s.pp, "[chrome_trace] simulation has no times");
  nlohmann::json events = nlohmann::json::array();
  for (int r = 0; r < s.pp; ++r) {
    events.push_back(Metadata("process_name", r, 0, absl::StrCat("rank ", r)));
    events.push_back(
        {{"name", "process_sort_index"}, {"ph", "M"}, {"pid", r}, {"tid", 0}, {"args", {{"sort_index", r}}}});
    events.push_back(Metadata("thread_name", r, kComputeThread, "compute"));
    events.push_back(Metadata("thread_name", r, kCommThread, "all-to-all"));
    events.push_back(Metadata("thread_name", r, kDataParallelThread, "data parallel"));
    for (size_t i = 0; i < s.ranks[r].size(); ++i) {
      const Instruction& ins = s.ranks[r][i];
      const TimedInstruction& t = res.times[r][i];
      const StageCost& a = res.stages[s.ModelStage(r, ins.chunk)];
      nlohmann::json args = {
          {"micro_batch", ins.mb}, {"chunk", ins.chunk}, {"stage", s.ModelStage(r, ins.chunk)}};
      double comm = 0, comm_start = t.start;
      switch (ins.kind) {
        case OpKind::kF:
          comm = a.f_comm, comm_start = t.start + a.f;
          break;
        case OpKind::kB:
          comm = a.b_comm, comm_start = t.start + a.b;
          break;
        case OpKind::kBW:
          comm = a.b_comm, comm_start = t.start + a.b;
          break;
        case OpKind::kW:
          break;
        case OpKind::kFB: {
          const StageCost& b = res.stages[s.ModelStage(r, ins.chunk_b)];
          comm = a.f_comm + b.b_comm;  // overlapped with the pair's compute
          args["micro_batch_b"] = ins.mb_b;
          args["chunk_b"] = ins.chunk_b;
          break;
        }
      }
      events.push_back(
          Complete(TraceName(ins), OpKindName(ins.kind), r, kComputeThread, t.start, t.end - t.start, args));
      if (comm > 0) {
        events.push_back(
            Complete(absl::StrCat("a2a ", TraceName(ins)), "all-to-all", r, kCommThread, comm_start, comm));
      }
    }
    // The step tail of this rank: its gradient reduce-scatters end at grad_sync_end_s; optimizer and
    // all-gather follow once every rank's gradients are ready.
    const double ready = res.makespan_s + res.grad_sync_exposed_s;
    const double last = res.times[r].empty() ? 0.0 : res.times[r].back().end;
    if (res.grad_sync_end_s.size() == static_cast<size_t>(s.pp) && res.grad_sync_end_s[r] > last) {
      events.push_back(Complete("grad reduce-scatter (tail)", "data parallel", r, kDataParallelThread, last,
                                res.grad_sync_end_s[r] - last));
    }
    events.push_back(Complete("optimizer (AdamW, ZeRO-1 shard)", "data parallel", r, kDataParallelThread,
                              ready, res.optimizer_s));
    events.push_back(Complete("param all-gather", "data parallel", r, kDataParallelThread,
                              ready + res.optimizer_s, res.all_gather_s));
  }
  nlohmann::json doc = {{"traceEvents", std::move(events)},
                        {"displayTimeUnit", "ms"},
                        {"otherData",
                         {{"plan", res.plan.Describe()},
                          {"cluster", cluster.name},
                          {"step_s", res.step_s},
                          {"bubble_fraction", res.bubble_fraction},
                          {"tokens_per_s_per_gpu", res.tokens_per_s_per_gpu}}}};
  return doc.dump();
}

absl::Status WriteChromeTrace(const SimulationResult& result, const ClusterConfig& cluster,
                              const std::string& path) {
  // framework/file_io.h: replaces only a regular file (or creates one), through a temporary renamed over it.
  if (absl::Status s = WriteFileAtomically(path, ChromeTraceJson(result, cluster)); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("--trace: ", s.message()));
  }
  return absl::OkStatus();
}

}  // namespace fathom
