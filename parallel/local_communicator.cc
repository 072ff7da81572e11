#include "parallel/local_communicator.h"

#include <cstring>

namespace fathom {

// Self-messages and receives posted before their send, both in order, so matching is MPI's
// non-overtaking rule: the oldest receive of a tag takes the oldest send of that tag.
struct LocalCommunicator::Mailbox {
  struct Message {
    int tag;
    Tensor data;  // a private copy (the send completes at once)
  };
  struct PostedRecv {
    int tag;
    Tensor dst;
    std::shared_ptr<bool> done;
  };
  std::deque<Message> messages;
  std::deque<PostedRecv> posted;
};

namespace {

void CopyMessage(const std::string& group, const Tensor& dst, const Tensor& src, int tag) {
  FATHOM_CHECK(dst.dtype() == src.dtype() && dst.numel() == src.numel(), "[recv] group ", group, " tag ", tag,
               ": received ", src.numel(), " ", DTypeName(src.dtype()), " elements into a tensor of ",
               dst.numel(), " ", DTypeName(dst.dtype()));
  if (src.nbytes()) std::memcpy(dst.raw(), src.raw(), src.nbytes());
}

class PendingSelfRecv final : public Request::Impl {
 public:
  PendingSelfRecv(std::string group, int tag, std::shared_ptr<bool> done)
      : group_(std::move(group)), tag_(tag), done_(std::move(done)) {}
  bool Test() override { return *done_; }
  void Wait() override {
    FATHOM_CHECK(*done_, "[recv] group ", group_, " (single process): waiting for a message with tag ", tag_,
                 " that no send has delivered; this would hang forever");
  }

 private:
  std::string group_;
  int tag_;
  std::shared_ptr<bool> done_;
};

}  // namespace

LocalCommunicator::LocalCommunicator(std::string name)
    : name_(std::move(name)), mailbox_(std::make_shared<Mailbox>()) {}

LocalCommunicator::LocalCommunicator(std::string name, std::shared_ptr<Deadline> timeout)
    : Communicator(std::move(timeout)), name_(std::move(name)), mailbox_(std::make_shared<Mailbox>()) {}

std::unique_ptr<Communicator> LocalCommunicator::Split(int color, int key, const std::string& name) {
  FATHOM_CHECK(color >= 0, "[split] group ", name_, ": color ", color, " must be >= 0");
  return std::unique_ptr<Communicator>(new LocalCommunicator(name, timeout_cell()));
}

Request LocalCommunicator::ISend(const Tensor& tensor, int peer, int tag) {
  CheckCpu("send", tensor);
  CheckPeer("send", peer);
  CheckTag("send", tag);
  auto& posted = mailbox_->posted;
  for (auto it = posted.begin(); it != posted.end(); ++it) {
    if (it->tag != tag) continue;
    CopyMessage(name_, it->dst, tensor, tag);
    *it->done = true;
    posted.erase(it);
    return Request();
  }
  mailbox_->messages.push_back({tag, tensor.Clone()});
  return Request();
}

Request LocalCommunicator::IRecv(const Tensor& tensor, int peer, int tag) {
  CheckCpu("recv", tensor);
  CheckPeer("recv", peer);
  CheckTag("recv", tag);
  auto& messages = mailbox_->messages;
  for (auto it = messages.begin(); it != messages.end(); ++it) {
    if (it->tag != tag) continue;
    CopyMessage(name_, tensor, it->data, tag);
    messages.erase(it);
    return Request();
  }
  auto done = std::make_shared<bool>(false);
  mailbox_->posted.push_back({tag, tensor, done});
  return Request(std::make_unique<PendingSelfRecv>(name_, tag, done));
}

Request LocalCommunicator::IAllToAllV(const Tensor& send, const std::vector<int64_t>& send_counts,
                                      const Tensor& recv, const std::vector<int64_t>& recv_counts) {
  CheckAllToAllV(send, send_counts, recv, recv_counts);
  FATHOM_CHECK(send_counts[0] == recv_counts[0], "[all_to_all_v] group ", name_, " (single process) sends ",
               send_counts[0], " elements to itself but expects ", recv_counts[0]);
  if (send_counts[0]) {
    std::memcpy(recv.raw(), send.raw(), static_cast<size_t>(send_counts[0]) * DTypeSize(send.dtype()));
  }
  return Request();
}

Request LocalCommunicator::IAllReduce(const Tensor& tensor, ReduceOp op) {
  CheckCpu("all_reduce", tensor);
  CheckReducible("all_reduce", tensor);
  return Request();  // the reduction over one rank is the tensor itself
}

Request LocalCommunicator::IReduceScatter(const Tensor& send, const Tensor& recv, ReduceOp op) {
  CheckReduceScatter(send, recv);
  if (send.nbytes()) std::memcpy(recv.raw(), send.raw(), send.nbytes());
  return Request();
}

Request LocalCommunicator::IAllGather(const Tensor& send, const Tensor& recv) {
  CheckAllGather(send, recv);
  if (send.nbytes()) std::memcpy(recv.raw(), send.raw(), send.nbytes());
  return Request();
}

Request LocalCommunicator::IBroadcast(const Tensor& tensor, int root) {
  CheckCpu("broadcast", tensor);
  CheckRoot("broadcast", root);
  return Request();
}

Request LocalCommunicator::IBarrier() { return Request(); }

int64_t LocalCommunicator::unreceived() const { return static_cast<int64_t>(mailbox_->messages.size()); }

}  // namespace fathom
