// A calibration profile: the throughput fathom's kernels reached on one GPU kind, as `fathom bench
// --profile OUT.yaml` measures it, for the simulator to use in place of a cluster file's guessed
// efficiencies. A cluster file includes one with `profile: path.yaml` (relative to the cluster file).
//
//   # fathom calibration profile
//   source: measured              # measured (fathom bench) | derived (from published numbers, not measured)
//   gpu: NVIDIA H200
//   recipe: recipes/small.yaml    # what was run, free text
//   note: ...                     # free text
//   shape: {seq_len: 4096, micro_batch_size: 2, micro_batches: 1, pp: 1, ep: 1}
//   gemm_tflops:                  # bf16, achieved
//     dense: 640                  # Linears outside the routed experts: attention projections, dense MLP,
//                                 # shared experts, router, MTP projection
//     head: 700                   # the output head's vocabulary GEMM
//     expert_rows: [256, 1024, 4096]   # grouped routed-expert GEMMs by rows per expert ...
//     expert: [200, 330, 520]          # ... and their TFLOP/s (log-linear in between, clamped outside)
//     fp8_dense: 500              # optional: the same Linears and expert GEMMs under train.precision fp8
//     fp8_expert: [150, 400, 700]  # (e4m3, block-scaled), each with the activation quantisation it runs
//                                 # with in a step, TFLOP/s of the same products; both or neither
//   attention_tflops: {forward: 500, backward: 380}   # the attention core, causal FLOPs
//   elementwise_fraction: 0.3     # time outside the GEMMs and the attention core (norms, RoPE, SwiGLU,
//                                 # permutation, combine, residual adds, loss) over the GEMM + attention time
//   optimizer_gbps: 2700          # the optimizer step's memory traffic per second
//   comm_gbps: {all_to_all: 250, p2p: 300}   # optional: only where several GPUs ran (bus bandwidth)
//   activations:                  # the start-up estimate (parallel/memory_plan) against the pool's peak
//     estimated_gib: 14.03
//     measured_gib: 14.0
//     layers: 9                   # decoder blocks + MTP modules of the rank
//     micro_batches_in_flight: 1
//     tokens_per_micro_batch: 8192
//     fragmentation: 0.02         # share of the pool lost to fragmentation at the peak (allocated spans
//                                 # the best-fit pool could not reuse), 0 when not measured
//   step_ms: 138.0                # the measured step, for comparison with `fathom simulate`
//
// Every number is required except comm_gbps, fp8_dense / fp8_expert, note and step_ms; unknown keys are
// errors naming the file. Without the FP8 rates the simulator rates FP8 GEMMs at the FP8 peak with the bf16
// efficiency (and says so).
#ifndef FATHOM_PARALLEL_PROFILE_H_
#define FATHOM_PARALLEL_PROFILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fathom {

struct CalibrationProfile {
  std::string path;                 // where it was read from (empty when made in memory)
  std::string source = "measured";  // "measured" | "derived"
  std::string gpu, recipe, note;
  int64_t seq_len = 0, micro_batch_size = 0, micro_batches = 0, pp = 1, ep = 1;

  double dense_gemm_tflops = 0;
  double head_gemm_tflops = 0;
  std::vector<double> expert_rows;    // rows per expert, increasing
  std::vector<double> expert_tflops;  // same length
  double fp8_dense_gemm_tflops = 0;       // 0: FP8 not measured
  std::vector<double> fp8_expert_tflops;  // at expert_rows; empty: FP8 not measured
  double attention_forward_tflops = 0;
  double attention_backward_tflops = 0;
  double elementwise_fraction = 0;
  double optimizer_gbps = 0;
  double all_to_all_gbps = 0;  // 0: not measured
  double p2p_gbps = 0;         // 0: not measured

  double activation_estimated_bytes = 0;
  double activation_measured_bytes = 0;
  int64_t activation_layers = 0;
  int64_t micro_batches_in_flight = 0;
  int64_t tokens_per_micro_batch = 0;
  double fragmentation = 0;
  double step_ms = 0;  // 0: not recorded

  // TFLOP/s of the grouped expert GEMM at `rows` per expert: log-linear between the table's points,
  // its first or last value outside them.
  double ExpertGemmTflops(double rows) const;
  // The same for the FP8 expert GEMMs (REQUIRES: has_fp8()).
  double Fp8ExpertGemmTflops(double rows) const;
  bool has_fp8() const { return fp8_dense_gemm_tflops > 0; }
  // How much the activation estimate fell short of the pool's peak: max(0, measured / estimated - 1).
  double ActivationError() const;
  // Activation bytes per decoder layer and micro-batch, as measured: measured / (layers x in flight).
  double MeasuredBytesPerLayerAndMicroBatch() const;
  // Cross-field checks; InvalidArgument naming the key (and the file).
  absl::Status Validate() const;
};

// YAML in the format above (with a comment header saying what it is and where it came from).
std::string ProfileYaml(const CalibrationProfile& profile);
// Writes ProfileYaml to `path` atomically (framework/file_io.h); InvalidArgument naming the path.
absl::Status WriteProfile(const CalibrationProfile& profile, const std::string& path);
// NotFound for a missing file; InvalidArgument naming the file, the key and what was expected.
absl::StatusOr<CalibrationProfile> LoadProfile(const std::string& path);
absl::StatusOr<CalibrationProfile> ParseProfile(const std::string& yaml_text, const std::string& origin);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_PROFILE_H_
