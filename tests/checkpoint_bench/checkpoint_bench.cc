// checkpoint_bench: how fast fathom's distributed checkpoints are written and read on this machine. A
// program that prints a table, not a test.
//
//   checkpoint_bench [--gib G] [--dir D] [--keep]            (one process)
//   mpirun -np N checkpoint_bench [--gib G] [--dir D]         (N ranks, each an equal flat shard)
//
// State: G GiB in all (default 2): f32 master values (half) and bf16 AdamW moments (a quarter each), in
// 1024 x 4096 tensors of one flat table; rank r owns the r-th equal flat shard, as ZeRO-1 would. Phases:
//   save sync        CheckpointWriter::Save: write + fsync every rank's file, commit
//   save async       StartAsync (the stall: snapshot copy) ... Finish (write + commit); twice, as the first
//                    save allocates the snapshot buffers and later ones reuse them
//   read own shard   every rank reads back exactly what it wrote (one file each)
//   read shifted     every rank reads a shard shifted by half a shard (two files each: a reshard)
// GB/s is the aggregate over the ranks (1e9 bytes). Reads come after writes of the same data, so they are
// served from the page cache unless the machine's memory is smaller than the data: they measure HDF5,
// CRC-32C and memory, not the disk.
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpoint_writer.h"
#include "framework/numeric.h"
#include "parallel/collective_status.h"
#include "parallel/mpi_communicator.h"

namespace fathom {
namespace {

constexpr int64_t kRows = 1024, kCols = 4096;

struct Options {
  double gib = 2.0;
  std::string dir;
  bool keep = false;
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The slowest rank's time of `f`, all ranks starting together.
template <class F>
double Timed(Communicator& comm, F&& f) {
  comm.Barrier();
  const double start = Now();
  f();
  Tensor t = Tensor::FromVector({Now() - start}, {1}, DType::kF64);
  comm.AllReduce(t, ReduceOp::kMax);
  return t.data<double>()[0];
}

void Row(const char* phase, double seconds, double bytes) {
  std::printf("  %-24s %9.3f s %9.2f GB/s\n", phase, seconds, bytes / seconds / 1e9);
}

int Run(const Options& opt) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::World();
  const int rank = world->rank(), size = world->size();
  // Values f32 + two bf16 moments = 8 bytes per element.
  const int64_t elements = static_cast<int64_t>(opt.gib * 1024 * 1024 * 1024 / 8);
  const int64_t tensors = std::max<int64_t>(1, elements / (kRows * kCols));
  ParamTable table;  // the layout; its values buffer also holds the f32 values (its grads go unused)
  for (int64_t i = 0; i < tensors; ++i) {
    table.Add(
        {.name = "model.layers." + std::to_string(i) + ".mlp.down_proj.weight", .shape = {kRows, kCols}});
  }
  table.Finalize(DType::kF32);
  const int64_t numel = table.numel();  // no padding: 1024 x 4096 is a multiple of 16
  const int64_t chunk = (numel + size - 1) / size;
  const int64_t b = std::min(numel, rank * chunk), e = std::min(numel, b + chunk);
  std::vector<ShardSource> sources;
  for (auto [kind, dtype, fill] : {std::tuple<const char*, DType, float>{kKindValue, DType::kF32, 0.5f},
                                   {kKindAdamM, DType::kBF16, 0.25f},
                                   {kKindAdamV, DType::kBF16, 0.125f}}) {
    Tensor data = dtype == DType::kF32 ? table.values().Rows(b, e) : Tensor::Empty({e - b}, dtype);
    ShardSource s{kind, TablePieces(table, b, e), data, b};
    // Varied, non-zero contents (a constant would flatter nothing here, but costs the same).
    if (dtype == DType::kF32) {
      float* p = s.data.data<float>();
      for (int64_t i = 0; i < e - b; ++i) p[i] = fill + static_cast<float>(i % 1021) * 1e-3f;
    } else {
      Bf16* p = s.data.data<Bf16>();
      for (int64_t i = 0; i < e - b; ++i) p[i] = FloatToBf16(fill + static_cast<float>(i % 1021) * 1e-3f);
    }
    sources.push_back(std::move(s));
  }
  std::string dir = opt.dir;
  if (dir.empty()) {
    std::string made;
    if (rank == 0) {
      made = (std::filesystem::temp_directory_path() / "fathom_checkpoint_bench_XXXXXX").string();
      if (::mkdtemp(made.data()) == nullptr) made.clear();
    }
    dir = BroadcastString(*world, made, 0);
    if (dir.empty()) return 1;
  }
  const double total = static_cast<double>(SourceBytes(sources)) * size;
  if (rank == 0) {
    std::printf(
        "checkpoint_bench: %.2f GiB of state (f32 values, bf16 adam_m and adam_v) in %lld tensors of "
        "%lld x %lld, %d rank(s), %s\n",
        total / (1 << 30), static_cast<long long>(tensors), static_cast<long long>(kRows),
        static_cast<long long>(kCols), size, dir.c_str());
  }

  CheckpointWriter writer(*world, dir, /*keep_last=*/1);
  CheckpointMetadata meta;
  meta.step = 1;
  absl::StatusOr<CheckpointSaveStats> sync_stats;
  const double sync = Timed(*world, [&] { sync_stats = writer.Save(sources, meta); });
  if (!sync_stats.ok()) {
    std::fprintf(stderr, "[rank %d] save: %s\n", rank, sync_stats.status().ToString().c_str());
    return 1;
  }
  // Two async saves: the first allocates the snapshot buffers (first-touch page faults), the second
  // reuses them, as every save of a run after its first does.
  double async[2] = {0, 0}, stall[2] = {0, 0};
  for (int k = 0; k < 2; ++k) {
    meta.step = 2 + k;
    absl::StatusOr<std::optional<CheckpointSaveStats>> async_stats;
    async[k] = Timed(*world, [&] {
      const double t0 = Now();
      absl::Status s = writer.StartAsync(sources, meta);
      stall[k] = Now() - t0;
      FATHOM_CHECK(s.ok(), s.ToString());
      async_stats = writer.Finish();
    });
    if (!async_stats.ok() || !async_stats->has_value()) {
      std::fprintf(stderr, "[rank %d] async save failed\n", rank);
      return 1;
    }
  }

  absl::StatusOr<std::unique_ptr<CheckpointReader>> reader = CheckpointReader::Open(CheckpointPath(dir, 3));
  FATHOM_CHECK(reader.ok(), reader.status().ToString());
  std::vector<Tensor> out;
  // Zeroed, so that page faults are not timed as reading.
  for (const ShardSource& s : sources) out.push_back(Tensor::Zeros({e - b}, s.data.dtype()));
  auto read_range = [&](int64_t lo, int64_t hi) {
    for (size_t k = 0; k < sources.size(); ++k) {
      absl::Status st =
          (*reader)->ReadPieces(sources[k].kind, TablePieces(table, lo, hi), out[k].Rows(0, hi - lo), lo);
      FATHOM_CHECK(st.ok(), st.ToString());
    }
  };
  const double read_own = Timed(*world, [&] { read_range(b, e); });
  for (size_t k = 0; k < sources.size(); ++k) {
    FATHOM_CHECK(std::memcmp(out[k].raw(), sources[k].data.raw(), sources[k].data.nbytes()) == 0,
                 "read back differs from what was written: ", sources[k].kind);
  }
  const int64_t shift = (e - b) / 2;
  const int64_t sb = std::min(numel, b + shift), se = std::min(numel, e + shift);
  const double read_shifted = Timed(*world, [&] { read_range(sb, se); });
  Tensor shifted_bytes = Tensor::FromVector({static_cast<double>((se - sb) * 8)}, {1}, DType::kI64);
  world->AllReduce(shifted_bytes, ReduceOp::kSum);

  if (rank == 0) {
    std::printf("  %-24s %9s   %9s\n", "phase", "time", "bandwidth");
    Row("save sync", sync, total);
    std::printf("    (write + fsync %.3f s, commit %.3f s)\n", sync_stats->write_seconds,
                sync_stats->commit_seconds);
    Row("save async, first", async[0], total);
    std::printf("    (step loop stall: prepare + snapshot copy into new buffers %.3f s on rank 0)\n",
                stall[0]);
    Row("save async, next", async[1], total);
    std::printf("    (step loop stall: prepare + snapshot copy %.3f s on rank 0)\n", stall[1]);
    Row("read own shard", read_own, total);
    Row("read shifted shard", read_shifted, static_cast<double>(shifted_bytes.data<int64_t>()[0]));
  }
  world->Barrier();
  if (rank == 0 && opt.dir.empty() && !opt.keep) std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace fathom

int main(int argc, char** argv) {
  fathom::MpiInit(&argc, &argv);
  fathom::Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--gib" && i + 1 < argc) {
      opt.gib = std::atof(argv[++i]);
    } else if (a == "--dir" && i + 1 < argc) {
      opt.dir = argv[++i];
    } else if (a == "--keep") {
      opt.keep = true;
    } else {
      std::fprintf(stderr, "usage: checkpoint_bench [--gib G] [--dir D] [--keep]\n");
      fathom::MpiFinalize();
      return 2;
    }
  }
  const int code = fathom::Run(opt);
  fathom::MpiFinalize();
  return code;
}
