// StagePass: one micro-batch's forward or backward through a model slice as an explicit list of steps,
// cut where an MoE layer has an all-to-all in flight (DESIGN.md idea 3). It is the hook the overlapped
// schedules use - DualPipe's forward-and-backward pair (the DeepSeek-V3 report's figure 4) and
// two-micro-batch overlap - without the schedule knowing anything of MoE: the executor advances two passes
// in turn, so that while one pass's dispatch or combine travels, the other pass computes (on the GPU the
// NCCL communication stream runs beside the compute stream; on the CPU non-blocking MPI is in flight).
//
// A step is compute that may end by STARTING a communication (an MoE layer's dispatch or combine) that a
// later step of the same pass waits for; the layers provide the steps (Model::ForwardPass / BackwardPass
// over the layers' phase methods, layers/moe.h). Advance() runs steps up to and including the next one that
// leaves a communication in flight, so between two Advance() calls this pass has exactly the communication
// of its last step in flight. Running a pass to its end with no other work in between does exactly what the
// blocking Model calls do; the results do not depend on how passes are interleaved.
//
// Ownership: the steps hold what they need (tensors by handle); results go where the factory was told
// (e.g. Model::ForwardPass's `out`), which must outlive the pass. Not copyable; one thread.
#ifndef FATHOM_LAYERS_STAGE_PASS_H_
#define FATHOM_LAYERS_STAGE_PASS_H_

#include <functional>
#include <string>
#include <vector>

namespace fathom {

class StagePass {
 public:
  using Step = std::function<void()>;

  StagePass() = default;
  StagePass(const StagePass&) = delete;
  StagePass& operator=(const StagePass&) = delete;

  // Appends a step named `name` (traces: "attention 3", "experts 3", ...). `leaves_in_flight`: the step
  // ends with a communication started that a later step waits for.
  void Add(std::string name, Step run, bool leaves_in_flight = false);

  // Runs the steps up to and including the next that leaves a communication in flight, or to the end.
  // Returns the names of the steps it ran, joined by " > ". REQUIRES: !finished().
  std::string Advance();
  void RunToEnd();
  bool finished() const { return next_ == steps_.size(); }

 private:
  struct Entry {
    std::string name;
    Step run;
    bool leaves_in_flight;
  };
  std::vector<Entry> steps_;
  size_t next_ = 0;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_STAGE_PASS_H_
