#include "launch/diagnose.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "framework/check.h"
#include "framework/file_io.h"
#include "framework/ops.h"

#ifdef FATHOM_WITH_CUDA
#include <cuda_runtime.h>

#include "framework/cuda/check.h"
#include "framework/cuda/device_arena.h"
#include "framework/cuda/device_pool.h"
#include "parallel/cuda/nccl_communicator.h"
#endif

namespace fathom {
namespace {

// The sizes of the header, per device.
struct Sizes {
  int64_t m, n, k;                   // GEMM out (m, n) = x (m, k) . w (n, k)^T
  int64_t batch, seq, heads, qk, v;  // attention
  int64_t reduce;                    // all-reduce elements
  DType dtype;                       // GEMM and attention inputs
};

Sizes SizesFor(Device device) {
  if (device == Device::kCUDA)
    return {4096, 4096, 4096, 2, 2048, 16, 192, 128, int64_t{1} << 26, DType::kBF16};
  return {256, 256, 256, 1, 128, 4, 48, 32, int64_t{1} << 20, DType::kF32};
}

constexpr uint64_t kSeed = 20240917;

// Host values uniform in [-1, 1) from `seed`, in `dtype` (rounded once, as Tensor::To does).
Tensor Seeded(const Shape& shape, uint64_t seed, DType dtype) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  Tensor t = Tensor::Empty(shape, DType::kF32);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(uniform(rng));
  return dtype == DType::kF32 ? t : t.To(dtype);
}

// Rank r's i-th all-reduce value, in [-1000, 1000]: a hash rather than a generator, so that every rank can
// compute every other rank's contribution cheaply and the exact sum with it.
int32_t ReduceValue(int rank, int64_t i) {
  const uint64_t h =
      (static_cast<uint64_t>(i) * 2654435761ull + static_cast<uint64_t>(rank) * 40503ull + 12345) % 2001;
  return static_cast<int32_t>(h) - 1000;
}

double ThreadCpuMs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return 1e3 * static_cast<double>(ts.tv_sec) + 1e-6 * static_cast<double>(ts.tv_nsec);
}

double WallMs() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

uint32_t Checksum(std::initializer_list<const Tensor*> host_tensors) {
  uint32_t crc = 0;
  for (const Tensor* t : host_tensors) crc = Crc32c(t->raw(), t->nbytes(), crc);
  return crc;
}

std::string HostName() {
  char name[256] = {0};
  if (gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

// The all-reduce's inputs for this rank and the exact sum over the world.
struct ReduceData {
  Tensor mine, expected;
};
ReduceData MakeReduceData(int64_t n, int rank, int world) {
  ReduceData d{Tensor::Empty({n}, DType::kI32), Tensor::Zeros({n}, DType::kI32)};
  int32_t* mine = d.mine.data<int32_t>();
  int32_t* expected = d.expected.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) mine[i] = ReduceValue(rank, i);
  for (int r = 0; r < world; ++r) {
    for (int64_t i = 0; i < n; ++i) expected[i] += ReduceValue(r, i);  // |sum| <= 1000 x world: no overflow
  }
  return d;
}

// `run` once to warm up, then `repeats` times; the fastest time by `clock` (ms).
template <class Run, class Clock>
double Fastest(int repeats, Run&& run, Clock&& clock) {
  run();
  double best = 0;
  for (int i = 0; i < repeats; ++i) {
    const double start = clock();
    run();
    const double ms = clock() - start;
    best = i == 0 ? ms : std::min(best, ms);
  }
  return best;
}

absl::StatusOr<DiagnoseRow> RunOnCpu(Communicator& world, int repeats) {
  const Sizes z = SizesFor(Device::kCPU);
  DiagnoseRow row;
  row.device = "cpu";
  Tensor x = Seeded({z.m, z.k}, kSeed, z.dtype), w = Seeded({z.n, z.k}, kSeed + 1, z.dtype);
  Tensor out = Tensor::Empty({z.m, z.n}, DType::kF32);
  row.gemm.ms = Fastest(
      repeats, [&] { ops::MatmulNT(out, x, w); }, ThreadCpuMs);
  row.gemm.checksum = Checksum({&out});

  Tensor q = Seeded({z.batch, z.seq, z.heads, z.qk}, kSeed + 2, z.dtype);
  Tensor k = Seeded({z.batch, z.seq, z.heads, z.qk}, kSeed + 3, z.dtype);
  Tensor v = Seeded({z.batch, z.seq, z.heads, z.v}, kSeed + 4, z.dtype);
  Tensor o = Tensor::Empty({z.batch, z.seq, z.heads, z.v}, z.dtype);
  Tensor lse = Tensor::Empty({z.batch, z.heads, z.seq}, ops::StatsDType(z.dtype));
  const double scale = 1.0 / std::sqrt(static_cast<double>(z.qk));
  row.attention.ms = Fastest(
      repeats, [&] { ops::CausalAttentionForward(o, lse, q, k, v, scale); }, ThreadCpuMs);
  row.attention.checksum = Checksum({&o, &lse});

  ReduceData d = MakeReduceData(z.reduce, world.rank(), world.size());
  Tensor sum = Tensor::Empty({z.reduce}, DType::kI32);
  std::vector<double> times;
  for (int i = 0; i <= repeats; ++i) {
    sum.CopyFrom(d.mine);
    const double start = WallMs();
    world.AllReduce(sum, ReduceOp::kSum);
    if (i > 0) times.push_back(WallMs() - start);  // the first is the warm-up
  }
  row.all_reduce.ms = Median(times);
  row.all_reduce.checksum = Checksum({&sum});
  row.all_reduce_exact = std::memcmp(sum.raw(), d.expected.raw(), sum.nbytes()) == 0;
  return row;
}

#ifdef FATHOM_WITH_CUDA
Tensor ToDevice(const Tensor& host) {
  Tensor t = Tensor::Empty(host.shape(), host.dtype(), Device::kCUDA);
  cuda::CopyToDevice(t, host);
  return t;
}

Tensor ToHost(const Tensor& device) {
  Tensor t = Tensor::Empty(device.shape(), device.dtype());
  cuda::CopyToHost(t, device);
  return t;
}

double SyncedWallMs() {
  FATHOM_CUDA_CHECK(cudaDeviceSynchronize());
  return WallMs();
}

absl::StatusOr<DiagnoseRow> RunOnGpu(Communicator& world, const LaunchEnv& node, int repeats) {
  const int devices = cuda::DeviceCount();
  if (devices == 0) {
    return absl::FailedPreconditionError(absl::StrCat("rank ", world.rank(), " sees no CUDA device"));
  }
  const Sizes z = SizesFor(Device::kCUDA);
  DiagnoseRow row;
  const int gpu = NcclCommunicator::DeviceForLocalRank(node.local_rank, devices);
  FATHOM_CUDA_CHECK(cudaSetDevice(gpu));
  cudaDeviceProp prop{};
  FATHOM_CUDA_CHECK(cudaGetDeviceProperties(&prop, gpu));
  row.device = absl::StrCat("GPU ", gpu, ": ", prop.name);
  // Everything below lives in one pool on the legacy default stream (the ops' and NCCL's stream here).
  ops::OpContext context;
  ops::OpContextScope context_scope(context);
  cuda::DevicePool pool("diagnose", size_t{1} << 30);
  cuda::PoolScope pool_scope(pool);
  std::unique_ptr<NcclCommunicator> nccl = NcclCommunicator::Create(world, node);
  {
    Tensor x = ToDevice(Seeded({z.m, z.k}, kSeed, z.dtype)),
           w = ToDevice(Seeded({z.n, z.k}, kSeed + 1, z.dtype));
    Tensor out = Tensor::Empty({z.m, z.n}, DType::kF32, Device::kCUDA);
    row.gemm.ms = Fastest(
        repeats, [&] { ops::MatmulNT(out, x, w); }, SyncedWallMs);
    Tensor host = ToHost(out);
    row.gemm.checksum = Checksum({&host});
  }
  {
    Tensor q = ToDevice(Seeded({z.batch, z.seq, z.heads, z.qk}, kSeed + 2, z.dtype));
    Tensor k = ToDevice(Seeded({z.batch, z.seq, z.heads, z.qk}, kSeed + 3, z.dtype));
    Tensor v = ToDevice(Seeded({z.batch, z.seq, z.heads, z.v}, kSeed + 4, z.dtype));
    Tensor o = Tensor::Empty({z.batch, z.seq, z.heads, z.v}, z.dtype, Device::kCUDA);
    Tensor lse = Tensor::Empty({z.batch, z.heads, z.seq}, ops::StatsDType(z.dtype), Device::kCUDA);
    const double scale = 1.0 / std::sqrt(static_cast<double>(z.qk));
    row.attention.ms = Fastest(
        repeats, [&] { ops::CausalAttentionForward(o, lse, q, k, v, scale); }, SyncedWallMs);
    Tensor host_o = ToHost(o), host_lse = ToHost(lse);
    row.attention.checksum = Checksum({&host_o, &host_lse});
  }
  {
    ReduceData d = MakeReduceData(z.reduce, world.rank(), world.size());
    Tensor mine = ToDevice(d.mine);
    Tensor sum = Tensor::Empty({z.reduce}, DType::kI32, Device::kCUDA);
    std::vector<double> times;
    for (int i = 0; i <= repeats; ++i) {
      FATHOM_CUDA_CHECK(cudaMemcpy(sum.raw(), mine.raw(), mine.nbytes(), cudaMemcpyDeviceToDevice));
      const double start = SyncedWallMs();
      nccl->AllReduce(sum, ReduceOp::kSum);
      nccl->Synchronize();  // a host wait under the watchdog, then the stream the copy runs on
      const double ms = SyncedWallMs() - start;
      if (i > 0) times.push_back(ms);
    }
    row.all_reduce.ms = Median(times);
    Tensor host = ToHost(sum);
    row.all_reduce.checksum = Checksum({&host});
    row.all_reduce_exact = std::memcmp(host.raw(), d.expected.raw(), host.nbytes()) == 0;
  }
  nccl.reset();
  return row;
}
#endif

// The value most rows have (ties: the lowest rank's).
uint32_t Majority(const std::vector<DiagnoseRow>& rows, CheckResult DiagnoseRow::*check) {
  std::map<uint32_t, int> counts;
  for (const DiagnoseRow& r : rows) ++counts[(r.*check).checksum];
  uint32_t best = (rows.front().*check).checksum;
  for (const DiagnoseRow& r : rows) {
    if (counts[(r.*check).checksum] > counts[best]) best = (r.*check).checksum;
  }
  return best;
}

double MedianMs(const std::vector<DiagnoseRow>& rows, CheckResult DiagnoseRow::*check) {
  std::vector<double> v;
  for (const DiagnoseRow& r : rows) v.push_back((r.*check).ms);
  return Median(v);
}

}  // namespace

absl::StatusOr<DiagnoseRow> RunDiagnoseChecks(Device device, Communicator& world, const LaunchEnv& node,
                                              int repeats) {
  FATHOM_CHECK(repeats >= 1, "[diagnose] repeats ", repeats);
  absl::StatusOr<DiagnoseRow> row;
  if (device == Device::kCPU) {
    row = RunOnCpu(world, repeats);
  } else {
#ifdef FATHOM_WITH_CUDA
    row = RunOnGpu(world, node, repeats);
#else
    row = absl::FailedPreconditionError("this build has no CUDA backend; diagnose the CPU with --device cpu");
#endif
  }
  if (row.ok()) {
    row->rank = world.rank();
    row->host = HostName();
  }
  return row;
}

std::vector<std::string> DiagnoseVerdicts(const std::vector<DiagnoseRow>& rows, double slow_factor) {
  std::vector<std::string> out;
  if (rows.empty()) return out;
  struct Named {
    const char* name;
    CheckResult DiagnoseRow::*check;
    bool timed;
  };
  const Named checks[] = {{"gemm", &DiagnoseRow::gemm, true},
                          {"attention", &DiagnoseRow::attention, true},
                          {"all-reduce", &DiagnoseRow::all_reduce, false}};
  for (const DiagnoseRow& r : rows) {
    std::vector<std::string> reasons;
    for (const Named& c : checks) {
      const uint32_t majority = Majority(rows, c.check);
      if ((r.*c.check).checksum != majority) {
        reasons.push_back(absl::StrFormat("%s checksum differs (%08x, most ranks %08x)", c.name,
                                          (r.*c.check).checksum, majority));
      }
      const double median = MedianMs(rows, c.check);
      if (c.timed && (r.*c.check).ms > slow_factor * median) {
        reasons.push_back(absl::StrFormat("%s %.0f%% slower than the median", c.name,
                                          100 * ((r.*c.check).ms / median - 1)));
      }
    }
    if (!r.all_reduce_exact) reasons.push_back("all-reduce is not the exact sum");
    out.push_back(reasons.empty() ? "ok" : absl::StrJoin(reasons, "; "));
  }
  return out;
}

std::string FormatDiagnoseTable(const std::vector<DiagnoseRow>& rows, Device device, int repeats,
                                double slow_factor) {
  const Sizes z = SizesFor(device);
  const std::string type = std::string(DTypeName(z.dtype));
  const char* clock = device == Device::kCPU ? "thread CPU time" : "wall time, device synchronised";
  std::string o = absl::StrFormat(
      "fathom diagnose: %d rank(s) on %s; fixed seeds, checksums are CRC-32C of the results' bytes\n",
      rows.size(), device == Device::kCPU ? "CPU" : "GPU");
  absl::StrAppendFormat(&o, "  gemm        %s (%d x %d) . (%d x %d)^T -> f32, fastest of %d runs (%s)\n",
                        type, z.m, z.k, z.n, z.k, repeats, clock);
  absl::StrAppendFormat(
      &o,
      "  attention   %s causal forward, batch %d, %d positions, %d heads, qk %d, v %d, fastest "
      "of %d runs (%s)\n",
      type, z.batch, z.seq, z.heads, z.qk, z.v, repeats, clock);
  absl::StrAppendFormat(
      &o,
      "  all-reduce  i32 sum of %d elements over the world, median of %d runs (wall time; not "
      "judged per rank: a collective ends together)\n",
      z.reduce, repeats);
  absl::StrAppendFormat(&o, "%5s  %-16s %-28s %8s %9s %8s %9s %10s %9s  %s\n", "rank", "host", "device",
                        "gemm", "gemm ms", "attn", "attn ms", "allreduce", "ar ms", "verdict");
  const std::vector<std::string> verdicts = DiagnoseVerdicts(rows, slow_factor);
  int bad = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const DiagnoseRow& r = rows[i];
    absl::StrAppendFormat(&o, "%5d  %-16s %-28s %08x %9.3f %08x %9.3f   %08x %9.3f  %s\n", r.rank,
                          r.host.substr(0, 16), r.device.substr(0, 28), r.gemm.checksum, r.gemm.ms,
                          r.attention.checksum, r.attention.ms, r.all_reduce.checksum, r.all_reduce.ms,
                          verdicts[i]);
    bad += verdicts[i] != "ok";
  }
  if (bad == 0) {
    absl::StrAppendFormat(
        &o,
        "verdict: all %d rank(s) agree bitwise, the all-reduce is exact, and none is more than "
        "%.0f%% slower than the median\n",
        rows.size(), 100 * (slow_factor - 1));
  } else {
    absl::StrAppendFormat(&o, "verdict: %d of %d rank(s) need attention (see their rows)\n", bad,
                          rows.size());
  }
  return o;
}

}  // namespace fathom
