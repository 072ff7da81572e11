#include "parallel/collective_status.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace fathom {
namespace {

int64_t Words(size_t bytes) { return static_cast<int64_t>((bytes + 7) / 8); }

Tensor Pack(const std::string& s) {
  Tensor t = Tensor::Zeros({Words(s.size())}, DType::kI64);
  std::memcpy(t.raw(), s.data(), s.size());
  return t;
}

}  // namespace

std::string BroadcastString(Communicator& comm, const std::string& s, int root) {
  Tensor length = Tensor::Empty({1}, DType::kI64);
  length.data<int64_t>()[0] = comm.rank() == root ? static_cast<int64_t>(s.size()) : 0;
  comm.Broadcast(length, root);
  const size_t n = static_cast<size_t>(length.data<int64_t>()[0]);
  Tensor words = comm.rank() == root ? Pack(s) : Tensor::Zeros({Words(n)}, DType::kI64);
  comm.Broadcast(words, root);
  return std::string(static_cast<const char*>(words.raw()), n);
}

std::vector<std::string> GatherStrings(Communicator& comm, const std::string& s, int root) {
  const int size = comm.size();
  Tensor my_length = Tensor::Empty({1}, DType::kI64);
  my_length.data<int64_t>()[0] = static_cast<int64_t>(s.size());
  Tensor lengths = Tensor::Empty({size}, DType::kI64);
  comm.AllGather(my_length, lengths);
  const int64_t* len = lengths.data<int64_t>();
  // An all-to-all in which only `root` receives: a gather with per-rank sizes.
  std::vector<int64_t> send_counts(static_cast<size_t>(size), 0), recv_counts(static_cast<size_t>(size), 0);
  send_counts[static_cast<size_t>(root)] = Words(s.size());
  int64_t total = 0;
  if (comm.rank() == root) {
    for (int r = 0; r < size; ++r) {
      recv_counts[static_cast<size_t>(r)] = Words(static_cast<size_t>(len[r]));
      total += recv_counts[static_cast<size_t>(r)];
    }
  }
  Tensor send = Pack(s);
  Tensor recv = Tensor::Zeros({total}, DType::kI64);
  comm.AllToAllV(send, send_counts, recv, recv_counts);
  std::vector<std::string> out;
  if (comm.rank() != root) return out;
  const char* bytes = static_cast<const char*>(recv.raw());
  for (int r = 0; r < size; ++r) {
    out.emplace_back(bytes, static_cast<size_t>(len[r]));
    bytes += recv_counts[static_cast<size_t>(r)] * 8;
  }
  return out;
}

absl::Status AgreeOnStatus(Communicator& comm, const absl::Status& local) {
  // max over ranks of (size - rank) for the failing ones: the lowest failing rank, 0 when none failed.
  Tensor flag = Tensor::Empty({1}, DType::kI64);
  flag.data<int64_t>()[0] = local.ok() ? 0 : comm.size() - comm.rank();
  comm.AllReduce(flag, ReduceOp::kMax);
  if (flag.data<int64_t>()[0] == 0) return absl::OkStatus();
  const int root = comm.size() - static_cast<int>(flag.data<int64_t>()[0]);
  Tensor code = Tensor::Empty({1}, DType::kI64);
  code.data<int64_t>()[0] = static_cast<int64_t>(local.code());
  comm.Broadcast(code, root);
  std::string message = BroadcastString(comm, std::string(local.message()), root);
  if (root != 0) message = absl::StrCat("[rank ", root, "] ", message);
  return absl::Status(static_cast<absl::StatusCode>(code.data<int64_t>()[0]), message);
}

}  // namespace fathom
