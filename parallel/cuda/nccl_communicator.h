// NcclCommunicator: the Communicator over NCCL, for CUDA tensors, one process per GPU. A plain C++ header
// (no CUDA or NCCL types): built only with CUDA (parallel/cuda/ is skipped otherwise).
//
// Creation (Create, collective over a CPU `bootstrap` communicator, normally MpiCommunicator::World()):
//   - the GPU is local_rank % (visible CUDA devices), from LaunchEnv (parallel/launch_env.h). Every rank
//     publishes its device's UUID over the bootstrap; when two ranks would share a GPU (fewer visible GPUs
//     than ranks on a node) or a rank sees none, every rank ends the job with the same message naming the
//     rank, its local rank and its device count, exit code 2 (kExitInvalidInput): a launch error, never a
//     hang in NCCL's initialisation;
//   - rank 0 of the bootstrap creates NCCL's unique id, the bootstrap broadcasts it, every rank joins with
//     ncclCommInitRankConfig(rank = bootstrap.rank(), size = bootstrap.size()). Group name: bootstrap's.
//   NCCL's own environment (NCCL_NVLS_ENABLE, NCCL_DEBUG, ...) is left as the job set it.
//
// Streams. The communicator owns a communication stream (non-blocking, highest priority, so it neither
// serialises with the legacy default stream nor queues behind compute kernels) and is joined to the
// caller's compute stream (options.compute_stream, set_compute_stream; nullptr = the legacy default
// stream) by events:
//   start   an event recorded on the compute stream, which the communication stream waits for: the
//           operation takes effect after all work queued on the compute stream before the call, in stream
//           order, without the host waiting;
//   NCCL    the NCCL call(s), enqueued on the communication stream; then an event recorded there;
//   Wait()  makes the compute stream that was current when the operation started wait for that event: work
//           queued on it afterwards sees the result. The HOST DOES NOT WAIT. So "complete" in the sense of
//           parallel/communicator.h means "ordered before everything queued on the compute stream from now
//           on": the caller may then queue kernels that read receive buffers or overwrite send buffers.
//           Buffers must stay allocated until that work ran (arena memory does; cudaFree synchronises).
//   Test()  true once the operation has finished on the GPU (cudaEventQuery); never waits for the GPU.
//   Synchronize()  the host form: waits until every operation started so far has finished on the GPU.
// The watchdog (parallel/communicator.h): host-side waits (Synchronize, a Test() that keeps answering
// false, destruction, Split) poll ncclCommGetAsyncError and give up after timeout_seconds(), the deadline
// of the family: by default the bootstrap's (NcclOptions::timeout_seconds 0), so parallel.timeout_s set on
// the world governs the NCCL groups too, and ScopedTimeout on either raises both. A transport error or an
// expired deadline prints "[rank R] [nccl] ..." naming the group, the operation enqueued last and how long
// it waited, calls ncclCommAbort (no NCCL kernel is left spinning; a guard thread ends the process should
// the abort itself hang) and ends the job through FailJob (parallel/fault.h). NCCL cannot say which peer
// is missing: every member waiting on the host reports, so the silent ranks are the suspects. (A peer
// process that dies is also noticed by mpirun / srun --kill-on-bad-exit.) Wait() itself does not block the
// host (see Streams), so code that blocks the host on the compute stream (cudaStreamSynchronize, a
// synchronous copy of a loss) must call Synchronize() first: otherwise a stalled peer hangs that call,
// which no deadline covers.
//
// Mapping:
//   ISend / IRecv   ncclSend / ncclRecv. Point-to-point operations are batched: those started one after
//                   the other are enqueued together in one ncclGroupStart/End when the caller next calls
//                   into the communicator for anything else (Wait/Test of any request, a collective,
//                   Split, Flush, Synchronize, a change of compute stream). So "post every send and receive,
//                   then wait" (a ring, a pipeline's exchange) works as with MPI; NCCL would deadlock on
//                   unbatched sends and receives that need each other. Each batch still starts after the
//                   compute-stream work queued before its LAST operation was started.
//                   Tags are checked (0..kMaxTag) but NCCL has no tags: the k-th send from rank a to rank
//                   b matches the k-th receive on b from a, whatever the tags, so two ranks must post their
//                   point-to-point operations with each other in the same order (sizes must agree: a
//                   mismatch is undefined in NCCL, not detected). Sends to oneself need their receive in
//                   the same batch. Zero-element messages are not sent (both sides skip them).
//   IAllToAllV      one group: ncclSend / ncclRecv per peer with a non-zero count (zero counts skip the
//                   peer on both sides); this rank's own block is a cudaMemcpyAsync on the comm stream.
//   IAllReduce      ncclAllReduce in place; IReduceScatter ncclReduceScatter; IAllGather ncclAllGather;
//   IBroadcast      ncclBroadcast in place.
//   IBarrier        ncclAllReduce of one int32 of the communicator's scratch: in stream order, work queued
//                   on the compute stream after Wait() runs only once every rank's compute stream reached
//                   its IBarrier. The host is not synchronised; Barrier() followed by Synchronize() is the
//                   host-level barrier (it returns once every rank entered the barrier).
//   Split           ncclCommSplit (collective over this communicator): the child gets its own
//                   communication stream and inherits the compute stream and options.
//                   Split first meets the group in a barrier waited for on the host (the watchdog), so
//                   a missing member is reported instead of hanging ncclCommSplit.
// Collectives, the batches of point-to-point operations and Split are NCCL operations on one
// communicator: every rank must issue them in the same order (NCCL serialises them; MPI does not order
// point-to-point against collectives, NCCL does). Different communicators (world, split groups) run on
// different communication streams and may overlap on the GPU; as NCCL requires, operations on several
// communicators must be issued in the same relative order on every rank unless each can complete without
// the others. NCCL connects peers lazily, inside the first operation that needs a connection: that call
// (or the flush of a batch) can block the host until the peer issues its side.
//
// Dtypes (device tensors, Device::kCUDA, on this communicator's GPU; checked): data movement accepts f32,
// f64, bf16, i32, i64 and fp8 (e4m3/e5m2, moved as bytes); reductions accept f32, f64, bf16, i32, i64 (bf16
// sums round to bf16 at every step of NCCL's algorithm). No count limit (NCCL counts are size_t).
//
// Determinism - NOT the rank-order contract of parallel/communicator.h. NCCL reduces in the order its
// algorithm (ring or tree, chosen from the message size, topology and NCCL's tuning) visits the ranks, so a
// sum is generally not equal, bit for bit, to the MpiCommunicator's ((x_0 + x_1) + x_2) + ... (with two
// ranks it is: one addition, which commutes). What holds: for the ring and tree all-reduce every rank
// receives the same reduced bytes, so results are bitwise equal ACROSS ranks, and reproducible from run to
// run for a fixed group size, buffer size, topology, NCCL version and NCCL environment. ReduceScatter's
// element i is not guaranteed to equal bitwise element rank()*n + i of an AllReduce (different
// algorithms). Max is exact (order-free), but NaN propagation is NCCL's and not guaranteed.
//
// Failures: every CUDA and NCCL return code is checked (FATHOM_CHECK with the library's error string and
// the rank); asynchronous NCCL errors and timeouts end the job (see Streams). A communicator must outlive
// its requests (checked when it is destroyed). Destruction drains the communication stream (host wait with
// the timeout) and calls ncclCommDestroy, which NCCL makes a collective over the ranks of a node: destroy
// communicators in the same order on every rank. Thread safety: one thread uses a communicator and its
// requests; the thread's current CUDA device is set to the communicator's.
#ifndef FATHOM_PARALLEL_CUDA_NCCL_COMMUNICATOR_H_
#define FATHOM_PARALLEL_CUDA_NCCL_COMMUNICATOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "framework/cuda/stream.h"
#include "parallel/communicator.h"
#include "parallel/launch_env.h"

namespace fathom {

struct NcclOptions {
  // The stream the caller's kernels run on (see the top of this file); nullptr = the legacy default stream.
  cuda::Stream compute_stream = nullptr;
  // The deadline of host-side waits (see the top). 0: share the bootstrap's deadline (its family's cell);
  // > 0: a deadline of its own with this value.
  double timeout_seconds = 0;
};

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap` (which moves CPU tensors: MpiCommunicator, or LocalCommunicator for one
  // GPU). `env` gives the local rank that picks the GPU (LaunchEnvFromMpi() under MPI). Sets this thread's
  // current CUDA device. A launch with fewer GPUs than ranks on a node ends the job (see the top).
  // REQUIRES 0 <= options.timeout_seconds <= kMaxTimeoutSeconds.
  static std::unique_ptr<NcclCommunicator> Create(Communicator& bootstrap, const LaunchEnv& env,
                                                  const NcclOptions& options = NcclOptions());

  // The GPU of a local rank: local_rank % device_count. REQUIRES device_count > 0, local_rank >= 0.
  static int DeviceForLocalRank(int local_rank, int device_count);

  ~NcclCommunicator() override;

  int rank() const override;
  int size() const override;
  const std::string& name() const override;
  std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) override;

  Request ISend(const Tensor& tensor, int peer, int tag) override;
  Request IRecv(const Tensor& tensor, int peer, int tag) override;
  Request IAllToAllV(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                     const std::vector<int64_t>& recv_counts) override;
  Request IAllReduce(const Tensor& tensor, ReduceOp op) override;
  Request IReduceScatter(const Tensor& send, const Tensor& recv, ReduceOp op) override;
  Request IAllGather(const Tensor& send, const Tensor& recv) override;
  Request IBroadcast(const Tensor& tensor, int root) override;
  Request IBarrier() override;

  // The CUDA device this communicator runs on.
  int device() const;
  // The stream operations started from now on are ordered after, and that their Wait() orders.
  cuda::Stream compute_stream() const;
  void set_compute_stream(cuda::Stream stream);
  // The communicator's own stream (for tracing and tests; queue nothing on it).
  cuda::Stream comm_stream() const;

  // Enqueues the batched point-to-point operations started so far (one NCCL group). Never waits.
  void Flush();
  // Host wait: Flush(), then blocks until every operation started on this communicator has finished on the
  // GPU, polling NCCL's asynchronous error; an error or a wait longer than timeout_seconds() ends the job
  // (the watchdog, see the top). The compute stream is not waited for.
  void Synchronize();

  // Requests started on this communicator and not yet complete.
  int64_t pending_requests() const;

  struct State;  // NCCL and CUDA handles shared with the requests (nccl_communicator.cc)

 private:
  explicit NcclCommunicator(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

// For code that queues its own device work (ops, copies, pool allocations) around operations on `comm`:
// when `comm` is an NcclCommunicator, checks (FATHOM_CHECK naming `who` and the group) that there is a
// current ops::OpContext and cuda::DevicePool and that both run on the communicator's compute stream - the
// condition for its operations to start after that work and for Wait() to order the work after them. Any
// other communicator (host tensors) passes.
void CheckOnComputeStream(Communicator& comm, const char* who);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_CUDA_NCCL_COMMUNICATOR_H_
