// StagePass: Advance runs steps up to and including the next one that leaves a communication in flight;
// two passes advanced in turn interleave at exactly those points. RowsInFlight: a movement is waited for
// once, and destroying a pending one waits for it.
#include "layers/stage_pass.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "layers/expert_exchange.h"

namespace fathom {
namespace {

TEST(StagePass, AdvanceStopsAfterEachStepThatLeavesACommunicationInFlight) {
  std::vector<std::string> ran;
  StagePass pass;
  auto step = [&ran](std::string name) { return [&ran, name] { ran.push_back(name); }; };
  pass.Add("a", step("a"));
  pass.Add("b", step("b"), /*leaves_in_flight=*/true);
  pass.Add("c", step("c"), /*leaves_in_flight=*/true);
  pass.Add("d", step("d"));
  pass.Add("e", step("e"));
  EXPECT_FALSE(pass.finished());
  EXPECT_EQ(pass.Advance(), "a > b");
  EXPECT_EQ(ran, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(pass.Advance(), "c");
  EXPECT_EQ(pass.Advance(), "d > e");
  EXPECT_TRUE(pass.finished());
  EXPECT_EQ(ran, (std::vector<std::string>{"a", "b", "c", "d", "e"}));
}

TEST(StagePass, TwoPassesInterleaveAtTheirCommunications) {
  std::vector<std::string> ran;
  auto make = [&ran](const std::string& who, int layers) {
    auto pass = std::make_unique<StagePass>();
    for (int l = 0; l < layers; ++l) {
      for (const char* phase : {"attention", "experts", "combine"}) {
        const std::string name = who + " " + phase + " " + std::to_string(l);
        pass->Add(
            name, [&ran, name] { ran.push_back(name); }, std::string(phase) != "combine");
      }
    }
    return pass;
  };
  auto f = make("F", 2), b = make("B", 1);
  while (!f->finished() || !b->finished()) {
    if (!f->finished()) f->Advance();
    if (!b->finished()) b->Advance();
  }
  EXPECT_EQ(ran, (std::vector<std::string>{"F attention 0", "B attention 0", "F experts 0", "B experts 0",
                                           "F combine 0", "F attention 1", "B combine 0", "F experts 1",
                                           "F combine 1"}));
}

class CountingMovement : public RowsInFlight::Impl {
 public:
  explicit CountingMovement(int* waits) : waits_(waits) {}
  Tensor Wait() override {
    ++*waits_;
    return Tensor::Zeros({2, 3}, DType::kF32);
  }

 private:
  int* waits_;
};

TEST(RowsInFlight, WaitsOnceAndNeverAbandonsAMovement) {
  int waits = 0;
  {
    RowsInFlight pending(std::make_unique<CountingMovement>(&waits));
    EXPECT_TRUE(pending.pending());
    Tensor rows = pending.Wait();
    EXPECT_EQ(rows.dim(0), 2);
    EXPECT_FALSE(pending.pending());
  }
  EXPECT_EQ(waits, 1);
  { RowsInFlight dropped(std::make_unique<CountingMovement>(&waits)); }
  EXPECT_EQ(waits, 2) << "destroying a pending movement waits for it";
  RowsInFlight replaced(std::make_unique<CountingMovement>(&waits));
  replaced = RowsInFlight(Tensor::Zeros({1, 1}, DType::kF32));
  EXPECT_EQ(waits, 3) << "assigning over a pending movement waits for it";
  EXPECT_EQ(replaced.Wait().numel(), 1);
  EXPECT_DEATH(replaced.Wait(), "waited for twice");
}

}  // namespace
}  // namespace fathom
