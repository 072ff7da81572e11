// Return-code checks for CUDA, cuBLAS(Lt) and NCCL calls: every call is checked; a failure aborts with
// file:line, the call and the library's own error string (a GPU error is never recoverable mid-step).
// Include only from .cu files or CUDA-enabled .cc files (FATHOM_WITH_CUDA).
#ifndef FATHOM_FRAMEWORK_CUDA_CHECK_H_
#define FATHOM_FRAMEWORK_CUDA_CHECK_H_

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "framework/check.h"

#define FATHOM_CUDA_CHECK(call)                                                                             \
  do {                                                                                                      \
    cudaError_t err_ = (call);                                                                              \
    FATHOM_CHECK(err_ == cudaSuccess, #call, ": ", cudaGetErrorName(err_), ": ", cudaGetErrorString(err_)); \
  } while (0)

#define FATHOM_CUBLAS_CHECK(call)                                                                      \
  do {                                                                                                 \
    cublasStatus_t st_ = (call);                                                                       \
    FATHOM_CHECK(st_ == CUBLAS_STATUS_SUCCESS, #call, ": cuBLAS status ", static_cast<int>(st_), " (", \
                 cublasLtGetStatusString(st_), ")");                                                   \
  } while (0)

// After a kernel launch: reports launch-configuration errors at the launch site.
#define FATHOM_CUDA_CHECK_LAUNCH() FATHOM_CUDA_CHECK(cudaGetLastError())

#endif  // FATHOM_FRAMEWORK_CUDA_CHECK_H_
