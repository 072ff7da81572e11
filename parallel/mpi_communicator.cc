#include "parallel/mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>

#include "absl/strings/str_cat.h"
#include "parallel/fault.h"
#include "parallel/mpi_watchdog.h"

namespace fathom {

struct MpiCommunicator::State {
  MPI_Comm comm = MPI_COMM_NULL;
  std::string name;
  int rank = 0;
  int size = 1;
  int64_t pending = 0;                  // requests started and not complete
  std::unique_ptr<GroupRecord> record;  // members and counters, for the watchdog
  std::shared_ptr<Deadline> timeout;    // the deadline cell of the communicator's family

  // What a request started now waits for (counting it on the record).
  WaitSite Collective(const char* op, const char* call) {
    WaitSite site{op, call, record.get()};
    site.collective = record->StartCollective();
    return site;
  }
  WaitSite PointToPoint(bool send, int peer, int tag) {
    WaitSite site{send ? "send" : "recv", send ? "MPI_Isend" : "MPI_Irecv", record.get()};
    site.send = send;
    site.peer = peer;
    site.tag = tag;
    site.message = send ? record->StartSend(peer, tag) : record->StartRecv(peer, tag);
    return site;
  }
};

using State = MpiCommunicator::State;

namespace {

MPI_Datatype MpiType(DType d) {
  switch (d) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kF64:
      return MPI_DOUBLE;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI64:
      return MPI_INT64_T;
    case DType::kBF16:
      return MPI_UINT16_T;  // moved as bits, never reduced
    case DType::kF8E4M3:
    case DType::kF8E5M2:
      return MPI_UINT8_T;
  }
  FATHOM_CHECK(false, "no MPI datatype for dtype ", static_cast<int>(d));
  return MPI_DATATYPE_NULL;
}

// MPI counts and displacements are ints; a larger message would need derived datatypes, which nothing in
// fathom needs on CPU yet.
int MpiCount(int64_t n, const char* op, const std::string& group) {
  FATHOM_CHECK(n >= 0 && n <= INT_MAX, "[", op, "] group ", group, ": ", n,
               " elements exceed MPI's int count limit");
  return static_cast<int>(n);
}

template <class T>
inline T Combine(ReduceOp op, T acc, T x) {
  if (op == ReduceOp::kSum) return acc + x;
  if constexpr (std::is_floating_point_v<T>) {
    return (std::isnan(x) || x > acc) ? x : acc;  // NaN wins, whichever rank holds it
  } else {
    return x > acc ? x : acc;
  }
}

// out[i] = op(... op(op(parts[0][i], parts[1][i]), parts[2][i]) ..., parts[n_parts-1][i]), parts of `len`
// elements laid out one after the other: the fixed rank order every reduction of fathom uses.
template <class T>
void ReduceInRankOrder(T* out, const T* parts, int64_t len, int n_parts, ReduceOp op) {
  for (int64_t i = 0; i < len; ++i) out[i] = parts[i];
  for (int j = 1; j < n_parts; ++j) {
    const T* p = parts + static_cast<int64_t>(j) * len;
    for (int64_t i = 0; i < len; ++i) out[i] = Combine(op, out[i], p[i]);
  }
}

void ReduceInRankOrder(const Tensor& out, const Tensor& parts, int64_t len, int n_parts, ReduceOp op) {
  switch (out.dtype()) {
    case DType::kF32:
      ReduceInRankOrder(out.data<float>(), parts.data<float>(), len, n_parts, op);
      break;
    case DType::kF64:
      ReduceInRankOrder(out.data<double>(), parts.data<double>(), len, n_parts, op);
      break;
    case DType::kI32:
      ReduceInRankOrder(out.data<int32_t>(), parts.data<int32_t>(), len, n_parts, op);
      break;
    case DType::kI64:
      ReduceInRankOrder(out.data<int64_t>(), parts.data<int64_t>(), len, n_parts, op);
      break;
    default:
      FATHOM_CHECK(false, "[reduce] dtype ", DTypeName(out.dtype()), " is not reducible");
  }
}

// Counts every request of a communicator, so destroying a communicator under a request is caught.
class PendingCount {
 public:
  explicit PendingCount(std::shared_ptr<State> state) : state_(std::move(state)) { ++state_->pending; }
  ~PendingCount() { --state_->pending; }
  State& state() const { return *state_; }

 private:
  std::shared_ptr<State> state_;
};

// One MPI request; `on_complete` runs once, after it completed, with its status (receive checks, local
// reductions). Tensors and count arrays the operation uses live here until then. Waits go through the
// watchdog (parallel/mpi_watchdog.h) with the deadline of the communicator's family.
class MpiRequest final : public Request::Impl {
 public:
  MpiRequest(std::shared_ptr<State> state, const WaitSite& site) : count_(std::move(state)), site_(site) {}

  MPI_Request* handle() { return &request_; }
  std::vector<Tensor> tensors;
  std::vector<std::vector<int>> arrays;
  std::function<void(const MPI_Status&)> on_complete;

  void Wait() override {
    MPI_Status status;
    WatchdogWait(&request_, &status, site_, *count_.state().timeout);
    Finish(status);
  }
  bool Test() override {
    MPI_Status status;
    const bool done = WatchdogTest(&request_, &status, site_, *count_.state().timeout, &first_test_);
    if (done) Finish(status);
    return done;
  }

 private:
  void Finish(const MPI_Status& status) {
    if (on_complete) on_complete(status);
    on_complete = nullptr;
    tensors.clear();
  }

  PendingCount count_;
  WaitSite site_;
  std::optional<std::chrono::steady_clock::time_point> first_test_;
  MPI_Request request_ = MPI_REQUEST_NULL;
};

}  // namespace

namespace {

// The world ranks of `comm`'s members, indexed by their rank in `comm`.
std::vector<int> WorldRanks(MPI_Comm comm, int size, const std::string& name) {
  MPI_Group group = MPI_GROUP_NULL, world = MPI_GROUP_NULL;
  MpiCheck(MPI_Comm_group(comm, &group), "MPI_Comm_group", name);
  MpiCheck(MPI_Comm_group(MPI_COMM_WORLD, &world), "MPI_Comm_group", "world");
  std::vector<int> ranks(static_cast<size_t>(size)), out(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) ranks[static_cast<size_t>(r)] = r;
  MpiCheck(MPI_Group_translate_ranks(group, size, ranks.data(), world, out.data()),
           "MPI_Group_translate_ranks", name);
  MpiCheck(MPI_Group_free(&group), "MPI_Group_free", name);
  MpiCheck(MPI_Group_free(&world), "MPI_Group_free", "world");
  return out;
}

// `parent` is the record of the communicator split (or duplicated) into `comm`, for the key.
std::shared_ptr<State> MakeState(MPI_Comm comm, const std::string& name, GroupRecord& parent,
                                 std::shared_ptr<Deadline> timeout) {
  auto s = std::make_shared<State>();
  s->comm = comm;
  s->name = name;
  s->timeout = std::move(timeout);
  MpiCheck(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", name);
  MpiCheck(MPI_Comm_rank(comm, &s->rank), "MPI_Comm_rank", name);
  MpiCheck(MPI_Comm_size(comm, &s->size), "MPI_Comm_size", name);
  std::vector<int> members = WorldRanks(comm, s->size, name);
  const uint64_t key = GroupKey(parent.key(), parent.StartSplit(), name, members);
  s->record = std::make_unique<GroupRecord>(name, std::move(members), key);
  return s;
}

}  // namespace

void MpiInit(int* argc, char*** argv) {
  int provided = 0;
  // Before MPI_Init succeeds there is no MPI_Abort; MPI's default handler (fatal) reports init failures.
  int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  if (rc != MPI_SUCCESS) {
    std::fprintf(stderr, "[rank %d] MPI_Init_thread failed with code %d\n", ProcessRank(), rc);
    std::exit(kExitFailure);
  }
  InstallMpiErrorHandling();
  if (provided < MPI_THREAD_FUNNELED) {
    FailJob(kExitFailure, absl::StrCat("MPI provides thread level ", provided,
                                       ", below MPI_THREAD_FUNNELED which fathom needs"));
  }
  WatchdogInit();
}

void MpiFinalize(double timeout_seconds) {
  WatchdogFinalBarrier(timeout_seconds);
  WatchdogRelease();
  ReleaseMpiErrorHandling();
  MpiCheck(MPI_Finalize(), "MPI_Finalize", "world");
}

bool MpiIsActive() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

// The duplication is non-blocking so that it waits under the watchdog like any collective: a rank that
// never starts would otherwise leave the others in MPI_Comm_dup for ever.
std::unique_ptr<MpiCommunicator> MpiCommunicator::World() {
  FATHOM_CHECK(MpiIsActive(), "MpiCommunicator::World() before MpiInit or after MpiFinalize");
  GroupRecord& mpi_world = MpiWorldRecord();
  WaitSite site{"creating the world communicator", "MPI_Comm_idup", &mpi_world};
  site.collective = mpi_world.StartCollective();
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Request request = MPI_REQUEST_NULL;
  MpiCheck(MPI_Comm_idup(MPI_COMM_WORLD, &comm, &request), "MPI_Comm_idup", "world");
  WatchdogWait(&request, MPI_STATUS_IGNORE, site, Deadline());
  return std::unique_ptr<MpiCommunicator>(
      new MpiCommunicator(MakeState(comm, "world", mpi_world, std::make_shared<Deadline>())));
}

MpiCommunicator::MpiCommunicator(std::shared_ptr<State> state)
    : Communicator(state->timeout), state_(std::move(state)) {}

MpiCommunicator::~MpiCommunicator() {
  FATHOM_CHECK(state_->pending == 0, "communicator ", state_->name, " destroyed with ", state_->pending,
               " requests in flight");
  if (!MpiIsActive()) return;  // MPI_Finalize already released every communicator
  MpiCheck(MPI_Comm_free(&state_->comm), "MPI_Comm_free", state_->name);
}

int MpiCommunicator::rank() const { return state_->rank; }
int MpiCommunicator::size() const { return state_->size; }
const std::string& MpiCommunicator::name() const { return state_->name; }
int64_t MpiCommunicator::pending_requests() const { return state_->pending; }

// MPI has no non-blocking split, so every member first meets in a barrier under the watchdog: once all
// have arrived, MPI_Comm_split cannot wait for a missing one.
std::unique_ptr<Communicator> MpiCommunicator::Split(int color, int key, const std::string& name) {
  FATHOM_CHECK(color >= 0, "[split] group ", state_->name, ": color ", color, " must be >= 0");
  const WaitSite site = state_->Collective("split (its barrier)", "MPI_Ibarrier");
  MPI_Request request = MPI_REQUEST_NULL;
  MpiCheck(MPI_Ibarrier(state_->comm, &request), "MPI_Ibarrier", state_->name);
  WatchdogWait(&request, MPI_STATUS_IGNORE, site, *state_->timeout);
  MPI_Comm comm = MPI_COMM_NULL;
  MpiCheck(MPI_Comm_split(state_->comm, color, key, &comm), "MPI_Comm_split", state_->name);
  return std::unique_ptr<Communicator>(
      new MpiCommunicator(MakeState(comm, name, *state_->record, state_->timeout)));
}

Request MpiCommunicator::ISend(const Tensor& tensor, int peer, int tag) {
  CheckCpu("send", tensor);
  CheckPeer("send", peer);
  CheckTag("send", tag);
  auto r = std::make_unique<MpiRequest>(state_, state_->PointToPoint(/*send=*/true, peer, tag));
  r->tensors.push_back(tensor);
  MpiCheck(MPI_Isend(tensor.raw(), MpiCount(tensor.numel(), "send", state_->name), MpiType(tensor.dtype()),
                     peer, tag, state_->comm, r->handle()),
           "MPI_Isend", state_->name);
  return Request(std::move(r));
}

Request MpiCommunicator::IRecv(const Tensor& tensor, int peer, int tag) {
  CheckCpu("recv", tensor);
  CheckPeer("recv", peer);
  CheckTag("recv", tag);
  auto r = std::make_unique<MpiRequest>(state_, state_->PointToPoint(/*send=*/false, peer, tag));
  r->tensors.push_back(tensor);
  const int expected = MpiCount(tensor.numel(), "recv", state_->name);
  MPI_Datatype type = MpiType(tensor.dtype());
  std::string group = state_->name;
  // A longer message fails the wait (MPI_ERR_TRUNCATE); a shorter one would leave stale data, so the
  // count is checked too: sender and receiver disagreeing on a shape is a protocol bug.
  r->on_complete = [expected, type, peer, tag, group](const MPI_Status& status) {
    int got = 0;
    MpiCheck(MPI_Get_count(&status, type, &got), "MPI_Get_count", group);
    if (got != expected) {
      FailJob(kExitFailure,
              absl::StrCat("[recv] group ", group, ": expected ", expected, " elements from rank ", peer,
                           " with tag ", tag, ", received ", got));
    }
  };
  MpiCheck(MPI_Irecv(tensor.raw(), expected, type, peer, tag, state_->comm, r->handle()), "MPI_Irecv",
           state_->name);
  return Request(std::move(r));
}

Request MpiCommunicator::IAllToAllV(const Tensor& send, const std::vector<int64_t>& send_counts,
                                    const Tensor& recv, const std::vector<int64_t>& recv_counts) {
  CheckAllToAllV(send, send_counts, recv, recv_counts);
  auto r = std::make_unique<MpiRequest>(state_, state_->Collective("all_to_all_v", "MPI_Ialltoallv"));
  r->tensors = {send, recv};
  const size_t p = static_cast<size_t>(state_->size);
  r->arrays.assign(4, std::vector<int>(p));
  std::vector<int>& sc = r->arrays[0];
  std::vector<int>& sd = r->arrays[1];
  std::vector<int>& rc = r->arrays[2];
  std::vector<int>& rd = r->arrays[3];
  int64_t s_off = 0, r_off = 0;
  for (size_t j = 0; j < p; ++j) {
    sc[j] = MpiCount(send_counts[j], "all_to_all_v", state_->name);
    sd[j] = MpiCount(s_off, "all_to_all_v", state_->name);
    rc[j] = MpiCount(recv_counts[j], "all_to_all_v", state_->name);
    rd[j] = MpiCount(r_off, "all_to_all_v", state_->name);
    s_off += send_counts[j];
    r_off += recv_counts[j];
  }
  MPI_Datatype type = MpiType(send.dtype());
  MpiCheck(MPI_Ialltoallv(send.raw(), sc.data(), sd.data(), type, recv.raw(), rc.data(), rd.data(), type,
                          state_->comm, r->handle()),
           "MPI_Ialltoallv", state_->name);
  return Request(std::move(r));
}

Request MpiCommunicator::IAllReduce(const Tensor& tensor, ReduceOp op) {
  CheckCpu("all_reduce", tensor);
  CheckReducible("all_reduce", tensor);
  auto r = std::make_unique<MpiRequest>(state_, state_->Collective("all_reduce", "MPI_Iallgather"));
  const int64_t n = tensor.numel();
  Tensor parts = Tensor::Empty({state_->size * n}, tensor.dtype());
  r->tensors = {tensor, parts};
  const int size = state_->size;
  r->on_complete = [tensor, parts, n, size, op](const MPI_Status&) {
    ReduceInRankOrder(tensor, parts, n, size, op);
  };
  const int count = MpiCount(n, "all_reduce", state_->name);
  MPI_Datatype type = MpiType(tensor.dtype());
  MpiCheck(MPI_Iallgather(tensor.raw(), count, type, parts.raw(), count, type, state_->comm, r->handle()),
           "MPI_Iallgather (all_reduce)", state_->name);
  return Request(std::move(r));
}

Request MpiCommunicator::IReduceScatter(const Tensor& send, const Tensor& recv, ReduceOp op) {
  CheckReduceScatter(send, recv);
  auto r = std::make_unique<MpiRequest>(state_, state_->Collective("reduce_scatter", "MPI_Ialltoall"));
  const int64_t n = recv.numel();
  Tensor parts = Tensor::Empty({state_->size * n}, recv.dtype());
  r->tensors = {send, recv, parts};
  const int size = state_->size;
  r->on_complete = [recv, parts, n, size, op](const MPI_Status&) {
    ReduceInRankOrder(recv, parts, n, size, op);
  };
  const int count = MpiCount(n, "reduce_scatter", state_->name);
  MPI_Datatype type = MpiType(send.dtype());
  MpiCheck(MPI_Ialltoall(send.raw(), count, type, parts.raw(), count, type, state_->comm, r->handle()),
           "MPI_Ialltoall (reduce_scatter)", state_->name);
  return Request(std::move(r));
}

Request MpiCommunicator::IAllGather(const Tensor& send, const Tensor& recv) {
  CheckAllGather(send, recv);
  auto r = std::make_unique<MpiRequest>(state_, state_->Collective("all_gather", "MPI_Iallgather"));
  r->tensors = {send, recv};
  const int count = MpiCount(send.numel(), "all_gather", state_->name);
  MPI_Datatype type = MpiType(send.dtype());
  MpiCheck(MPI_Iallgather(send.raw(), count, type, recv.raw(), count, type, state_->comm, r->handle()),
           "MPI_Iallgather", state_->name);
  return Request(std::move(r));
}

Request MpiCommunicator::IBroadcast(const Tensor& tensor, int root) {
  CheckCpu("broadcast", tensor);
  CheckRoot("broadcast", root);
  auto r = std::make_unique<MpiRequest>(state_, state_->Collective("broadcast", "MPI_Ibcast"));
  r->tensors = {tensor};
  MpiCheck(MPI_Ibcast(tensor.raw(), MpiCount(tensor.numel(), "broadcast", state_->name),
                      MpiType(tensor.dtype()), root, state_->comm, r->handle()),
           "MPI_Ibcast", state_->name);
  return Request(std::move(r));
}

Request MpiCommunicator::IBarrier() {
  auto r = std::make_unique<MpiRequest>(state_, state_->Collective("barrier", "MPI_Ibarrier"));
  MpiCheck(MPI_Ibarrier(state_->comm, r->handle()), "MPI_Ibarrier", state_->name);
  return Request(std::move(r));
}

}  // namespace fathom
