#include "parallel/all_to_all_exchange.h"

#include <functional>

#include "framework/ops.h"

#ifdef FATHOM_WITH_CUDA
#include "parallel/cuda/nccl_communicator.h"
#endif

namespace fathom {

ExpertPlacement PlaceExperts(int64_t num_experts, int ep, int ep_rank) {
  FATHOM_CHECK(ep >= 1 && num_experts % ep == 0 && 0 <= ep_rank && ep_rank < ep, "placing ", num_experts,
               " experts over ep ", ep, " (rank ", ep_rank, ")");
  const int64_t per = num_experts / ep;
  return {per * ep_rank, per};
}

AllToAllExpertExchange::AllToAllExpertExchange(Communicator* comm, int64_t num_experts,
                                               Communicator* counts_comm)
    : comm_(comm),
      counts_comm_(counts_comm != nullptr ? counts_comm : comm),
      num_experts_(num_experts),
      local_experts_(num_experts / comm->size()) {
  FATHOM_CHECK(num_experts % comm->size() == 0, "[expert exchange] ", num_experts, " experts over ",
               comm->size(), " ranks");
  FATHOM_CHECK(counts_comm_->size() == comm->size() && counts_comm_->rank() == comm->rank(),
               "[expert exchange] the counts group ", counts_comm_->name(), " (rank ", counts_comm_->rank(),
               " of ", counts_comm_->size(), ") is not the rows group ", comm->name(), " (rank ",
               comm->rank(), " of ", comm->size(), ")");
}

namespace {

std::vector<int64_t> Scaled(const std::vector<int64_t>& rows, int64_t width) {
  std::vector<int64_t> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = rows[i] * width;
  return out;
}

int64_t Sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

// NCCL orders an operation after the compute stream it was given and its Wait() orders that stream: the
// regrouping copies, queued on the current OpContext's stream, must be on that stream (and the pool that
// hands out the buffers must serve it).
void CheckStreams(Communicator& comm, const Tensor& rows) {
#ifdef FATHOM_WITH_CUDA
  if (rows.device() == Device::kCUDA) CheckOnComputeStream(comm, "expert exchange");
#endif
}

// Copies row blocks between the (source, expert) order an all-to-all produces and the (expert, source)
// order the grouped expert GEMMs need. to_expert_major selects the direction. One ops::Copy per non-empty
// block: a memcpy on the CPU, a device-to-device copy queued on the current stream on the GPU (a single
// gather kernel over a block table would replace the ep * local-experts launches if they ever show).
void Regroup(const Tensor& dst, const Tensor& src, const std::vector<std::vector<int64_t>>& from,
             bool to_expert_major) {
  const int ep = static_cast<int>(from.size());
  const int64_t experts = ep ? static_cast<int64_t>(from[0].size()) : 0;
  // Offsets of every (source, expert) block in both orders.
  std::vector<std::vector<int64_t>> src_major(ep, std::vector<int64_t>(experts)),
      expert_major(ep, std::vector<int64_t>(experts));
  int64_t off = 0;
  for (int p = 0; p < ep; ++p)
    for (int64_t e = 0; e < experts; ++e) src_major[p][e] = off, off += from[p][e];
  off = 0;
  for (int64_t e = 0; e < experts; ++e)
    for (int p = 0; p < ep; ++p) expert_major[p][e] = off, off += from[p][e];
  for (int p = 0; p < ep; ++p) {
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t to = to_expert_major ? expert_major[p][e] : src_major[p][e];
      const int64_t at = to_expert_major ? src_major[p][e] : expert_major[p][e];
      if (from[p][e]) ops::Copy(dst.Rows(to, to + from[p][e]), src.Rows(at, at + from[p][e]));
    }
  }
}

// The rows' all-to-all, in flight; Wait() regroups what arrived by local expert (dispatch) or hands it
// back as it came (combine, regrouped before it left).
class AllToAllInFlight final : public RowsInFlight::Impl {
 public:
  AllToAllInFlight(Request request, Tensor arrived, std::vector<std::vector<int64_t>> regroup_from,
                   std::function<void()> on_wait)
      : request_(std::move(request)),
        arrived_(std::move(arrived)),
        regroup_from_(std::move(regroup_from)),
        on_wait_(std::move(on_wait)) {}

  Tensor Wait() override {
    request_.Wait();
    if (on_wait_) on_wait_();
    if (regroup_from_.empty()) return arrived_;
    Tensor grouped = Tensor::Empty(arrived_.shape(), arrived_.dtype(), arrived_.device());
    Regroup(grouped, arrived_, regroup_from_, /*to_expert_major=*/true);
    return grouped;
  }

 private:
  Request request_;
  Tensor arrived_;
  std::vector<std::vector<int64_t>> regroup_from_;  // empty: no regrouping (combine)
  std::function<void()> on_wait_;
};

}  // namespace

RowsInFlight AllToAllExpertExchange::StartDispatch(const Tensor& rows, const Tensor& counts,
                                                   DispatchHandle* handle) {
  FATHOM_CHECK(
      counts.dtype() == DType::kI64 && counts.numel() == num_experts_ && counts.device() == Device::kCPU,
      "[expert exchange] counts ", counts.shape_str(), " ", DTypeName(counts.dtype()), " on ",
      DeviceName(counts.device()), ", expected (", num_experts_, ") i64 on the host");
  FATHOM_CHECK(handle != nullptr, "[expert exchange] Dispatch needs a handle to fill");
  const int ep = comm_->size();
  // Counts are already ordered by destination rank (experts are contiguous per rank).
  Tensor recv = Tensor::Empty({num_experts_}, DType::kI64);
  counts_comm_->AllToAllV(counts, std::vector<int64_t>(ep, local_experts_), recv,
                          std::vector<int64_t>(ep, local_experts_));
  DispatchHandle& h = *handle;
  h.send_rows.assign(ep, 0);
  h.recv_rows.assign(ep, 0);
  h.from.assign(ep, std::vector<int64_t>(local_experts_, 0));
  h.local_counts = Tensor::Zeros({local_experts_}, DType::kI64);
  const int64_t* c = counts.data<int64_t>();
  const int64_t* r = recv.data<int64_t>();
  int64_t* local = h.local_counts.data<int64_t>();
  for (int p = 0; p < ep; ++p) {
    for (int64_t e = 0; e < local_experts_; ++e) {
      h.send_rows[p] += c[p * local_experts_ + e];
      h.from[p][e] = r[p * local_experts_ + e];
      h.recv_rows[p] += h.from[p][e];
      local[e] += h.from[p][e];
    }
  }
  return Start(rows, h, "dispatch");
}

int AllToAllExpertExchange::BeginSpan(const char* what) {
  if (trace_ == nullptr || !trace_->recording()) return -1;
  TraceArgs args;
  args.instruction = trace_->context_instruction();
  args.pass = trace_->context_pass();
  std::string name = what;
  if (!args.pass.empty()) name += " " + args.pass;
  return trace_->Begin(TraceLane::kAllToAll, std::move(name), std::move(args));
}

void AllToAllExpertExchange::EndSpan(int span, const Tensor& rows, bool at_wait) {
  if (span < 0) return;
  const bool on_device = rows.device() == Device::kCUDA;
  if (on_device == at_wait) return;  // the GPU closes at the start, the CPU at the wait
#ifdef FATHOM_WITH_CUDA
  if (on_device) {
    // The span ends when the communication stream has run the all-to-all queued just before.
    auto* nccl = dynamic_cast<NcclCommunicator*>(comm_);
    FATHOM_CHECK(nccl != nullptr, "[expert exchange] CUDA rows over a non-NCCL communicator");
    trace_->EndOnStream(span, nccl->comm_stream());
    return;
  }
#endif
  trace_->End(span);
}

RowsInFlight AllToAllExpertExchange::Start(const Tensor& rows, const DispatchHandle& l, const char* what) {
  FATHOM_CHECK(static_cast<int>(l.send_rows.size()) == comm_->size(), "[expert exchange] a handle for ",
               l.send_rows.size(), " peers on a group of ", comm_->size());
  FATHOM_CHECK(rows.ndim() == 2 && rows.dim(0) == Sum(l.send_rows), "[expert exchange] ", rows.shape_str(),
               " rows, layout sends ", Sum(l.send_rows));
  CheckStreams(*comm_, rows);
  const int64_t width = rows.dim(1);
  Tensor arrived = Tensor::Empty({Sum(l.recv_rows), width}, rows.dtype(), rows.device());
  const int span = BeginSpan(what);
  Request request = comm_->IAllToAllV(rows, Scaled(l.send_rows, width), arrived, Scaled(l.recv_rows, width));
  EndSpan(span, rows, /*at_wait=*/false);
  return RowsInFlight(std::make_unique<AllToAllInFlight>(std::move(request), arrived, l.from,
                                                         [this, span, rows] { EndSpan(span, rows, true); }));
}

RowsInFlight AllToAllExpertExchange::StartDispatch(const Tensor& rows, const DispatchHandle& l) {
  return Start(rows, l, "dispatch (grad)");
}

RowsInFlight AllToAllExpertExchange::StartCombine(const Tensor& rows, const DispatchHandle& l) {
  FATHOM_CHECK(static_cast<int>(l.send_rows.size()) == comm_->size(), "[expert exchange] a handle for ",
               l.send_rows.size(), " peers on a group of ", comm_->size());
  FATHOM_CHECK(rows.ndim() == 2 && rows.dim(0) == Sum(l.recv_rows), "[expert exchange] ", rows.shape_str(),
               " expert rows, layout holds ", Sum(l.recv_rows));
  CheckStreams(*comm_, rows);
  const int64_t width = rows.dim(1);
  Tensor by_source = Tensor::Empty(rows.shape(), rows.dtype(), rows.device());
  Regroup(by_source, rows, l.from, /*to_expert_major=*/false);
  Tensor back = Tensor::Empty({Sum(l.send_rows), width}, rows.dtype(), rows.device());
  const int span = BeginSpan("combine");
  Request request =
      comm_->IAllToAllV(by_source, Scaled(l.recv_rows, width), back, Scaled(l.send_rows, width));
  EndSpan(span, rows, /*at_wait=*/false);
  return RowsInFlight(std::make_unique<AllToAllInFlight>(std::move(request), back,
                                                         std::vector<std::vector<int64_t>>{},
                                                         [this, span, rows] { EndSpan(span, rows, true); }));
}

}  // namespace fathom
