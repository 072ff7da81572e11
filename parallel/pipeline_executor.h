// Runs one rank's pipeline instruction list (parallel/schedule.h) for one step on a Model slice.
//
// F(mb)  receive the previous stage's activation (blocking) unless first, forward, send the output
//        (non-blocking) unless last. B(mb): receive the next stage's gradient unless last, backward for
//        the inputs, send the input gradient unless first. W(mb): weight gradients. BW: B then W.
// Messages travel on the pipeline communicator between adjacent pipeline ranks with tag 2*mb (activation)
// or 2*mb+1 (gradient); sends complete before Run returns. Single-chunk schedules (1F1B, ZB1P) only: a
// two-chunk schedule (DualPipe, DualPipeV) needs two model slices per rank and fails loudly here.
//
// Devices. Messages are (activation_shape) tensors of one dtype on one device, both given at construction:
// the compute dtype of the activations (bf16 compute sends bf16 activations while the parameters stay
// f32) and the parameters' device. Receive buffers are allocated there (CUDA: from the current
// cuda::DevicePool). On the CPU the communicator is an MpiCommunicator; on the GPU an NcclCommunicator
// whose compute stream is the current ops::OpContext's and the pool's stream (checked when Run starts):
// a blocking receive then orders the compute stream, not the host, and the stage's kernels follow it.
// The stage outputs and input gradients handed to the communicator must have the message dtype, device and
// element count (checked: NCCL does not detect a size mismatch).
//
// Connection. The constructor exchanges one small message with each neighbouring stage in both directions
// in one batch (collective over `pp`): NCCL connects peers lazily, inside the first operation that needs a
// connection, and two ranks whose first batches need different directions (the first stage's first batch
// sends and receives, the second stage's first batch only receives) would fail NCCL's connection handshake
// (NVIDIA/nccl#1279). On MPI it is one harmless round trip.
#ifndef FATHOM_PARALLEL_PIPELINE_EXECUTOR_H_
#define FATHOM_PARALLEL_PIPELINE_EXECUTOR_H_

#include <vector>

#include "layers/model.h"
#include "parallel/communicator.h"
#include "parallel/schedule.h"

namespace fathom {

class PipelineExecutor {
 public:
  // `pp` (not owned): the pipeline group, rank i = stage i. `activation_shape`: (B, T, H) of the messages,
  // in `activation_dtype` on `device`. Collective over `pp` (see Connection).
  PipelineExecutor(Model& model, Communicator& pp, Shape activation_shape, DType activation_dtype,
                   Device device);

  // Runs `program` (this rank's list) over `batches` (indexed by micro-batch id). Returns the statistics
  // of every micro-batch this stage forwarded, indexed by micro-batch id (losses on the last stage only,
  // MoE statistics on every stage with MoE layers); the caller reduces them.
  std::vector<MicroBatchStats> Run(const std::vector<Instruction>& program,
                                   const std::vector<MicroBatch>& batches, const LossNormalizers& norm);

 private:
  MicroBatchStats Forward(int mb, const MicroBatch& batch, const LossNormalizers& norm);
  void BackwardInput(int mb);
  void Send(const Tensor& t, int peer, int tag, const char* what);
  void ConnectNeighbours();

  Model& model_;
  Communicator& pp_;
  Shape shape_;
  DType dtype_;
  Device device_;
  int stage_, stages_;
  std::vector<Request> sends_;
  std::vector<Tensor> in_flight_;  // tensors being sent, kept alive until their requests complete
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_PIPELINE_EXECUTOR_H_
