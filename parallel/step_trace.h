// StepTrace: what one rank did during chosen training steps (train.trace, train.trace_steps), recorded by
// the pipeline executor, the expert exchange and the stage runtime, and written as a Chrome trace (the JSON
// Perfetto and chrome://tracing open) in the shape of `fathom simulate --trace` (parallel/chrome_trace.h), so
// the two can be laid side by side:
//   one process per world rank ("rank 5 (stage 1, ep 1, edp 0)"), and in it the lanes (threads)
//     0 compute        one span per executed instruction, named like the simulator's ("F 3 c0",
//                      "FB F5c0|BW2c1"), args micro_batch / chunk / stage (and micro_batch_b / chunk_b);
//                      inside it one span per run of a pass's phases ("F 3 c0: attention > dispatch")
//     1 all-to-all     the expert exchange's movements ("dispatch", "combine", "dispatch (grad)",
//                      "combine (grad)" + the pass they belong to), args instruction and pass
//     2 data parallel  the step tail: embedding-gradient sum, ZeRO-1 reduce-scatter, norm, AdamW, all-gather
//     3 pipeline       receives a stage waits for ("recv act F 3 c0", "recv grad BW 2 c1")
//   times in microseconds from the start of the first traced step.
//
// Clocks.
//   CPU  steady_clock when a span begins and ends. A movement in flight spans from its start to the end of
//        its Wait() (non-blocking MPI: when this rank learnt it had completed).
//   GPU  (device kCUDA; needs a current ops::OpContext) CUDA events: Begin and End record on the current op
//        stream (the compute stream); EndOnStream records on another stream of the device (the NCCL
//        communicator's communication stream right after the operation was queued there, so the span ends
//        when the transfer does). A span that begins on the compute stream and ends on the communication
//        stream starts when the compute stream reached the operation, which is when NCCL may start it (it
//        may start later when the communication stream is still busy). Recording never waits for the
//        device; BeginStep waits once for the compute stream (before the step) to pin the step's start to
//        the host clock, and EndStep waits for the step's events (after the step) to read them.
// Spans are recorded only between BeginStep and EndStep; outside, Begin returns -1 and End(-1) is a no-op,
// so the recording sites cost a branch when tracing is off.
//
// Thread safety: one thread (the rank's). Not copyable.
#ifndef FATHOM_PARALLEL_STEP_TRACE_H_
#define FATHOM_PARALLEL_STEP_TRACE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "framework/cuda/stream.h"
#include "framework/tensor.h"

namespace fathom {

class Communicator;

enum class TraceLane { kCompute = 0, kAllToAll = 1, kDataParallel = 2, kPipeline = 3 };
const char* TraceLaneName(TraceLane lane);  // "compute", "all-to-all", "data parallel", "pipeline"

// What a span is about; -1 / empty = not applicable (left out of the JSON).
struct TraceArgs {
  int micro_batch = -1;
  int chunk = -1;
  int stage = -1;          // the model stage of `chunk`
  int micro_batch_b = -1;  // FB: the backward half
  int chunk_b = -1;
  std::string instruction;  // the executed instruction a communication belongs to
  std::string pass;         // the pass (half of an FB or of an overlapped pair) it belongs to
};

class StepTrace {
 public:
  // `rank`: this process's world rank (the trace's process id); `rank_name` its process name.
  StepTrace(Device device, int rank, std::string rank_name);
  ~StepTrace();
  StepTrace(const StepTrace&) = delete;
  StepTrace& operator=(const StepTrace&) = delete;

  // Opens a traced step (`step` as the log counts it, 1-based). The first one sets the time origin.
  // REQUIRES: no step open.
  void BeginStep(int64_t step);
  // Closes it: GPU - waits for the step's events and converts them to times. REQUIRES: a step open.
  void EndStep();
  bool recording() const { return recording_; }
  int64_t step() const { return step_; }  // the step begun last
  int64_t steps_recorded() const { return steps_recorded_; }

  // A span on `lane`; returns its id (-1 when not recording). End / EndOnStream close it once.
  int Begin(TraceLane lane, std::string name, TraceArgs args = {});
  void End(int span);
  void EndOnStream(int span, cuda::Stream stream);  // GPU: the end event goes on `stream`; CPU: End
  // Renames an open or closed span of the current step (e.g. once a pass's phases are known).
  void Rename(int span, std::string name);

  // The executing instruction and pass, copied into the args of the communication spans the exchange
  // opens meanwhile (set by the executor; empty outside instructions).
  void SetContext(std::string instruction, std::string pass);
  const std::string& context_instruction() const { return context_instruction_; }
  const std::string& context_pass() const { return context_pass_; }
  Device device() const { return device_; }

  // This rank's events so far (closed steps only) as a JSON array text: metadata (process and lane
  // names) then one complete event ("ph": "X") per span.
  std::string EventsJson() const;

 private:
  struct Span;
  struct DeviceClock;  // GPU: the event pool and the step's origin event (step_trace.cc)

  double HostMicros() const;

  Device device_;
  int rank_;
  std::string rank_name_;
  bool recording_ = false;
  int64_t steps_recorded_ = 0;
  int64_t step_ = 0;
  double origin_host_us_ = -1;  // host time of the first step's start
  std::vector<Span> spans_;     // every closed step's spans, with times
  std::vector<Span> open_;      // the current step's spans (times resolved in EndStep on the GPU)
  std::string context_instruction_, context_pass_;
  std::unique_ptr<DeviceClock> clock_;
};

// Gathers every rank's EventsJson over `world` (a host communicator: MPI or the local one; collective)
// and, on rank 0, writes one Chrome trace {"traceEvents": [...], "displayTimeUnit": "ms", "otherData":
// {...}} to `path` through framework/file_io.h (temporary file, fsync, rename). `other_data` is a JSON
// object text (the run's description). Returns rank 0's write status on every rank (InvalidArgument /
// Internal naming the path, from file_io), so all ranks agree on the outcome.
absl::Status WriteStepTrace(const StepTrace& trace, Communicator& world, const std::string& path,
                            const std::string& other_data);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_STEP_TRACE_H_
