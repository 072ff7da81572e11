// AdamW on the GPU over the element range [begin, end) of a ParamTable's flat buffers: the device twin of
// optim/adamw.h (the same formula, coefficients and moment storage; see framework/kernels/cuda/adamw.h for
// the numerics), plus the two gradient operations an optimizer step needs on that range - the norm^2 of
// the trainable gradients (with sub-ranges to leave out, e.g. the last pipeline stage's copy of the
// embedding) and the in-place scaling of clipping. ZeRO-1 (parallel/zero.h) holds one per shard; a single
// GPU holds one over the whole table.
//
// Memory: one DeviceArena per object, sized at construction (start-up code, cudaMalloc on the current
// device): the work lists of framework/kernels/cuda/adamw.h (16 B per 4096 elements), their norm scratch
// and both moments, (end - begin) elements each in cfg.moment_dtype. Nothing is allocated afterwards.
// Streams: every method queues its kernels on the `stream` it is given and returns without waiting; the
// caller orders them with the work that writes the gradients (normally by using the one compute stream).
// The norm scratch is shared by the terms, so QueueGradNormTerms calls must be ordered with each other
// (one stream). Not thread safe. Exists only in CUDA builds (optim/cuda/ is compiled only with CUDA).
#ifndef FATHOM_OPTIM_CUDA_DEVICE_ADAMW_H_
#define FATHOM_OPTIM_CUDA_DEVICE_ADAMW_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "framework/config.h"
#include "framework/cuda/device_arena.h"
#include "framework/cuda/stream.h"
#include "framework/kernels/cuda/adamw.h"
#include "framework/param_table.h"

namespace fathom {

class DeviceAdamW {
 public:
  // REQUIRES: `table` finalized, f32, on the GPU (Device::kCUDA), and outliving this object;
  // 0 <= begin <= end <= table.numel() (end = -1 means table.numel()); cfg.moment_dtype "f32" or "bf16".
  // `exclude_from_norm`: flat ranges whose squares the norm leaves out (only their parts inside
  // [begin, end) matter; empty intersections are dropped). Moments start at zero (cleared and waited for
  // here), step() = 0.
  DeviceAdamW(ParamTable& table, const OptimConfig& cfg, int64_t begin = 0, int64_t end = -1,
              const std::vector<std::pair<int64_t, int64_t>>& exclude_from_norm = {});
  ~DeviceAdamW();
  DeviceAdamW(const DeviceAdamW&) = delete;
  DeviceAdamW& operator=(const DeviceAdamW&) = delete;

  // How many f64 terms QueueGradNormTerms writes: 1 + the number of exclusions that meet [begin, end).
  int64_t norm_terms() const { return static_cast<int64_t>(excluded_.size()) + 1; }
  // out (norm_terms()) f64 on the GPU, overwritten: out[0] = sum of g^2 over the trainable elements of
  // [begin, end); out[1 + j] = the same over the j-th non-empty intersection with exclude_from_norm. The
  // range's norm^2 without the exclusions is out[0] - out[1] - out[2] - ..., computed on the host after
  // one copy (several optimizers can share one buffer and one copy: pass views of it).
  void QueueGradNormTerms(const Tensor& out, cuda::Stream stream) const;

  // Multiplies every trainable gradient of [begin, end) by float(scale) (clipping; the caller computes
  // scale = min(1, max_norm / (total_norm + 1e-6)) as optim/grad_clip.h does and skips scale == 1). Elements
  // outside the range are not touched: AdamW reads only the range.
  void ScaleGrads(double scale, cuda::Stream stream);

  // One AdamW update (step() + 1) of every trainable element of [begin, end) at learning rate `lr`.
  void Step(double lr, cuda::Stream stream);

  // The same update in the optimizer's one fused pass (framework/kernels/cuda/adamw.h FusedAdamWStep): the
  // gradients are multiplied by float(clip_scale) as they are read (ScaleGrads folded in), and, for the
  // elements updated, the table's bf16 compute copy is refreshed when `refresh_compute` (REQUIRES the table
  // has one); the gradients are only read. Bitwise equal to ScaleGrads(clip_scale) (for clip_scale != 1),
  // Step(lr), then rounding the updated values into the compute copy. With the table's FP8 weights on,
  // their compute copies are left alone (ParamTable keeps none for them: their GEMMs read the FP8 copies),
  // 2 bytes per element less to write.
  void FusedStep(double lr, double clip_scale, bool refresh_compute, cuda::Stream stream);

  int64_t step() const { return step_; }
  void set_step(int64_t step);  // from a checkpoint; REQUIRES step >= 0
  int64_t begin() const { return begin_; }
  int64_t end() const { return end_; }
  // Bytes of optimizer state: both moments, (end - begin) elements each (as AdamW::state_bytes()).
  size_t state_bytes() const { return exp_avg_.nbytes() + exp_avg_sq_.nbytes(); }
  // The moments (end - begin) f32 or bf16 on the GPU; element i is flat element begin + i.
  Tensor exp_avg() const { return exp_avg_; }
  Tensor exp_avg_sq() const { return exp_avg_sq_; }

 private:
  ParamTable& table_;
  OptimConfig cfg_;
  int64_t begin_, end_;
  cuda::DeviceArena arena_;
  std::unique_ptr<cuda::ParamChunks> chunks_;                 // the trainable elements of [begin, end)
  // With FP8 weights on: chunks_ split into the parameters with a compute copy and the FP8 weights.
  std::unique_ptr<cuda::ParamChunks> copied_chunks_, fp8_chunks_;
  std::vector<std::unique_ptr<cuda::ParamChunks>> excluded_;  // each non-empty intersection
  Tensor exp_avg_, exp_avg_sq_;                               // (end - begin) f32 or bf16
  int64_t step_ = 0;
};

}  // namespace fathom

#endif  // FATHOM_OPTIM_CUDA_DEVICE_ADAMW_H_
