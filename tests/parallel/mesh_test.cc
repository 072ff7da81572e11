// The device mesh's arithmetic (no MPI): coordinates, groups and validation, for every shape up to 24
// ranks; and DeviceMesh over the single-process communicator.
#include "parallel/mesh.h"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/local_communicator.h"

namespace fathom {
namespace {

std::vector<MeshLayout> EveryLayout(int max_world) {
  std::vector<MeshLayout> out;
  for (int world = 1; world <= max_world; ++world) {
    for (int pp = 1; pp <= world; ++pp) {
      for (int ep = 1; ep <= world; ++ep) {
        if (world % pp != 0 || (world / pp) % ep != 0) continue;
        absl::StatusOr<MeshLayout> l = MeshLayout::Create(world, pp, ep);
        EXPECT_TRUE(l.ok()) << l.status();
        if (l.ok()) out.push_back(*l);
      }
    }
  }
  return out;
}

TEST(Mesh, KnownExample) {
  absl::StatusOr<MeshLayout> l = MeshLayout::Create(8, 2, 2);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->dp(), 4);
  EXPECT_EQ(l->edp(), 2);
  MeshCoord c = l->Coord(5);
  EXPECT_EQ(c.pp_rank, 1);
  EXPECT_EQ(c.dp_rank, 1);
  EXPECT_EQ(c.ep_rank, 1);
  EXPECT_EQ(c.edp_rank, 0);
  EXPECT_EQ(l->PpGroup(5), (std::vector<int>{1, 5}));
  EXPECT_EQ(l->EpGroup(5), (std::vector<int>{4, 5}));
  EXPECT_EQ(l->EdpGroup(5), (std::vector<int>{5, 7}));
  EXPECT_EQ(l->DpGroup(5), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(l->Describe(5),
            "mesh: world 8 = pp 2 x dp 4 (ep 2 x edp 2); rank 5 = stage 1, dp 1 (ep 1, edp 0)");
}

TEST(Mesh, CoordinatesFollowTheRankOrderEpInnermost) {
  for (const MeshLayout& l : EveryLayout(24)) {
    SCOPED_TRACE(l.Describe());
    EXPECT_EQ(l.pp() * l.ep() * l.edp(), l.world());
    for (int r = 0; r < l.world(); ++r) {
      MeshCoord c = l.Coord(r);
      EXPECT_EQ(c.rank, r);
      EXPECT_EQ(r, c.pp_rank * l.dp() + c.edp_rank * l.ep() + c.ep_rank);
      EXPECT_EQ(c.dp_rank, c.edp_rank * l.ep() + c.ep_rank);
      EXPECT_LT(c.ep_rank, l.ep());
      EXPECT_LT(c.edp_rank, l.edp());
      EXPECT_EQ(l.Rank(c.pp_rank, c.edp_rank, c.ep_rank), r);
    }
  }
}

// For each axis: the groups partition the world, have the axis's size, list a rank at the position of its
// coordinate, and hold exactly the ranks that share the other coordinates.
TEST(Mesh, GroupsPartitionTheWorld) {
  for (const MeshLayout& l : EveryLayout(24)) {
    SCOPED_TRACE(l.Describe());
    struct Axis {
      const char* name;
      std::vector<int> (MeshLayout::*group)(int) const;
      int size;
      int (*position)(const MeshCoord&);
      bool (*same_group)(const MeshCoord&, const MeshCoord&);
    };
    const Axis axes[] = {
        {"pp", &MeshLayout::PpGroup, l.pp(), [](const MeshCoord& c) { return c.pp_rank; },
         [](const MeshCoord& a, const MeshCoord& b) { return a.dp_rank == b.dp_rank; }},
        {"ep", &MeshLayout::EpGroup, l.ep(), [](const MeshCoord& c) { return c.ep_rank; },
         [](const MeshCoord& a, const MeshCoord& b) {
           return a.pp_rank == b.pp_rank && a.edp_rank == b.edp_rank;
         }},
        {"edp", &MeshLayout::EdpGroup, l.edp(), [](const MeshCoord& c) { return c.edp_rank; },
         [](const MeshCoord& a, const MeshCoord& b) {
           return a.pp_rank == b.pp_rank && a.ep_rank == b.ep_rank;
         }},
        {"dp", &MeshLayout::DpGroup, l.dp(), [](const MeshCoord& c) { return c.dp_rank; },
         [](const MeshCoord& a, const MeshCoord& b) { return a.pp_rank == b.pp_rank; }},
    };
    for (const Axis& axis : axes) {
      SCOPED_TRACE(axis.name);
      std::set<std::vector<int>> groups;
      for (int r = 0; r < l.world(); ++r) {
        std::vector<int> g = (l.*axis.group)(r);
        ASSERT_EQ(static_cast<int>(g.size()), axis.size);
        EXPECT_EQ(g[static_cast<size_t>(axis.position(l.Coord(r)))], r);
        for (int q = 0; q < l.world(); ++q) {
          bool member = std::find(g.begin(), g.end(), q) != g.end();
          EXPECT_EQ(member, axis.same_group(l.Coord(r), l.Coord(q))) << "rank " << r << " and " << q;
        }
        groups.insert(g);
      }
      EXPECT_EQ(static_cast<int>(groups.size()) * axis.size, l.world());
    }
    // Expert-parallel groups are runs of consecutive ranks.
    for (int r = 0; r < l.world(); ++r) {
      std::vector<int> g = l.EpGroup(r);
      for (size_t k = 1; k < g.size(); ++k) EXPECT_EQ(g[k], g[k - 1] + 1);
    }
  }
}

TEST(Mesh, InvalidShapesNameTheKeyTheWorldAndTheChoices) {
  struct Case {
    int world;
    int64_t pp, ep;
    std::vector<std::string> needles;
  };
  const Case cases[] = {
      {8, 3, 1, {"parallel.pp = 3", "world size 8", "one of 1, 2, 4, 8"}},
      {4, 8, 1, {"parallel.pp = 8", "world size 4", "one of 1, 2, 4"}},
      {8,
       2,
       3,
       {"parallel.ep = 3", "4 data-parallel ranks", "world size 8", "parallel.pp = 2", "one of 1, 2, 4"}},
      {6, 1, 4, {"parallel.ep = 4", "6 data-parallel ranks", "one of 1, 2, 3, 6"}},
      {8, 0, 1, {"parallel.pp = 0", "at least 1"}},
      {8, 1, -2, {"parallel.ep = -2", "at least 1"}},
  };
  for (const Case& c : cases) {
    absl::StatusOr<MeshLayout> l = MeshLayout::Create(c.world, c.pp, c.ep);
    ASSERT_FALSE(l.ok()) << "world " << c.world << " pp " << c.pp << " ep " << c.ep;
    EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument);
    for (const std::string& n : c.needles) {
      EXPECT_NE(std::string(l.status().message()).find(n), std::string::npos)
          << l.status() << "\nmissing: " << n;
    }
  }
}

TEST(Mesh, DeviceMeshOnOneProcess) {
  absl::StatusOr<std::unique_ptr<DeviceMesh>> mesh =
      DeviceMesh::Create(std::make_unique<LocalCommunicator>("world"), 1, 1);
  ASSERT_TRUE(mesh.ok()) << mesh.status();
  for (Communicator* g : {&(*mesh)->pp(), &(*mesh)->ep(), &(*mesh)->edp(), &(*mesh)->dp()}) {
    EXPECT_EQ(g->size(), 1);
    EXPECT_EQ(g->rank(), 0);
  }
  EXPECT_EQ((*mesh)->dp().name(), "dp");
  EXPECT_EQ((*mesh)->Describe(),
            "mesh: world 1 = pp 1 x dp 1 (ep 1 x edp 1); rank 0 = stage 0, dp 0 (ep 0, edp 0)");
  absl::StatusOr<std::unique_ptr<DeviceMesh>> bad =
      DeviceMesh::Create(std::make_unique<LocalCommunicator>("world"), 2, 1);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("world size 1"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace fathom
