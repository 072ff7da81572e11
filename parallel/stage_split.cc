#include "parallel/stage_split.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "layers/cost.h"
#include "parallel/schedule.h"

namespace fathom {

absl::StatusOr<std::vector<int64_t>> SplitStages(const ModelConfig& model, const ParallelConfig& parallel,
                                                 int64_t seq_len) {
  absl::StatusOr<ScheduleKind> kind = ParseScheduleKind(parallel.schedule);
  if (!kind.ok()) return kind.status();
  // "pp" below counts model stages: the pipeline ranks, or twice as many for DualPipeV's V.
  const int64_t pp = NumStages(*kind, static_cast<int>(parallel.pp)), layers = model.num_hidden_layers;
  const std::string stages_name = pp == parallel.pp ? "parallel.pp" : "2 * parallel.pp";
  if (pp < 1 || pp > layers) {
    return absl::InvalidArgumentError(absl::StrCat(stages_name, " (", pp, ") must be between 1 and ",
                                                   "model.num_hidden_layers (", layers,
                                                   "): every stage needs a layer"));
  }
  if (!parallel.stage_layers.empty()) {
    int64_t sum = 0;
    for (int64_t n : parallel.stage_layers) sum += n;
    if (static_cast<int64_t>(parallel.stage_layers.size()) != pp || sum != layers ||
        *std::min_element(parallel.stage_layers.begin(), parallel.stage_layers.end()) < 1) {
      return absl::InvalidArgumentError(absl::StrCat("parallel.stage_layers must have ", stages_name, " (",
                                                     pp, ") entries, each >= 1, summing to ",
                                                     "model.num_hidden_layers (", layers, ")"));
    }
    return parallel.stage_layers;
  }
  std::vector<double> cost(static_cast<size_t>(layers), 0.0);
  double first_extra = 0, last_extra = 0;
  for (const NodeCost& n : BuildCostGraph(model, seq_len)) {
    switch (n.kind) {
      case NodeKind::kEmbedding:
        first_extra += n.forward_flops();
        break;
      case NodeKind::kHead:
      case NodeKind::kMtp:
        last_extra += n.forward_flops();
        break;
      default:
        cost[static_cast<size_t>(n.layer)] = n.forward_flops();
        break;
    }
  }
  // best[s][l]: the smallest possible maximum stage cost when stages 0..s-1 hold layers 0..l-1.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(pp + 1, std::vector<double>(layers + 1, inf));
  std::vector<std::vector<int64_t>> cut(pp + 1, std::vector<int64_t>(layers + 1, -1));
  best[0][0] = 0;
  for (int64_t s = 1; s <= pp; ++s) {
    for (int64_t l = s; l <= layers - (pp - s); ++l) {
      for (int64_t k = s - 1; k < l; ++k) {
        if (best[s - 1][k] == inf) continue;
        double c = 0;
        for (int64_t i = k; i < l; ++i) c += cost[i];
        if (s == 1) c += first_extra;
        if (s == pp) c += last_extra;
        double worst = std::max(best[s - 1][k], c);
        if (worst < best[s][l]) best[s][l] = worst, cut[s][l] = k;
      }
    }
  }
  std::vector<int64_t> out(static_cast<size_t>(pp));
  for (int64_t s = pp, l = layers; s >= 1; --s) {
    out[s - 1] = l - cut[s][l];
    l = cut[s][l];
  }
  return out;
}

}  // namespace fathom
