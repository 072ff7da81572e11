// StageRuntime's step checks (parallel/stage_runtime.h): the data-parallel replicas' parameter checksums,
// the first non-finite gradient of the job, and the bit-flip test hook. stage_runtime.cc holds the rest.
#include <unistd.h>

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "framework/file_io.h"
#include "framework/ops.h"
#include "parallel/collective_status.h"
#include "parallel/stage_runtime.h"
#include "parallel/zero.h"

#ifdef FATHOM_WITH_CUDA
#include "framework/cuda/device_arena.h"
#endif

namespace fathom {

absl::Status StageRuntime::CheckReplicas() {
  if (hosts_.empty()) {
    // Once: every rank's host name (and GPU), for the messages.
    char host[256] = {0};
    ::gethostname(host, sizeof host - 1);
    std::string me = host;
#ifdef FATHOM_WITH_CUDA
    if (device_) me += absl::StrFormat(", GPU %d", cuda::CurrentDevice());
#endif
    std::vector<std::string> all = GatherStrings(mesh_.world(), me, 0);
    std::string joined;
    for (const std::string& h : all) joined += h + "\n";
    joined = BroadcastString(mesh_.world(), joined, 0);
    for (size_t at = 0, next; (next = joined.find('\n', at)) != std::string::npos; at = next + 1) {
      hosts_.push_back(joined.substr(at, next - at));
    }
  }
  // Every chunk against its replicas over the mesh's dp / edp groups (the same chunks in the same order
  // on every rank of a group). DualPipe's second copies of a stage are kept equal by identical updates and
  // are not compared across the rank pair here.
  std::string mismatch;
  for (const int c : ChunksByStage()) {
    const ParamTable& params = chunks_[c].model->params();
    const Tensor values =
        params.values().device() == Device::kCPU ? params.values() : ops::To(params.values(), Device::kCPU);
    for (const ParamGroup group : {ParamGroup::kReplicated, ParamGroup::kExpert}) {
      Communicator& comm = group == ParamGroup::kReplicated ? mesh_.dp() : mesh_.edp();
      const std::vector<int> members = group == ParamGroup::kReplicated
                                           ? mesh_.layout().DpGroup(mesh_.coord().rank)
                                           : mesh_.layout().EdpGroup(mesh_.coord().rank);
      std::vector<int> ids;
      for (int id = 0; id < params.size(); ++id) {
        if (params.spec(id).group == group) ids.push_back(id);
      }
      const int64_t n = static_cast<int64_t>(ids.size());
      Tensor mine = Tensor::Empty({std::max<int64_t>(n, 1)}, DType::kI64);
      mine.data<int64_t>()[0] = 0;
      for (int64_t i = 0; i < n; ++i) {
        const ParamSpec& spec = params.spec(ids[i]);
        const size_t bytes = static_cast<size_t>(NumElements(spec.shape)) * DTypeSize(values.dtype());
        mine.data<int64_t>()[i] =
            Crc32c(static_cast<const char*>(values.raw()) + spec.offset * DTypeSize(values.dtype()), bytes);
      }
      Tensor all = Tensor::Empty({comm.size() * mine.numel()}, DType::kI64);
      comm.AllGather(mine, all);
      for (int64_t i = 0; i < n && mismatch.empty(); ++i) {
        for (int r = 1; r < comm.size(); ++r) {
          if (all.data<int64_t>()[r * mine.numel() + i] == all.data<int64_t>()[i]) continue;
          const int a = members[0], b = members[static_cast<size_t>(r)];
          mismatch = absl::StrFormat(
              "silent data corruption: the replicas of %s differ (CRC-32C %08x on rank %d [%s], %08x on rank "
              "%d "
              "[%s]); stopping the job: check that node's GPU with `fathom diagnose`",
              params.spec(ids[i]).name, static_cast<uint32_t>(all.data<int64_t>()[i]), a, hosts_[a],
              static_cast<uint32_t>(all.data<int64_t>()[r * mine.numel() + i]), b, hosts_[b]);
          break;
        }
      }
    }
  }
  return AgreeOnStatus(mesh_.world(), mismatch.empty() ? absl::OkStatus() : absl::DataLossError(mismatch));
}

void StageRuntime::FlipOneParameterBitForTesting() {
  ParamTable& params = chunks_.front().model->params();
  // The middle element of the last replicated tensor this rank holds.
  for (int id = params.size() - 1; id >= 0; --id) {
    const ParamSpec& spec = params.spec(id);
    if (spec.group != ParamGroup::kReplicated) continue;
    Tensor v = params.value(id);
    Tensor host = v.device() == Device::kCPU ? v : ops::To(v, Device::kCPU);
    const int64_t i = host.numel() / 2;
    host.SetItem(i, -host.Item(i) + (host.Item(i) == 0 ? 1.0 : 0.0));  // a sign bit (or a zero made 1)
    if (v.device() != Device::kCPU) ops::Copy(v, host);
    return;
  }
}

std::string StageRuntime::FirstNonFiniteGradientOfJob() {
  std::string mine;
  for (const int c : ChunksByStage()) {
    if (!mine.empty()) break;
    const ParamTable& params = chunks_[c].model->params();
    // The failure path only: the whole gradient buffer comes to the host once. After the reduce-scatter
    // this rank's shards hold the sums and the rest its own gradients: a NaN of either shows.
    const Tensor grads =
        params.grads().device() == Device::kCPU ? params.grads() : ops::To(params.grads(), Device::kCPU);
    for (int id = 0; id < params.size() && mine.empty(); ++id) {
      const ParamSpec& spec = params.spec(id);
      const int64_t n = NumElements(spec.shape);
      for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(grads.Item(spec.offset + i))) {
          mine = absl::StrFormat("%s (rank %d)", spec.name, mesh_.coord().rank);
          break;
        }
      }
    }
  }
  // Ranks are ordered by pipeline stage: the first non-empty answer is the earliest layer's.
  std::string first;
  for (const std::string& s : GatherStrings(mesh_.world(), mine, 0)) {
    if (!s.empty()) {
      first = s;
      break;
    }
  }
  first = BroadcastString(mesh_.world(), first, 0);
  return first.empty() ? "no tensor of this step (the sum over ranks overflowed)" : first;
}

}  // namespace fathom
