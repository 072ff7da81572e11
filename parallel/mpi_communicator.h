// MpiCommunicator: the Communicator over MPI (Open MPI 4.1), for CPU tensors.
//
// Mapping (non-blocking MPI everywhere; the blocking forms wait on it; one MPI operation per request, so
// requests progress and complete exactly as MPI's own non-blocking operations do, in any wait order):
//   ISend / IRecv   MPI_Isend / MPI_Irecv; a receive checks that the message had exactly the tensor's count
//   IAllToAllV      MPI_Ialltoallv (counts and displacements in elements; each must fit in an int)
//   IAllGather      MPI_Iallgather
//   IBroadcast      MPI_Ibcast
//   IBarrier        MPI_Ibarrier
//   IReduceScatter  MPI_Ialltoall of the chunks; on completion each rank reduces the size() copies of its
//                   chunk in rank order. Moves (size-1)/size x the send buffer per rank, like a ring.
//   IAllReduce      MPI_Iallgather of every rank's tensor; on completion each rank reduces the size() copies
//                   in rank order. Moves (size-1) x the tensor per rank and needs size() x its memory as
//                   scratch: meant for small tensors (losses, norms, expert loads). For large buffers use
//                   ReduceScatter + AllGather (what ZeRO-1 does), 2 (size-1)/size x the buffer.
// So MPI only ever moves bytes; every arithmetic operation is fathom's, in a fixed order, on identical
// inputs on every rank (the determinism contract of parallel/communicator.h). Nothing depends on the
// algorithms Open MPI selects, which change with message size and tuning.
//
// Why not a two-phase all-reduce (exchange slices, reduce, gather slices) with ring-like traffic: its
// second phase can only start when the owning rank calls Wait/Test, so a rank waiting on it while a peer
// sits in a blocking call before its own Wait would deadlock - a program that is correct with MPI's own
// non-blocking collectives. One MPI operation per request cannot.
//
// Progress: Open MPI progresses non-blocking operations inside MPI calls (there is no progress thread), so
// work overlaps communication when the caller Test()s now and then or when the transport moves data by
// itself (shared memory, eager messages).
//
// Every MPI return code is checked: errors end the job with "[rank R] MPI_Xxx on group G failed: ..."
// (parallel/fault.h). A communicator must outlive its requests (checked when it is destroyed).
//
// The watchdog (parallel/communicator.h; how it works: parallel/mpi_watchdog.h): every wait polls
// MPI_Test against the family's deadline; when it passes, the rank asks the operation's peers over a side
// channel and reports which have not arrived (for a collective: the members that have not started it, and
// what each is waiting for instead; for a message: whether the peer posted its side; a peer that does not
// answer is stopped, dead or busy elsewhere), then the job ends. World() duplicates MPI_COMM_WORLD without
// blocking and Split() meets in a barrier first, so neither can hang on a missing rank either; the world
// starts with Communicator::kDefaultTimeoutSeconds.
#ifndef FATHOM_PARALLEL_MPI_COMMUNICATOR_H_
#define FATHOM_PARALLEL_MPI_COMMUNICATOR_H_

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace fathom {

// Process lifetime of MPI. MpiInit: MPI_Init_thread(MPI_THREAD_FUNNELED: only the main thread calls MPI),
// InstallMpiErrorHandling (parallel/fault.h) and the watchdog's side channel; collective over the launched
// ranks. MpiFinalize: every rank meets in a barrier under the watchdog (deadline `timeout_seconds`: a rank
// that never comes is reported instead of hanging the others in MPI_Finalize), then fathom's private
// communicators are freed and MPI_Finalize runs; communicators still alive then are left to MPI.
void MpiInit(int* argc, char*** argv);
void MpiFinalize(double timeout_seconds = Communicator::kDefaultTimeoutSeconds);
// MPI_Init has run and MPI_Finalize has not.
bool MpiIsActive();

class MpiCommunicator final : public Communicator {
 public:
  // A duplicate of MPI_COMM_WORLD named "world". Collective over MPI_COMM_WORLD. REQUIRES MpiIsActive().
  static std::unique_ptr<MpiCommunicator> World();

  ~MpiCommunicator() override;

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

  // Requests started on this communicator and not yet complete.
  int64_t pending_requests() const;

  struct State;  // MPI handles and bookkeeping shared with the requests (mpi_communicator.cc)

 private:
  explicit MpiCommunicator(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_MPI_COMMUNICATOR_H_
