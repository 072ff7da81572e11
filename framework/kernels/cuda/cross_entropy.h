// Fused, chunked cross-entropy over the vocabulary on the GPU, with an ignore index. CPU twin and the exact
// math: framework/kernels/cpu/cross_entropy.h.
//
// "Fused and chunked": one block per row streams the row's V logits in chunks of the block width, keeping an
// online (running max, running sum of exp) pair per thread, then merges the pairs in a fixed tree; nothing
// beyond the logits themselves is materialised (no softmax, no (N, V) probabilities). The backward writes
// dlogits = scale * (softmax - onehot) over the logits (in place: the (N, V) gradient needs no second
// buffer), recomputing softmax from the saved lse.
//
// dtypes: logits (and dlogits) f32 or bf16 (bf16: exp, sums and the loss in f32; dlogits rounded once);
// labels i32; lse, row_loss, loss_sum f32. Anything else fails loudly.
// A label outside [0, V) that is not ignore_index cannot be checked on the host without a synchronisation:
// it makes that row's loss (and so loss_sum) and that row's dlogits NaN, never silently wrong.
// Deterministic: results depend only on the shapes. Work is queued on `stream`; no host synchronisation, no
// allocation.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_CROSS_ENTROPY_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_CROSS_ENTROPY_H_

#include <cstdint>

#include "framework/cuda/stream.h"
#include "framework/tensor.h"

namespace fathom::cuda {

// loss_sum (1) f32 = sum over valid rows of row_loss (a fixed-order sum, accumulated in f64 on the device);
// row_loss (N) f32 = lse - logits[label], 0 for rows whose label is ignore_index; lse (N) f32 = logsumexp of
// every row (ignored rows too, as the CPU twin); logits (N, V); labels (N) i32.
void CrossEntropyForward(const Tensor& loss_sum, const Tensor& row_loss, const Tensor& lse,
                         const Tensor& logits, const Tensor& labels, int64_t ignore_index, Stream stream);

// dlogits (N, V) = scale * (softmax(row) - onehot(label)) for valid rows, 0 for ignored rows; logits (N, V);
// lse (N) f32 from the forward; labels (N) i32. dlogits may be logits itself (in place); it must otherwise
// not overlap it.
void CrossEntropyBackward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                          const Tensor& labels, int64_t ignore_index, double scale, Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_CROSS_ENTROPY_H_
