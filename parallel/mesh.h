// The device mesh (DESIGN.md, idea 6): world = pp x dp and, inside a pipeline stage, dp = ep x edp.
//
// Rank order, ep innermost, then edp, then pp outermost:
//   rank = pp_rank * dp + edp_rank * ep + ep_rank,   dp_rank = edp_rank * ep + ep_rank
// so an expert-parallel group is a run of consecutive ranks (inside one node whenever it fits one) and a
// pipeline stage is a contiguous block of dp ranks.
//
// Groups of a rank (members listed by world rank, ordered by their rank inside the group):
//   pp   the ranks holding the same (edp, ep) position in every stage: one pipeline, ordered by stage.
//   ep   the ranks of the same stage and edp replica: routed experts are sharded over it (ordered by ep).
//   edp  the ranks of the same stage and ep position: expert parameters are replicated over it (by edp).
//   dp   all ranks of the stage: attention and dense parameters are replicated over it (by dp_rank).
//
// MeshLayout is the arithmetic (no communication; unit tested without MPI); DeviceMesh builds the groups'
// Communicators from the world communicator.
#ifndef FATHOM_PARALLEL_MESH_H_
#define FATHOM_PARALLEL_MESH_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace fathom {

struct MeshCoord {
  int rank = 0;      // world rank
  int pp_rank = 0;   // pipeline stage, 0 .. pp-1
  int dp_rank = 0;   // position inside the stage, 0 .. dp-1 (= edp_rank * ep + ep_rank)
  int ep_rank = 0;   // 0 .. ep-1
  int edp_rank = 0;  // 0 .. edp-1
};

class MeshLayout {
 public:
  // REQUIRES world >= 1. Errors (messages name parallel.pp / parallel.ep, the world size and what was
  // expected): pp < 1, ep < 1, world % pp != 0, (world / pp) % ep != 0. Pure arithmetic, so every rank
  // reaches the same verdict without communicating.
  static absl::StatusOr<MeshLayout> Create(int world, int64_t pp, int64_t ep);

  int world() const { return world_; }
  int pp() const { return pp_; }
  int dp() const { return world_ / pp_; }
  int ep() const { return ep_; }
  int edp() const { return dp() / ep_; }

  MeshCoord Coord(int rank) const;                         // REQUIRES 0 <= rank < world
  int Rank(int pp_rank, int edp_rank, int ep_rank) const;  // the inverse of Coord

  // World ranks of the group containing `rank`, in group-rank order (rank's own position is its
  // coordinate on that axis: pp_rank, ep_rank, edp_rank, dp_rank).
  std::vector<int> PpGroup(int rank) const;
  std::vector<int> EpGroup(int rank) const;
  std::vector<int> EdpGroup(int rank) const;
  std::vector<int> DpGroup(int rank) const;

  // "mesh: world 8 = pp 2 x dp 4 (ep 2 x edp 2)".
  std::string Describe() const;
  // "mesh: world 8 = pp 2 x dp 4 (ep 2 x edp 2); rank 5 = stage 1, dp 1 (ep 1, edp 0)".
  std::string Describe(int rank) const;

 private:
  MeshLayout(int world, int pp, int ep) : world_(world), pp_(pp), ep_(ep) {}
  int world_;
  int pp_;
  int ep_;
};

class DeviceMesh {
 public:
  // Validates (pp, ep) against world->size() with MeshLayout::Create - before any communication, so on an
  // error every rank returns the same status and nobody is left waiting - then builds the four groups by
  // Split. Collective over `world` when valid. Takes ownership of the world communicator.
  static absl::StatusOr<std::unique_ptr<DeviceMesh>> Create(std::unique_ptr<Communicator> world, int64_t pp,
                                                            int64_t ep);

  const MeshLayout& layout() const { return layout_; }
  const MeshCoord& coord() const { return coord_; }

  Communicator& world() const { return *world_; }
  Communicator& pp() const { return *pp_; }    // named "pp"
  Communicator& ep() const { return *ep_; }    // named "ep"
  Communicator& edp() const { return *edp_; }  // named "edp"
  Communicator& dp() const { return *dp_; }    // named "dp"

  std::string Describe() const { return layout_.Describe(coord_.rank); }

 private:
  DeviceMesh(MeshLayout layout, std::unique_ptr<Communicator> world);
  MeshLayout layout_;
  MeshCoord coord_;
  std::unique_ptr<Communicator> world_, pp_, ep_, edp_, dp_;
};

}  // namespace fathom

#endif  // FATHOM_PARALLEL_MESH_H_
