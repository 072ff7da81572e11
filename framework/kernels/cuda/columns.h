// The CUDA twins of framework/kernels/cpu/columns.h (MLA's column-block gathers and scatters), with the
// same shapes and arguments plus the stream the work is queued on (nothing synchronises with the host).
// dtypes: every tensor of a call f32, or every one bf16 (CopyColumns and BroadcastColumnsToHeads are bit
// copies; SumHeadsToColumns sums in f32, heads in order, and rounds once to the output dtype with
// framework/cuda/numeric.cuh's StoreF32, the activations' round-to-nearest-even).
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_COLUMNS_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_COLUMNS_H_

#include <cstdint>

#include "framework/cuda/stream.h"
#include "framework/tensor.h"

namespace fathom::cuda {

// dst (N, Wd)[:, d0 : d0 + w] = src (N, Ws)[:, s0 : s0 + w].
void CopyColumns(const Tensor& dst, int64_t d0, const Tensor& src, int64_t s0, int64_t w, Stream stream);
// k (N, H, Dk)[:, h, off:] = src (N, Ws)[:, s0 : s0 + Dk - off] for every h.
void BroadcastColumnsToHeads(const Tensor& k, int64_t off, const Tensor& src, int64_t s0, Stream stream);
// dst (N, Wd)[:, d0 : d0 + W - off] = sum over h of dk (N, H, W)[:, h, off:].
void SumHeadsToColumns(const Tensor& dst, int64_t d0, const Tensor& dk, int64_t off, Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_COLUMNS_H_
