#include "parallel/pipeline_executor.h"

namespace fathom {

PipelineExecutor::PipelineExecutor(Model& model, Communicator& pp, Shape activation_shape)
    : model_(model), pp_(pp), shape_(std::move(activation_shape)), stage_(pp.rank()), stages_(pp.size()) {}

void PipelineExecutor::Forward(int mb, const MicroBatch& batch, const LossNormalizers& norm, LossSums* sums) {
  Tensor input;
  if (stage_ > 0) {
    input = Tensor::Empty(shape_, model_.params().dtype());
    pp_.Recv(input, stage_ - 1, 2 * mb);
  }
  Tensor out = model_.ForwardStage(mb, batch, input, norm, sums);
  if (stage_ + 1 < stages_) {
    sends_.push_back(pp_.ISend(out, stage_ + 1, 2 * mb));
    in_flight_.push_back(out);
  }
}

void PipelineExecutor::BackwardInput(int mb) {
  Tensor grad;
  if (stage_ + 1 < stages_) {
    grad = Tensor::Empty(shape_, model_.params().dtype());
    pp_.Recv(grad, stage_ + 1, 2 * mb + 1);
  }
  Tensor dx = model_.BackwardInputStage(mb, grad);
  if (stage_ > 0) {
    sends_.push_back(pp_.ISend(dx, stage_ - 1, 2 * mb + 1));
    in_flight_.push_back(dx);
  }
}

LossSums PipelineExecutor::Run(const std::vector<Instruction>& program,
                               const std::vector<MicroBatch>& batches, const LossNormalizers& norm) {
  LossSums sums;
  sums.mtp_ce.assign(norm.mtp_tokens.size(), 0.0);
  for (const Instruction& ins : program) {
    FATHOM_CHECK(ins.chunk == 0 && ins.kind != OpKind::kFB,
                 "pipeline executor runs single-chunk schedules; got ", ToString(ins));
    FATHOM_CHECK(ins.mb >= 0 && ins.mb < static_cast<int>(batches.size()), "instruction ", ToString(ins),
                 " for ", batches.size(), " micro-batches");
    switch (ins.kind) {
      case OpKind::kF:
        Forward(ins.mb, batches[ins.mb], norm, &sums);
        break;
      case OpKind::kB:
        BackwardInput(ins.mb);
        break;
      case OpKind::kW:
        model_.BackwardWeight(ins.mb);
        break;
      case OpKind::kBW:
        BackwardInput(ins.mb);
        model_.BackwardWeight(ins.mb);
        break;
      case OpKind::kFB:
        break;  // rejected above
    }
  }
  WaitAll(sends_);
  sends_.clear();
  in_flight_.clear();
  return sums;
}

}  // namespace fathom
