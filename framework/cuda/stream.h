// The stream type for kernel launchers, declared without CUDA headers so plain C++ code can hold one.
// (cudaStream_t is itself `CUstream_st*`.) nullptr is the legacy default stream.
#ifndef FATHOM_FRAMEWORK_CUDA_STREAM_H_
#define FATHOM_FRAMEWORK_CUDA_STREAM_H_

struct CUstream_st;

namespace fathom::cuda {
using Stream = CUstream_st*;
}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_CUDA_STREAM_H_
