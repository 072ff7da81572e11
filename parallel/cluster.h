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
//   efficiency:                     # achieved / peak, in (0, 1]
//     gemm: 0.55                    # GEMMs (FP8 and bf16) against their peak
//     attention: 0.45               # attention core against the bf16 peak
//     comm: 0.75                    # bandwidth achieved by all-to-all, point-to-point and collectives
//
// Every key is required except name and gpu; unknown keys are errors. Errors name the file, the key, the
// value and what was expected.
#ifndef FATHOM_PARALLEL_CLUSTER_H_
#define FATHOM_PARALLEL_CLUSTER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fathom {

struct ClusterEfficiency {
  double gemm = 0;
  double attention = 0;
  double comm = 0;
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

  int64_t world() const { return nodes * gpus_per_node; }
  double usable_bytes() const { return (hbm_gib - memory_reserve_gib) * 1073741824.0; }
  // Cross-field constraints; InvalidArgument naming the key.
  absl::Status Validate() const;
};

// Reads and validates a cluster file. NotFound for a missing file; InvalidArgument naming the key (and
// the file and line) for everything else.
absl::StatusOr<ClusterConfig> LoadCluster(const std::string& path);
absl::StatusOr<ClusterConfig> ParseCluster(const std::string& yaml_text, const std::string& origin);

}  // namespace fathom

#endif  // FATHOM_PARALLEL_CLUSTER_H_
