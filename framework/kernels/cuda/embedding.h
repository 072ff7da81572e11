// Token embedding lookup and its gradient on the GPU, the twins of framework/kernels/cpu/embedding.h.
//
// Forward: a gather; table and out share a dtype, f32 or bf16 (a row copy, bit exact).
// Backward: deterministic, no float atomics. The token positions are sorted by id with a stable radix sort
// (CUB, scratch in the caller's workspace), which groups the positions of every id into one contiguous
// run in increasing position order; one thread block per run then adds the run's dy rows to the table
// row column by column, starting from the row's current value and adding in increasing position order.
// That is exactly the CPU twin's order of additions, so for f32 the result equals the CPU bit for bit, run
// after run. The cost is one sort of N keys plus one pass over dy: a frequent token makes a long run (one
// block's serial work), which bounds nothing else.
//
// Ids: REQUIRES 0 <= ids < V. The host cannot check device ids without a sync, so the kernels check them: an
// id outside the vocabulary prints the position and id and traps, which makes the next checked CUDA call
// on the host abort (loud, never a silent wrong row).
// Work is queued on `stream`; nothing synchronises with the host.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_EMBEDDING_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_EMBEDDING_H_

#include <cstddef>
#include <cstdint>

#include "framework/cuda/stream.h"
#include "framework/tensor.h"

namespace fathom::cuda {

// out (N, C) f32 or bf16 = table (V, C) (out's dtype) rows at ids (N) i32. out may have any shape of N * C
// elements (e.g. (B, T, C)).
void EmbeddingForward(const Tensor& out, const Tensor& ids, const Tensor& table, Stream stream);

// Bytes of scratch EmbeddingBackward needs for `tokens` ids over a vocabulary of `vocab` rows.
size_t EmbeddingBackwardWorkspaceBytes(int64_t tokens, int64_t vocab);

// dtable (V, C) f32 += scatter of dy (N, C) f32 or bf16 rows to ids (N) i32, in increasing position order
// per row. workspace: any CUDA tensor of at least EmbeddingBackwardWorkspaceBytes(N, V) bytes, 256-byte
// aligned (a DeviceArena allocation), overwritten.
void EmbeddingBackward(const Tensor& dtable, const Tensor& ids, const Tensor& dy, const Tensor& workspace,
                       Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_EMBEDDING_H_
