// Runs one rank's pipeline instruction list (parallel/schedule.h) for one step on a Model slice.
//
// F(mb)  receive the previous stage's activation (blocking) unless first, forward, send the output
//        (non-blocking) unless last. B(mb): receive the next stage's gradient unless last, backward for
//        the inputs, send the input gradient unless first. W(mb): weight gradients. BW: B then W.
// Messages travel on the pipeline communicator between adjacent pipeline ranks with tag 2*mb (activation)
// or 2*mb+1 (gradient); sends complete before Run returns. Single-chunk schedules (1F1B, ZB1P) only: a
// two-chunk schedule (DualPipe, DualPipeV) needs two model slices per rank and fails loudly here.
#ifndef FATHOM_PARALLEL_PIPELINE_EXECUTOR_H_
#define FATHOM_PARALLEL_PIPELINE_EXECUTOR_H_

#include <vector>

#include "layers/model.h"
#include "parallel/communicator.h"
#include "parallel/schedule.h"

namespace fathom {

class PipelineExecutor {
 public:
  // `pp` (not owned): the pipeline group, rank i = stage i. `activation_shape`: (B, T, H) of the messages.
  PipelineExecutor(Model& model, Communicator& pp, Shape activation_shape);

  // Runs `program` (this rank's list) over `batches` (indexed by micro-batch id). Returns this stage's
  // loss sums (zero except on the last stage, balance on every stage with MoE layers).
  LossSums Run(const std::vector<Instruction>& program, const std::vector<MicroBatch>& batches,
               const LossNormalizers& norm);

 private:
  void Forward(int mb, const MicroBatch& batch, const LossNormalizers& norm, LossSums* sums);
  void BackwardInput(int mb);

  Model& model_;
  Communicator& pp_;
  Shape shape_;
  int stage_, stages_;
  std::vector<Request> sends_;
  std::vector<Tensor> in_flight_;  // tensors being sent, kept alive until their requests complete
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_PIPELINE_EXECUTOR_H_
