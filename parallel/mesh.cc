#include "parallel/mesh.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace fathom {

namespace {

std::string Divisors(int n) {
  std::vector<int> d;
  for (int i = 1; i <= n; ++i) {
    if (n % i == 0) d.push_back(i);
  }
  return absl::StrJoin(d, ", ");
}

}  // namespace

absl::StatusOr<MeshLayout> MeshLayout::Create(int world, int64_t pp, int64_t ep) {
  FATHOM_CHECK(world >= 1, "[mesh] world size ", world);
  if (pp < 1) return absl::InvalidArgumentError(absl::StrCat("parallel.pp = ", pp, " must be at least 1"));
  if (ep < 1) return absl::InvalidArgumentError(absl::StrCat("parallel.ep = ", ep, " must be at least 1"));
  if (pp > world || world % pp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.pp = ", pp, " does not divide the world size ", world,
                     " (the number of ranks launched): expected parallel.pp to be one of ", Divisors(world),
                     ", or launch a multiple of ", pp, " ranks"));
  }
  const int dp = world / static_cast<int>(pp);
  if (ep > dp || dp % ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat("parallel.ep = ", ep, " does not divide the ", dp,
                                                   " data-parallel ranks of a pipeline stage (world size ",
                                                   world, " / parallel.pp = ", pp,
                                                   "): expected parallel.ep to be one of ", Divisors(dp),
                                                   ", or launch ", pp, " x a multiple of ", ep, " ranks"));
  }
  return MeshLayout(world, static_cast<int>(pp), static_cast<int>(ep));
}

MeshCoord MeshLayout::Coord(int rank) const {
  FATHOM_CHECK(rank >= 0 && rank < world_, "[mesh] rank ", rank, " outside world ", world_);
  MeshCoord c;
  c.rank = rank;
  c.pp_rank = rank / dp();
  c.dp_rank = rank % dp();
  c.ep_rank = c.dp_rank % ep_;
  c.edp_rank = c.dp_rank / ep_;
  return c;
}

int MeshLayout::Rank(int pp_rank, int edp_rank, int ep_rank) const {
  FATHOM_CHECK(
      pp_rank >= 0 && pp_rank < pp_ && edp_rank >= 0 && edp_rank < edp() && ep_rank >= 0 && ep_rank < ep_,
      "[mesh] coordinate (pp ", pp_rank, ", edp ", edp_rank, ", ep ", ep_rank, ") outside ", Describe());
  return pp_rank * dp() + edp_rank * ep_ + ep_rank;
}

std::vector<int> MeshLayout::PpGroup(int rank) const {
  MeshCoord c = Coord(rank);
  std::vector<int> out;
  for (int s = 0; s < pp_; ++s) out.push_back(Rank(s, c.edp_rank, c.ep_rank));
  return out;
}

std::vector<int> MeshLayout::EpGroup(int rank) const {
  MeshCoord c = Coord(rank);
  std::vector<int> out;
  for (int e = 0; e < ep_; ++e) out.push_back(Rank(c.pp_rank, c.edp_rank, e));
  return out;
}

std::vector<int> MeshLayout::EdpGroup(int rank) const {
  MeshCoord c = Coord(rank);
  std::vector<int> out;
  for (int d = 0; d < edp(); ++d) out.push_back(Rank(c.pp_rank, d, c.ep_rank));
  return out;
}

std::vector<int> MeshLayout::DpGroup(int rank) const {
  MeshCoord c = Coord(rank);
  std::vector<int> out;
  for (int d = 0; d < dp(); ++d) out.push_back(c.pp_rank * dp() + d);
  return out;
}

std::string MeshLayout::Describe() const {
  return absl::StrCat("mesh: world ", world_, " = pp ", pp_, " x dp ", dp(), " (ep ", ep_, " x edp ", edp(),
                      ")");
}

std::string MeshLayout::Describe(int rank) const {
  MeshCoord c = Coord(rank);
  return absl::StrCat(Describe(), "; rank ", rank, " = stage ", c.pp_rank, ", dp ", c.dp_rank, " (ep ",
                      c.ep_rank, ", edp ", c.edp_rank, ")");
}

DeviceMesh::DeviceMesh(MeshLayout layout, std::unique_ptr<Communicator> world)
    : layout_(layout), coord_(layout.Coord(world->rank())), world_(std::move(world)) {}

absl::StatusOr<std::unique_ptr<DeviceMesh>> DeviceMesh::Create(std::unique_ptr<Communicator> world,
                                                               int64_t pp, int64_t ep) {
  FATHOM_CHECK(world != nullptr, "[mesh] no world communicator");
  absl::StatusOr<MeshLayout> layout = MeshLayout::Create(world->size(), pp, ep);
  if (!layout.ok()) return layout.status();
  std::unique_ptr<DeviceMesh> mesh(new DeviceMesh(*layout, std::move(world)));
  const MeshLayout& l = mesh->layout_;
  const MeshCoord& c = mesh->coord_;
  // Colors number the groups of an axis; keys order a group by the rank's coordinate on that axis. Every
  // rank performs the four splits in the same order (each is collective over the world).
  mesh->pp_ = mesh->world_->Split(c.dp_rank, c.pp_rank, "pp");
  mesh->ep_ = mesh->world_->Split(c.pp_rank * l.edp() + c.edp_rank, c.ep_rank, "ep");
  mesh->edp_ = mesh->world_->Split(c.pp_rank * l.ep() + c.ep_rank, c.edp_rank, "edp");
  mesh->dp_ = mesh->world_->Split(c.pp_rank, c.dp_rank, "dp");
  auto check = [&](const Communicator& g, int expected_rank, size_t expected_size) {
    FATHOM_CHECK(g.rank() == expected_rank && g.size() == static_cast<int>(expected_size), "[mesh] group ",
                 g.name(), " of rank ", c.rank, " is rank ", g.rank(), " of ", g.size(), ", expected ",
                 expected_rank, " of ", expected_size);
  };
  check(*mesh->pp_, c.pp_rank, l.PpGroup(c.rank).size());
  check(*mesh->ep_, c.ep_rank, l.EpGroup(c.rank).size());
  check(*mesh->edp_, c.edp_rank, l.EdpGroup(c.rank).size());
  check(*mesh->dp_, c.dp_rank, l.DpGroup(c.rank).size());
  return mesh;
}

}  // namespace fathom
