#include "parallel/pipeline_executor.h"

#include "framework/ops.h"

#ifdef FATHOM_WITH_CUDA
#include "parallel/cuda/nccl_communicator.h"
#endif

// Deadlock freedom with NCCL (pp = 2, 1F1B and ZB1P). NcclCommunicator batches point-to-point operations
// until the next blocking call: a blocking Recv (IRecv + Wait) enqueues, as one NCCL group, every send
// posted since the previous flush together with that receive, and Run's final WaitAll enqueues the rest.
// W instructions move nothing, so both schedules post the same sequence. With M micro-batches (a_k the
// activation and g_k the gradient of micro-batch k, S send, R receive), the groups are
//   stage 0 (F0, then F(k+1) B(k) for k < M-1, then B(M-1)):
//     {S a0, S a1, R g0}  {S a2, R g1}  ...  {S a(M-1), R g(M-2)}  {R g(M-1)}
//   stage 1 (F(k) B(k) for every k):
//     {R a0}  {S g0, R a1}  {S g1, R a2}  ...  {S g(M-2), R a(M-1)}  {S g(M-1)}
// (M = 1: {S a0, R g0} against {R a0} {S g0}.) Stage 0's group k >= 1 mirrors stage 1's group k + 1, its
// first group pairs with stage 1's first two and the last ones pair, so each side runs its groups on its
// communication stream in the order in which their partners run on the other side: no group waits for a
// partner queued behind a later group of its own rank. Inside a group NCCL progresses the sends and the
// receive together, so S a0 completes stage 1's first group while R g0 waits for stage 1's second one, and
// S a1 meets R a1 there. The compute streams add no cycle: the compute after stage 0's group k waits for
// it, and its partner needs stage 1's compute up to B(k), which waited only for stage 1's groups up to k,
// whose partners are stage 0's groups before k. Enqueueing never blocks the host once the peers are
// connected (ConnectNeighbours), and a host that waits at a sync point waits for its own compute stream,
// which the above shows completes. The stage runtime's embedding-gradient exchange after Run (its own
// tag, parallel/stage_runtime.cc), {S, R} on both stages, mirrors itself. (Stage 0's first send leaves only
// with that group, after F1's compute queued before R g0 was posted: correct, at the price of some overlap.)

namespace fathom {
namespace {

// The tag of the connecting exchange; every message of it is received before Run can start, so it never
// meets the tags 2*mb and 2*mb+1. (The stage runtime's tags for its own messages on this group are listed
// in parallel/stage_runtime.h; they stay clear of this one.)
constexpr int kConnectTag = Communicator::kMaxTag - 1;

// NCCL orders an operation after the compute stream it was given and its Wait() orders that stream; the
// stage's kernels and the pool that hands out the receive buffers must use that same stream.
void CheckStreams(Communicator& comm, Device device) {
#ifdef FATHOM_WITH_CUDA
  if (device == Device::kCUDA) CheckOnComputeStream(comm, "pipeline");
#endif
}

}  // namespace

PipelineExecutor::PipelineExecutor(Model& model, Communicator& pp, Shape activation_shape,
                                   DType activation_dtype, Device device)
    : model_(model),
      pp_(pp),
      shape_(std::move(activation_shape)),
      dtype_(activation_dtype),
      device_(device),
      stage_(pp.rank()),
      stages_(pp.size()) {
  ConnectNeighbours();
}

void PipelineExecutor::ConnectNeighbours() {
  if (stages_ == 1) return;
  CheckStreams(pp_, device_);
  std::vector<Tensor> buffers;
  std::vector<Request> requests;
  // Both directions with both neighbours in one batch, the same on every stage: NCCL then sets up every
  // connection the schedule will use in one symmetric handshake.
  for (int peer : {stage_ - 1, stage_ + 1}) {
    if (peer < 0 || peer >= stages_) continue;
    Tensor out = Tensor::Zeros({1}, dtype_, device_), in = Tensor::Empty({1}, dtype_, device_);
    requests.push_back(pp_.ISend(out, peer, kConnectTag));
    requests.push_back(pp_.IRecv(in, peer, kConnectTag));
    buffers.push_back(out);
    buffers.push_back(in);
  }
  WaitAll(requests);
}

void PipelineExecutor::Send(const Tensor& t, int peer, int tag, const char* what) {
  FATHOM_CHECK(
      t.defined() && t.dtype() == dtype_ && t.device() == device_ && t.numel() == NumElements(shape_),
      "[pipeline] stage ", stage_, " sends ", what, " ", t.shape_str(), " ", DTypeName(t.dtype()), " on ",
      DeviceName(t.device()), "; the pipeline's messages are ", ShapeString(shape_), " ", DTypeName(dtype_),
      " on ", DeviceName(device_));
  sends_.push_back(pp_.ISend(t, peer, tag));
  in_flight_.push_back(t);
}

MicroBatchStats PipelineExecutor::Forward(int mb, const MicroBatch& batch, const LossNormalizers& norm) {
  Tensor input;
  if (stage_ > 0) {
    input = Tensor::Empty(shape_, dtype_, device_);
    pp_.Recv(input, stage_ - 1, 2 * mb);
  }
  StageOutput out = model_.ForwardStage(mb, batch, input, norm);
  if (stage_ + 1 < stages_) Send(out.hidden, stage_ + 1, 2 * mb, "its output");
  return std::move(out.stats);
}

void PipelineExecutor::BackwardInput(int mb) {
  Tensor grad;
  if (stage_ + 1 < stages_) {
    grad = Tensor::Empty(shape_, dtype_, device_);
    pp_.Recv(grad, stage_ + 1, 2 * mb + 1);
  }
  Tensor dx = model_.BackwardInputStage(mb, grad);
  if (stage_ > 0) Send(dx, stage_ - 1, 2 * mb + 1, "its input gradient");
}

std::vector<MicroBatchStats> PipelineExecutor::Run(const std::vector<Instruction>& program,
                                                   const std::vector<MicroBatch>& batches,
                                                   const LossNormalizers& norm) {
  if (stages_ > 1) CheckStreams(pp_, device_);
  std::vector<MicroBatchStats> stats(batches.size());
  for (const Instruction& ins : program) {
    FATHOM_CHECK(ins.chunk == 0 && ins.kind != OpKind::kFB,
                 "pipeline executor runs single-chunk schedules; got ", ToString(ins));
    FATHOM_CHECK(ins.mb >= 0 && ins.mb < static_cast<int>(batches.size()), "instruction ", ToString(ins),
                 " for ", batches.size(), " micro-batches");
    switch (ins.kind) {
      case OpKind::kF:
        stats[ins.mb] = Forward(ins.mb, batches[ins.mb], norm);
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
  return stats;
}

}  // namespace fathom
