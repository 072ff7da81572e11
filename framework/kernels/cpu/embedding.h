// Token embedding lookup and its gradient.
#ifndef FATHOM_FRAMEWORK_KERNELS_CPU_EMBEDDING_H_
#define FATHOM_FRAMEWORK_KERNELS_CPU_EMBEDDING_H_

#include "framework/tensor.h"

namespace fathom::cpu {

// out (N, C) = table (V, C) rows at ids (N) i32. REQUIRES: 0 <= ids < V (checked).
void EmbeddingForward(const Tensor& out, const Tensor& ids, const Tensor& table);
// dtable (V, C) += scatter of dy (N, C) rows to ids (N); rows are added in increasing n.
void EmbeddingBackward(const Tensor& dtable, const Tensor& ids, const Tensor& dy);

}  // namespace fathom::cpu

#endif  // FATHOM_FRAMEWORK_KERNELS_CPU_EMBEDDING_H_
