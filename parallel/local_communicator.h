// LocalCommunicator: the single-process communicator (size 1, rank 0). Collectives are copies (or nothing,
// when in place); Split returns another size-1 communicator. Point-to-point messages to self are buffered:
// a send copies its tensor, a receive takes the oldest message with its tag; waiting on a receive no send
// can ever match (it would hang under MPI) is a bug and aborts. No MPI involved: usable without MpiInit.
// Nothing ever waits on another process, so the watchdog's deadline (communicator.h) is kept (and shared
// with split groups) but never expires.
#ifndef FATHOM_PARALLEL_LOCAL_COMMUNICATOR_H_
#define FATHOM_PARALLEL_LOCAL_COMMUNICATOR_H_

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace fathom {

class LocalCommunicator final : public Communicator {
 public:
  explicit LocalCommunicator(std::string name);

  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
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

  // Self-messages sent and not yet received (tests; a clean shutdown leaves none).
  int64_t unreceived() const;

 private:
  LocalCommunicator(std::string name, std::shared_ptr<Deadline> timeout);

  struct Mailbox;
  std::string name_;
  std::shared_ptr<Mailbox> mailbox_;  // shared with pending receive requests
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_LOCAL_COMMUNICATOR_H_
