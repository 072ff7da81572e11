#include "parallel/schedule_validate.h"

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "framework/check.h"

namespace fathom {
namespace {

enum Part { kPartF = 0, kPartB = 1, kPartW = 2 };
const char* PartName(int part) { return part == kPartF ? "F" : (part == kPartB ? "B" : "W"); }

struct Location {
  int rank = -1;
  int index = -1;
};

// One part of an instruction: F, the input-gradient half of a backward, or the weight-gradient half.
struct InstructionPart {
  int part;
  int mb;
  int chunk;
};

std::vector<InstructionPart> PartsOf(const Instruction& ins) {
  switch (ins.kind) {
    case OpKind::kF:
      return {{kPartF, ins.mb, ins.chunk}};
    case OpKind::kB:
      return {{kPartB, ins.mb, ins.chunk}};
    case OpKind::kW:
      return {{kPartW, ins.mb, ins.chunk}};
    case OpKind::kBW:
      return {{kPartB, ins.mb, ins.chunk}, {kPartW, ins.mb, ins.chunk}};
    case OpKind::kFB:
      return {{kPartF, ins.mb, ins.chunk}, {kPartB, ins.mb_b, ins.chunk_b}, {kPartW, ins.mb_b, ins.chunk_b}};
  }
  return {};
}

std::string Where(const Schedule& s, int rank, int index) {
  return absl::StrCat("rank ", rank, " instruction ", index, " ", ToString(s.ranks[rank][index]));
}

// Table of where each (part, mb, stage) runs.
class PartTable {
 public:
  PartTable(int micro_batches, int stages) : stages_(stages), loc_(3 * micro_batches * stages) {}
  Location& at(int part, int mb, int stage) { return loc_[(mb * stages_ + stage) * 3 + part]; }

 private:
  int stages_;
  std::vector<Location> loc_;
};

}  // namespace

absl::StatusOr<ScheduleDeps> ResolveDependencies(const Schedule& s) {
  const int stages = s.num_stages(), chunks = s.chunks(), m = s.micro_batches;
  if (static_cast<int>(s.ranks.size()) != s.pp) {
    return absl::InvalidArgumentError(
        absl::StrCat("schedule has ", s.ranks.size(), " instruction lists for pp = ", s.pp));
  }
  PartTable table(m, stages);
  // 1. ids, and each part at most once.
  for (int r = 0; r < s.pp; ++r) {
    for (int i = 0; i < static_cast<int>(s.ranks[r].size()); ++i) {
      for (const InstructionPart& p : PartsOf(s.ranks[r][i])) {
        if (p.mb < 0 || p.mb >= m) {
          return absl::InvalidArgumentError(
              absl::StrCat(Where(s, r, i), ": micro-batch ", p.mb, " outside [0, ", m, ")"));
        }
        if (p.chunk < 0 || p.chunk >= chunks) {
          return absl::InvalidArgumentError(
              absl::StrCat(Where(s, r, i), ": chunk ", p.chunk, " outside [0, ", chunks, ")"));
        }
        const int stage = s.StageOf(r, p.chunk, p.mb);
        if (stage < 0) {
          return absl::InvalidArgumentError(absl::StrCat(Where(s, r, i), ": micro-batch ", p.mb,
                                                         " never visits chunk ", p.chunk, " of this rank"));
        }
        Location& loc = table.at(p.part, p.mb, stage);
        if (loc.rank >= 0) {
          return absl::InvalidArgumentError(absl::StrCat(Where(s, r, i), ": second ", PartName(p.part),
                                                         " of micro-batch ", p.mb, " stage ", stage,
                                                         " (first at ", Where(s, loc.rank, loc.index), ")"));
        }
        loc = {r, i};
      }
    }
  }
  // 2. completeness.
  for (int mb = 0; mb < m; ++mb) {
    for (int stage = 0; stage < stages; ++stage) {
      const StageSlot slot = s.Place(mb, stage);
      for (int part : {kPartF, kPartB, kPartW}) {
        if (table.at(part, mb, stage).rank < 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "rank ", slot.rank, " chunk ", slot.chunk, ": micro-batch ", mb, " stage ", stage, " has no ",
              part == kPartF ? "F" : (part == kPartB ? "B or BW" : "W (its B ran without one)")));
        }
      }
    }
  }
  // 3. local order and dependencies.
  ScheduleDeps deps(s.pp);
  for (int r = 0; r < s.pp; ++r) {
    deps[r].resize(s.ranks[r].size());
    for (int i = 0; i < static_cast<int>(s.ranks[r].size()); ++i) {
      const Instruction& ins = s.ranks[r][i];
      for (const InstructionPart& p : PartsOf(ins)) {
        const int stage = s.StageOf(r, p.chunk, p.mb);
        // (what this part needs, is it a gradient message, must it be on this rank)
        std::vector<std::tuple<Location, bool, std::string>> needs;
        if (p.part == kPartF && stage > 0) {
          needs.push_back({table.at(kPartF, p.mb, stage - 1), false,
                           absl::StrCat("the activation of F of stage ", stage - 1)});
        }
        if (p.part == kPartB) {
          const Location f = table.at(kPartF, p.mb, stage);
          if (f.index >= i) {
            return absl::InvalidArgumentError(absl::StrCat(Where(s, r, i), ": backward of micro-batch ", p.mb,
                                                           " stage ", stage, " before its F (",
                                                           Where(s, f.rank, f.index), ")"));
          }
          if (stage + 1 < stages) {
            needs.push_back({table.at(kPartB, p.mb, stage + 1), true,
                             absl::StrCat("the gradient of the backward of stage ", stage + 1)});
          }
        }
        if (p.part == kPartW) {
          const Location b = table.at(kPartB, p.mb, stage);
          if (b.index > i || (b.index == i && ins.kind == OpKind::kW)) {
            return absl::InvalidArgumentError(absl::StrCat(Where(s, r, i), ": W of micro-batch ", p.mb,
                                                           " stage ", stage, " before its B (",
                                                           Where(s, b.rank, b.index), ")"));
          }
        }
        for (const auto& [loc, gradient, what] : needs) {
          if (loc.rank == r) {
            if (loc.index >= i) {
              return absl::InvalidArgumentError(
                  absl::StrCat(Where(s, r, i), ": needs ", what, " of micro-batch ", p.mb,
                               ", which comes later on the same rank (", Where(s, loc.rank, loc.index), ")"));
            }
            continue;  // on one rank the list order already satisfies it
          }
          deps[r][i].push_back({loc.rank, loc.index, gradient, stage});
        }
      }
    }
  }
  return deps;
}

absl::StatusOr<ScheduleTimes> ExecuteSchedule(
    const Schedule& s, const ScheduleDeps& deps,
    const std::function<double(int, const Instruction&)>& duration,
    const std::function<double(const Dependency&, int, int)>& latency) {
  ScheduleTimes times(s.pp);
  for (int r = 0; r < s.pp; ++r) times[r].resize(s.ranks[r].size());
  std::vector<int> next(s.pp, 0);
  std::vector<double> free_at(s.pp, 0.0);
  // The times depend only on each instruction's predecessors, so any order that respects them gives the
  // same answer: sweep the ranks, advancing each as far as its inputs allow, until nothing moves.
  bool moved = true;
  while (moved) {
    moved = false;
    for (int r = 0; r < s.pp; ++r) {
      while (next[r] < static_cast<int>(s.ranks[r].size())) {
        const int i = next[r];
        double ready = free_at[r];
        bool blocked = false;
        for (const Dependency& d : deps[r][i]) {
          if (d.index >= next[d.rank]) {
            blocked = true;
            break;
          }
          ready = std::max(ready, times[d.rank][d.index].end + latency(d, r, i));
        }
        if (blocked) break;
        times[r][i] = {ready, ready + duration(r, s.ranks[r][i])};
        free_at[r] = times[r][i].end;
        ++next[r];
        moved = true;
      }
    }
  }
  std::string stuck;
  for (int r = 0; r < s.pp; ++r) {
    if (next[r] == static_cast<int>(s.ranks[r].size())) continue;
    const int i = next[r];
    for (const Dependency& d : deps[r][i]) {
      if (d.index < next[d.rank]) continue;
      absl::StrAppend(&stuck, stuck.empty() ? "" : "; ", Where(s, r, i), " waits for the ",
                      d.gradient ? "gradient" : "activation", " from ", Where(s, d.rank, d.index));
      break;
    }
  }
  if (!stuck.empty()) return absl::FailedPreconditionError(absl::StrCat("deadlock: ", stuck));
  return times;
}

absl::StatusOr<ValidationReport> ValidateSchedule(const Schedule& s) {
  absl::StatusOr<ScheduleDeps> deps = ResolveDependencies(s);
  if (!deps.ok()) return deps.status();
  absl::StatusOr<ScheduleTimes> times = ExecuteSchedule(
      s, *deps, [](int, const Instruction&) { return 1.0; }, [](const Dependency&, int, int) { return 0.0; });
  if (!times.ok()) return times.status();

  // 5. channel order: per channel, sort messages by when the producer made them (list order on the
  // producing rank) and require the consumer to take them in the same order.
  std::map<std::tuple<int, int, bool, int>, std::vector<std::pair<int, int>>> channels;
  for (int r = 0; r < s.pp; ++r) {
    for (int i = 0; i < static_cast<int>(s.ranks[r].size()); ++i) {
      const Instruction& ins = s.ranks[r][i];
      for (const Dependency& d : (*deps)[r][i]) {
        const int chunk = (ins.kind == OpKind::kFB && d.gradient) ? ins.chunk_b : ins.chunk;
        channels[{d.rank, r, d.gradient, chunk}].push_back({d.index, i});
      }
    }
  }
  for (auto& [key, msgs] : channels) {
    std::sort(msgs.begin(), msgs.end());
    for (size_t k = 1; k < msgs.size(); ++k) {
      if (msgs[k].second <= msgs[k - 1].second) {
        const auto& [src, dst, gradient, chunk] = key;
        return absl::InvalidArgumentError(absl::StrCat(
            "channel rank ", src, " -> rank ", dst, " (", gradient ? "gradient" : "activation", ", chunk ",
            chunk, "): ", Where(s, src, msgs[k - 1].first), " is sent before ", Where(s, src, msgs[k].first),
            " but received after it (", Where(s, dst, msgs[k - 1].second), ")"));
      }
    }
  }

  ValidationReport report;
  for (int r = 0; r < s.pp; ++r) {
    int live = 0, peak = 0, pending = 0, peak_pending = 0;
    for (const Instruction& ins : s.ranks[r]) {
      switch (ins.kind) {
        case OpKind::kF:
          ++live;
          break;
        case OpKind::kB:
          --live, ++pending;
          break;
        case OpKind::kW:
          --pending;
          break;
        case OpKind::kBW:
          --live;
          break;
        case OpKind::kFB:
          peak = std::max(peak, live + 1);
          break;  // forward half first, then backward
      }
      peak = std::max(peak, live);
      peak_pending = std::max(peak_pending, pending);
    }
    report.peak_live_activations.push_back(peak);
    report.peak_pending_weight_grads.push_back(peak_pending);
  }
  return report;
}

}  // namespace fathom
