#include "parallel/step_trace.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "framework/check.h"
#include "framework/file_io.h"
#include "framework/ops.h"
#include "nlohmann/json.hpp"
#include "parallel/communicator.h"

#ifdef FATHOM_WITH_CUDA
#include "framework/cuda/phase_timer_events.h"
#endif

namespace fathom {

const char* TraceLaneName(TraceLane lane) {
  switch (lane) {
    case TraceLane::kCompute:
      return "compute";
    case TraceLane::kAllToAll:
      return "all-to-all";
    case TraceLane::kDataParallel:
      return "data parallel";
    case TraceLane::kPipeline:
      return "pipeline";
  }
  return "?";
}

struct StepTrace::Span {
  TraceLane lane = TraceLane::kCompute;
  std::string name;
  TraceArgs args;
  int64_t step = 0;
  double begin_us = 0, end_us = -1;  // host clock (CPU), or resolved from the events in EndStep (GPU)
  int begin_event = -1, end_event = -1;
  bool closed = false;
};

#ifdef FATHOM_WITH_CUDA
struct StepTrace::DeviceClock {
  cuda::TimingEventPool events;
  int origin_event = -1;      // recorded on the compute stream when the step began
  double origin_host_us = 0;  // the host time of that event (the stream was idle, see BeginStep)
};
#else
struct StepTrace::DeviceClock {};
#endif

namespace {

#ifdef FATHOM_WITH_CUDA
cuda::Stream ComputeStream() {
  const ops::OpContext* ctx = ops::CurrentOpContext();
  FATHOM_CHECK(ctx != nullptr, "[step trace] tracing a CUDA step needs a current ops::OpContext");
  return ctx->stream();
}
#endif

nlohmann::json ArgsJson(const TraceArgs& a, int64_t step) {
  nlohmann::json j = {{"step", step}};
  if (a.micro_batch >= 0) j["micro_batch"] = a.micro_batch;
  if (a.chunk >= 0) j["chunk"] = a.chunk;
  if (a.stage >= 0) j["stage"] = a.stage;
  if (a.micro_batch_b >= 0) j["micro_batch_b"] = a.micro_batch_b;
  if (a.chunk_b >= 0) j["chunk_b"] = a.chunk_b;
  if (!a.instruction.empty()) j["instruction"] = a.instruction;
  if (!a.pass.empty()) j["pass"] = a.pass;
  return j;
}

nlohmann::json Metadata(const std::string& what, int pid, int tid, const std::string& name) {
  return {{"name", what}, {"ph", "M"}, {"pid", pid}, {"tid", tid}, {"args", {{"name", name}}}};
}

// Host strings through collectives that move tensors: characters packed four to an i32.
Tensor PackString(const std::string& s, int64_t words) {
  Tensor t = Tensor::Zeros({words}, DType::kI32);
  std::memcpy(t.raw(), s.data(), s.size());
  return t;
}

int64_t WordsFor(int64_t bytes) { return (bytes + 3) / 4; }

}  // namespace

StepTrace::StepTrace(Device device, int rank, std::string rank_name)
    : device_(device), rank_(rank), rank_name_(std::move(rank_name)) {
  if (device_ == Device::kCUDA) clock_ = std::make_unique<DeviceClock>();
#ifndef FATHOM_WITH_CUDA
  FATHOM_CHECK(device_ == Device::kCPU, "[step trace] a CUDA trace in a build without CUDA");
#endif
}

StepTrace::~StepTrace() = default;

double StepTrace::HostMicros() const {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void StepTrace::BeginStep(int64_t step) {
  FATHOM_CHECK(!recording_, "[step trace] step ", step, " begins inside step ", step_);
  recording_ = true;
  step_ = step;
  open_.clear();
  double now = HostMicros();
#ifdef FATHOM_WITH_CUDA
  if (clock_) {
    // Before the step: wait until the compute stream is idle, so the origin event's time is the host's now.
    clock_->events.Recycle();
    clock_->origin_event = clock_->events.Record(ComputeStream());
    clock_->events.Synchronize(clock_->origin_event);
    now = HostMicros();
    clock_->origin_host_us = now;
  }
#endif
  if (origin_host_us_ < 0) origin_host_us_ = now;
}

void StepTrace::EndStep() {
  FATHOM_CHECK(recording_, "[step trace] EndStep without BeginStep");
#ifdef FATHOM_WITH_CUDA
  if (clock_) {
    // After the step: every event is waited for once (they sit on several streams), then read.
    for (int e = 0; e < clock_->events.used(); ++e) clock_->events.Synchronize(e);
    auto at = [&](int event) {
      return clock_->origin_host_us + 1e3 * clock_->events.ElapsedMs(clock_->origin_event, event);
    };
    for (Span& s : open_) {
      if (s.begin_event >= 0) s.begin_us = at(s.begin_event);
      if (s.end_event >= 0) s.end_us = at(s.end_event);
    }
  }
#endif
  for (Span& s : open_) {
    FATHOM_CHECK(s.closed, "[step trace] span '", s.name, "' still open at the end of step ", step_);
    spans_.push_back(std::move(s));
  }
  open_.clear();
  recording_ = false;
  context_instruction_.clear();
  context_pass_.clear();
  ++steps_recorded_;
}

int StepTrace::Begin(TraceLane lane, std::string name, TraceArgs args) {
  if (!recording_) return -1;
  Span s;
  s.lane = lane;
  s.name = std::move(name);
  s.args = std::move(args);
  s.step = step_;
#ifdef FATHOM_WITH_CUDA
  if (clock_) s.begin_event = clock_->events.Record(ComputeStream());
#endif
  if (!clock_) s.begin_us = HostMicros();
  open_.push_back(std::move(s));
  return static_cast<int>(open_.size()) - 1;
}

void StepTrace::End(int span) {
  if (span < 0) return;
#ifdef FATHOM_WITH_CUDA
  if (clock_) {
    EndOnStream(span, ComputeStream());
    return;
  }
#endif
  FATHOM_CHECK(recording_ && span < static_cast<int>(open_.size()) && !open_[span].closed,
               "[step trace] End of span ", span, " that is not open");
  open_[span].end_us = HostMicros();
  open_[span].closed = true;
}

void StepTrace::EndOnStream(int span, cuda::Stream stream) {
  if (span < 0) return;
  FATHOM_CHECK(recording_ && span < static_cast<int>(open_.size()) && !open_[span].closed,
               "[step trace] End of span ", span, " that is not open");
#ifdef FATHOM_WITH_CUDA
  if (clock_) {
    open_[span].end_event = clock_->events.Record(stream);
    open_[span].closed = true;
    return;
  }
#endif
  open_[span].end_us = HostMicros();
  open_[span].closed = true;
}

void StepTrace::Rename(int span, std::string name) {
  if (span < 0) return;
  FATHOM_CHECK(recording_ && span < static_cast<int>(open_.size()), "[step trace] Rename of span ", span);
  open_[span].name = std::move(name);
}

void StepTrace::SetContext(std::string instruction, std::string pass) {
  context_instruction_ = std::move(instruction);
  context_pass_ = std::move(pass);
}

std::string StepTrace::EventsJson() const {
  nlohmann::json events = nlohmann::json::array();
  events.push_back(Metadata("process_name", rank_, 0, rank_name_));
  events.push_back({{"name", "process_sort_index"},
                    {"ph", "M"},
                    {"pid", rank_},
                    {"tid", 0},
                    {"args", {{"sort_index", rank_}}}});
  for (TraceLane lane :
       {TraceLane::kCompute, TraceLane::kAllToAll, TraceLane::kDataParallel, TraceLane::kPipeline}) {
    events.push_back(Metadata("thread_name", rank_, static_cast<int>(lane), TraceLaneName(lane)));
  }
  for (const Span& s : spans_) {
    const double ts = s.begin_us - origin_host_us_;
    events.push_back({{"name", s.name},
                      {"cat", TraceLaneName(s.lane)},
                      {"ph", "X"},
                      {"pid", rank_},
                      {"tid", static_cast<int>(s.lane)},
                      {"ts", ts},
                      {"dur", std::max(0.0, s.end_us - s.begin_us)},
                      {"args", ArgsJson(s.args, s.step)}});
  }
  return events.dump();
}

absl::Status WriteStepTrace(const StepTrace& trace, Communicator& world, const std::string& path,
                            const std::string& other_data) {
  // Every rank's events to every rank (small: a few hundred spans per rank and step), rank 0 writes.
  const std::string mine = trace.EventsJson();
  Tensor length = Tensor::FromVector({static_cast<double>(mine.size())}, {1}, DType::kI64);
  Tensor lengths = Tensor::Empty({world.size()}, DType::kI64);
  world.AllGather(length, lengths);
  int64_t longest = 0;
  for (int r = 0; r < world.size(); ++r) longest = std::max(longest, lengths.data<int64_t>()[r]);
  const int64_t words = std::max<int64_t>(1, WordsFor(longest));
  Tensor all = Tensor::Empty({words * world.size()}, DType::kI32);
  world.AllGather(PackString(mine, words), all);

  absl::Status written = absl::OkStatus();
  if (world.rank() == 0) {
    nlohmann::json events = nlohmann::json::array();
    for (int r = 0; r < world.size(); ++r) {
      const char* text = reinterpret_cast<const char*>(all.data<int32_t>() + r * words);
      nlohmann::json part = nlohmann::json::parse(std::string(text, lengths.data<int64_t>()[r]));
      for (auto& e : part) events.push_back(std::move(e));
    }
    nlohmann::json doc = {{"traceEvents", std::move(events)},
                          {"displayTimeUnit", "ms"},
                          {"otherData", nlohmann::json::parse(other_data)}};
    written = WriteFileAtomically(path, doc.dump());
  }
  // Rank 0's verdict to every rank: the code, then the message.
  Tensor code = Tensor::FromVector({static_cast<double>(static_cast<int>(written.code()))}, {1}, DType::kI64);
  world.Broadcast(code, 0);
  const std::string message(written.message());
  Tensor message_length = Tensor::FromVector({static_cast<double>(message.size())}, {1}, DType::kI64);
  world.Broadcast(message_length, 0);
  const int64_t message_words = std::max<int64_t>(1, WordsFor(message_length.data<int64_t>()[0]));
  Tensor packed = PackString(world.rank() == 0 ? message : std::string(), message_words);
  world.Broadcast(packed, 0);
  const auto status_code = static_cast<absl::StatusCode>(code.data<int64_t>()[0]);
  if (status_code == absl::StatusCode::kOk) return absl::OkStatus();
  return absl::Status(status_code, std::string(reinterpret_cast<const char*>(packed.data<int32_t>()),
                                               message_length.data<int64_t>()[0]));
}

}  // namespace fathom
