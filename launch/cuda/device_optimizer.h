// The optimizer step of a single-GPU run: global gradient norm, clipping and AdamW over a ParamTable that
// lives on the GPU, through the kernels of framework/kernels/cuda/adamw.h (one launch each, the twin of
// optim/adamw.cc). The work list and moments are allocated once here, from their own arena.
// Queued on the default stream, like the ops (framework/ops.h) of the forward and backward.
#ifndef FATHOM_LAUNCH_CUDA_DEVICE_OPTIMIZER_H_
#define FATHOM_LAUNCH_CUDA_DEVICE_OPTIMIZER_H_

#include <cstdint>
#include <memory>

#include "framework/config.h"
#include "framework/cuda/device_arena.h"
#include "framework/kernels/cuda/adamw.h"
#include "framework/param_table.h"

namespace fathom {

class DeviceOptimizer {
 public:
  // REQUIRES: `table` finalized, on the GPU, f32; it must outlive this object.
  DeviceOptimizer(ParamTable& table, const OptimConfig& cfg);

  double GradNormSquared();  // of the trainable gradients; waits for the device (one double back)
  // Clips by min(1, max_norm / (total_norm + 1e-6)) (max_norm 0: none), then one AdamW step at `lr`.
  void Step(double lr, double total_norm, double max_norm);
  size_t state_bytes() const { return exp_avg_.nbytes() + exp_avg_sq_.nbytes(); }

 private:
  ParamTable& table_;
  OptimConfig cfg_;
  cuda::DeviceArena arena_;
  std::unique_ptr<cuda::ParamChunks> chunks_;
  Tensor exp_avg_, exp_avg_sq_, norm_;  // moments (numel) f32/bf16; norm (1) f64
  int64_t step_ = 0;
};

}  // namespace fathom

#endif  // FATHOM_LAUNCH_CUDA_DEVICE_OPTIMIZER_H_
