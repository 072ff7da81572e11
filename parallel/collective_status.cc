#include "parallel/collective_status.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

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

std::vector<std::vector<int64_t>> AllGatherI64(Communicator& comm, const std::vector<int64_t>& values) {
  const int64_t n = static_cast<int64_t>(values.size());
  Tensor mine = Tensor::Empty({n}, DType::kI64);
  std::memcpy(mine.raw(), values.data(), values.size() * sizeof(int64_t));
  Tensor all = Tensor::Empty({comm.size() * n}, DType::kI64);
  comm.AllGather(mine, all);
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(comm.size()));
  for (int r = 0; r < comm.size(); ++r) {
    out[static_cast<size_t>(r)].assign(all.data<int64_t>() + r * n, all.data<int64_t>() + (r + 1) * n);
  }
  return out;
}

std::string RankRuns(std::vector<int> ranks) {
  std::sort(ranks.begin(), ranks.end());
  std::vector<std::string> parts;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    parts.push_back(j == i ? absl::StrCat(ranks[i]) : absl::StrCat(ranks[i], "-", ranks[j]));
    i = j + 1;
  }
  return absl::StrJoin(parts, ", ");
}

std::string RankList(const std::vector<int>& ranks) {
  return absl::StrCat(ranks.size() == 1 ? "rank " : "ranks ", RankRuns(ranks));
}

int64_t StableHash64(const std::string& text) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  int64_t out = 0;
  std::memcpy(&out, &h, sizeof(out));
  return out;
}

absl::Status AgreeOnStatus(Communicator& comm, const absl::Status& local) {
  const std::string message(local.message());
  const std::vector<std::vector<int64_t>> all =
      AllGatherI64(comm, {local.ok() ? 0 : 1, local.ok() ? 0 : StableHash64(message)});
  std::vector<int> failed, fine;
  for (int r = 0; r < comm.size(); ++r) (all[static_cast<size_t>(r)][0] ? failed : fine).push_back(r);
  if (failed.empty()) return absl::OkStatus();
  bool alike = fine.empty();
  for (int r : failed)
    alike = alike && all[static_cast<size_t>(r)][1] == all[static_cast<size_t>(failed[0])][1];
  if (alike) return local;  // every rank failed with the same message: say it as each rank would
  const int first = failed[0];
  const std::string text =
      BroadcastString(comm, absl::StrCat(static_cast<int>(local.code()), ":", message), first);
  const size_t colon = text.find(':');
  const auto code = static_cast<absl::StatusCode>(std::stoi(text.substr(0, colon)));
  std::string out = absl::StrCat("rank ", first, ": ", text.substr(colon + 1));
  if (!fine.empty()) absl::StrAppend(&out, " (", RankList(fine), " did not fail)");
  return absl::Status(code, out);
}

}  // namespace fathom
