#include "layers/stage_pass.h"

#include "framework/check.h"

namespace fathom {

void StagePass::Add(std::string name, Step run, bool leaves_in_flight) {
  steps_.push_back({std::move(name), std::move(run), leaves_in_flight});
}

std::string StagePass::Advance() {
  FATHOM_CHECK(!finished(), "[stage pass] Advance on a finished pass");
  std::string ran;
  while (!finished()) {
    Entry& e = steps_[next_++];
    e.run();
    e.run = nullptr;  // what the step captured is released as soon as it has run
    if (!ran.empty()) ran += " > ";
    ran += e.name;
    if (e.leaves_in_flight) break;
  }
  return ran;
}

void StagePass::RunToEnd() {
  while (!finished()) Advance();
}

}  // namespace fathom
