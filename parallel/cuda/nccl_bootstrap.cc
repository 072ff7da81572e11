// NcclCommunicator's bootstrap: which GPU a rank takes, the unique id, ncclCommInitRankConfig, splits,
// and destruction. Operations on a communicator are in nccl_communicator.cc.
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "framework/cuda/check.h"
#include "framework/cuda/device_arena.h"
#include "parallel/cuda/nccl_state.h"
#include "parallel/fault.h"

namespace fathom {

namespace {

// The verdict on the GPU assignment, from every rank's row of the gathered table, so that every rank
// reaches the same one and prints the same message. Empty when every rank has a GPU of its own.
constexpr int kGpuFields = 5;  // local rank, visible device count, device, UUID (2 x 8 bytes)

std::string GpuAssignmentProblem(const Tensor& table, int size) {
  const int64_t* t = table.data<int64_t>();
  auto row = [&](int r) { return t + static_cast<int64_t>(r) * kGpuFields; };
  for (int r = 0; r < size; ++r) {
    if (row(r)[1] == 0) {
      return absl::StrCat("[nccl] fathom needs one GPU per rank, but rank ", r, " (local rank ", row(r)[0],
                          ") sees no CUDA device (0 visible)");
    }
  }
  for (int j = 0; j < size; ++j) {
    for (int i = 0; i < j; ++i) {
      if (row(i)[3] != row(j)[3] || row(i)[4] != row(j)[4]) continue;
      return absl::StrCat("[nccl] fathom needs one GPU per rank, but rank ", j, " (local rank ", row(j)[0],
                          ") and rank ", i, " (local rank ", row(i)[0], ") both get the same GPU: rank ", j,
                          " sees ", row(j)[1], " CUDA device(s) and takes device ", row(j)[2],
                          " = local rank % device count. Start at most as many ranks per node as it has "
                          "GPUs, or give every rank its own (CUDA_VISIBLE_DEVICES)");
    }
  }
  return "";
}

}  // namespace

ncclConfig_t MakeConfig(const std::string& name) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  // Blocking: enqueue calls return once the work is on the stream (a non-blocking communicator may answer
  // ncclInProgress before it is, which would leave the done event recorded ahead of the work).
  config.blocking = 1;
  config.commName = name.c_str();  // NCCL copies it
  return config;
}

std::shared_ptr<State> MakeState(ncclComm_t comm, const std::string& name, int device,
                                 std::shared_ptr<Deadline> timeout, cudaStream_t compute_stream) {
  auto s = std::make_shared<State>();
  s->comm = comm;
  s->name = name;
  s->device = device;
  s->timeout = std::move(timeout);
  s->compute_stream = compute_stream;
  s->UseDevice();
  FATHOM_NCCL_CHECK(ncclCommUserRank(comm, &s->rank));
  FATHOM_NCCL_CHECK(ncclCommCount(comm, &s->size));
  int nccl_device = -1;
  FATHOM_NCCL_CHECK(ncclCommCuDevice(comm, &nccl_device));
  FATHOM_CHECK(nccl_device == device, "[nccl] ", s->Where(), ": NCCL runs the communicator on device ",
               nccl_device);
  // Non-blocking: the legacy default stream must never wait behind a long NCCL kernel (nor the kernel
  // behind it), only what the events say. Highest priority: communication kernels start ahead of queued
  // compute kernels, which is what overlapping them needs.
  int least = 0, greatest = 0;
  FATHOM_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  FATHOM_CUDA_CHECK(cudaStreamCreateWithPriority(&s->comm_stream, cudaStreamNonBlocking, greatest));
  FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&s->start, cudaEventDisableTiming));
  FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&s->p2p_start, cudaEventDisableTiming));
  FATHOM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&s->barrier_scratch), sizeof(int32_t)));
  FATHOM_CUDA_CHECK(cudaMemsetAsync(s->barrier_scratch, 0, sizeof(int32_t), s->comm_stream));
  return s;
}

State::~State() {
  p2p_batch.reset();  // empty by now: every batched operation has a request, and none is pending
  UseDevice();
  if (comm != nullptr) FATHOM_NCCL_CHECK(ncclCommDestroy(comm));
  for (cudaEvent_t e : free_events) FATHOM_CUDA_CHECK(cudaEventDestroy(e));
  if (start != nullptr) FATHOM_CUDA_CHECK(cudaEventDestroy(start));
  if (p2p_start != nullptr) FATHOM_CUDA_CHECK(cudaEventDestroy(p2p_start));
  if (comm_stream != nullptr) FATHOM_CUDA_CHECK(cudaStreamDestroy(comm_stream));
  if (barrier_scratch != nullptr) FATHOM_CUDA_CHECK(cudaFree(barrier_scratch));
}

int NcclCommunicator::DeviceForLocalRank(int local_rank, int device_count) {
  FATHOM_CHECK(device_count > 0 && local_rank >= 0, "[nccl] no GPU for local rank ", local_rank, " among ",
               device_count, " devices");
  return local_rank % device_count;
}

std::unique_ptr<NcclCommunicator> NcclCommunicator::Create(Communicator& bootstrap, const LaunchEnv& env,
                                                           const NcclOptions& options) {
  FATHOM_CHECK(options.timeout_seconds >= 0 && options.timeout_seconds <= kMaxTimeoutSeconds,
               "[nccl] timeout_seconds ", options.timeout_seconds, " outside [0, ", kMaxTimeoutSeconds, "]");
  FATHOM_CHECK(env.local_rank >= 0, "[nccl] local rank ", env.local_rank);
  const int size = bootstrap.size();

  // Every rank's GPU identity goes to every rank before anything is initialised: a rank short of a GPU is
  // then a message every rank agrees on, not a hang inside ncclCommInitRank or NCCL's "duplicate GPU".
  const int device_count = cuda::DeviceCount();
  const int device = device_count > 0 ? DeviceForLocalRank(env.local_rank, device_count) : -1;
  Tensor mine = Tensor::Zeros({kGpuFields}, DType::kI64);
  int64_t* m = mine.data<int64_t>();
  m[0] = env.local_rank;
  m[1] = device_count;
  m[2] = device;
  if (device >= 0) {
    cudaDeviceProp prop{};
    FATHOM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    static_assert(sizeof(prop.uuid.bytes) == 2 * sizeof(int64_t));
    std::memcpy(&m[3], prop.uuid.bytes, sizeof(prop.uuid.bytes));
  }
  Tensor table = Tensor::Empty({static_cast<int64_t>(size) * kGpuFields}, DType::kI64);
  bootstrap.AllGather(mine, table);
  const std::string problem = GpuAssignmentProblem(table, size);
  if (!problem.empty()) ExitAllRanks(kExitInvalidInput, problem);

  FATHOM_CUDA_CHECK(cudaSetDevice(device));
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (bootstrap.rank() == 0) FATHOM_NCCL_CHECK(ncclGetUniqueId(&id));
  static_assert(sizeof(ncclUniqueId) % sizeof(int64_t) == 0);
  Tensor id_bytes = Tensor::Empty({static_cast<int64_t>(sizeof(id) / sizeof(int64_t))}, DType::kI64);
  std::memcpy(id_bytes.raw(), &id, sizeof(id));
  bootstrap.Broadcast(id_bytes, 0);  // i64 words: MPI moves the bits unchanged
  std::memcpy(&id, id_bytes.raw(), sizeof(id));

  ncclConfig_t config = MakeConfig(bootstrap.name());
  ncclComm_t comm = nullptr;
  FATHOM_NCCL_CHECK(ncclCommInitRankConfig(&comm, size, id, bootstrap.rank(), &config));
  // 0: the bootstrap's family deadline, so that one setting (parallel.timeout_s on the world) governs the
  // MPI and the NCCL waits alike.
  std::shared_ptr<Deadline> timeout =
      options.timeout_seconds > 0
          ? std::make_shared<Deadline>(Deadline{options.timeout_seconds, "NcclOptions::timeout_seconds"})
          : bootstrap.shared_timeout();
  std::shared_ptr<State> s =
      MakeState(comm, bootstrap.name(), device, std::move(timeout), options.compute_stream);
  FATHOM_CHECK(s->rank == bootstrap.rank() && s->size == size, "[nccl] ", s->Where(),
               ": the bootstrap has rank ", bootstrap.rank(), " of ", size);
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(s)));
}

NcclCommunicator::NcclCommunicator(std::shared_ptr<State> state)
    : Communicator(state->timeout), state_(std::move(state)) {}

NcclCommunicator::~NcclCommunicator() {
  FATHOM_CHECK(state_->pending == 0, "[nccl] communicator ", state_->name, " destroyed with ",
               state_->pending, " requests in flight");
  state_->FlushP2p();
  state_->WaitHost("destroying the communicator");
}

// ncclCommSplit blocks the host until every member calls it, with no deadline of its own: the members meet
// in a barrier first, waited for on the host under the watchdog (Synchronize), so that a missing member is
// reported instead of hanging the split.
std::unique_ptr<Communicator> NcclCommunicator::Split(int color, int key, const std::string& name) {
  FATHOM_CHECK(color >= 0, "[split] group ", state_->name, ": color ", color, " must be >= 0");
  IBarrier().Wait();
  state_->FlushP2p();
  state_->WaitHost("the barrier before ncclCommSplit");
  state_->UseDevice();
  ncclConfig_t config = MakeConfig(name);
  ncclComm_t child = nullptr;
  FATHOM_NCCL_CHECK(ncclCommSplit(state_->comm, color, key, &child, &config));
  FATHOM_CHECK(child != nullptr, "[split] ", state_->Where(), ": NCCL returned no communicator for color ",
               color);
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(MakeState(child, name, state_->device, state_->timeout, state_->compute_stream)));
}

}  // namespace fathom
