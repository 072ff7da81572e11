// NcclCommunicator's operations: streams and events, point-to-point batching, collectives, host waits
// under the watchdog. Creation, splits and destruction are in nccl_bootstrap.cc.
#include "parallel/cuda/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "framework/cuda/check.h"
#include "framework/cuda/device_pool.h"
#include "framework/ops.h"
#include "parallel/cuda/nccl_state.h"
#include "parallel/fault.h"

namespace fathom {

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

// Events are pooled: after the first steps no operation creates one.
cudaEvent_t State::AcquireEvent() {
  if (!free_events.empty()) {
    cudaEvent_t e = free_events.back();
    free_events.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

// The message goes out first (the abort may take a while, or in a broken transport never return), then
// the communicator is aborted so that no kernel of it is left spinning on the GPU, then the job ends.
void State::Fail(const std::string& message) {
  AnnounceFailure(message);
  std::thread([] {
    std::this_thread::sleep_for(std::chrono::duration<double>(kAbortGuardSeconds));
    std::_Exit(kExitFailure);  // the abort hung: end the process; the launcher ends the job
  }).detach();
  if (comm != nullptr) {
    ncclCommAbort(comm);  // its result does not matter any more
    comm = nullptr;       // aborted communicators are not destroyed
  }
  FailJob(kExitFailure, message);
}

void State::CheckAsyncError(const std::string& during) {
  ncclResult_t async = ncclSuccess;
  FATHOM_NCCL_CHECK(ncclCommGetAsyncError(comm, &async));
  if (async != ncclSuccess && async != ncclInProgress) {
    Fail(absl::StrCat("[nccl] ", Where(), ": NCCL reports an asynchronous error while ", during, ": ",
                      ncclGetErrorString(async), " (", LastNcclError(), ")"));
  }
}

std::string State::Expired(const std::string& during) const {
  return absl::StrCat("[nccl] watchdog: ", Where(), ": communication did not finish within ",
                      timeout->seconds, " s (", timeout->setting, ") while ", during, "; ", operations,
                      " operation(s) enqueued on the group so far, the latest ", last_operation,
                      ". NCCL cannot tell which peer is missing: every rank of the group that waits on the "
                      "host reports like this one, so the ranks not reporting are the ones to look at "
                      "(dead, stopped, or issuing operations in a different order); aborting the NCCL "
                      "communicator and ending the job");
}

void State::FlushP2p() {
  if (!p2p_batch) return;
  std::shared_ptr<Launch> batch = std::move(p2p_batch);
  p2p_batch.reset();
  UseDevice();
  FATHOM_CUDA_CHECK(cudaStreamWaitEvent(comm_stream, p2p_start, 0));
  ++operations;
  last_operation = absl::StrCat("a batch of ", p2p_ops.size(), " send(s)/recv(s) #", operations);
  batch->operation = last_operation;
  // One group: NCCL's sends and receives block their kernel until the peer's matching operation runs, so
  // a send and a receive that need each other (a ring) must progress together.
  FATHOM_NCCL_CHECK(ncclGroupStart());
  for (const P2pOp& op : p2p_ops) {
    if (op.send) {
      FATHOM_NCCL_CHECK(ncclSend(op.buffer, op.count, op.type, op.peer, comm, comm_stream));
    } else {
      FATHOM_NCCL_CHECK(ncclRecv(op.buffer, op.count, op.type, op.peer, comm, comm_stream));
    }
  }
  FATHOM_NCCL_CHECK(ncclGroupEnd());
  p2p_ops.clear();
  End(*batch);
}

// Every collective: earlier point-to-point batches first (NCCL must see the same order on every rank as
// the caller issued), then the comm stream joins the compute stream where it stands now.
std::shared_ptr<Launch> State::Begin(const char* operation, std::vector<Tensor> tensors) {
  FlushP2p();
  UseDevice();
  ++operations;
  last_operation = absl::StrCat(operation, " #", operations);
  FATHOM_CUDA_CHECK(cudaEventRecord(start, compute_stream));
  FATHOM_CUDA_CHECK(cudaStreamWaitEvent(comm_stream, start, 0));
  auto launch = std::make_shared<Launch>();
  launch->state = this;
  launch->wait_stream = compute_stream;
  launch->tensors = std::move(tensors);
  launch->operation = last_operation;
  return launch;
}

void State::End(Launch& launch) {
  launch.done = AcquireEvent();
  FATHOM_CUDA_CHECK(cudaEventRecord(launch.done, comm_stream));
}

// Polls instead of cudaStreamSynchronize: a blocked synchronize could not notice NCCL's asynchronous error
// nor give up, and a peer that stopped communicating would hang this rank for ever.
void State::WaitHost(const std::string& during) {
  UseDevice();
  const Clock::time_point begin = Clock::now();
  for (int64_t polls = 0;; ++polls) {
    cudaError_t q = cudaStreamQuery(comm_stream);
    if (q == cudaSuccess) break;
    FATHOM_CHECK(q == cudaErrorNotReady, "[nccl] ", Where(), ": cudaStreamQuery while ", during, ": ",
                 cudaGetErrorName(q), ": ", cudaGetErrorString(q));
    (void)cudaGetLastError();
    CheckAsyncError(during);
    if (SecondsSince(begin) > timeout->seconds) Fail(Expired(during));
    // Spin briefly (short collectives finish in microseconds), then stop burning the core.
    if (polls < 1000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  CheckAsyncError(during);
}

namespace {

class NcclRequest final : public Request::Impl {
 public:
  NcclRequest(std::shared_ptr<State> state, std::shared_ptr<Launch> launch)
      : state_(std::move(state)), launch_(std::move(launch)) {
    ++state_->pending;
  }
  ~NcclRequest() override { --state_->pending; }

  // Orders the compute stream after the operation; the host does not wait (nccl_communicator.h).
  void Wait() override {
    if (launch_->done == nullptr) state_->FlushP2p();
    state_->UseDevice();
    FATHOM_CUDA_CHECK(cudaStreamWaitEvent(launch_->wait_stream, launch_->done, 0));
  }

  bool Test() override {
    if (launch_->done == nullptr) state_->FlushP2p();
    cudaError_t q = cudaEventQuery(launch_->done);
    if (q == cudaSuccess) return true;
    FATHOM_CHECK(q == cudaErrorNotReady, "[nccl] ", state_->Where(),
                 ": cudaEventQuery: ", cudaGetErrorName(q), ": ", cudaGetErrorString(q));
    (void)cudaGetLastError();  // "not ready" is an answer, not an error for the next launch check to find
    state_->CheckAsyncError("testing a request");
    // A caller polling Test() is waiting on the host: the same deadline as Synchronize().
    if (!first_test_) first_test_ = Clock::now();
    if (SecondsSince(*first_test_) > state_->timeout->seconds) {
      state_->Fail(
          state_->Expired(absl::StrCat("polling a request of ", launch_->operation, " with Test()")));
    }
    return false;
  }

 private:
  std::shared_ptr<State> state_;
  std::shared_ptr<Launch> launch_;
  std::optional<Clock::time_point> first_test_;
};

// Data movement: fp8 travels as bytes; bf16 and the rest as themselves (count in elements either way).
ncclDataType_t MoveType(DType d) {
  switch (d) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kF64:
      return ncclFloat64;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kF8E4M3:
    case DType::kF8E5M2:
      return ncclUint8;
  }
  FATHOM_CHECK(false, "[nccl] no NCCL type for dtype ", static_cast<int>(d));
  return ncclUint8;
}

ncclDataType_t ReduceType(const char* op, DType d) {
  FATHOM_CHECK(
      d == DType::kF32 || d == DType::kF64 || d == DType::kBF16 || d == DType::kI32 || d == DType::kI64, "[",
      op, "] NCCL reduces f32, f64, bf16, i32 or i64, got ", DTypeName(d));
  return MoveType(d);
}

ncclRedOp_t NcclOp(ReduceOp op) { return op == ReduceOp::kSum ? ncclSum : ncclMax; }

// A CUDA tensor in memory this communicator's GPU can use. The pointer query costs a driver call per
// operation (microseconds); a tensor on another GPU would otherwise surface as a hang or garbage.
void CheckDeviceTensor(const State& s, const char* op, const Tensor& t) {
  FATHOM_CHECK(t.defined(), "[", op, "] undefined tensor on group ", s.name);
  FATHOM_CHECK(t.device() == Device::kCUDA, "[", op, "] group ", s.name, " (NCCL) moves CUDA tensors, got a ",
               DeviceName(t.device()), " tensor");
  if (t.nbytes() == 0) return;
  cudaPointerAttributes a{};
  FATHOM_CUDA_CHECK(cudaPointerGetAttributes(&a, t.raw()));
  const bool usable =
      a.type == cudaMemoryTypeManaged || (a.type == cudaMemoryTypeDevice && a.device == s.device);
  FATHOM_CHECK(usable, "[", op, "] ", s.Where(), ": tensor ", t.shape_str(), " ", DTypeName(t.dtype()),
               " is not device memory of GPU ", s.device, " (cudaMemoryType ", static_cast<int>(a.type),
               ", device ", a.device, ")");
}

void CheckSameDType(const char* op, const Tensor& a, const Tensor& b) {
  FATHOM_CHECK(a.dtype() == b.dtype(), "[", op, "] send is ", DTypeName(a.dtype()), ", recv is ",
               DTypeName(b.dtype()));
}

}  // namespace

int NcclCommunicator::rank() const { return state_->rank; }
int NcclCommunicator::size() const { return state_->size; }
const std::string& NcclCommunicator::name() const { return state_->name; }
int NcclCommunicator::device() const { return state_->device; }
cuda::Stream NcclCommunicator::compute_stream() const { return state_->compute_stream; }
void NcclCommunicator::set_compute_stream(cuda::Stream stream) { state_->compute_stream = stream; }
cuda::Stream NcclCommunicator::comm_stream() const { return state_->comm_stream; }
int64_t NcclCommunicator::pending_requests() const { return state_->pending; }

void NcclCommunicator::Flush() { state_->FlushP2p(); }

void NcclCommunicator::Synchronize() {
  state_->FlushP2p();
  state_->WaitHost("synchronizing");
}

namespace {

// Point to point: queued into the pending batch (see the header: enqueued at the next other call).
Request StartP2p(const std::shared_ptr<State>& state, bool send, const Tensor& t, int peer) {
  if (t.numel() == 0) return Request();  // both sides skip it: counts agree by contract
  State& s = *state;
  // A batch orders after one compute stream and its Wait() orders one: a new stream starts a new batch.
  if (s.p2p_batch && s.p2p_batch->wait_stream != s.compute_stream) s.FlushP2p();
  s.UseDevice();
  if (!s.p2p_batch) {
    s.p2p_batch = std::make_shared<Launch>();
    s.p2p_batch->state = &s;
    s.p2p_batch->wait_stream = s.compute_stream;
  }
  FATHOM_CUDA_CHECK(cudaEventRecord(s.p2p_start, s.compute_stream));
  s.p2p_ops.push_back(P2pOp{send, t.raw(), static_cast<size_t>(t.numel()), MoveType(t.dtype()), peer});
  s.p2p_batch->tensors.push_back(t);
  return Request(std::make_unique<NcclRequest>(state, s.p2p_batch));
}

Request Finish(const std::shared_ptr<State>& state, const std::shared_ptr<Launch>& launch) {
  state->End(*launch);
  return Request(std::make_unique<NcclRequest>(state, launch));
}

}  // namespace

Request NcclCommunicator::ISend(const Tensor& tensor, int peer, int tag) {
  CheckDeviceTensor(*state_, "send", tensor);
  CheckPeer("send", peer);
  CheckTag("send", tag);
  return StartP2p(state_, /*send=*/true, tensor, peer);
}

Request NcclCommunicator::IRecv(const Tensor& tensor, int peer, int tag) {
  CheckDeviceTensor(*state_, "recv", tensor);
  CheckPeer("recv", peer);
  CheckTag("recv", tag);
  return StartP2p(state_, /*send=*/false, tensor, peer);
}

Request NcclCommunicator::IAllToAllV(const Tensor& send, const std::vector<int64_t>& send_counts,
                                     const Tensor& recv, const std::vector<int64_t>& recv_counts) {
  State& s = *state_;
  CheckDeviceTensor(s, "all_to_all_v", send);
  CheckDeviceTensor(s, "all_to_all_v", recv);
  CheckSameDType("all_to_all_v", send, recv);
  FATHOM_CHECK(
      static_cast<int>(send_counts.size()) == s.size && static_cast<int>(recv_counts.size()) == s.size,
      "[all_to_all_v] ", send_counts.size(), " send and ", recv_counts.size(), " recv counts for ",
      s.Where());
  std::vector<int64_t> send_offset(s.size), recv_offset(s.size);
  int64_t send_total = 0, recv_total = 0;
  for (int j = 0; j < s.size; ++j) {
    FATHOM_CHECK(send_counts[j] >= 0 && recv_counts[j] >= 0, "[all_to_all_v] negative count for peer ", j);
    send_offset[j] = send_total;
    recv_offset[j] = recv_total;
    send_total += send_counts[j];
    recv_total += recv_counts[j];
  }
  FATHOM_CHECK(send_total <= send.numel(), "[all_to_all_v] send counts total ", send_total, " > send ",
               send.shape_str());
  FATHOM_CHECK(recv_total <= recv.numel(), "[all_to_all_v] recv counts total ", recv_total, " > recv ",
               recv.shape_str());
  FATHOM_CHECK(send.raw() != recv.raw() || send.nbytes() == 0, "[all_to_all_v] send and recv alias");
  FATHOM_CHECK(send_counts[s.rank] == recv_counts[s.rank], "[all_to_all_v] ", s.Where(), " sends itself ",
               send_counts[s.rank], " elements but expects ", recv_counts[s.rank]);

  std::shared_ptr<Launch> launch = s.Begin("all_to_all_v", {send, recv});
  const size_t es = DTypeSize(send.dtype());
  const ncclDataType_t type = MoveType(send.dtype());
  const char* send_base = static_cast<const char*>(send.raw());
  char* recv_base = static_cast<char*>(recv.raw());
  // This rank's own block is a device copy: no NCCL connection to oneself needed.
  if (send_counts[s.rank] > 0) {
    FATHOM_CUDA_CHECK(cudaMemcpyAsync(
        recv_base + recv_offset[s.rank] * es, send_base + send_offset[s.rank] * es,
        static_cast<size_t>(send_counts[s.rank]) * es, cudaMemcpyDeviceToDevice, s.comm_stream));
  }
  FATHOM_NCCL_CHECK(ncclGroupStart());
  for (int j = 0; j < s.size; ++j) {
    if (j == s.rank) continue;
    if (send_counts[j] > 0) {
      FATHOM_NCCL_CHECK(ncclSend(send_base + send_offset[j] * es, static_cast<size_t>(send_counts[j]), type,
                                 j, s.comm, s.comm_stream));
    }
    if (recv_counts[j] > 0) {
      FATHOM_NCCL_CHECK(ncclRecv(recv_base + recv_offset[j] * es, static_cast<size_t>(recv_counts[j]), type,
                                 j, s.comm, s.comm_stream));
    }
  }
  FATHOM_NCCL_CHECK(ncclGroupEnd());
  return Finish(state_, launch);
}

Request NcclCommunicator::IAllReduce(const Tensor& tensor, ReduceOp op) {
  State& s = *state_;
  CheckDeviceTensor(s, "all_reduce", tensor);
  const ncclDataType_t type = ReduceType("all_reduce", tensor.dtype());
  std::shared_ptr<Launch> launch = s.Begin("all_reduce", {tensor});
  if (tensor.numel() > 0) {
    FATHOM_NCCL_CHECK(ncclAllReduce(tensor.raw(), tensor.raw(), static_cast<size_t>(tensor.numel()), type,
                                    NcclOp(op), s.comm, s.comm_stream));
  }
  return Finish(state_, launch);
}

Request NcclCommunicator::IReduceScatter(const Tensor& send, const Tensor& recv, ReduceOp op) {
  State& s = *state_;
  CheckDeviceTensor(s, "reduce_scatter", send);
  CheckDeviceTensor(s, "reduce_scatter", recv);
  CheckSameDType("reduce_scatter", send, recv);
  const ncclDataType_t type = ReduceType("reduce_scatter", send.dtype());
  FATHOM_CHECK(send.numel() == s.size * recv.numel(), "[reduce_scatter] send ", send.shape_str(),
               " must hold ", s.size, " (size of group ", s.name, ") chunks of recv ", recv.shape_str());
  FATHOM_CHECK(send.raw() != recv.raw() || recv.nbytes() == 0, "[reduce_scatter] send and recv alias");
  std::shared_ptr<Launch> launch = s.Begin("reduce_scatter", {send, recv});
  if (recv.numel() > 0) {
    FATHOM_NCCL_CHECK(ncclReduceScatter(send.raw(), recv.raw(), static_cast<size_t>(recv.numel()), type,
                                        NcclOp(op), s.comm, s.comm_stream));
  }
  return Finish(state_, launch);
}

Request NcclCommunicator::IAllGather(const Tensor& send, const Tensor& recv) {
  State& s = *state_;
  CheckDeviceTensor(s, "all_gather", send);
  CheckDeviceTensor(s, "all_gather", recv);
  CheckSameDType("all_gather", send, recv);
  FATHOM_CHECK(recv.numel() == s.size * send.numel(), "[all_gather] recv ", recv.shape_str(), " must hold ",
               s.size, " (size of group ", s.name, ") copies of send ", send.shape_str());
  FATHOM_CHECK(send.raw() != recv.raw() || send.nbytes() == 0, "[all_gather] send and recv alias");
  std::shared_ptr<Launch> launch = s.Begin("all_gather", {send, recv});
  if (send.numel() > 0) {
    FATHOM_NCCL_CHECK(ncclAllGather(send.raw(), recv.raw(), static_cast<size_t>(send.numel()),
                                    MoveType(send.dtype()), s.comm, s.comm_stream));
  }
  return Finish(state_, launch);
}

Request NcclCommunicator::IBroadcast(const Tensor& tensor, int root) {
  State& s = *state_;
  CheckDeviceTensor(s, "broadcast", tensor);
  CheckRoot("broadcast", root);
  std::shared_ptr<Launch> launch = s.Begin("broadcast", {tensor});
  if (tensor.numel() > 0) {
    FATHOM_NCCL_CHECK(ncclBroadcast(tensor.raw(), tensor.raw(), static_cast<size_t>(tensor.numel()),
                                    MoveType(tensor.dtype()), root, s.comm, s.comm_stream));
  }
  return Finish(state_, launch);
}

// A one-element all-reduce rather than a host barrier: it orders streams without stopping the host, and
// it needs every rank's comm stream to reach it, which is what a barrier in stream order means.
Request NcclCommunicator::IBarrier() {
  State& s = *state_;
  std::shared_ptr<Launch> launch = s.Begin("barrier", {});
  FATHOM_NCCL_CHECK(
      ncclAllReduce(s.barrier_scratch, s.barrier_scratch, 1, ncclInt32, ncclSum, s.comm, s.comm_stream));
  return Finish(state_, launch);
}

void CheckOnComputeStream(Communicator& comm, const char* who) {
  auto* nccl = dynamic_cast<NcclCommunicator*>(&comm);
  if (nccl == nullptr) return;
  const ops::OpContext* ctx = ops::CurrentOpContext();
  const cuda::DevicePool* pool = cuda::CurrentPool();
  FATHOM_CHECK(ctx != nullptr && pool != nullptr && ctx->stream() == nccl->compute_stream() &&
                   pool->stream() == ctx->stream(),
               "[", who, "] group ", comm.name(),
               ": device work around NCCL operations needs a current ops::OpContext and cuda::DevicePool on "
               "the NCCL communicator's compute stream, or the operations are not ordered with it");
}

}  // namespace fathom
