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
//
// Non-blocking forms (the overlap hook, DESIGN.md idea 3): StartDispatch / StartCombine begin the same
// movements and return a RowsInFlight whose Wait() completes them and returns what the blocking form
// returns; Dispatch and Combine are Start...().Wait(). In between, the caller may run other work, including
// other movements started later; movements of one exchange are collectives started in call order, so every
// rank of the group must START them in the same order (waits may come in any order). The counts exchange of
// StartDispatch(rows, counts, &handle) is a small blocking host collective: the handle is complete when
// StartDispatch returns; only the rows are in flight.
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
#include <memory>
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

// A movement of rows in flight, returned by the Start* calls. Wait() completes it once and returns the
// moved rows (on the GPU: ordered on the current stream; the host does not wait for the device). Until then
// the caller must not write the rows it handed over; the movement keeps every tensor it uses alive.
// Move-only. Destroying or assigning over a pending movement waits for it first (nothing is abandoned in
// flight). A default-constructed one is complete and returns an undefined tensor.
class RowsInFlight {
 public:
  // What an exchange implements: Wait() is called at most once.
  class Impl {
   public:
    virtual ~Impl() = default;
    virtual Tensor Wait() = 0;
  };

  RowsInFlight() = default;
  explicit RowsInFlight(Tensor done);  // a movement that completed at once (e.g. nothing to move)
  explicit RowsInFlight(std::unique_ptr<Impl> impl);
  RowsInFlight(RowsInFlight&& other) noexcept = default;
  RowsInFlight& operator=(RowsInFlight&& other) noexcept;
  RowsInFlight(const RowsInFlight&) = delete;
  RowsInFlight& operator=(const RowsInFlight&) = delete;
  ~RowsInFlight();

  // REQUIRES: not waited for yet (FATHOM_CHECK).
  Tensor Wait();
  bool pending() const { return impl_ != nullptr; }

 private:
  std::unique_ptr<Impl> impl_;
  Tensor done_;
  bool waited_ = false;
};

class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;

  // rows (R, C) sorted by global expert; counts (E) i64 HOST: this rank's rows per global expert, in the
  // order of `rows`. Moves the rows of this rank's experts (R_local, C), grouped by local expert (within an
  // expert: by source rank, then in the source's order), and fills *handle before returning.
  virtual RowsInFlight StartDispatch(const Tensor& rows, const Tensor& counts, DispatchHandle* handle) = 0;
  // The same movement for rows laid out as the dispatch that made `handle` (the backward of combine).
  // `handle` may be destroyed once this returns.
  virtual RowsInFlight StartDispatch(const Tensor& rows, const DispatchHandle& handle) = 0;
  // The inverse movement: (R_local, C) grouped by local expert -> (R, C) in this rank's original order.
  virtual RowsInFlight StartCombine(const Tensor& rows, const DispatchHandle& handle) = 0;

  // The blocking forms.
  Tensor Dispatch(const Tensor& rows, const Tensor& counts, DispatchHandle* handle) {
    return StartDispatch(rows, counts, handle).Wait();
  }
  Tensor Dispatch(const Tensor& rows, const DispatchHandle& handle) {
    return StartDispatch(rows, handle).Wait();
  }
  Tensor Combine(const Tensor& rows, const DispatchHandle& handle) {
    return StartCombine(rows, handle).Wait();
  }
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_EXPERT_EXCHANGE_H_
