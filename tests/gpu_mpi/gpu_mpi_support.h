// Shared by the multi-GPU test suites (tests/gpu_mpi).
#ifndef FATHOM_TESTS_GPU_MPI_GPU_MPI_SUPPORT_H_
#define FATHOM_TESTS_GPU_MPI_GPU_MPI_SUPPORT_H_

#include <string>

#include "framework/tensor.h"
#include "parallel/communicator.h"
#include "parallel/launch_env.h"

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

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_GPU_MPI_GPU_MPI_SUPPORT_H_
