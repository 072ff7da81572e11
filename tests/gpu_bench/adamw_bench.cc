// The optimizer step on the GPU (framework/kernels/cuda/adamw.h) over a flat table of 512M f32 parameters
// with bf16 moments and a bf16 compute copy, clipping active:
//   - Unfused: what a step cost before the fused pass: the norm, ScaleGrads, AdamWStep, the compute copy's
//     refresh (Convert) and ZeroGrads, five passes (4 + 8 + 20 + 6 + 4 = 42 bytes per element);
//   - Fused:   the norm, then FusedAdamWStep (clip, AdamW, refresh): two passes, 26 bytes per element (4 for
//     the norm + 22); the gradients are zeroed lazily by the ParamTable, outside the optimizer.
// The GB/s counter is those bytes over the measured time; the floor is bytes over this GPU's device-to-device
// copy rate, measured once (framework/cuda/device_timing.h: about 4.3 TB/s on an H200, 3.0 on an H100). 512M elements (~14 GB of buffers) are far past the
// 60 MB L2, so every pass streams from HBM.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "framework/config.h"
#include "framework/cuda/check.h"
#include "framework/cuda/device_timing.h"
#include "framework/cuda/device_arena.h"
#include "framework/kernels/cuda/adamw.h"
#include "framework/kernels/cuda/elementwise.h"
#include "framework/param_table.h"

namespace fathom {
namespace {

constexpr int64_t kParams = 64;                 // tensors in the table
constexpr int64_t kElementsPerParam = 8 << 20;  // 8M each: 512M elements
// Measured before the table's buffers exist (they take ~14 GB).
double CopyBytesPerS() {
  static const double rate = [] {
    const double r = cuda::MeasureCopyBandwidth().bytes_per_s;
    FATHOM_CHECK(r > 0, "[adamw_bench] too little device memory free to measure the copy rate");
    return r;
  }();
  return rate;
}

class OptimizerData {
 public:
  OptimizerData() {
    for (int64_t i = 0; i < kParams; ++i) {
      ParamSpec s;
      s.name = std::string("p").append(std::to_string(i));
      s.shape = {kElementsPerParam};
      s.weight_decay = i % 4 != 0;  // a mix of decayed and undecayed tensors, as in the model
      table_.Add(s);
    }
    table_.Finalize(DType::kF32);  // host buffers (zeros), used for the specs only
    const int64_t n = table_.numel();
    arena_ = std::make_unique<cuda::DeviceArena>(
        "adamw_bench", static_cast<size_t>(n) * (4 + 4 + 2 + 2 + 2) + (size_t{64} << 20));
    chunks_ = std::make_unique<cuda::ParamChunks>(table_, *arena_);
    values_ = arena_->Alloc({n}, DType::kF32);
    grads_ = arena_->Alloc({n}, DType::kF32);
    compute_ = arena_->Alloc({n}, DType::kBF16);
    exp_avg_ = arena_->Alloc({n}, DType::kBF16);
    exp_avg_sq_ = arena_->Alloc({n}, DType::kBF16);
    norm_ = arena_->Alloc({1}, DType::kF64);
    // Non-zero, non-denormal contents: one random block repeated (the values do not change the speed
    // beyond that).
    std::vector<float> block(1 << 20);
    uint64_t x = 88172645463325252ull;
    for (float& f : block) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      f = static_cast<float>(static_cast<double>(x >> 11) / 9007199254740992.0 - 0.5);
    }
    for (const Tensor* t : {&values_, &grads_})
      for (int64_t at = 0; at < n; at += static_cast<int64_t>(block.size()))
        FATHOM_CUDA_CHECK(cudaMemcpy(static_cast<float*>(t->raw()) + at, block.data(),
                                     block.size() * sizeof(float), cudaMemcpyHostToDevice));
    cuda::Convert(exp_avg_, grads_, nullptr);
    cuda::Convert(exp_avg_sq_, values_, nullptr);  // any finite values; v >= 0 is not needed for speed
    cuda::Fill(exp_avg_sq_, 1e-4, nullptr);
    OptimConfig cfg;
    cfg.moment_dtype = "bf16";
    cfg.weight_decay = 0.1;
    coeffs_ = cuda::MakeAdamWCoeffs(cfg, 3e-4, 10);
    FATHOM_CUDA_CHECK(cudaDeviceSynchronize());
  }

  double elements() const { return static_cast<double>(chunks_->trainable_elements()); }

  // The gradients are refilled between iterations outside the timed region where a variant zeroes them,
  // so both variants always read real gradients.
  void RestoreGrads() const { cuda::Fill(grads_, 0.01, nullptr); }

  void Unfused() const {
    cuda::GradNormSquared(norm_, grads_, *chunks_, nullptr);
    cuda::ScaleGrads(grads_, *chunks_, 0.5, nullptr);
    cuda::AdamWStep(values_, exp_avg_, exp_avg_sq_, grads_, *chunks_, coeffs_, nullptr);
    cuda::Convert(compute_, values_, nullptr);
    cuda::Zero(grads_, nullptr);
  }
  void Fused() const {
    cuda::GradNormSquared(norm_, grads_, *chunks_, nullptr);
    cuda::FusedAdamWStep(values_, exp_avg_, exp_avg_sq_, grads_, compute_, *chunks_, coeffs_, 0.5, nullptr);
  }

 private:
  ParamTable table_;
  std::unique_ptr<cuda::DeviceArena> arena_;
  std::unique_ptr<cuda::ParamChunks> chunks_;
  Tensor values_, grads_, compute_, exp_avg_, exp_avg_sq_, norm_;
  cuda::AdamWCoeffs coeffs_{};
};

const OptimizerData& Data() {
  static const auto* data = new OptimizerData();
  return *data;
}

template <class Call>
void TimeSteps(benchmark::State& state, double bytes_per_element, const Call& call) {
  const double copy_bytes_per_s = CopyBytesPerS();  // first: before Data() holds ~14 GB
  const OptimizerData& d = Data();
  for (int i = 0; i < 2; ++i) {
    d.RestoreGrads();
    call();
  }
  cudaEvent_t start, stop;
  FATHOM_CUDA_CHECK(cudaEventCreate(&start));
  FATHOM_CUDA_CHECK(cudaEventCreate(&stop));
  double total_s = 0;
  for (auto _ : state) {
    d.RestoreGrads();
    FATHOM_CUDA_CHECK(cudaEventRecord(start, nullptr));
    call();
    FATHOM_CUDA_CHECK(cudaEventRecord(stop, nullptr));
    FATHOM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    FATHOM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms * 1e-3);
    total_s += ms * 1e-3;
  }
  const double bytes = bytes_per_element * d.elements();
  const double per_step_s = total_s / static_cast<double>(state.iterations());
  state.counters["GB"] = bytes * 1e-9;
  state.counters["TB/s"] = bytes / per_step_s * 1e-12;
  state.counters["x_floor"] = per_step_s / (bytes / copy_bytes_per_s);
  state.counters["copy_TB/s"] = copy_bytes_per_s * 1e-12;
  FATHOM_CUDA_CHECK(cudaEventDestroy(start));
  FATHOM_CUDA_CHECK(cudaEventDestroy(stop));
}

void BM_OptimizerUnfused(benchmark::State& state) {
  state.SetLabel("512M params, bf16 moments: norm, scale, adamw, refresh, zero");
  TimeSteps(state, 42.0, [] { Data().Unfused(); });
}
void BM_OptimizerFused(benchmark::State& state) {
  state.SetLabel("512M params, bf16 moments: norm, fused pass");
  TimeSteps(state, 26.0, [] { Data().Fused(); });
}

BENCHMARK(BM_OptimizerUnfused)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(10);
BENCHMARK(BM_OptimizerFused)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(10);

}  // namespace
}  // namespace fathom
