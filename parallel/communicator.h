// Communicator: the collectives fathom needs, for one group of ranks (the world, a pipeline group, an
// expert-parallel group, a data-parallel group, ...). One interface, several implementations:
//   MpiCommunicator    (parallel/mpi_communicator.h)   CPU tensors through Open MPI.
//   LocalCommunicator  (parallel/local_communicator.h) one process, size 1: every op is a copy.
//   NcclCommunicator   (parallel/cuda/nccl_communicator.h) CUDA tensors on streams (CUDA builds).
// Callers see no MPI or NCCL types: tensors, peers and roots as group ranks, sizes in elements.
//
// Operations come in two forms. The I-form starts the operation and returns a Request; the plain form is
// the I-form followed by Wait(). Until the Request has completed, the caller must neither read a receive
// buffer nor write a send buffer; the Request keeps the tensors' storage alive until then.
// Completion means: the data is in the receive buffers of this rank and the send buffers may be reused.
// (A stream-based implementation will define Wait() as ordering the caller's stream after the op.)
//
// Ordering. Collectives on one communicator must be started in the same order on every rank of the group
// (MPI's rule); Wait/Test order is free. Point-to-point messages between two ranks with the same tag are
// received in the order they were sent.
//
// Dtypes. Data movement (Send/Recv, AllToAllV, AllGather, Broadcast) accepts every dtype (bf16 and fp8 move
// as bytes). Reductions (AllReduce, ReduceScatter) accept f32, f64, i32, i64.
//
// Determinism. Reductions are computed by fathom, not by the transport: element i of a sum is
//   ((x_0[i] + x_1[i]) + x_2[i]) + ... + x_{size-1}[i]      (group-rank order, left to right)
// in the tensor's dtype (IEEE additions, nothing to contract), so results are bitwise equal on every rank,
// bitwise reproducible from run to run, and independent of the message size, the algorithms the transport
// picks and the network. AllReduce element i and ReduceScatter element i are the same sum, bit for bit.
// Max propagates NaN. (An NCCL implementation will document its own guarantee: equal on every rank, fixed
// for a given group size and buffer size.)
//
// Failures are not returned: a transport error or a violated contract ends the whole job with a message
// naming the rank (parallel/fault.h); arguments that break a contract below are bugs (FATHOM_CHECK).
//
// The watchdog: nothing waits forever. Every wait of a communicator that moves data between processes
// (Wait, the blocking forms, the destructor of a pending Request, a Test() that keeps answering false, and
// Split) carries a deadline, timeout_seconds(). When a wait outlasts it, the rank prints which operation
// on which group it waited for and which peers have not arrived (what each implementation can tell: see
// its header), and the job ends within seconds (FailJob, parallel/fault.h). The deadline is a property of
// a family of communicators: a group Split from a communicator shares its parent's deadline (one cell, not
// a copy), so setting it on the world sets it for every group of the mesh. A program raises it around
// waits that are legitimately long (the first step, a checkpoint save) with ScopedTimeout. The deadline
// carries the name of the setting it came from, so that a report names the key to raise
// (parallel.save_timeout_s during a save, not parallel.timeout_s).
// Thread safety: a communicator and its requests are used from one thread.
#ifndef FATHOM_PARALLEL_COMMUNICATOR_H_
#define FATHOM_PARALLEL_COMMUNICATOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "framework/tensor.h"

namespace fathom {

enum class ReduceOp { kSum, kMax };
std::string ReduceOpName(ReduceOp op);

// The watchdog's deadline of a family of communicators (see the top of this file): how long one wait may
// last, and the setting that chose it, which an expiry report names ("parallel.save_timeout_s"). A new
// family has the default, until a program sets its recipe's parallel.timeout_s.
struct Deadline {
  static constexpr double kDefaultSeconds = 300.0;
  static constexpr const char* kTimeoutKey = "parallel.timeout_s";
  double seconds = kDefaultSeconds;
  std::string setting = "the default deadline";
};

// A started operation. Move-only. Destroying (or move-assigning over) a pending Request waits for it: an
// operation in flight is never abandoned with its buffers.
class Request {
 public:
  // What an implementation provides; Wait() and Test() are only called until one of them reports
  // completion.
  class Impl {
   public:
    virtual ~Impl() = default;
    virtual void Wait() = 0;
    virtual bool Test() = 0;  // true once complete; drives progress, never blocks
  };

  Request() = default;  // an already complete request
  explicit Request(std::unique_ptr<Impl> impl);
  Request(Request&& other) noexcept = default;
  Request& operator=(Request&& other) noexcept;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  ~Request();

  void Wait();  // blocks until complete; no-op when already complete
  bool Test();  // true when complete (then Wait() returns at once)
  bool pending() const { return impl_ != nullptr; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Waits for every request, in order.
void WaitAll(std::vector<Request>& requests);

class Communicator {
 public:
  // The largest tag every implementation accepts (MPI guarantees MPI_TAG_UB >= 32767).
  static constexpr int kMaxTag = 32767;

  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;  // 0 .. size()-1, this process's rank in the group
  virtual int size() const = 0;
  // The group's name for messages and logs: "world", "pp", "ep", "edp", "dp", or what Split was given.
  virtual const std::string& name() const = 0;

  // Collective: partitions the group by `color` (>= 0); inside a part, ranks are ordered by (key, rank).
  // Returns this rank's part as a new communicator named `name`.
  virtual std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) = 0;

  // ---- point to point -------------------------------------------------------------------------------
  // REQUIRES: 0 <= peer < size(), 0 <= tag <= kMaxTag; the matching Recv's tensor has the same dtype and
  // element count (a mismatch ends the job). A rank may send to itself.
  virtual Request ISend(const Tensor& tensor, int peer, int tag) = 0;
  virtual Request IRecv(const Tensor& tensor, int peer, int tag) = 0;
  void Send(const Tensor& tensor, int peer, int tag) { ISend(tensor, peer, tag).Wait(); }
  void Recv(const Tensor& tensor, int peer, int tag) { IRecv(tensor, peer, tag).Wait(); }

  // ---- collectives ----------------------------------------------------------------------------------
  // All-to-all with per-peer counts, in elements. send holds the elements for peer 0, then peer 1, ...,
  // packed from element 0; recv receives the elements from peer 0, then peer 1, ..., packed from element 0.
  // REQUIRES: send_counts.size() == recv_counts.size() == size(); counts >= 0 (zero allowed);
  //   sum(send_counts) <= send.numel(), sum(recv_counts) <= recv.numel() (elements past the sums are left
  //   alone); recv_counts[j] on this rank == send_counts[rank()] on rank j; same dtype; no aliasing.
  virtual Request IAllToAllV(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                             const std::vector<int64_t>& recv_counts) = 0;
  void AllToAllV(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                 const std::vector<int64_t>& recv_counts) {
    IAllToAllV(send, send_counts, recv, recv_counts).Wait();
  }

  // In place: tensor <- op over the group of tensor (same shape on every rank). Deterministic (see top).
  // Meant for small tensors; large buffers go through ReduceScatter + AllGather (see the implementation's
  // header for the traffic each moves).
  virtual Request IAllReduce(const Tensor& tensor, ReduceOp op) = 0;
  void AllReduce(const Tensor& tensor, ReduceOp op) { IAllReduce(tensor, op).Wait(); }

  // Equal chunks: send (size() * n) is size() chunks of n elements; this rank receives the reduction of
  // every rank's chunk rank() into recv (n). REQUIRES send.numel() == size() * recv.numel(); same dtype; no
  // aliasing. Element i of recv is bitwise the element rank()*n + i of the AllReduce of send.
  virtual Request IReduceScatter(const Tensor& send, const Tensor& recv, ReduceOp op) = 0;
  void ReduceScatter(const Tensor& send, const Tensor& recv, ReduceOp op) {
    IReduceScatter(send, recv, op).Wait();
  }

  // send (n) from every rank -> recv (size() * n), rank j's elements at [j*n, (j+1)*n).
  // REQUIRES recv.numel() == size() * send.numel(); same dtype; no aliasing.
  virtual Request IAllGather(const Tensor& send, const Tensor& recv) = 0;
  void AllGather(const Tensor& send, const Tensor& recv) { IAllGather(send, recv).Wait(); }

  // tensor on `root` -> tensor on every rank (same shape and dtype everywhere).
  virtual Request IBroadcast(const Tensor& tensor, int root) = 0;
  void Broadcast(const Tensor& tensor, int root) { IBroadcast(tensor, root).Wait(); }

  virtual Request IBarrier() = 0;
  void Barrier() { IBarrier().Wait(); }

  // ---- the watchdog's deadline (see the top of this file) ---------------------------------------------
  static constexpr double kDefaultTimeoutSeconds = Deadline::kDefaultSeconds;
  // How long one wait may last before the job is ended; shared with the groups Split from this one.
  double timeout_seconds() const { return timeout_->seconds; }
  // The setting that chose it (Deadline::setting), named by an expiry report.
  const std::string& timeout_setting() const { return timeout_->setting; }
  // REQUIRES 0 < seconds <= kMaxTimeoutSeconds (FATHOM_CHECK; recipes validate parallel.timeout_s first).
  // Takes effect for waits that start afterwards (and for a Test() deadline already running).
  void set_timeout_seconds(double seconds, std::string setting = Deadline::kTimeoutKey);
  static constexpr double kMaxTimeoutSeconds = 7 * 24 * 3600.0;
  // The deadline cell itself, for a communicator of another kind that joins this family (an
  // NcclCommunicator created over this one as its bootstrap).
  std::shared_ptr<Deadline> shared_timeout() const { return timeout_; }

 protected:
  // A deadline of its own, kDefaultTimeoutSeconds.
  Communicator() = default;
  // Shares `timeout` (the cell of the communicator it was split from). REQUIRES timeout != nullptr.
  explicit Communicator(std::shared_ptr<Deadline> timeout);
  // The cell implementations hand to the groups they split off and to their requests.
  const std::shared_ptr<Deadline>& timeout_cell() const { return timeout_; }

  // Contract checks shared by the implementations (FATHOM_CHECK on violation, naming the op and group).
  void CheckPeer(const char* op, int peer) const;
  void CheckTag(const char* op, int tag) const;
  void CheckReducible(const char* op, const Tensor& t) const;
  void CheckCpu(const char* op, const Tensor& t) const;
  void CheckAllToAllV(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                      const std::vector<int64_t>& recv_counts) const;
  void CheckReduceScatter(const Tensor& send, const Tensor& recv) const;
  void CheckAllGather(const Tensor& send, const Tensor& recv) const;
  void CheckRoot(const char* op, int root) const;

 private:
  std::shared_ptr<Deadline> timeout_ = std::make_shared<Deadline>();
};

// Sets `comm`'s deadline (and so its family's) to `seconds`, chosen by `setting` (the recipe key a report
// names: "parallel.save_timeout_s"), for the scope, then restores the previous one: around the first step
// (NCCL connects lazily, kernels are selected), a checkpoint save, an evaluation. REQUIRES as
// set_timeout_seconds. Scopes nest; destroy them in reverse order.
class ScopedTimeout {
 public:
  ScopedTimeout(Communicator& comm, double seconds, std::string setting);
  ~ScopedTimeout();
  ScopedTimeout(const ScopedTimeout&) = delete;
  ScopedTimeout& operator=(const ScopedTimeout&) = delete;

 private:
  Communicator& comm_;
  Deadline previous_;
};

enum class CommBackend { kLocal, kMpi };

// "local" | "mpi".
absl::StatusOr<CommBackend> ParseCommBackend(const std::string& name);

// The world communicator of `backend`, named "world". kMpi: REQUIRES MpiInit() (parallel/mpi_communicator.h)
// and is collective over MPI_COMM_WORLD; returns an error when MPI is not initialised. kLocal: size 1.
absl::StatusOr<std::unique_ptr<Communicator>> CreateWorldCommunicator(CommBackend backend);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_COMMUNICATOR_H_
