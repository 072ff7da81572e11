// Chrome trace (the JSON Perfetto and chrome://tracing open) of a simulated step: one process per pipeline
// rank ("rank 3"), thread 0 "compute" with one complete event (ph "X") per instruction, named like
// "F 12 c0" / "FB F12c0|BW7c1", thread 1 "all-to-all" with the communication each instruction carries
// (inside an FB pair it overlaps the compute; elsewhere it follows it), and the step tail (gradient
// reduce-scatter, optimizer, all-gather) on thread 2 "data parallel". Times ts/dur are in microseconds.
#ifndef FATHOM_PARALLEL_CHROME_TRACE_H_
#define FATHOM_PARALLEL_CHROME_TRACE_H_

#include <string>

#include "absl/status/status.h"
#include "parallel/cluster.h"
#include "parallel/simulator.h"

namespace fathom {

// REQUIRES: `result` comes from Simulate (times filled).
std::string ChromeTraceJson(const SimulationResult& result, const ClusterConfig& cluster);

// Writes ChromeTraceJson to `path` the safe way (framework/file_io.h: a temporary file renamed into place,
// so a failed write leaves what was there; only a regular file or nothing is replaced). Errors start with
// "--trace: " and name the path: InvalidArgument for a symlink, directory or device at `path` (left
// untouched) or a missing or unwritable directory, Internal for I/O failures.
absl::Status WriteChromeTrace(const SimulationResult& result, const ClusterConfig& cluster,
                              const std::string& path);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_CHROME_TRACE_H_
