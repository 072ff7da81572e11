// Expert placement and the exchange of token rows between the ranks that hold experts (DeepSeek-V3's
// dispatch and combine, in the shape of DeepEP's API: dispatch returns a handle that combine and the
// backward reuse).
//
// The MoE layer knows nothing about ranks: it holds the routed experts [begin, begin + count) of
// ExpertPlacement and, when the experts are spread over several ranks (expert parallelism), moves the
// permuted token rows through an ExpertExchange that parallel/ implements with a communicator. Without an
// exchange every expert is local and rows stay where they are.
//
// Per micro-batch the MoE layer calls
//   forward    Dispatch(rows, counts, &handle)   token rows to the experts' ranks (learns the layout)
//              Combine(expert_rows, handle)        expert outputs back to the tokens' ranks
//   backward   Dispatch(grad_rows, handle)         output gradients to the experts (the layout is known)
//              Combine(expert_grad_rows, handle)   input gradients back
// Every rank of the expert-parallel group makes the same calls in the same order (they are collectives).
// The exchange keeps NO per-micro-batch state: everything the later calls need is in the handle, which the
// caller owns (the MoE layer keeps it with the micro-batch's saved activations until its backward is done).
//
// Where things live. Counts are HOST i64 tensors (the layout is computed on the host). Rows are (R, C)
// tensors of any dtype on the CPU or the GPU; results are on the rows' device, in the rows' dtype; on the
// GPU they are queued on the current ops::OpContext stream (the implementation's header says how the
// communication stream is joined to it), and the host does not wait for the GPU.
#ifndef FATHOM_LAYERS_EXPERT_EXCHANGE_H_
#define FATHOM_LAYERS_EXPERT_EXCHANGE_H_

#include <cstdint>
#include <vector>

#include "framework/tensor.h"

namespace fathom {

struct ExpertPlacement {
  int64_t begin = 0;   // first global expert id held here
  int64_t count = -1;  // experts held here; -1 = all
};

// What one dispatch learned about a micro-batch's rows. Plain data, owned by the caller; valid for the
// exchange that produced it (and any exchange over the same group).
struct DispatchHandle {
  Tensor local_counts;                     // (E_local) i64 HOST: rows per local expert after the dispatch
  std::vector<int64_t> send_rows;          // (ep) rows this rank sent to each peer
  std::vector<int64_t> recv_rows;          // (ep) rows this rank received from each peer
  std::vector<std::vector<int64_t>> from;  // [peer][local expert] rows received
};

class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;

  // rows (R, C) sorted by global expert; counts (E) i64 HOST: this rank's rows per global expert, in the
  // order of `rows`. Returns the rows of this rank's experts (R_local, C), grouped by local expert (within
  // an expert: by source rank, then in the source's order), and fills *handle.
  virtual Tensor Dispatch(const Tensor& rows, const Tensor& counts, DispatchHandle* handle) = 0;
  // The same movement for rows laid out as the dispatch that made `handle` (the backward of combine).
  virtual Tensor Dispatch(const Tensor& rows, const DispatchHandle& handle) = 0;
  // The inverse movement: (R_local, C) grouped by local expert -> (R, C) in this rank's original order.
  virtual Tensor Combine(const Tensor& rows, const DispatchHandle& handle) = 0;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_EXPERT_EXCHANGE_H_
