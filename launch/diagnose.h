// `fathom diagnose` (issue 17, "silent data corruption"): deterministic GEMM, attention and all-reduce
// checks on every rank's device, whose results are compared bitwise across the ranks, and whose times are
// compared with the median, so that a GPU (or CPU) that computes differently or runs slow is named before
// it corrupts or slows a training run. The command (launch/diagnose_command.cc) runs the checks,
// gathers one row per rank and prints the table; this file holds the checks, the verdict and the table.
//
// The checks, with fixed seeds (the same inputs on every rank):
//   GEMM        out = x . w^T through ops::MatmulNT. CPU: f32 (256 x 256) . (256 x 256)^T. GPU: bf16 inputs,
//               f32 output, (4096 x 4096) . (4096 x 4096)^T = 137 GFLOP (cuBLASLt at a size where it runs
//               the tensor cores flat out: a slow or faulty GPU shows).
//   attention   causal attention forward through ops::CausalAttentionForward, output and log-sum-exp.
//               CPU: f32, batch 1, 128 positions, 4 heads, qk 48, v 32. GPU: bf16, MLA's shape as
//               recipes/small.yaml runs it: batch 2, 2048 positions, 16 heads, qk 192, v 128.
//   all-reduce  a sum over the world of i32 values (each rank's seeded by its rank): integers sum exactly
//               in any order, so every rank also checks the result against the sum it computes itself.
//               CPU: 2^20 elements over MPI. GPU: 2^26 elements (256 MiB) over NCCL.
// Checksums: CRC-32C of the result's bytes (GEMM: out; attention: out then lse; all-reduce: the sum).
// Times: each check runs `repeats` times after one warm-up; GEMM and attention report the fastest run
// (the least disturbed: other processes share CI's cores), in thread CPU time on CPU ranks (a rank waiting
// for a core it shares is not a slow CPU) and in wall time around a device synchronisation on GPU ranks.
// The all-reduce reports its median wall time and is not judged for speed per rank: a collective ends at
// the same moment on every rank, so its time names no culprit.
// On one H200 the GPU checks take about 1 s of device time, well under a minute with start-up.
//
// Verdict per rank: "ok", or the reasons it is not: a checksum that differs from the value most ranks have
// (ties: rank 0's), an all-reduce that is not the exact sum, or a GEMM or attention time above
// slow_factor x the median over the ranks (kSlowFactor, 1.10, unless the command says otherwise).
#ifndef FATHOM_LAUNCH_DIAGNOSE_H_
#define FATHOM_LAUNCH_DIAGNOSE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "framework/dtype.h"
#include "parallel/communicator.h"
#include "parallel/launch_env.h"

namespace fathom {

inline constexpr double kSlowFactor = 1.10;

struct CheckResult {
  uint32_t checksum = 0;
  double ms = 0;
};

// One rank's results and where it ran.
struct DiagnoseRow {
  int rank = 0;
  std::string host;    // gethostname
  std::string device;  // "cpu", or "GPU 3: NVIDIA H200"
  CheckResult gemm, attention, all_reduce;
  bool all_reduce_exact = true;  // the all-reduce equals the exactly computed sum
};

// Runs the three checks on this rank's `device` (kCPU, or kCUDA in a CUDA build: the GPU of
// node.local_rank, as NcclCommunicator picks it). Collective over `world` (the all-reduce; on GPU also
// NcclCommunicator::Create over it). REQUIRES repeats >= 1. A GPU requested in a build without CUDA, or on
// a rank that sees none, is a FailedPrecondition naming the rank (the caller agrees on it over the world).
absl::StatusOr<DiagnoseRow> RunDiagnoseChecks(Device device, Communicator& world, const LaunchEnv& node,
                                              int repeats);

// Every rank's verdict, in rank order: "ok" or the reasons (e.g. "gemm checksum differs (a1b2c3d4, most
// ranks 0f0e0d0c); attention 25% slower than the median"). Pure: the same rows give the same verdicts.
std::vector<std::string> DiagnoseVerdicts(const std::vector<DiagnoseRow>& rows,
                                          double slow_factor = kSlowFactor);

// The table: a header naming the device and the sizes, one line per rank (rank, host, device, checksums,
// times, verdict), and a closing line with the overall verdict.
std::string FormatDiagnoseTable(const std::vector<DiagnoseRow>& rows, Device device, int repeats,
                                double slow_factor = kSlowFactor);

}  // namespace fathom

#endif  // FATHOM_LAUNCH_DIAGNOSE_H_
