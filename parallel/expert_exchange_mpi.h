// ExpertExchange over an expert-parallel group's communicator (DeepSeek-V3's dispatch/combine): the
// ep ranks each hold E / ep consecutive routed experts; rank r holds [r * E/ep, (r+1) * E/ep).
//
// Begin exchanges the per-expert row counts (an all-to-all of E/ep counts per peer); ToExperts moves rows
// with one all-to-all (rows for expert e go to the rank holding e) and regroups what arrives by local
// expert; FromExperts undoes both. The layout of Begin is kept per micro-batch until End, so the backward
// reuses it (the dispatch handle of DESIGN.md / DeepEP).
#ifndef FATHOM_PARALLEL_EXPERT_EXCHANGE_MPI_H_
#define FATHOM_PARALLEL_EXPERT_EXCHANGE_MPI_H_

#include <map>
#include <vector>

#include "layers/expert_exchange.h"
#include "parallel/communicator.h"

namespace fathom {

// The experts rank `ep_rank` of `ep` holds out of `num_experts`. REQUIRES: ep divides num_experts.
ExpertPlacement PlaceExperts(int64_t num_experts, int ep, int ep_rank);

class CommExpertExchange : public ExpertExchange {
 public:
  // `comm` (not owned) is the expert-parallel group; it must outlive the exchange.
  CommExpertExchange(Communicator* comm, int64_t num_experts);

  Tensor Begin(int mb, const Tensor& counts) override;
  Tensor ToExperts(int mb, const Tensor& rows) override;
  Tensor FromExperts(int mb, const Tensor& rows) override;
  void End(int mb) override;

 private:
  struct Layout {
    std::vector<int64_t> send_rows;          // (ep) rows this rank sends to each peer
    std::vector<int64_t> recv_rows;          // (ep) rows this rank receives from each peer
    std::vector<std::vector<int64_t>> from;  // [src][local expert] rows received
  };
  Layout& Get(int mb);

  Communicator* comm_;
  int64_t num_experts_, local_experts_;
  std::map<int, Layout> layouts_;
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_EXPERT_EXCHANGE_MPI_H_
