// Shared by the multi-GPU test suites (tests/gpu_mpi).
#ifndef FATHOM_TESTS_GPU_MPI_GPU_MPI_SUPPORT_H_
#define FATHOM_TESTS_GPU_MPI_GPU_MPI_SUPPORT_H_

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "framework/cuda/check.h"
#include "framework/cuda/device_arena.h"
#include "framework/tensor.h"
#include "parallel/communicator.h"
#include "parallel/cuda/nccl_communicator.h"
#include "parallel/launch_env.h"
#include "parallel/mpi_communicator.h"
#include "tests/common/gradcheck.h"

namespace fathom::testing {

// Why these tests cannot run here - some rank sees fewer CUDA devices (`devices`) than its node has ranks -
// or "" when every rank can have a GPU of its own. Collective over `mpi` (the job's world), so every rank
// reaches the same verdict: a rank that skipped alone would leave the others in a collective. The message
// contains "see fewer CUDA devices", which tests/gpu_mpi/CMakeLists.txt reports to ctest as a skip.
inline std::string TooFewGpus(Communicator& mpi, const LaunchEnv& env, int devices) {
  Tensor short_ranks = Tensor::FromVector({devices < env.local_size ? 1.0 : 0.0}, {1}, DType::kI32);
  mpi.AllReduce(short_ranks, ReduceOp::kSum);
  if (short_ranks.data<int32_t>()[0] == 0) return "";
  return std::to_string(short_ranks.data<int32_t>()[0]) +
         " rank(s) see fewer CUDA devices than their node has ranks (this rank: " + std::to_string(devices) +
         " for " + std::to_string(env.local_size) +
         " local ranks); these tests run with one rank per GPU on the GPU machine (ctest -L gpu)";
}

// The process-wide worlds of a multi-GPU suite: MPI, and NCCL on a non-blocking compute stream of its own
// (so that nothing is ordered by the legacy default stream behind the tests' backs). Join() is collective
// over MPI: every rank calls it at the same point (a global test environment's SetUp, or the first test).
struct NcclTestWorld {
  std::unique_ptr<MpiCommunicator> mpi;
  std::unique_ptr<NcclCommunicator> nccl;
  cudaStream_t compute = nullptr;
  std::string skip;  // why every test skips (TooFewGpus); empty when the NCCL world exists

  void Join() {
    mpi = MpiCommunicator::World();
    const LaunchEnv env = LaunchEnvFromMpi();
    const int devices = cuda::DeviceCount();
    skip = TooFewGpus(*mpi, env, devices);
    if (!skip.empty()) return;
    FATHOM_CUDA_CHECK(cudaSetDevice(NcclCommunicator::DeviceForLocalRank(env.local_rank, devices)));
    FATHOM_CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
    NcclOptions options;
    options.compute_stream = compute;
    options.timeout_seconds = 60;  // below the watchdog's 100 s: a hang is reported by the communicator
    nccl = NcclCommunicator::Create(*mpi, env, options);
  }
  // Before MpiFinalize (a global test environment's TearDown), in the same order on every rank.
  void Leave() {
    if (nccl) nccl->Synchronize();
    if (compute != nullptr) FATHOM_CUDA_CHECK(cudaStreamSynchronize(compute));
    nccl.reset();
    if (compute != nullptr) FATHOM_CUDA_CHECK(cudaStreamDestroy(compute));
    compute = nullptr;
    mpi.reset();
  }
};

// One seed for every rank: rank 0 draws it (TestSeed, printed, so FATHOM_TEST_SEED replays it) and
// broadcasts its bit pattern, so every rank can recompute every other rank's data.
inline uint64_t SharedSeed(Communicator& comm) {
  Tensor s = Tensor::Empty({1}, DType::kI64);
  s.data<int64_t>()[0] = comm.rank() == 0 ? static_cast<int64_t>(TestSeed()) : 0;
  comm.Broadcast(s, 0);
  return static_cast<uint64_t>(s.data<int64_t>()[0]);
}

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_GPU_MPI_GPU_MPI_SUPPORT_H_
