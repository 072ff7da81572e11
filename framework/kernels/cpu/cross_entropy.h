// Cross-entropy over the vocabulary with an ignore index, normalised by a caller-given token count
// (the number of valid labels in the whole step, so that splitting a batch into micro-batches or ranks
// never changes the loss).
#ifndef FATHOM_FRAMEWORK_KERNELS_CPU_CROSS_ENTROPY_H_
#define FATHOM_FRAMEWORK_KERNELS_CPU_CROSS_ENTROPY_H_

#include <cstdint>

#include "framework/tensor.h"

namespace fathom::cpu {

// logits (N, V) f32/f64; labels (N) i32, `ignore_index` rows contribute nothing.
// Returns sum over valid rows of (logsumexp(row) - row[label]) in double; lse (N) saved for the backward.
double CrossEntropyForward(const Tensor& lse, const Tensor& logits, const Tensor& labels,
                           int64_t ignore_index);
// dlogits (N, V) = scale * (softmax(row) - onehot(label)) for valid rows, 0 for ignored rows.
void CrossEntropyBackward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                          const Tensor& labels, int64_t ignore_index, double scale);
int64_t CountValidLabels(const Tensor& labels, int64_t ignore_index);

}  // namespace fathom::cpu

#endif  // FATHOM_FRAMEWORK_KERNELS_CPU_CROSS_ENTROPY_H_
