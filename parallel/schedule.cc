#include "parallel/schedule.h"

#include <algorithm>
#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "framework/check.h"

namespace fathom {

absl::StatusOr<ScheduleKind> ParseScheduleKind(const std::string& name) {
  if (name == "1f1b") return ScheduleKind::k1F1B;
  if (name == "zb1p") return ScheduleKind::kZB1P;
  if (name == "dualpipe") return ScheduleKind::kDualPipe;
  if (name == "dualpipev") return ScheduleKind::kDualPipeV;
  return absl::InvalidArgumentError(absl::StrCat("parallel.schedule: unknown schedule '", name,
                                                 "'; expected 1f1b, zb1p, dualpipe or dualpipev"));
}

std::string ScheduleKindName(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::k1F1B:
      return "1f1b";
    case ScheduleKind::kZB1P:
      return "zb1p";
    case ScheduleKind::kDualPipe:
      return "dualpipe";
    case ScheduleKind::kDualPipeV:
      return "dualpipev";
  }
  return "?";
}

int ChunksPerRank(ScheduleKind kind) {
  return (kind == ScheduleKind::kDualPipe || kind == ScheduleKind::kDualPipeV) ? 2 : 1;
}

int NumStages(ScheduleKind kind, int pp) { return kind == ScheduleKind::kDualPipeV ? 2 * pp : pp; }

absl::Status CheckScheduleShape(ScheduleKind kind, int pp, int micro_batches) {
  const std::string name = ScheduleKindName(kind);
  if (pp < 1) return absl::InvalidArgumentError(absl::StrCat("parallel.pp: must be >= 1, got ", pp));
  if (micro_batches < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.micro_batches: must be >= 1, got ", micro_batches));
  }
  if (kind == ScheduleKind::kDualPipe) {
    if (pp % 2 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("parallel.pp: dualpipe needs an even number of pipeline ranks, got ", pp));
    }
    if (micro_batches % 2 != 0 || micro_batches < 2 * pp) {
      return absl::InvalidArgumentError(
          absl::StrCat("parallel.micro_batches: dualpipe needs an even count >= 2*pp = ", 2 * pp, ", got ",
                       micro_batches));
    }
  }
  if (kind == ScheduleKind::kDualPipeV && micro_batches < 2 * pp) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.micro_batches: dualpipev needs >= 2*pp = ", 2 * pp, ", got ", micro_batches));
  }
  return absl::OkStatus();
}

absl::Status ValidateParallelSchedule(const ParallelConfig& parallel, const ModelConfig& model) {
  absl::StatusOr<ScheduleKind> kind = ParseScheduleKind(parallel.schedule);
  if (!kind.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel.schedule must be one of 1f1b, zb1p, dualpipe, dualpipev; got '", parallel.schedule, "'"));
  }
  // DualPipeV cuts the model into 2 * pp stages (a V over the pp ranks); the others into pp.
  const int64_t stages = NumStages(*kind, static_cast<int>(parallel.pp));
  const std::string stages_name = *kind == ScheduleKind::kDualPipeV ? "2 * parallel.pp" : "parallel.pp";
  if (stages > model.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat(stages_name, " (", stages, ") must be <= model.num_hidden_layers (",
                     model.num_hidden_layers, "): every stage holds at least one decoder layer"));
  }
  const size_t entries = parallel.stage_layers.size();
  if (entries != 0 && static_cast<int64_t>(entries) != stages) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel.stage_layers has ", entries, entries == 1 ? " entry" : " entries", ", must have ",
        stages_name, " (", stages, ") for parallel.schedule ", parallel.schedule));
  }
  return CheckScheduleShape(*kind, static_cast<int>(parallel.pp), static_cast<int>(parallel.micro_batches));
}

const char* OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kF:
      return "F";
    case OpKind::kB:
      return "B";
    case OpKind::kW:
      return "W";
    case OpKind::kBW:
      return "BW";
    case OpKind::kFB:
      return "FB";
  }
  return "?";
}

std::string ToString(const Instruction& ins) {
  if (ins.kind == OpKind::kFB) {
    return absl::StrCat("FB(F ", ins.mb, ",c", ins.chunk, " | BW ", ins.mb_b, ",c", ins.chunk_b, ")");
  }
  return absl::StrCat(OpKindName(ins.kind), "(", ins.mb, ",c", ins.chunk, ")");
}

std::string TraceName(const Instruction& ins) {
  if (ins.kind == OpKind::kFB) {
    return absl::StrCat("FB F", ins.mb, "c", ins.chunk, "|BW", ins.mb_b, "c", ins.chunk_b);
  }
  return absl::StrCat(OpKindName(ins.kind), " ", ins.mb, " c", ins.chunk);
}

StageSlot Schedule::Place(int mb, int stage) const {
  FATHOM_CHECK(stage >= 0 && stage < num_stages() && mb >= 0 && mb < micro_batches, "[schedule] Place(mb ",
               mb, ", stage ", stage, ") out of range");
  switch (kind) {
    case ScheduleKind::k1F1B:
    case ScheduleKind::kZB1P:
      return {stage, 0};
    case ScheduleKind::kDualPipe:
      return mb < micro_batches / 2 ? StageSlot{stage, 0} : StageSlot{pp - 1 - stage, 1};
    case ScheduleKind::kDualPipeV:
      return stage < pp ? StageSlot{stage, 0} : StageSlot{2 * pp - 1 - stage, 1};
  }
  return {};
}

int Schedule::StageOf(int rank, int chunk, int mb) const {
  switch (kind) {
    case ScheduleKind::k1F1B:
    case ScheduleKind::kZB1P:
      return chunk == 0 ? rank : -1;
    case ScheduleKind::kDualPipe: {
      const int direction = mb < micro_batches / 2 ? 0 : 1;
      if (chunk != direction) return -1;
      return direction == 0 ? rank : pp - 1 - rank;
    }
    case ScheduleKind::kDualPipeV:
      return chunk == 0 ? rank : (chunk == 1 ? 2 * pp - 1 - rank : -1);
  }
  return -1;
}

int Schedule::ModelStage(int rank, int chunk) const {
  switch (kind) {
    case ScheduleKind::k1F1B:
    case ScheduleKind::kZB1P:
      return rank;
    case ScheduleKind::kDualPipe:
      return chunk == 0 ? rank : pp - 1 - rank;
    case ScheduleKind::kDualPipeV:
      return chunk == 0 ? rank : 2 * pp - 1 - rank;
  }
  return -1;
}

Schedule Schedule1F1B(int pp, int micro_batches) {
  FATHOM_CHECK(CheckScheduleShape(ScheduleKind::k1F1B, pp, micro_batches).ok(), "[schedule_1f1b] pp ", pp,
               ", micro_batches ", micro_batches);
  Schedule s{ScheduleKind::k1F1B, pp, micro_batches, std::vector<std::vector<Instruction>>(pp)};
  const int m = micro_batches;
  for (int r = 0; r < pp; ++r) {
    auto& list = s.ranks[r];
    const int warmup = std::min(pp - r - 1, m);
    for (int i = 0; i < warmup; ++i) list.push_back(Instruction::F(i, 0));
    for (int i = 0; i < m - warmup; ++i) {  // steady: one forward, one backward
      list.push_back(Instruction::F(warmup + i, 0));
      list.push_back(Instruction::BW(i, 0));
    }
    for (int i = m - warmup; i < m; ++i) list.push_back(Instruction::BW(i, 0));
  }
  return s;
}

Schedule ScheduleZB1P(int pp, int micro_batches) {
  FATHOM_CHECK(CheckScheduleShape(ScheduleKind::kZB1P, pp, micro_batches).ok(), "[schedule_zb1p] pp ", pp,
               ", micro_batches ", micro_batches);
  Schedule s{ScheduleKind::kZB1P, pp, micro_batches, std::vector<std::vector<Instruction>>(pp)};
  const int m = micro_batches;
  for (int r = 0; r < pp; ++r) {
    auto& list = s.ranks[r];
    int next_w = 0;
    const int warmup = std::min(pp - r - 1, m);
    for (int i = 0; i < warmup; ++i) list.push_back(Instruction::F(i, 0));
    // Steady: F, B, and from iteration r on one W; the r W's held back fill rank r's cool-down bubbles,
    // which are r backward-latencies long.
    for (int i = 0; i < m - warmup; ++i) {
      list.push_back(Instruction::F(warmup + i, 0));
      list.push_back(Instruction::B(i, 0));
      if (i >= r) list.push_back(Instruction::W(next_w++, 0));
    }
    for (int i = m - warmup; i < m; ++i) {  // cool-down: B, W
      list.push_back(Instruction::B(i, 0));
      list.push_back(Instruction::W(next_w++, 0));
    }
    while (next_w < m) list.push_back(Instruction::W(next_w++, 0));
  }
  return s;
}

namespace {

// Emits one rank's DualPipe / DualPipeV list. The phases are written from the rank's point of view:
// "phase 0" is the chunk whose micro-batches reach this rank first, "phase 1" the other one (for the
// second half of DualPipe's ranks that is chunk 1 then chunk 0). Forward and backward micro-batches are
// taken in order per phase, and W passes in order of their B (a FIFO, as DualPipe's WeightGradStore).
class DualPipeRankEmitter {
 public:
  DualPipeRankEmitter(std::vector<Instruction>* out, int chunk_of_phase0, int micro_batches, bool dual)
      : out_(out), chunk_of_phase0_(chunk_of_phase0), micro_batches_(micro_batches), dual_(dual) {}

  void F(int phase) { out_->push_back(Instruction::F(NextForward(phase), Chunk(phase))); }
  void Backward(int phase, bool split_weight) {
    const int mb = NextBackward(phase), chunk = Chunk(phase);
    if (split_weight) {
      out_->push_back(Instruction::B(mb, chunk));
      pending_w_.push_back({mb, chunk});
    } else {
      out_->push_back(Instruction::BW(mb, chunk));
    }
  }
  void W() {
    FATHOM_CHECK(!pending_w_.empty(), "[schedule_dualpipe] W with no pending B");
    out_->push_back(Instruction::W(pending_w_.front().first, pending_w_.front().second));
    pending_w_.pop_front();
  }
  void FB(int phase_f, int phase_b) {
    const int mb_f = NextForward(phase_f);
    const int mb_b = NextBackward(phase_b);
    out_->push_back(Instruction::FB(mb_f, Chunk(phase_f), mb_b, Chunk(phase_b)));
  }
  bool drained() const { return pending_w_.empty(); }

 private:
  int Chunk(int phase) const { return phase ^ chunk_of_phase0_; }
  // DualPipe numbers direction-1 micro-batches after direction 0's; in DualPipeV every micro-batch passes
  // both chunks, so each chunk counts 0 .. M-1.
  int MicroBatch(int chunk, int k) const { return dual_ ? chunk * (micro_batches_ / 2) + k : k; }
  int NextForward(int phase) { return MicroBatch(Chunk(phase), forward_[Chunk(phase)]++); }
  int NextBackward(int phase) { return MicroBatch(Chunk(phase), backward_[Chunk(phase)]++); }

  std::vector<Instruction>* out_;
  int chunk_of_phase0_;
  int micro_batches_;
  bool dual_;
  int forward_[2] = {0, 0};
  int backward_[2] = {0, 0};
  std::deque<std::pair<int, int>> pending_w_;
};

// The eight phases shared by DualPipe and DualPipeV. `n` is the number of ranks on one arm (pp/2 for
// DualPipe, pp for DualPipeV), `h` this rank's distance from the arm's end where micro-batches enter,
// `main_steps` the count of the main F0B1F1B0 phase, `turning` whether the rank sits where the two arms
// meet (its first main step does not overlap, which shortens the bubble).
void EmitDualPipePhases(DualPipeRankEmitter& e, int n, int h, int main_steps, bool turning) {
  for (int i = 0; i < 2 * (n - h - 1); ++i) e.F(0);  // 1: nF0
  for (int i = 0; i < h + 1; ++i) {                  // 2: nF0F1
    e.F(0);
    e.F(1);
  }
  for (int i = 0; i < n - h - 1; ++i) {  // 3: nB1W1F1 (zero bubble)
    e.Backward(1, /*split_weight=*/true);
    e.W();
    e.F(1);
  }
  for (int i = 0; i < main_steps; ++i) {  // 4: main, nF0B1F1B0
    if (i == 0 && turning) {
      e.F(0);
      e.Backward(1, /*split_weight=*/false);
    } else {
      e.FB(0, 1);
    }
    e.FB(1, 0);
  }
  for (int i = 0; i < n - h - 1; ++i) {  // 5: nB1F1B0
    e.Backward(1, /*split_weight=*/false);
    e.FB(1, 0);
  }
  bool split = false;  // 6: nB1B0; the second half of these backwards leave their W for later
  for (int i = 0; i < h + 1; ++i) {
    if (i == (h + 1) / 2 && h % 2 == 1) split = true;
    e.Backward(1, split);
    if (i == (h + 1) / 2 && h % 2 == 0) split = true;
    e.Backward(0, split);
  }
  for (int i = 0; i < n - h - 1; ++i) {  // 7: nWB0 (zero bubble)
    e.W();
    e.Backward(0, /*split_weight=*/true);
  }
  for (int i = 0; i < h + 1; ++i) e.W();  // 8: nW
  FATHOM_CHECK(e.drained(), "[schedule_dualpipe] W passes left over");
}

}  // namespace

Schedule ScheduleDualPipe(int pp, int micro_batches) {
  FATHOM_CHECK(CheckScheduleShape(ScheduleKind::kDualPipe, pp, micro_batches).ok(), "[schedule_dualpipe] pp ",
               pp, ", micro_batches ", micro_batches);
  Schedule s{ScheduleKind::kDualPipe, pp, micro_batches, std::vector<std::vector<Instruction>>(pp)};
  const int half = pp / 2;
  for (int r = 0; r < pp; ++r) {
    const bool second_half = r >= half;
    const int h = std::min(r, pp - 1 - r);
    DualPipeRankEmitter e(&s.ranks[r], second_half ? 1 : 0, micro_batches, /*dual=*/true);
    EmitDualPipePhases(e, half, h, micro_batches / 2 - pp + h + 1, /*turning=*/r == half - 1 || r == half);
  }
  return s;
}

Schedule ScheduleDualPipeV(int pp, int micro_batches) {
  FATHOM_CHECK(CheckScheduleShape(ScheduleKind::kDualPipeV, pp, micro_batches).ok(),
               "[schedule_dualpipev] pp ", pp, ", micro_batches ", micro_batches);
  Schedule s{ScheduleKind::kDualPipeV, pp, micro_batches, std::vector<std::vector<Instruction>>(pp)};
  for (int r = 0; r < pp; ++r) {
    DualPipeRankEmitter e(&s.ranks[r], 0, micro_batches, /*dual=*/false);
    EmitDualPipePhases(e, pp, r, micro_batches - 2 * pp + r + 1, /*turning=*/r == pp - 1);
  }
  return s;
}

absl::StatusOr<Schedule> MakeSchedule(ScheduleKind kind, int pp, int micro_batches) {
  if (absl::Status st = CheckScheduleShape(kind, pp, micro_batches); !st.ok()) return st;
  switch (kind) {
    case ScheduleKind::k1F1B:
      return Schedule1F1B(pp, micro_batches);
    case ScheduleKind::kZB1P:
      return ScheduleZB1P(pp, micro_batches);
    case ScheduleKind::kDualPipe:
      return ScheduleDualPipe(pp, micro_batches);
    case ScheduleKind::kDualPipeV:
      return ScheduleDualPipeV(pp, micro_batches);
  }
  return absl::InternalError("unreachable");
}

}  // namespace fathom
