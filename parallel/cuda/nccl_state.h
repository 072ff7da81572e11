// Private to parallel/cuda/nccl_*.cc: the state an NcclCommunicator shares with its requests, split along
// the file seam of issue 9 - nccl_bootstrap.cc creates communicators (device choice, unique id, init,
// split, destruction), nccl_communicator.cc runs operations on them (streams, batching, waits, the
// watchdog). Nothing outside those two files includes it. Contracts: parallel/cuda/nccl_communicator.h.
#ifndef FATHOM_PARALLEL_CUDA_NCCL_STATE_H_
#define FATHOM_PARALLEL_CUDA_NCCL_STATE_H_

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "framework/cuda/check.h"
#include "parallel/cuda/nccl_communicator.h"
#include "parallel/fault.h"

namespace fathom {

// NCCL's last-error text says what failed in detail (which peer, which transport); its result codes do not.
inline std::string LastNcclError() {
  const char* text = ncclGetLastError(nullptr);
  return text != nullptr ? std::string(text) : std::string();
}

}  // namespace fathom

// Several ranks print into one log, so the message names the rank as well as the call.
#define FATHOM_NCCL_CHECK(call)                                                                       \
  do {                                                                                                \
    ncclResult_t nccl_rc_ = (call);                                                                   \
    FATHOM_CHECK(nccl_rc_ == ncclSuccess, "[nccl] rank ", ::fathom::ProcessRank(), ": ", #call, ": ", \
                 ncclGetErrorString(nccl_rc_), " (", LastNcclError(), ")");                           \
  } while (0)

namespace fathom {

// One point-to-point operation waiting for its batch to be enqueued.
struct P2pOp {
  bool send = false;
  void* buffer = nullptr;
  size_t count = 0;
  ncclDataType_t type = ncclUint8;
  int peer = 0;
};

struct Launch;

struct NcclCommunicator::State {
  ncclComm_t comm = nullptr;
  std::string name;
  int rank = 0;
  int size = 1;
  int device = 0;
  std::shared_ptr<Deadline> timeout;  // the deadline cell of the communicator's family
  cudaStream_t comm_stream = nullptr;
  cudaStream_t compute_stream = nullptr;
  cudaEvent_t start = nullptr;         // the compute stream's position when a collective starts
  cudaEvent_t p2p_start = nullptr;     // the pending batch's position, re-recorded by each of its operations
  int32_t* barrier_scratch = nullptr;  // (1) i32 on the device, what IBarrier all-reduces
  std::vector<cudaEvent_t> free_events;
  // Point-to-point operations started and not yet enqueued, and the launch their requests share.
  std::vector<P2pOp> p2p_ops;
  std::shared_ptr<Launch> p2p_batch;
  int64_t pending = 0;  // requests started and not complete
  // For the watchdog's message: operations enqueued so far and the name of the latest.
  int64_t operations = 0;
  std::string last_operation = "none";

  ~State();
  std::string Where() const {
    return absl::StrCat("group ", name, " (rank ", rank, " of ", size, ", GPU ", device, ")");
  }
  void UseDevice() const { FATHOM_CUDA_CHECK(cudaSetDevice(device)); }
  cudaEvent_t AcquireEvent();
  void ReleaseEvent(cudaEvent_t e) { free_events.push_back(e); }
  void CheckAsyncError(const std::string& during);
  void FlushP2p();
  // `operation` names it in the watchdog's message ("all_reduce").
  std::shared_ptr<Launch> Begin(const char* operation, std::vector<Tensor> tensors);
  void End(Launch& launch);
  // Blocks the host until the comm stream is idle, under the watchdog (`during`: what for, for messages).
  void WaitHost(const std::string& during);
  // Ends the job with `message`: prints it, aborts the NCCL communicator (ncclCommAbort: kernels of it
  // that still spin are stopped, nothing is left hanging on the GPU), then FailJob. Should the abort
  // itself hang, a guard thread ends the process after kAbortGuardSeconds (the launcher then ends the job).
  [[noreturn]] void Fail(const std::string& message);
  // The watchdog's message for a host wait `during` ... that outlived the deadline.
  std::string Expired(const std::string& during) const;
};

inline constexpr double kAbortGuardSeconds = 10.0;

using State = NcclCommunicator::State;

// One enqueued unit of work - a collective, or a batch of point-to-point operations - and what its
// requests share: the event marking its end on the comm stream (null while a batch is not enqueued yet),
// the compute stream their Wait() orders, and the tensors it uses.
struct Launch {
  State* state = nullptr;  // outlives the launch: requests hold the state, the state holds the batch
  cudaStream_t wait_stream = nullptr;
  cudaEvent_t done = nullptr;
  std::vector<Tensor> tensors;
  std::string operation;  // "all_reduce #12", for the watchdog
  ~Launch() {
    if (done != nullptr) state->ReleaseEvent(done);  // re-recording a pending event is legal
  }
};

// Bootstrap side (nccl_bootstrap.cc): a blocking-mode config named `name`, and the state of a new NCCL
// communicator (streams, events, scratch) on `device`.
ncclConfig_t MakeConfig(const std::string& name);
std::shared_ptr<State> MakeState(ncclComm_t comm, const std::string& name, int device,
                                 std::shared_ptr<Deadline> timeout, cudaStream_t compute_stream);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_CUDA_NCCL_STATE_H_
