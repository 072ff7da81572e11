#include "parallel/rank_agreement.h"

#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace fathom {
namespace {

// FNV-1a: stable across builds and hosts (std::hash promises neither), and collisions between two
// different recipes are of no practical concern at 64 bits.
int64_t Hash64(const std::string& text) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  int64_t out = 0;
  std::memcpy(&out, &h, sizeof(out));
  return out;
}

// Every rank's `values` (the same count on each), gathered: [rank][i].
std::vector<std::vector<int64_t>> GatherI64(const std::vector<int64_t>& values, Communicator& comm) {
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

// "0-2, 5": ranks in order, runs collapsed.
std::string Ranks(const std::vector<int>& ranks) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    parts.push_back(j == i ? absl::StrCat(ranks[i]) : absl::StrCat(ranks[i], "-", ranks[j]));
    i = j + 1;
  }
  return absl::StrCat(ranks.size() == 1 ? "rank " : "ranks ", absl::StrJoin(parts, ", "));
}

// The (key path, value) lines of a resolved recipe, in order; map headers ("model:") only set the path.
std::vector<std::pair<std::string, std::string>> KeyValues(const std::string& yaml) {
  std::vector<std::pair<std::string, std::string>> out;
  std::vector<std::string> path;
  for (absl::string_view line : absl::StrSplit(yaml, '\n', absl::SkipEmpty())) {
    const size_t spaces = line.find_first_not_of(' ');
    const size_t colon = line.find(':');
    if (spaces == absl::string_view::npos || colon == absl::string_view::npos) continue;
    path.resize(std::min(path.size(), spaces / 2));
    path.emplace_back(line.substr(spaces, colon - spaces));
    absl::string_view value = line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
    if (!value.empty()) out.emplace_back(absl::StrJoin(path, "."), std::string(value));
  }
  return out;
}

}  // namespace

std::string BroadcastText(const std::string& text, int root, Communicator& comm) {
  Tensor length = Tensor::FromVector({static_cast<double>(text.size())}, {1}, DType::kI64);
  comm.Broadcast(length, root);
  const int64_t n = length.data<int64_t>()[0];
  Tensor words = Tensor::Zeros({(n + 7) / 8}, DType::kI64);
  if (comm.rank() == root) std::memcpy(words.raw(), text.data(), text.size());
  comm.Broadcast(words, root);
  return std::string(static_cast<const char*>(words.raw()), static_cast<size_t>(n));
}

absl::Status AgreeOnStatus(const absl::Status& mine, Communicator& comm) {
  const std::string message(mine.message());
  const std::vector<std::vector<int64_t>> all =
      GatherI64({mine.ok() ? 0 : 1, mine.ok() ? 0 : Hash64(message)}, comm);
  std::vector<int> failed, fine;
  for (int r = 0; r < comm.size(); ++r) (all[static_cast<size_t>(r)][0] ? failed : fine).push_back(r);
  if (failed.empty()) return absl::OkStatus();
  bool alike = fine.empty();
  for (int r : failed)
    alike = alike && all[static_cast<size_t>(r)][1] == all[static_cast<size_t>(failed[0])][1];
  if (alike) return mine;  // every rank failed with the same message: say it as each rank would
  const int first = failed[0];
  const std::string text =
      BroadcastText(absl::StrCat(static_cast<int>(mine.code()), ":", message), first, comm);
  const size_t colon = text.find(':');
  const auto code = static_cast<absl::StatusCode>(std::stoi(text.substr(0, colon)));
  std::string out = absl::StrCat("rank ", first, ": ", text.substr(colon + 1));
  if (!fine.empty())
    absl::StrAppend(&out, " (", Ranks(fine), " did not fail; every rank must get the same input)");
  return absl::Status(code, out);
}

RecipeDifference FirstRecipeDifference(const std::string& left_yaml, const std::string& right_yaml) {
  const auto left = KeyValues(left_yaml), right = KeyValues(right_yaml);
  std::map<std::string, std::string> right_values(right.begin(), right.end());
  for (const auto& [key, value] : left) {
    auto it = right_values.find(key);
    if (it == right_values.end()) return {key, value, "(absent)"};
    if (it->second != value) return {key, value, it->second};
  }
  std::map<std::string, std::string> left_values(left.begin(), left.end());
  for (const auto& [key, value] : right) {
    if (!left_values.count(key)) return {key, "(absent)", value};
  }
  return {};
}

absl::Status CheckSameRecipeOnAllRanks(const Recipe& recipe, Communicator& world) {
  const std::string yaml = ResolvedRecipeYaml(recipe);
  const std::vector<std::vector<int64_t>> hashes = GatherI64({Hash64(yaml)}, world);
  const int64_t reference = hashes[0][0];
  int differing = -1;
  for (int r = 1; r < world.size() && differing < 0; ++r) {
    if (hashes[static_cast<size_t>(r)][0] != reference) differing = r;
  }
  if (differing < 0) return absl::OkStatus();
  const std::string left = BroadcastText(yaml, 0, world);
  const std::string right = BroadcastText(yaml, differing, world);
  const RecipeDifference d = FirstRecipeDifference(left, right);
  std::vector<int> like_left, like_right, others;
  for (int r = 0; r < world.size(); ++r) {
    const int64_t h = hashes[static_cast<size_t>(r)][0];
    (h == reference                                   ? like_left
     : h == hashes[static_cast<size_t>(differing)][0] ? like_right
                                                      : others)
        .push_back(r);
  }
  std::string out =
      absl::StrCat("the ranks were given different recipes (compared after --set, with defaults): ", d.key,
                   " is ", d.left, " on rank 0 (", Ranks(like_left), ") but ", d.right, " on rank ",
                   differing, " (", Ranks(like_right), ")");
  if (!others.empty()) absl::StrAppend(&out, "; ", Ranks(others), " differ from both");
  absl::StrAppend(
      &out,
      "; every rank must run the same recipe (compare the files and --set options each rank was given)");
  return absl::InvalidArgumentError(out);
}

}  // namespace fathom
