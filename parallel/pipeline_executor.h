// Runs one rank's pipeline instruction list (parallel/schedule.h) for one step on this rank's model
// chunks: 1F1B and ZB1P (one chunk), DualPipe and DualPipeV (two chunks), from the same lists the validator
// and the simulator use.
//
// Instructions (the validator's semantics, schedule.h). Where (mb, chunk) sits on the micro-batch's path
// comes from the schedule's placement (Schedule::StageOf / Place):
//   F(mb, c)   receive the activation of stage s-1 (blocking) unless s is the first stage, ForwardPass of
//              chunk c, send the output to stage s+1 unless s is the last stage;
//   B(mb, c)   receive the gradient of stage s+1 unless last, BackwardPass (input gradients), send the input
//              gradient to stage s-1 unless first;
//   W(mb, c)   the chunk's BackwardWeight;  BW(mb, c): B then W as one pass (the routed experts' weight
//              gradients run while the input gradient's combine travels);
//   FB(F mb,c | BW mb_b,c_b)  DualPipe's overlapped pair (the DeepSeek-V3 report's figure 4): both inputs
//              are received, then the forward pass of one micro-batch and the backward pass of the other
//              advance in turn, each up to its next all-to-all (layers/stage_pass.h), so that one's dispatch
//              or combine is in flight while the other computes; each half's output is sent when its pass
//              ends.
// A producer and a consumer on the same rank (DualPipeV's turn from chunk 0 to chunk 1 on the last rank)
// hand the tensor over in memory. Messages between ranks travel on PipelineChannels (one communicator per
// (sender, receiver, kind), tags 2 * receiving chunk + kind; the NCCL deadlock argument is there). Sends
// complete before Run returns.
//
// Two-micro-batch overlap (Options::overlap_pairs, one stage): two consecutive F, or two consecutive BW, of
// one chunk whose inputs need no message run as such a pair, forward with forward and backward with
// backward: while one micro-batch computes attention or experts, the other's dispatch or combine travels.
//
// Devices. Messages are (activation_shape) tensors of one dtype on one device, given at construction: the
// compute dtype of the activations (bf16 compute sends bf16 activations while the parameters stay f32)
// and the parameters' device. On the GPU the communicators are NcclCommunicators whose compute stream is
// the current ops::OpContext's and the pool's stream (checked when Run starts); overlap needs nothing
// more: NCCL runs the all-to-alls on its communication stream, joined to the compute stream by events.
// Tracing (set_trace): one span per instruction on the compute lane, one per run of a pass's steps inside
// it, the receives a stage waits for on the pipeline lane (parallel/step_trace.h).
#ifndef FATHOM_PARALLEL_PIPELINE_EXECUTOR_H_
#define FATHOM_PARALLEL_PIPELINE_EXECUTOR_H_

#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "layers/model.h"
#include "parallel/communicator.h"
#include "parallel/pipeline_channels.h"
#include "parallel/schedule.h"
#include "parallel/step_trace.h"

namespace fathom {

// The program of two-micro-batch overlap on one stage (pp 1, one chunk): F0 F1 BW0 BW1 F2 F3 BW2 BW3 ...
// (an odd last micro-batch runs alone), whose consecutive F pairs and BW pairs the executor overlaps with
// Options::overlap_pairs. Two micro-batches live at a time, as in 1F1B with one stage plus one.
// REQUIRES micro_batches >= 1.
Schedule TwoMicroBatchSchedule(int micro_batches);
// Rank `rank`'s forward-only list of `schedule`'s placement: for every micro-batch in order, F of each of
// the rank's chunks that the micro-batch visits, in the order of its path.
std::vector<Instruction> ForwardOnlyProgram(const Schedule& schedule, int rank);

class PipelineExecutor {
 public:
  struct Options {
    bool overlap_pairs = false;  // two-micro-batch overlap (see the top); REQUIRES schedule.pp == 1
  };

  // `chunks[c]` (not owned): this rank's model of chunk c, schedule.chunks() of them, each holding the
  // model stage schedule.ModelStage(rank, c). `schedule`: every rank's list (this rank runs
  // schedule.ranks[pp.rank()]); it must have passed ValidateSchedule. `pp` (not owned): the pipeline group,
  // rank i = pipeline rank i. `activation_shape`: (B, T, H) of the messages, in `activation_dtype` on
  // `device`. Collective over `pp` (PipelineChannels connects the channels).
  PipelineExecutor(std::vector<Model*> chunks, Schedule schedule, Communicator& pp, Shape activation_shape,
                   DType activation_dtype, Device device, Options options);
  PipelineExecutor(std::vector<Model*> chunks, Schedule schedule, Communicator& pp, Shape activation_shape,
                   DType activation_dtype, Device device)
      : PipelineExecutor(std::move(chunks), std::move(schedule), pp, std::move(activation_shape),
                         activation_dtype, device, Options()) {}
  ~PipelineExecutor();

  // Runs this rank's list over `batches` (indexed by micro-batch id). Returns stats[chunk][mb]: the
  // statistics of every micro-batch the chunk forwarded (losses on the chunk with the head only, MoE
  // statistics on chunks with MoE layers; default for micro-batches the chunk never sees); the caller
  // reduces them.
  std::vector<std::vector<MicroBatchStats>> Run(const std::vector<MicroBatch>& batches,
                                                const LossNormalizers& norm);
  // Forwards only (evaluation; the caller drops the saved activations): micro-batch after micro-batch,
  // each through this rank's chunks in the order its path visits them (ForwardOnlyProgram). Returns as
  // Run. Deadlock-free for any placement: a rank only ever waits for the previous stage of the earliest
  // micro-batch it has not finished, which the rank holding that stage reaches first (induction on the
  // micro-batch, then on the stage); every channel carries its messages in (micro-batch, stage) order on
  // both ends.
  std::vector<std::vector<MicroBatchStats>> RunForwards(const std::vector<MicroBatch>& batches,
                                                        const LossNormalizers& norm);

  // The instructions the last Run executed, in the order they started (an overlapped pair of
  // two-micro-batch overlap counts as its two instructions): equal to program() when it ran as validated.
  // (RunForwards does not record.)
  const std::vector<Instruction>& executed() const { return executed_; }
  const std::vector<Instruction>& program() const { return schedule_.ranks[rank_]; }
  const Schedule& schedule() const { return schedule_; }
  int rank() const { return rank_; }

  // Records the instructions on `trace` (not owned; null = none).
  void set_trace(StepTrace* trace) { trace_ = trace; }

 private:
  // One half of an instruction: a pass of one chunk over one micro-batch with its messages.
  struct Half;

  std::unique_ptr<Half> StartForward(int mb, int chunk, const MicroBatch& batch, const LossNormalizers& norm);
  std::unique_ptr<Half> StartBackward(int mb, int chunk, bool weight);
  // Sends (or hands over) what a finished pass produced; keeps a forward's statistics.
  void Finish(Half& half, std::vector<std::vector<MicroBatchStats>>& stats);
  // The tensor stage `stage` of `mb` consumes: from the rank holding its producer, or handed over here.
  Tensor Receive(int mb, int stage, bool gradient, int chunk, const std::string& label);
  void Deliver(const Tensor& t, int mb, int stage, bool gradient, const char* what);
  // Runs `list` (this rank's instructions); records it in executed_ when `record`.
  std::vector<std::vector<MicroBatchStats>> RunList(const std::vector<Instruction>& list, bool record,
                                                    const std::vector<MicroBatch>& batches,
                                                    const LossNormalizers& norm);
  // Two-micro-batch overlap: whether list[i] and list[i + 1] run as a pair.
  bool Pairs(const std::vector<Instruction>& list, size_t i) const;
  void CheckStreams();

  std::vector<Model*> chunks_;
  Schedule schedule_;
  int rank_;
  Device device_;
  Options options_;
  std::unique_ptr<PipelineChannels> channels_;
  // Tensors handed from one chunk to the other on this rank, by (mb, consumer stage, gradient).
  std::map<std::tuple<int, int, bool>, Tensor> handed_over_;
  std::vector<Instruction> executed_;
  StepTrace* trace_ = nullptr;
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_PIPELINE_EXECUTOR_H_
