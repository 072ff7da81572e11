#include "parallel/pipeline_channels.h"

#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "framework/check.h"

#ifdef FATHOM_WITH_CUDA
#include "parallel/cuda/nccl_communicator.h"
#endif

namespace fathom {
namespace {

// The connecting message of each channel; it is received before construction ends, so it never meets the
// messages' tags (0..3).
constexpr int kConnectTag = Communicator::kMaxTag - 1;

int MessageTag(bool gradient, int receiving_chunk) { return 2 * receiving_chunk + (gradient ? 1 : 0); }

// NCCL batches point-to-point operations until the next call into the communicator; a channel's
// communicator sees no other call until its next message, so its operations are enqueued here, at once.
void Enqueue(Communicator& comm) {
#ifdef FATHOM_WITH_CUDA
  if (auto* nccl = dynamic_cast<NcclCommunicator*>(&comm)) nccl->Flush();
#endif
}

struct ChannelUse {
  int receiving_chunk = -1;
};

// Every channel the schedule's messages use, with its receiving chunk: the same on every rank.
std::map<std::tuple<int, int, bool>, ChannelUse> ChannelsOf(const Schedule& s) {
  std::map<std::tuple<int, int, bool>, ChannelUse> used;
  const int last = s.num_stages() - 1;
  auto need = [&](int producer_rank, int consumer_rank, bool gradient, int chunk) {
    if (producer_rank == consumer_rank) return;  // handed over on the rank
    FATHOM_CHECK(producer_rank == consumer_rank + 1 || producer_rank + 1 == consumer_rank, "[pipeline] ",
                 ScheduleKindName(s.kind), " sends from rank ", producer_rank, " to rank ", consumer_rank,
                 ": channels join adjacent pipeline ranks");
    ChannelUse& u = used[{producer_rank, consumer_rank, gradient}];
    FATHOM_CHECK(u.receiving_chunk < 0 || u.receiving_chunk == chunk, "[pipeline] channel ", producer_rank,
                 " -> ", consumer_rank, gradient ? " (gradients)" : " (activations)", " feeds chunks ",
                 u.receiving_chunk, " and ", chunk);
    u.receiving_chunk = chunk;
  };
  for (int r = 0; r < s.pp; ++r) {
    for (const Instruction& ins : s.ranks[r]) {
      auto forward = [&](int mb, int chunk) {
        const int stage = s.StageOf(r, chunk, mb);
        if (stage > 0) need(s.Place(mb, stage - 1).rank, r, false, chunk);
      };
      auto backward = [&](int mb, int chunk) {
        const int stage = s.StageOf(r, chunk, mb);
        if (stage < last) need(s.Place(mb, stage + 1).rank, r, true, chunk);
      };
      switch (ins.kind) {
        case OpKind::kF:
          forward(ins.mb, ins.chunk);
          break;
        case OpKind::kB:
        case OpKind::kBW:
          backward(ins.mb, ins.chunk);
          break;
        case OpKind::kW:
          break;
        case OpKind::kFB:
          forward(ins.mb, ins.chunk);
          backward(ins.mb_b, ins.chunk_b);
          break;
      }
    }
  }
  return used;
}

}  // namespace

PipelineChannels::PipelineChannels(const Schedule& schedule, Communicator& pp, Shape shape, DType dtype,
                                   Device device)
    : rank_(pp.rank()), shape_(std::move(shape)), dtype_(dtype), device_(device) {
  FATHOM_CHECK(pp.size() == schedule.pp, "[pipeline] a group of ", pp.size(), " ranks for a schedule of pp ",
               schedule.pp);
  const auto used = ChannelsOf(schedule);
  // Each Split partitions the group, so one round builds the channels of one direction and kind between
  // the pairs (p, p+1) of one parity of p; the other ranks get a communicator of their own, unused. Every
  // rank takes the same rounds in the same order (`used` is the same everywhere).
  std::vector<Key> order;
  const int n = schedule.pp;
  for (int parity : {0, 1}) {
    for (bool up : {true, false}) {
      for (bool gradient : {false, true}) {
        auto key = [&](int p) { return up ? Key{p, p + 1, gradient} : Key{p + 1, p, gradient}; };
        bool any = false;
        for (int p = parity; p + 1 < n; p += 2) any = any || used.count(key(p));
        if (!any) continue;
        int color = n + rank_;  // alone
        int pair = -1;
        if (rank_ % 2 == parity && rank_ + 1 < n && used.count(key(rank_))) pair = rank_;
        if (rank_ >= 1 && (rank_ - 1) % 2 == parity && used.count(key(rank_ - 1))) pair = rank_ - 1;
        if (pair >= 0) color = pair;
        const Key k = pair >= 0 ? key(pair) : Key{};
        const std::string name =
            pair >= 0 ? absl::StrCat("pp ", std::get<0>(k), "->", std::get<1>(k), gradient ? " grad" : " act")
                      : std::string("pp (unused)");
        std::unique_ptr<Communicator> comm = pp.Split(color, rank_, name);
        if (pair < 0) continue;
        FATHOM_CHECK(comm->size() == 2, "[pipeline] channel ", name, " has ", comm->size(), " ranks");
        Channel& c = channels_[k];
        c.peer_in_comm = 1 - comm->rank();
        c.receiving_chunk = used.at(k).receiving_chunk;
        c.comm = std::move(comm);
        order.push_back(k);
      }
    }
  }
  Connect(order);
}

PipelineChannels::~PipelineChannels() { WaitSends(); }

// One element over every channel of this rank, in the global order of the rounds: NCCL connects a pair of
// peers inside the first operation between them, which may block the host until the peer issues its side;
// both ends reach a channel in the same position of that order, so no rank waits for a peer that is itself
// waiting further on.
void PipelineChannels::Connect(const std::vector<Key>& order) {
  std::vector<Tensor> buffers;
  std::vector<Request> requests;
  for (const Key& k : order) {
    Channel& c = channels_.at(k);
#ifdef FATHOM_WITH_CUDA
    if (device_ == Device::kCUDA) CheckOnComputeStream(*c.comm, "pipeline");
#endif
    Tensor t = Tensor::Zeros({1}, dtype_, device_);
    requests.push_back(std::get<0>(k) == rank_ ? c.comm->ISend(t, c.peer_in_comm, kConnectTag)
                                               : c.comm->IRecv(t, c.peer_in_comm, kConnectTag));
    Enqueue(*c.comm);
    buffers.push_back(t);
  }
  WaitAll(requests);
}

PipelineChannels::Channel& PipelineChannels::Find(int from, int to, bool gradient, int receiving_chunk) {
  auto it = channels_.find({from, to, gradient});
  FATHOM_CHECK(it != channels_.end(), "[pipeline] rank ", rank_, ": no channel ", from, " -> ", to,
               gradient ? " (gradients)" : " (activations)", " in the schedule");
  FATHOM_CHECK(it->second.receiving_chunk == receiving_chunk, "[pipeline] channel ", from, " -> ", to,
               " feeds chunk ", it->second.receiving_chunk, ", not ", receiving_chunk);
  return it->second;
}

void PipelineChannels::Send(const Tensor& t, int peer, bool gradient, int receiving_chunk, const char* what) {
  FATHOM_CHECK(
      t.defined() && t.dtype() == dtype_ && t.device() == device_ && t.numel() == NumElements(shape_),
      "[pipeline] rank ", rank_, " sends ", what, " ", t.defined() ? t.shape_str() : "(undefined)", " ",
      DTypeName(t.dtype()), " on ", DeviceName(t.device()), "; the pipeline's messages are ",
      ShapeString(shape_), " ", DTypeName(dtype_), " on ", DeviceName(device_));
  Channel& c = Find(rank_, peer, gradient, receiving_chunk);
  sends_.push_back(c.comm->ISend(t, c.peer_in_comm, MessageTag(gradient, receiving_chunk)));
  Enqueue(*c.comm);
}

Tensor PipelineChannels::Recv(int peer, bool gradient, int receiving_chunk) {
  Channel& c = Find(peer, rank_, gradient, receiving_chunk);
  Tensor t = Tensor::Empty(shape_, dtype_, device_);
  c.comm->Recv(t, c.peer_in_comm, MessageTag(gradient, receiving_chunk));
  return t;
}

void PipelineChannels::WaitSends() {
  WaitAll(sends_);  // the requests keep the sent tensors alive until then
  sends_.clear();
}

std::vector<Communicator*> PipelineChannels::communicators() const {
  std::vector<Communicator*> out;
  for (const auto& [key, c] : channels_) out.push_back(c.comm.get());
  return out;
}

}  // namespace fathom
