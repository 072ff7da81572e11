// Expert placement and the exchange of token rows between the ranks that hold experts.
//
// The MoE layer knows nothing about ranks: it holds the routed experts [begin, begin + count) of
// ExpertPlacement and, when the experts are spread over several ranks (expert parallelism), moves the
// permuted token rows through an ExpertExchange that parallel/ implements with a communicator. Without an
// exchange, every expert is local and rows stay where they are.
//
// Per micro-batch the calls come as: Begin (forward, after the local permute), ToExperts (forward, the
// token rows), FromExperts (forward, the expert outputs), ToExperts (backward, the output gradients, same
// layout), FromExperts (backward, the input gradients), End (after the backward). Every rank of the
// expert-parallel group makes the same calls in the same order (collectives).
#ifndef FATHOM_LAYERS_EXPERT_EXCHANGE_H_
#define FATHOM_LAYERS_EXPERT_EXCHANGE_H_

#include <cstdint>

#include "framework/tensor.h"

namespace fathom {

struct ExpertPlacement {
  int64_t begin = 0;   // first global expert id held here
  int64_t count = -1;  // experts held here; -1 = all
};

class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;
  // counts (E) i64: this rank's rows per global expert, in the order of the rows it will send. Returns the
  // rows per local expert (E_local) i64 that ToExperts will deliver, grouped by local expert.
  virtual Tensor Begin(int mb, const Tensor& counts) = 0;
  // rows (R, C) in global-expert order -> (R_local, C) grouped by local expert (within an expert: by
  // source rank, then in the source's order).
  virtual Tensor ToExperts(int mb, const Tensor& rows) = 0;
  // The inverse movement: (R_local, C) grouped by local expert -> (R, C) in this rank's original order.
  virtual Tensor FromExperts(int mb, const Tensor& rows) = 0;
  virtual void End(int mb) = 0;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_EXPERT_EXCHANGE_H_
