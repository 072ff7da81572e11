// Causal attention on the GPU (framework/kernels/cuda/attention.h), forward and backward:
//   - the model's shape, B 2, T 4096, H 16, Dk 192, Dv 128, bf16, on cuDNN's fused SDPA (when this build
//     has cuDNN and it accepts the shape; otherwise the benchmark reports the reason and skips) and on
//     fathom's own tensor-core kernels;
//   - the f32 SIMT path at T 1024, for reference.
// Each iteration times one call between two CUDA events (manual time), after warm-up calls. The TFLOP/s
// counter counts causal FLOPs: forward 2 B H (T^2 / 2) (Dk + Dv), backward 2.5 x the forward (the convention
// of FlashAttention's benchmarks, so numbers compare with cuDNN's and FlashAttention's).
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "framework/cuda/check.h"
#include "framework/cuda/device_arena.h"
#include "framework/kernels/cuda/attention.h"

namespace fathom {
namespace {

struct Problem {
  int64_t b, t, h, dk, dv;
  DType dtype;
};

// Device tensors of one problem: random q, k, v and dout, and out and lse from one forward.
class AttentionData {
 public:
  explicit AttentionData(const Problem& p) : p_(p), arena_("attention_bench", ArenaBytes(p)) {
    const Shape qk{p.b, p.t, p.h, p.dk}, v{p.b, p.t, p.h, p.dv};
    std::mt19937_64 rng(20240611);
    q_ = Random(qk, rng);
    k_ = Random(qk, rng);
    v_ = Random(v, rng);
    dout_ = Random(v, rng);
    out_ = arena_.Alloc(v, p.dtype);
    lse_ = arena_.Alloc({p.b, p.h, p.t}, DType::kF32);
    dq_ = arena_.Alloc(qk, p.dtype);
    dk_ = arena_.Alloc(qk, p.dtype);
    dv_ = arena_.Alloc(v, p.dtype);
    scale_ = 1.0 / std::sqrt(static_cast<double>(p.dk));
    Forward(p.dtype == DType::kF32 ? cuda::AttentionPath::kSimt : cuda::AttentionPath::kTensorCores);
    FATHOM_CUDA_CHECK(cudaDeviceSynchronize());
  }

  void Forward(cuda::AttentionPath path) const {
    cuda::CausalAttentionForward(out_, lse_, q_, k_, v_, scale_, nullptr, path);
  }
  void Backward(cuda::AttentionPath path) const {
    cuda::CausalAttentionBackward(dq_, dk_, dv_, dout_, q_, k_, v_, out_, lse_, scale_, nullptr, path);
  }
  cuda::AttentionShape shape() const { return {p_.b, p_.t, p_.h, p_.dk, p_.dv}; }
  double ForwardFlops() const {
    return 2.0 * static_cast<double>(p_.b * p_.h) * (static_cast<double>(p_.t) * p_.t / 2) *
           static_cast<double>(p_.dk + p_.dv);
  }
  std::string Label(const char* path) const {
    std::string label;  // appended piecewise: GCC 12 warns (-Wrestrict) on "B" + std::to_string(...)
    for (const auto& [name, value] :
         {std::pair{"B", p_.b}, {" T", p_.t}, {" H", p_.h}, {" Dk", p_.dk}, {" Dv", p_.dv}})
      label.append(name).append(std::to_string(value));
    return label.append(" ").append(DTypeName(p_.dtype)).append(" ").append(path);
  }

 private:
  static size_t ArenaBytes(const Problem& p) {
    const size_t qk = static_cast<size_t>(p.b * p.t * p.h * p.dk),
                 v = static_cast<size_t>(p.b * p.t * p.h * p.dv);
    return DTypeSize(p.dtype) * (4 * qk + 4 * v) + 4 * static_cast<size_t>(p.b * p.h * p.t) + 16 * 256;
  }

  // Uniform in [-sqrt(3), sqrt(3)] (unit variance, like the model's normalised activations), in p_.dtype.
  Tensor Random(const Shape& shape, std::mt19937_64& rng) {
    Tensor host = Tensor::Empty(shape, DType::kF32);
    std::uniform_real_distribution<float> u(-1.7320508f, 1.7320508f);
    float* x = host.data<float>();
    for (int64_t i = 0; i < host.numel(); ++i) x[i] = u(rng);
    Tensor dev = arena_.Alloc(shape, p_.dtype);
    cuda::CopyToDevice(dev, p_.dtype == DType::kF32 ? host : host.To(p_.dtype));
    return dev;
  }

  Problem p_;
  cuda::DeviceArena arena_;
  Tensor q_, k_, v_, dout_, out_, lse_, dq_, dk_, dv_;
  double scale_ = 0;
};

// One data set per problem for the whole run, made on first use (forward and backward share it).
const AttentionData& ModelShapeBf16() {
  static const auto* data = new AttentionData({2, 4096, 16, 192, 128, DType::kBF16});
  return *data;
}
const AttentionData& ReferenceF32() {
  static const auto* data = new AttentionData({2, 1024, 16, 192, 128, DType::kF32});
  return *data;
}

// Times `call` once per iteration between CUDA events, after 3 warm-up calls; reports TFLOP/s over all
// iterations.
template <class Call>
void TimeCalls(benchmark::State& state, double flops, const Call& call) {
  for (int i = 0; i < 3; ++i) call();
  cudaEvent_t start, stop;
  FATHOM_CUDA_CHECK(cudaEventCreate(&start));
  FATHOM_CUDA_CHECK(cudaEventCreate(&stop));
  double total_s = 0;
  for (auto _ : state) {
    FATHOM_CUDA_CHECK(cudaEventRecord(start, nullptr));
    call();
    FATHOM_CUDA_CHECK(cudaEventRecord(stop, nullptr));
    FATHOM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    FATHOM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms * 1e-3);
    total_s += ms * 1e-3;
  }
  state.counters["TFLOP/s"] = flops * static_cast<double>(state.iterations()) / total_s * 1e-12;
  FATHOM_CUDA_CHECK(cudaEventDestroy(start));
  FATHOM_CUDA_CHECK(cudaEventDestroy(stop));
}

void BM_AttentionForwardBf16(benchmark::State& state) {
  const AttentionData& d = ModelShapeBf16();
  state.SetLabel(d.Label("own tensor cores"));
  TimeCalls(state, d.ForwardFlops(), [&] { d.Forward(cuda::AttentionPath::kTensorCores); });
}
void BM_AttentionBackwardBf16(benchmark::State& state) {
  const AttentionData& d = ModelShapeBf16();
  state.SetLabel(d.Label("own tensor cores"));
  TimeCalls(state, 2.5 * d.ForwardFlops(), [&] { d.Backward(cuda::AttentionPath::kTensorCores); });
}
// cuDNN: plans are built by PrepareCudnnAttention before the timed calls (the 3 warm-up calls too).
void BM_AttentionForwardBf16Cudnn(benchmark::State& state) {
  const AttentionData& d = ModelShapeBf16();
  const absl::Status ready = cuda::PrepareCudnnAttention(d.shape());
  if (!ready.ok()) {
    state.SkipWithError(std::string(ready.message()).c_str());
    return;
  }
  state.SetLabel(d.Label(cuda::CudnnAttentionSummary(d.shape()).c_str()));
  TimeCalls(state, d.ForwardFlops(), [&] { d.Forward(cuda::AttentionPath::kCudnn); });
}
void BM_AttentionBackwardBf16Cudnn(benchmark::State& state) {
  const AttentionData& d = ModelShapeBf16();
  const absl::Status ready = cuda::PrepareCudnnAttention(d.shape());
  if (!ready.ok()) {
    state.SkipWithError(std::string(ready.message()).c_str());
    return;
  }
  state.SetLabel(d.Label("cuDNN"));
  TimeCalls(state, 2.5 * d.ForwardFlops(), [&] { d.Backward(cuda::AttentionPath::kCudnn); });
}
void BM_AttentionForwardF32(benchmark::State& state) {
  const AttentionData& d = ReferenceF32();
  state.SetLabel(d.Label("SIMT"));
  TimeCalls(state, d.ForwardFlops(), [&] { d.Forward(cuda::AttentionPath::kSimt); });
}
void BM_AttentionBackwardF32(benchmark::State& state) {
  const AttentionData& d = ReferenceF32();
  state.SetLabel(d.Label("SIMT"));
  TimeCalls(state, 2.5 * d.ForwardFlops(), [&] { d.Backward(cuda::AttentionPath::kSimt); });
}

BENCHMARK(BM_AttentionForwardBf16)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AttentionBackwardBf16)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AttentionForwardBf16Cudnn)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AttentionBackwardBf16Cudnn)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AttentionForwardF32)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AttentionBackwardF32)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace fathom
