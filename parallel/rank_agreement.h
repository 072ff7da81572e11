// What the ranks of a job must agree on before they train: that they all loaded the same recipe (that
// every rank loaded its input is AgreeOnStatus, parallel/collective_status.h). Each check is collective and
// ends with the same answer on every rank, so that the caller can leave with ExitAllRanks (parallel/fault.h):
// one message, one exit code, nobody left waiting in a later collective.
//
// Costs: an all-gather of one or two integers per rank; texts are broadcast only when something differs.
// Thread safety: as the communicator's (one thread).
#ifndef FATHOM_PARALLEL_RANK_AGREEMENT_H_
#define FATHOM_PARALLEL_RANK_AGREEMENT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "framework/config.h"
#include "parallel/collective_status.h"
#include "parallel/communicator.h"

namespace fathom {

// Collective over `world`: compares the resolved recipe (ResolvedRecipeYaml: every key, after --set, with
// defaults) across the ranks by a 64-bit hash. OK when all are equal. Otherwise InvalidArgument on every
// rank naming the first key (in the resolved recipe's order) where the lowest rank that differs from rank
// 0 differs, both values, and which ranks side with each, e.g.
//   "the ranks were given different recipes: optim.lr is 0.003 on rank 0 (ranks 0-2) but 0.001 on rank 3
//    (rank 3); every rank must run the same recipe (compare the files and --set options of each rank)".
// The recipe's path is not compared: equal contents under different paths are the same recipe.
absl::Status CheckSameRecipeOnAllRanks(const Recipe& recipe, Communicator& world);

// The first line where two resolved recipes differ: its key path ("optim.lr", "model.rope_scaling.factor")
// and the value each has ("(absent)" for a key one of them lacks). Empty path when they are equal.
struct RecipeDifference {
  std::string key, left, right;
};
RecipeDifference FirstRecipeDifference(const std::string& left_yaml, const std::string& right_yaml);
// Every key where they differ: the left recipe's keys in its order, then the keys only the right one has.
std::vector<RecipeDifference> RecipeDifferences(const std::string& left_yaml, const std::string& right_yaml);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_RANK_AGREEMENT_H_
