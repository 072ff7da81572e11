#include "launch/cuda/device_optimizer.h"

#include <algorithm>

#include "framework/cuda/device_arena.h"

namespace fathom {

namespace {

// The chunk list (16 B per 4096 elements), the norm scratch and the moments, with alignment slack.
size_t ArenaBytes(const ParamTable& table, DType moments) {
  const size_t chunks = static_cast<size_t>(table.numel() / cuda::kParamChunkElements + table.size() + 1);
  return chunks * 16 + cuda::ParamChunks::kNormBlocks * 8 +
         2 * static_cast<size_t>(table.numel()) * DTypeSize(moments) + (1 << 20);
}

DType MomentDType(const OptimConfig& cfg) { return cfg.moment_dtype == "bf16" ? DType::kBF16 : DType::kF32; }

}  // namespace

DeviceOptimizer::DeviceOptimizer(ParamTable& table, const OptimConfig& cfg)
    : table_(table), cfg_(cfg), arena_("optimizer", ArenaBytes(table, MomentDType(cfg))) {
  FATHOM_CHECK(table.device() == Device::kCUDA && table.dtype() == DType::kF32,
               "DeviceOptimizer needs an f32 table on the GPU, got ", DTypeName(table.dtype()), " on ",
               DeviceName(table.device()));
  chunks_ = std::make_unique<cuda::ParamChunks>(table, arena_);
  exp_avg_ = arena_.Zeros({table.numel()}, MomentDType(cfg));
  exp_avg_sq_ = arena_.Zeros({table.numel()}, MomentDType(cfg));
  norm_ = arena_.Alloc({1}, DType::kF64);
}

double DeviceOptimizer::GradNormSquared() {
  cuda::GradNormSquared(norm_, table_.grads(), *chunks_, nullptr);
  Tensor host = Tensor::Empty({1}, DType::kF64);
  cuda::CopyToHost(host, norm_);  // synchronous: the step's one host wait besides the losses
  return host.data<double>()[0];
}

void DeviceOptimizer::Step(double lr, double total_norm, double max_norm) {
  // The same clip factor as optim/grad_clip.cc's ClipGradients.
  const double scale = max_norm > 0 ? std::min(1.0, max_norm / (total_norm + 1e-6)) : 1.0;
  if (scale != 1.0) cuda::ScaleGrads(table_.grads(), *chunks_, scale, nullptr);
  ++step_;
  cuda::AdamWStep(table_.values(), exp_avg_, exp_avg_sq_, table_.grads(), *chunks_,
                  cuda::MakeAdamWCoeffs(cfg_, lr, step_), nullptr);
}

}  // namespace fathom
