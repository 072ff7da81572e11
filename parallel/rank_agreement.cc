#include "parallel/rank_agreement.h"

#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/collective_status.h"

namespace fathom {

RecipeDifference FirstRecipeDifference(const std::string& left_yaml, const std::string& right_yaml) {
  std::vector<RecipeDifference> all = RecipeDifferences(left_yaml, right_yaml);
  return all.empty() ? RecipeDifference{} : all.front();
}

std::vector<RecipeDifference> RecipeDifferences(const std::string& left_yaml, const std::string& right_yaml) {
  const auto left = ResolvedRecipeKeyValues(left_yaml), right = ResolvedRecipeKeyValues(right_yaml);
  std::vector<RecipeDifference> out;
  std::map<std::string, std::string> right_values(right.begin(), right.end());
  for (const auto& [key, value] : left) {
    auto it = right_values.find(key);
    if (it == right_values.end()) {
      out.push_back({key, value, "(absent)"});
    } else if (it->second != value) {
      out.push_back({key, value, it->second});
    }
  }
  std::map<std::string, std::string> left_values(left.begin(), left.end());
  for (const auto& [key, value] : right) {
    if (!left_values.count(key)) out.push_back({key, "(absent)", value});
  }
  return out;
}

absl::Status CheckSameRecipeOnAllRanks(const Recipe& recipe, Communicator& world) {
  const std::string yaml = ResolvedRecipeYaml(recipe);
  const std::vector<std::vector<int64_t>> hashes = AllGatherI64(world, {StableHash64(yaml)});
  const int64_t reference = hashes[0][0];
  int differing = -1;
  for (int r = 1; r < world.size() && differing < 0; ++r) {
    if (hashes[static_cast<size_t>(r)][0] != reference) differing = r;
  }
  if (differing < 0) return absl::OkStatus();
  const std::string left = BroadcastString(world, yaml, 0);
  const std::string right = BroadcastString(world, yaml, differing);
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
                   " is ", d.left, " on rank 0 (", RankList(like_left), ") but ", d.right, " on rank ",
                   differing, " (", RankList(like_right), ")");
  if (!others.empty()) absl::StrAppend(&out, "; ", RankList(others), " differ from both");
  absl::StrAppend(
      &out,
      "; every rank must run the same recipe (compare the files and --set options each rank was given)");
  return absl::InvalidArgumentError(out);
}

}  // namespace fathom
