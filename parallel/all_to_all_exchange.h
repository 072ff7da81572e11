// AllToAllExpertExchange: the ExpertExchange (layers/expert_exchange.h) over an expert-parallel group's
// Communicator, any implementation (MPI on the CPU, NCCL on the GPU): the ep ranks each hold E / ep
// consecutive routed experts; rank r holds [r * E/ep, (r+1) * E/ep).
//
// StartDispatch(rows, counts, &handle) exchanges the per-expert row counts (an all-to-all of E/ep counts per
// peer, over the counts communicator, which moves host tensors; blocking), starts one non-blocking
// all-to-all of the rows (rows for expert e go to the rank holding e, IAllToAllV) and, in Wait(), regroups
// what arrived by local expert; the handle records the layout. StartDispatch(rows, handle) moves rows of the
// same layout without exchanging counts again, and StartCombine undoes the movement (regrouping first, then
// the all-to-all). No state is kept between calls: a movement in flight owns its buffers and a copy of the
// layout it needs.
//
// Tracing (set_trace): every movement is a span on the trace's all-to-all lane named "dispatch",
// "dispatch (grad)" (rows of a known layout: the backward of combine) or "combine", followed by the trace's
// current pass ("combine BW 2 c1" is the backward's), with its instruction and pass in the args; on the GPU
// the span ends on the NCCL communicator's communication stream (parallel/step_trace.h).
//
// Devices. Rows are f32, f64 or bf16 (any dtype the rows communicator moves) on the CPU or the GPU and
// travel over the rows communicator: MpiCommunicator for host rows, NcclCommunicator for CUDA rows. The
// returned rows live on the input's device: CUDA tensors from the current cuda::DevicePool, and the
// regrouping is one ops::Copy per (source rank, local expert) block, queued on the current
// ops::OpContext's stream, which must be the pool's stream and the NCCL communicator's compute stream
// (checked): the all-to-all starts after the copies before it, and its Wait() orders the copies after it.
// The host does not wait for the GPU here (the counts exchange is a host collective). Pure data movement:
// the same rows give the same bits on every backend.
#ifndef FATHOM_PARALLEL_ALL_TO_ALL_EXCHANGE_H_
#define FATHOM_PARALLEL_ALL_TO_ALL_EXCHANGE_H_

#include <vector>

#include "layers/expert_exchange.h"
#include "parallel/communicator.h"
#include "parallel/step_trace.h"

namespace fathom {

// The experts rank `ep_rank` of `ep` holds out of `num_experts`. REQUIRES: ep divides num_experts.
ExpertPlacement PlaceExperts(int64_t num_experts, int ep, int ep_rank);

class AllToAllExpertExchange : public ExpertExchange {
 public:
  // `comm` (not owned) is the expert-parallel group that moves the rows; `counts_comm` (not owned; nullptr =
  // `comm`) moves the host counts: the same ranks in the same order (checked: size and rank), e.g. the MPI
  // ep group when `comm` is the NCCL one. Both must outlive the exchange. REQUIRES: comm->size() divides
  // num_experts.
  AllToAllExpertExchange(Communicator* comm, int64_t num_experts, Communicator* counts_comm = nullptr);

  RowsInFlight StartDispatch(const Tensor& rows, const Tensor& counts, DispatchHandle* handle) override;
  RowsInFlight StartDispatch(const Tensor& rows, const DispatchHandle& handle) override;
  RowsInFlight StartCombine(const Tensor& rows, const DispatchHandle& handle) override;

  // Records the movements on `trace` (not owned; null = none). Must outlive the exchange or be reset.
  void set_trace(StepTrace* trace) { trace_ = trace; }

 private:
  // Starts the rows' all-to-all of layout `l` (the dispatch direction); `what` names the trace span.
  RowsInFlight Start(const Tensor& rows, const DispatchHandle& l, const char* what);
  // Opens the trace span of a movement that is being started (-1 without a recording trace).
  int BeginSpan(const char* what);
  // Closes it where the movement completes: on the GPU right after queueing it (on the communication
  // stream), on the CPU when it has been waited for (`at_wait`).
  void EndSpan(int span, const Tensor& rows, bool at_wait);

  Communicator* comm_;
  Communicator* counts_comm_;
  int64_t num_experts_, local_experts_;
  StepTrace* trace_ = nullptr;
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_ALL_TO_ALL_EXCHANGE_H_
