#include "parallel/pipeline_executor.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "framework/check.h"

#ifdef FATHOM_WITH_CUDA
#include "parallel/cuda/nccl_communicator.h"
#endif

namespace fathom {

Schedule TwoMicroBatchSchedule(int micro_batches) {
  FATHOM_CHECK(micro_batches >= 1, "[pipeline] two-micro-batch overlap of ", micro_batches, " micro-batches");
  Schedule s{ScheduleKind::k1F1B, 1, micro_batches, {{}}};
  for (int first = 0; first < micro_batches; first += 2) {
    const int count = std::min(2, micro_batches - first);
    for (int i = 0; i < count; ++i) s.ranks[0].push_back(Instruction::F(first + i, 0));
    for (int i = 0; i < count; ++i) s.ranks[0].push_back(Instruction::BW(first + i, 0));
  }
  return s;
}

std::vector<Instruction> ForwardOnlyProgram(const Schedule& schedule, int rank) {
  std::vector<Instruction> list;
  for (int mb = 0; mb < schedule.micro_batches; ++mb) {
    std::vector<std::pair<int, int>> visits;  // (stage, chunk)
    for (int chunk = 0; chunk < schedule.chunks(); ++chunk) {
      const int stage = schedule.StageOf(rank, chunk, mb);
      if (stage >= 0) visits.push_back({stage, chunk});
    }
    std::sort(visits.begin(), visits.end());
    for (const auto& [stage, chunk] : visits) list.push_back(Instruction::F(mb, chunk));
  }
  return list;
}

struct PipelineExecutor::Half {
  int mb = 0, chunk = 0, stage = 0;
  bool forward = true;
  std::string label;  // "F 3 c0", "BW 2 c1": the pass's name in traces
  StageOutput out;    // forward: written by the pass
  Tensor grad_input;  // backward: written by the pass
  std::unique_ptr<StagePass> pass;
};

PipelineExecutor::PipelineExecutor(std::vector<Model*> chunks, Schedule schedule, Communicator& pp,
                                   Shape activation_shape, DType activation_dtype, Device device,
                                   Options options)
    : chunks_(std::move(chunks)),
      schedule_(std::move(schedule)),
      rank_(pp.rank()),
      device_(device),
      options_(options) {
  FATHOM_CHECK(static_cast<int>(chunks_.size()) == schedule_.chunks(), "[pipeline] ", chunks_.size(),
               " model chunks for ", ScheduleKindName(schedule_.kind), ", which places ", schedule_.chunks(),
               " on every rank");
  FATHOM_CHECK(pp.size() == schedule_.pp, "[pipeline] a group of ", pp.size(), " for pp ", schedule_.pp);
  FATHOM_CHECK(!options_.overlap_pairs || schedule_.pp == 1,
               "[pipeline] two-micro-batch overlap runs on a single stage, not pp ", schedule_.pp);
  for (Model* m : chunks_) FATHOM_CHECK(m != nullptr, "[pipeline] a null model chunk");
  channels_ = std::make_unique<PipelineChannels>(schedule_, pp, std::move(activation_shape), activation_dtype,
                                                 device);
}

PipelineExecutor::~PipelineExecutor() = default;

// NCCL orders an operation after the compute stream it was given and its Wait() orders that stream; the
// stage's kernels and the pool that hands out the receive buffers must use that same stream.
void PipelineExecutor::CheckStreams() {
#ifdef FATHOM_WITH_CUDA
  if (device_ == Device::kCUDA) {
    for (Communicator* comm : channels_->communicators()) CheckOnComputeStream(*comm, "pipeline");
  }
#endif
}

Tensor PipelineExecutor::Receive(int mb, int stage, bool gradient, int chunk, const std::string& label) {
  const StageSlot from = schedule_.Place(mb, gradient ? stage + 1 : stage - 1);
  if (from.rank == rank_) {
    auto it = handed_over_.find({mb, stage, gradient});
    // The validator proved the producer comes earlier in this rank's list.
    FATHOM_CHECK(it != handed_over_.end(), "[pipeline] rank ", rank_, ": ", label, " needs the ",
                 gradient ? "gradient" : "activation", " of chunk ", from.chunk, ", not produced yet");
    Tensor t = std::move(it->second);
    handed_over_.erase(it);
    return t;
  }
  const int span =
      trace_ ? trace_->Begin(TraceLane::kPipeline, absl::StrCat(gradient ? "recv grad " : "recv act ", label))
             : -1;
  Tensor t = channels_->Recv(from.rank, gradient, chunk);
  if (trace_) trace_->End(span);
  return t;
}

void PipelineExecutor::Deliver(const Tensor& t, int mb, int stage, bool gradient, const char* what) {
  const StageSlot to = schedule_.Place(mb, stage);
  if (to.rank == rank_) {
    handed_over_[{mb, stage, gradient}] = t;
  } else {
    channels_->Send(t, to.rank, gradient, to.chunk, what);
  }
}

std::unique_ptr<PipelineExecutor::Half> PipelineExecutor::StartForward(int mb, int chunk,
                                                                       const MicroBatch& batch,
                                                                       const LossNormalizers& norm) {
  auto h = std::make_unique<Half>();
  h->mb = mb, h->chunk = chunk, h->forward = true;
  h->stage = schedule_.StageOf(rank_, chunk, mb);
  h->label = TraceName(Instruction::F(mb, chunk));
  FATHOM_CHECK(h->stage >= 0, "[pipeline] rank ", rank_, ": micro-batch ", mb, " never visits chunk ", chunk);
  Tensor input = h->stage > 0 ? Receive(mb, h->stage, /*gradient=*/false, chunk, h->label) : Tensor();
  h->pass = chunks_[chunk]->ForwardPass(mb, batch, input, norm, &h->out);
  return h;
}

std::unique_ptr<PipelineExecutor::Half> PipelineExecutor::StartBackward(int mb, int chunk, bool weight) {
  auto h = std::make_unique<Half>();
  h->mb = mb, h->chunk = chunk, h->forward = false;
  h->stage = schedule_.StageOf(rank_, chunk, mb);
  h->label = TraceName(weight ? Instruction::BW(mb, chunk) : Instruction::B(mb, chunk));
  FATHOM_CHECK(h->stage >= 0, "[pipeline] rank ", rank_, ": micro-batch ", mb, " never visits chunk ", chunk);
  const bool last = h->stage == schedule_.num_stages() - 1;
  Tensor grad = last ? Tensor() : Receive(mb, h->stage, /*gradient=*/true, chunk, h->label);
  h->pass = chunks_[chunk]->BackwardPass(mb, grad, weight, &h->grad_input);
  return h;
}

void PipelineExecutor::Finish(Half& h, std::vector<std::vector<MicroBatchStats>>& stats) {
  if (h.forward) {
    if (h.stage + 1 < schedule_.num_stages()) {
      Deliver(h.out.hidden, h.mb, h.stage + 1, /*gradient=*/false, "its output");
    }
    stats[h.chunk][h.mb] = std::move(h.out.stats);
  } else if (h.stage > 0) {
    Deliver(h.grad_input, h.mb, h.stage - 1, /*gradient=*/true, "its input gradient");
  }
  h.out = StageOutput();
  h.grad_input = Tensor();
}

bool PipelineExecutor::Pairs(const std::vector<Instruction>& list, size_t i) const {
  if (!options_.overlap_pairs || i + 1 >= list.size()) return false;
  const Instruction& a = list[i];
  const Instruction& b = list[i + 1];
  return a.kind == b.kind && (a.kind == OpKind::kF || a.kind == OpKind::kBW) && a.chunk == b.chunk;
}

std::vector<std::vector<MicroBatchStats>> PipelineExecutor::Run(const std::vector<MicroBatch>& batches,
                                                                const LossNormalizers& norm) {
  return RunList(program(), /*record=*/true, batches, norm);
}

std::vector<std::vector<MicroBatchStats>> PipelineExecutor::RunForwards(
    const std::vector<MicroBatch>& batches, const LossNormalizers& norm) {
  return RunList(ForwardOnlyProgram(schedule_, rank_), /*record=*/false, batches, norm);
}

std::vector<std::vector<MicroBatchStats>> PipelineExecutor::RunList(const std::vector<Instruction>& list,
                                                                    bool record,
                                                                    const std::vector<MicroBatch>& batches,
                                                                    const LossNormalizers& norm) {
  CheckStreams();
  std::vector<std::vector<MicroBatchStats>> stats(chunks_.size(),
                                                  std::vector<MicroBatchStats>(batches.size()));
  if (record) executed_.clear();
  FATHOM_CHECK(static_cast<int>(batches.size()) == schedule_.micro_batches, "[pipeline] ", batches.size(),
               " micro-batches for a schedule of ", schedule_.micro_batches);
  // Everything an instruction does once its inputs are in: its passes, interleaved when there are two.
  auto run_halves = [&](const std::vector<std::unique_ptr<Half>>& halves, const std::string& name,
                        const TraceArgs& args) {
    std::vector<Half*> running;
    running.reserve(halves.size());
    for (const auto& h : halves) running.push_back(h.get());
    const int span = trace_ ? trace_->Begin(TraceLane::kCompute, name, args) : -1;
    while (!running.empty()) {
      for (auto it = running.begin(); it != running.end();) {
        Half& h = **it;
        const int step_span = trace_ ? trace_->Begin(TraceLane::kCompute, h.label) : -1;
        if (trace_) trace_->SetContext(name, h.label);
        const std::string ran = h.pass->Advance();
        if (step_span >= 0) {
          trace_->Rename(step_span, absl::StrCat(h.label, ": ", ran));
          trace_->End(step_span);
        }
        if (h.pass->finished()) {
          Finish(h, stats);
          it = running.erase(it);
        } else {
          ++it;
        }
      }
    }
    if (trace_) {
      trace_->End(span);
      trace_->SetContext("", "");
    }
  };
  auto trace_args = [&](const Instruction& ins) {
    TraceArgs a;
    a.micro_batch = ins.mb;
    a.chunk = ins.chunk;
    a.stage = schedule_.ModelStage(rank_, ins.chunk);
    if (ins.kind == OpKind::kFB) a.micro_batch_b = ins.mb_b, a.chunk_b = ins.chunk_b;
    return a;
  };
  for (size_t i = 0; i < list.size(); ++i) {
    const Instruction& ins = list[i];
    for (int mb : {ins.mb, ins.kind == OpKind::kFB ? ins.mb_b : ins.mb}) {
      FATHOM_CHECK(mb >= 0 && mb < static_cast<int>(batches.size()), "instruction ", ToString(ins), " for ",
                   batches.size(), " micro-batches");
    }
    std::vector<std::unique_ptr<Half>> halves;
    if (Pairs(list, i)) {  // two-micro-batch overlap: forward with forward, backward with backward
      const Instruction& next = list[i + 1];
      if (record) executed_.insert(executed_.end(), {ins, next});
      for (const Instruction* x : {&ins, &next}) {
        halves.push_back(x->kind == OpKind::kF ? StartForward(x->mb, x->chunk, batches[x->mb], norm)
                                               : StartBackward(x->mb, x->chunk, /*weight=*/true));
      }
      TraceArgs args = trace_args(ins);
      args.micro_batch_b = next.mb, args.chunk_b = next.chunk;
      run_halves(halves, absl::StrCat(TraceName(ins), " + ", TraceName(next)), args);
      ++i;
      continue;
    }
    if (record) executed_.push_back(ins);
    switch (ins.kind) {
      case OpKind::kF:
        halves.push_back(StartForward(ins.mb, ins.chunk, batches[ins.mb], norm));
        break;
      case OpKind::kB:
      case OpKind::kBW:
        halves.push_back(StartBackward(ins.mb, ins.chunk, /*weight=*/ins.kind == OpKind::kBW));
        break;
      case OpKind::kFB:  // both inputs first (the instruction starts when both have arrived)
        halves.push_back(StartForward(ins.mb, ins.chunk, batches[ins.mb], norm));
        halves.push_back(StartBackward(ins.mb_b, ins.chunk_b, /*weight=*/true));
        break;
      case OpKind::kW: {
        const int span = trace_ ? trace_->Begin(TraceLane::kCompute, TraceName(ins), trace_args(ins)) : -1;
        chunks_[ins.chunk]->BackwardWeight(ins.mb);
        if (trace_) trace_->End(span);
        continue;
      }
    }
    run_halves(halves, TraceName(ins), trace_args(ins));
  }
  channels_->WaitSends();
  FATHOM_CHECK(handed_over_.empty(), "[pipeline] rank ", rank_, ": ", handed_over_.size(),
               " tensors handed over between chunks and never consumed");
  return stats;
}

}  // namespace fathom
