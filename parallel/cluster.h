// A cluster description (recipes/clusters/*.yaml): what the planner and the simulator know about the
// machines. Bandwidths are per GPU and per direction, in GB/s (1e9 bytes/s); peaks are dense TFLOP/s.
//
//   name: h800-2048                 # free text
//   gpu: H800 SXM5 80GB             # free text
//   nodes: 256
//   gpus_per_node: 8
//   hbm_gib: 80                     # HBM per GPU, GiB
//   hbm_tbps: 3.35                  # HBM bandwidth per GPU, TB/s (optimizer step)
//   peak_bf16_tflops: 989
//   peak_fp8_tflops: 1979
//   nvlink_gbps: 160                # per GPU inside a node, GB/s
//   network_gbps_per_gpu: 50        # per GPU across nodes, GB/s (8 x 400 Gb/s InfiniBand per node)
//   network_latency_us: 10          # per message (point-to-point, each step of a ring collective)
//   nvlink_latency_us: 3
//   memory_reserve_gib: 6           # CUDA context, communication buffers, workspace, fragmentation
//   comm_sm_fraction: 0.15          # share of SMs the all-to-all kernels hold while overlapping (20/132)
//   efficiency:                     # achieved / peak, in (0, 1]: the uncalibrated defaults
//     gemm: 0.55                    # GEMMs (FP8 and bf16) against their peak
//     attention: 0.45               # attention core against the bf16 peak
//     comm: 0.75                    # bandwidth achieved by all-to-all, point-to-point and collectives
//   profile: ../profiles/h200-small-anchors.yaml   # optional: a calibration profile (parallel/profile.h),
//                                   # relative to this file; replaces the efficiencies where it measured
//   memory_headroom:                # optional: what a plan leaves free beyond the reserve, as shares of
//     estimate_error: 0.10          # its activations: the activation estimate's error (default: the
//                                   # profile's measured shortfall, else 0.10 uncalibrated) plus the
//     fragmentation: 0.05           # allocator's fragmentation (default: the profile's, else 0.05)
//   run:                            # optional: whole-run accounting (parallel/whole_run.h)
//     checkpoint_gbps_per_gpu: 2    # file-system write bandwidth per GPU while a checkpoint is written
//     checkpoint_interval_min: 60   # training minutes between checkpoints
//     gpu_mtbf_hours: 50000         # mean time between failures of one GPU (with its share of the node)
//     restart_min: 15               # from a failure to training again (detect, reschedule, reload)
//     eval_fraction: 0.01           # share of the wall time spent evaluating
//     batch_ramp_start: 3072        # the run's first global batch (sequences), growing linearly to the
//     batch_ramp_tokens: 4.69e11    # recipe's over these tokens (0: no ramp)
//
// Every key is required except name, gpu, profile, memory_headroom and run (each of whose keys is then
// required); unknown keys are errors. Errors name the file, the key, the value and what was expected.
#ifndef FATHOM_PARALLEL_CLUSTER_H_
#define FATHOM_PARALLEL_CLUSTER_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/profile.h"

namespace fathom {

struct ClusterEfficiency {
  double gemm = 0;
  double attention = 0;
  double comm = 0;
};

// Defaults of memory_headroom without a profile: the activation model's accuracy target (issue 18) and a
// typical caching allocator's loss.
inline constexpr double kUncalibratedEstimateError = 0.10;
inline constexpr double kDefaultFragmentation = 0.05;

// Whole-run assumptions (the cluster file's `run:`), read by parallel/whole_run.h.
struct RunAssumptions {
  double checkpoint_gbps_per_gpu = 0;
  double checkpoint_interval_min = 0;
  double gpu_mtbf_hours = 0;
  double restart_min = 0;
  double eval_fraction = 0;
  int64_t batch_ramp_start = 0;
  double batch_ramp_tokens = 0;
};

struct ClusterConfig {
  std::string path;  // where it was read from, for messages
  std::string name;
  std::string gpu;
  int64_t nodes = 0;
  int64_t gpus_per_node = 0;
  double hbm_gib = 0;
  double hbm_tbps = 0;
  double peak_bf16_tflops = 0;
  double peak_fp8_tflops = 0;
  double nvlink_gbps = 0;
  double network_gbps_per_gpu = 0;
  double network_latency_us = 0;
  double nvlink_latency_us = 0;
  double memory_reserve_gib = 0;
  double comm_sm_fraction = 0;
  ClusterEfficiency efficiency;
  std::optional<CalibrationProfile> profile;  // `profile:`, loaded; nullopt: uncalibrated
  std::optional<double> estimate_error;       // memory_headroom.estimate_error when given
  std::optional<double> fragmentation;        // memory_headroom.fragmentation when given
  std::optional<RunAssumptions> run;          // `run:` when given

  int64_t world() const { return nodes * gpus_per_node; }
  // The headroom shares a plan leaves beyond its activations (see memory_headroom above).
  double EstimateError() const;
  double Fragmentation() const;
  // "calibrated by <profile> (measured on <gpu>)" or "uncalibrated: efficiencies gemm 0.55, ...".
  std::string Calibration() const;
  // Under FP8 GEMMs (`fp8_gemm` of the plan's precision policy) whose rates the profile does not measure:
  // how the simulator rates them (the FP8 peak at the bf16 efficiency); with `fathom_policy` (fathom's own
  // layers, not the report's system) also that fathom's FP8 path is measured slower. "" without FP8 or
  // with measured FP8 rates.
  std::string Fp8Caveat(bool fp8_gemm, bool fathom_policy) const;
  double usable_bytes() const { return (hbm_gib - memory_reserve_gib) * 1073741824.0; }
  // Cross-field constraints; InvalidArgument naming the key.
  absl::Status Validate() const;
};

// Reads and validates a cluster file and the profile it names. NotFound for a missing file (the cluster's or
// its profile's); InvalidArgument naming the key (and the file and line) for everything else.
absl::StatusOr<ClusterConfig> LoadCluster(const std::string& path);
absl::StatusOr<ClusterConfig> ParseCluster(const std::string& yaml_text, const std::string& origin);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_CLUSTER_H_
