// PipelineChannels: the stage-to-stage messages of a pipeline schedule (parallel/schedule.h), on one
// two-rank communicator per channel.
//
// A channel is (sending rank, receiving rank, activation | gradient): every message a schedule implies
// travels on the channel of its producer's rank, its consumer's rank and its kind. The schedules place
// consecutive stages on adjacent pipeline ranks, and on each channel the receiving chunk is always the same
// (DualPipe and DualPipeV: rank r sends r+1 activations of chunk 0 and gradients of chunk 1, and r+1 sends
// r gradients of chunk 0 and activations of chunk 1; both checked at construction). ValidateSchedule
// proves that on every channel the messages are consumed in the order they are produced, so a channel is a
// FIFO: the k-th receive on a channel matches the k-th send. The tag of a message is 2 * receiving chunk +
// (1 for a gradient), a redundant check on MPI (NCCL has no tags).
//
// Why one communicator per channel (the deadlock argument, for NCCL; MPI needs none of it: its sends are
// buffered or progressed by the receiver's MPI calls, which is exactly the validator's model). An
// NcclCommunicator runs its operations on its own communication stream in the order they were issued, and
// a send there blocks that stream until its receive has been issued on the peer. On a shared communicator
// a send waiting for a late receive holds up every later operation of the stream, including receives the
// peer needs first: two-chunk schedules send both ways between two ranks and would need an argument per
// schedule (the single-communicator 1F1B argument that stood here before depended on 1F1B's exact order).
// With one communicator per channel, a channel's stream on the sender holds only that channel's sends, in
// production order, and on the receiver only its receives, in consumption order, which is the same order:
//   - the k-th send starts when the sender's compute stream has produced message k (its start event) and
//     its send k-1 completed, i.e. the receiver issued receive k-1 - which it does before it consumes k-1,
//     so before it could ever need message k;
//   - the k-th receive completes once send k ran; the receiver's compute stream waits for it (Wait) before
//     consuming.
// So the device-side execution is the validator's model (blocking receives, sends that block nothing but
// their own later sends on the channel), which ValidateSchedule proves deadlock-free. The host never
// blocks: Send enqueues its operation at once (NcclCommunicator::Flush), and NCCL's lazy connection
// handshake, which can block the host, happens here at construction, channel by channel in one global
// order (so a rank waiting in a handshake waits for a peer that reaches that same channel next). The expert
// all-to-alls (other communicators) are issued in the same instruction order by every rank of an expert
// group, which runs the same list. On the GPU the receive buffers come from the current cuda::DevicePool,
// whose stream must be the communicators' compute stream (checked).
//
// Devices and dtypes: messages are (shape) tensors of `dtype` on `device`, as given at construction. Not
// copyable; one thread.
#ifndef FATHOM_PARALLEL_PIPELINE_CHANNELS_H_
#define FATHOM_PARALLEL_PIPELINE_CHANNELS_H_

#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "framework/tensor.h"
#include "parallel/communicator.h"
#include "parallel/schedule.h"

namespace fathom {

class PipelineChannels {
 public:
  // Collective over `pp` (rank i = pipeline rank i; used only here): every rank passes the same schedule.
  // Splits the channels' communicators out of `pp` and sends one element over each to connect it (on the
  // GPU from the current cuda::DevicePool, on the communicators' compute stream: checked).
  PipelineChannels(const Schedule& schedule, Communicator& pp, Shape shape, DType dtype, Device device);
  ~PipelineChannels();
  PipelineChannels(const PipelineChannels&) = delete;
  PipelineChannels& operator=(const PipelineChannels&) = delete;

  // Starts sending `t` to pipeline rank `peer` (non-blocking; kept alive until WaitSends). REQUIRES the
  // message shape, dtype and device (FATHOM_CHECK naming `what`).
  void Send(const Tensor& t, int peer, bool gradient, int receiving_chunk, const char* what);
  // A fresh message buffer filled from `peer` (blocking; on the GPU: ordered on the compute stream).
  Tensor Recv(int peer, bool gradient, int receiving_chunk);
  // Completes every send started since the last call.
  void WaitSends();

  // The channels' communicators, for stream checks (CheckOnComputeStream) and tests.
  std::vector<Communicator*> communicators() const;
  int rank() const { return rank_; }

 private:
  struct Channel {
    std::unique_ptr<Communicator> comm;  // two ranks, ordered by pipeline rank
    int peer_in_comm = 0;                // the other end's rank in `comm`
    int receiving_chunk = -1;
  };
  using Key = std::tuple<int, int, bool>;  // (from, to, gradient), pipeline ranks
  Channel& Find(int from, int to, bool gradient, int receiving_chunk);
  void Connect(const std::vector<Key>& order);

  int rank_;
  Shape shape_;
  DType dtype_;
  Device device_;
  std::map<Key, Channel> channels_;  // those with this rank at one end
  std::vector<Request> sends_;
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_PIPELINE_CHANNELS_H_
