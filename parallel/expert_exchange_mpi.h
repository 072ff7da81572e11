// ExpertExchange over an expert-parallel group's communicator (DeepSeek-V3's dispatch/combine): the
// ep ranks each hold E / ep consecutive routed experts; rank r holds [r * E/ep, (r+1) * E/ep).
//
// Begin exchanges the per-expert row counts (an all-to-all of E/ep counts per peer); ToExperts moves rows
// with one all-to-all (rows for expert e go to the rank holding e) and regroups what arrives by local
// expert; FromExperts undoes both. The layout of Begin is kept per micro-batch until End, so the backward
// reuses it (the dispatch handle of DESIGN.md / DeepEP).
//
// Devices. Counts are host i64 tensors on every backend (layers/expert_exchange.h): they travel over the
// counts communicator, which moves host tensors (MpiCommunicator; the same group as the rows'). Rows are
// f32, f64 or bf16 on the CPU or the GPU and travel over the rows communicator: MpiCommunicator for host
// rows, NcclCommunicator for CUDA rows. The returned rows live on the input's device: CUDA tensors from the
// current cuda::DevicePool, and the regrouping is one ops::Copy per (source rank, local expert) block,
// queued on the current ops::OpContext's stream, which must be the pool's stream and the NCCL
// communicator's compute stream (checked): the all-to-all starts after the copies before it, and its Wait()
// orders the copies after it. The host does not wait for the GPU here (Begin's counts exchange is a host
// collective over the counts communicator). Pure data movement: the same rows give the same bits on every
// backend.
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
  // `comm` (not owned) is the expert-parallel group that moves the rows; `counts_comm` (not owned; nullptr =
  // `comm`) moves the host counts: the same ranks in the same order (checked: size and rank), e.g. the MPI
  // ep group when `comm` is the NCCL one. Both must outlive the exchange. REQUIRES: comm->size() divides
  // num_experts.
  CommExpertExchange(Communicator* comm, int64_t num_experts, Communicator* counts_comm = nullptr);

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
  Communicator* counts_comm_;
  int64_t num_experts_, local_experts_;
  std::map<int, Layout> layouts_;
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_EXPERT_EXCHANGE_MPI_H_
