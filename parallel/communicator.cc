#include "parallel/communicator.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "parallel/local_communicator.h"
#include "parallel/mpi_communicator.h"

namespace fathom {

std::string ReduceOpName(ReduceOp op) { return op == ReduceOp::kSum ? "sum" : "max"; }

Request::Request(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Request& Request::operator=(Request&& other) noexcept {
  if (this != &other) {
    Wait();  // never drop an operation in flight
    impl_ = std::move(other.impl_);
  }
  return *this;
}

// Waiting here rather than asserting: a pending MPI operation still reads and writes its buffers, and MPI
// forbids freeing the request of a non-blocking collective, so the only safe way to let go of one is to
// complete it.
Request::~Request() { Wait(); }

void Request::Wait() {
  if (!impl_) return;
  impl_->Wait();
  impl_.reset();
}

bool Request::Test() {
  if (!impl_) return true;
  if (!impl_->Test()) return false;
  impl_.reset();
  return true;
}

void WaitAll(std::vector<Request>& requests) {
  for (Request& r : requests) r.Wait();
}

Communicator::Communicator(std::shared_ptr<Deadline> timeout) : timeout_(std::move(timeout)) {
  FATHOM_CHECK(timeout_ != nullptr, "a communicator needs a deadline cell");
}

void Communicator::set_timeout_seconds(double seconds, std::string setting) {
  FATHOM_CHECK(seconds > 0 && seconds <= kMaxTimeoutSeconds, "[watchdog] group ", name(), ": timeout ",
               seconds, " s (", setting, ") outside (0, ", kMaxTimeoutSeconds, "]");
  timeout_->seconds = seconds;
  timeout_->setting = std::move(setting);
}

ScopedTimeout::ScopedTimeout(Communicator& comm, double seconds, std::string setting)
    : comm_(comm), previous_(*comm.shared_timeout()) {
  comm_.set_timeout_seconds(seconds, std::move(setting));
}

ScopedTimeout::~ScopedTimeout() {
  comm_.set_timeout_seconds(previous_.seconds, std::move(previous_.setting));
}

void Communicator::CheckPeer(const char* op, int peer) const {
  FATHOM_CHECK(peer >= 0 && peer < size(), "[", op, "] peer ", peer, " outside group ", name(), " of size ",
               size());
}

void Communicator::CheckTag(const char* op, int tag) const {
  FATHOM_CHECK(tag >= 0 && tag <= kMaxTag, "[", op, "] tag ", tag, " outside [0, ", kMaxTag, "]");
}

void Communicator::CheckCpu(const char* op, const Tensor& t) const {
  FATHOM_CHECK(t.defined(), "[", op, "] undefined tensor on group ", name());
  FATHOM_CHECK(t.device() == Device::kCPU, "[", op, "] group ", name(), " moves CPU tensors, got a ",
               DeviceName(t.device()), " tensor");
}

void Communicator::CheckReducible(const char* op, const Tensor& t) const {
  DType d = t.dtype();
  FATHOM_CHECK(d == DType::kF32 || d == DType::kF64 || d == DType::kI32 || d == DType::kI64, "[", op,
               "] reduces f32, f64, i32 or i64, got ", DTypeName(d));
}

void Communicator::CheckAllToAllV(const Tensor& send, const std::vector<int64_t>& send_counts,
                                  const Tensor& recv, const std::vector<int64_t>& recv_counts) const {
  CheckCpu("all_to_all_v", send);
  CheckCpu("all_to_all_v", recv);
  FATHOM_CHECK(send.dtype() == recv.dtype(), "[all_to_all_v] send is ", DTypeName(send.dtype()), ", recv is ",
               DTypeName(recv.dtype()));
  FATHOM_CHECK(
      static_cast<int>(send_counts.size()) == size() && static_cast<int>(recv_counts.size()) == size(),
      "[all_to_all_v] ", send_counts.size(), " send and ", recv_counts.size(), " recv counts for group ",
      name(), " of size ", size());
  int64_t send_total = 0, recv_total = 0;
  for (int j = 0; j < size(); ++j) {
    FATHOM_CHECK(send_counts[j] >= 0 && recv_counts[j] >= 0, "[all_to_all_v] negative count for peer ", j);
    send_total += send_counts[j];
    recv_total += recv_counts[j];
  }
  FATHOM_CHECK(send_total <= send.numel(), "[all_to_all_v] send counts total ", send_total, " > send ",
               send.shape_str());
  FATHOM_CHECK(recv_total <= recv.numel(), "[all_to_all_v] recv counts total ", recv_total, " > recv ",
               recv.shape_str());
  FATHOM_CHECK(send.raw() != recv.raw() || send.nbytes() == 0, "[all_to_all_v] send and recv alias");
}

void Communicator::CheckReduceScatter(const Tensor& send, const Tensor& recv) const {
  CheckCpu("reduce_scatter", send);
  CheckCpu("reduce_scatter", recv);
  CheckReducible("reduce_scatter", send);
  FATHOM_CHECK(send.dtype() == recv.dtype(), "[reduce_scatter] send is ", DTypeName(send.dtype()),
               ", recv is ", DTypeName(recv.dtype()));
  FATHOM_CHECK(send.numel() == size() * recv.numel(), "[reduce_scatter] send ", send.shape_str(),
               " must hold ", size(), " (size of group ", name(), ") chunks of recv ", recv.shape_str());
  FATHOM_CHECK(send.raw() != recv.raw() || recv.nbytes() == 0, "[reduce_scatter] send and recv alias");
}

void Communicator::CheckAllGather(const Tensor& send, const Tensor& recv) const {
  CheckCpu("all_gather", send);
  CheckCpu("all_gather", recv);
  FATHOM_CHECK(send.dtype() == recv.dtype(), "[all_gather] send is ", DTypeName(send.dtype()), ", recv is ",
               DTypeName(recv.dtype()));
  FATHOM_CHECK(recv.numel() == size() * send.numel(), "[all_gather] recv ", recv.shape_str(), " must hold ",
               size(), " (size of group ", name(), ") copies of send ", send.shape_str());
  FATHOM_CHECK(send.raw() != recv.raw() || send.nbytes() == 0, "[all_gather] send and recv alias");
}

void Communicator::CheckRoot(const char* op, int root) const {
  FATHOM_CHECK(root >= 0 && root < size(), "[", op, "] root ", root, " outside group ", name(), " of size ",
               size());
}

absl::StatusOr<CommBackend> ParseCommBackend(const std::string& name) {
  if (name == "local") return CommBackend::kLocal;
  if (name == "mpi") return CommBackend::kMpi;
  return absl::InvalidArgumentError(
      absl::StrCat("communicator backend '", name, "' is not one of: local, mpi"));
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateWorldCommunicator(CommBackend backend) {
  if (backend == CommBackend::kLocal) return std::unique_ptr<Communicator>(new LocalCommunicator("world"));
  if (!MpiIsActive()) {
    return absl::FailedPreconditionError(
        "the MPI communicator needs MPI to be initialised (MpiInit) and not yet finalised");
  }
  return std::unique_ptr<Communicator>(MpiCommunicator::World());
}

}  // namespace fathom
