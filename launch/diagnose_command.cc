// fathom diagnose [--device auto|cpu|cuda] [--repeat N] [--slow-factor F]
// Runs launch/diagnose.h's checks on every rank (launch it like `fathom train`: mpirun or srun for several
// ranks), gathers one row per rank, and rank 0 prints the table. Exit 0 when every rank agrees bitwise and
// none is slow, 1 otherwise, 2 for bad input or a bad launch.
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "launch/command_line.h"
#include "launch/commands.h"
#include "launch/diagnose.h"
#include "launch/job_start.h"
#include "parallel/fault.h"
#include "parallel/rank_agreement.h"

#ifdef FATHOM_WITH_CUDA
#include "framework/cuda/device_arena.h"
#endif

namespace fathom {
namespace {

constexpr char kUsage[] =
    "usage: fathom diagnose [--device auto|cpu|cuda] [--repeat N] [--slow-factor F]\n"
    "  Runs deterministic GEMM, attention and all-reduce checks on every rank's device (one rank per GPU\n"
    "  under mpirun or srun, like fathom train), compares the results bitwise across the ranks and the "
    "times\n"
    "  with the median, and prints one row per rank. Exit 0 when all agree and none is more than 10% slower\n"
    "  than the median, 1 otherwise.\n"
    "  --device D        cpu, cuda, or auto (default: cuda when this build has CUDA and every rank sees a "
    "GPU)\n"
    "  --repeat N        timed runs of each check (default 10)\n"
    "  --slow-factor F   a rank slower than F x the median is reported (default 1.10)\n"
    "  --help            print this and exit\n";

[[noreturn]] void Reject(const std::string& message) {
  ExitAllRanks(kExitInvalidInput, "fathom diagnose: " + message);
}

// A row as fixed-size i64 words, so that one all-gather collects every rank's.
constexpr int kTextWords = 8;  // 64 bytes for the host name and for the device name
constexpr int kRowWords = 8 + 2 * kTextWords;

void PutText(int64_t* words, const std::string& text) {
  std::memset(words, 0, kTextWords * sizeof(int64_t));
  std::memcpy(words, text.data(), std::min(text.size(), kTextWords * sizeof(int64_t) - 1));
}

std::string GetText(const int64_t* words) {
  const char* p = reinterpret_cast<const char*>(words);
  return std::string(p, strnlen(p, kTextWords * sizeof(int64_t)));
}

int64_t Bits(double v) {
  int64_t b = 0;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

double FromBits(int64_t b) {
  double v = 0;
  std::memcpy(&v, &b, sizeof(v));
  return v;
}

std::vector<DiagnoseRow> GatherRows(const DiagnoseRow& row, Communicator& world) {
  Tensor mine = Tensor::Zeros({kRowWords}, DType::kI64);
  int64_t* w = mine.data<int64_t>();
  w[0] = row.rank;
  w[1] = row.gemm.checksum;
  w[2] = Bits(row.gemm.ms);
  w[3] = row.attention.checksum;
  w[4] = Bits(row.attention.ms);
  w[5] = row.all_reduce.checksum;
  w[6] = Bits(row.all_reduce.ms);
  w[7] = row.all_reduce_exact ? 1 : 0;
  PutText(w + 8, row.host);
  PutText(w + 8 + kTextWords, row.device);
  Tensor all = Tensor::Empty({world.size() * kRowWords}, DType::kI64);
  world.AllGather(mine, all);
  std::vector<DiagnoseRow> rows(static_cast<size_t>(world.size()));
  for (int r = 0; r < world.size(); ++r) {
    const int64_t* a = all.data<int64_t>() + r * kRowWords;
    DiagnoseRow& d = rows[static_cast<size_t>(r)];
    d.rank = static_cast<int>(a[0]);
    d.gemm = {static_cast<uint32_t>(a[1]), FromBits(a[2])};
    d.attention = {static_cast<uint32_t>(a[3]), FromBits(a[4])};
    d.all_reduce = {static_cast<uint32_t>(a[5]), FromBits(a[6])};
    d.all_reduce_exact = a[7] != 0;
    d.host = GetText(a + 8);
    d.device = GetText(a + 8 + kTextWords);
  }
  return rows;
}

// auto: the GPU when this build has CUDA and every rank sees one (agreed over the world), else the CPU.
Device ChooseDevice(const std::string& wanted, Communicator& world) {
  if (wanted == "cpu") return Device::kCPU;
  if (wanted == "cuda") return Device::kCUDA;
  int64_t has_gpu = 0;
#ifdef FATHOM_WITH_CUDA
  has_gpu = cuda::DeviceCount() > 0 ? 1 : 0;
#endif
  Tensor t = Tensor::FromVector({static_cast<double>(1 - has_gpu)}, {1}, DType::kI64);
  world.AllReduce(t, ReduceOp::kMax);  // any rank without a GPU: all take the CPU
  return t.data<int64_t>()[0] == 0 ? Device::kCUDA : Device::kCPU;
}

}  // namespace

int RunDiagnose(const std::vector<std::string>& args) {
  absl::StatusOr<CommandLine> cl =
      ParseCommandLine(args, {"--device", "--repeat", "--slow-factor"}, /*recipe_required=*/false, {},
                       "recipe", /*takes_set=*/false);
  if (cl.ok() && cl->help) {
    if (ProcessRank() == 0) std::cout << kUsage;
    return 0;
  }
  Job job = StartJob("fathom diagnose");
  if (!cl.ok()) Reject(std::string(cl.status().message()) + "\n" + kUsage);
  if (!cl->recipe.empty() || !cl->overrides.empty()) {
    Reject("takes no recipe and no --set (it checks the devices, not a model)\n" + std::string(kUsage));
  }
  const std::string wanted = cl->options.count("--device") ? cl->options["--device"] : "auto";
  if (wanted != "auto" && wanted != "cpu" && wanted != "cuda") {
    Reject(absl::StrCat("--device must be auto, cpu or cuda, got '", wanted, "'"));
  }
  int64_t repeats = 10;
  if (cl->options.count("--repeat") &&
      (!absl::SimpleAtoi(cl->options["--repeat"], &repeats) || repeats < 1 || repeats > 1000)) {
    Reject(absl::StrCat("--repeat needs a whole number in [1, 1000], got '", cl->options["--repeat"], "'"));
  }
  double slow_factor = kSlowFactor;
  if (cl->options.count("--slow-factor") && (!absl::SimpleAtod(cl->options["--slow-factor"], &slow_factor) ||
                                             !(slow_factor >= 1 && slow_factor <= 100))) {
    Reject(
        absl::StrCat("--slow-factor needs a number in [1, 100], got '", cl->options["--slow-factor"], "'"));
  }
  const Device device = ChooseDevice(wanted, *job.world);
  absl::StatusOr<DiagnoseRow> row =
      RunDiagnoseChecks(device, *job.world, job.node, static_cast<int>(repeats));
  if (absl::Status s = AgreeOnStatus(*job.world, row.status()); !s.ok()) Reject(std::string(s.message()));
  const std::vector<DiagnoseRow> rows = GatherRows(*row, *job.world);
  const std::vector<std::string> verdicts = DiagnoseVerdicts(rows, slow_factor);
  if (job.world->rank() == 0)
    std::cout << FormatDiagnoseTable(rows, device, static_cast<int>(repeats), slow_factor) << std::flush;
  bool all_ok = true;
  for (const std::string& v : verdicts) all_ok = all_ok && v == "ok";
  FinishJob(job);
  return all_ok ? 0 : kExitFailure;
}

}  // namespace fathom
