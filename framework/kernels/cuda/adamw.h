// The optimizer step on the GPU over the flat ParamTable layout, in one launch for all parameters:
// AdamW (the twin of optim/adamw.cc), the global gradient norm (the twin of GradNormSquared in
// optim/grad_clip.h) and the in-place gradient scaling of clipping (ClipGradients).
//
// Layout: values (f32 master weights) and grads (f32) are device copies of a ParamTable's flat buffers,
// (table.numel()) each; the AdamW moments cover the optimizer's range [begin, end): (end - begin) f32 or
// bf16, element i belonging to flat element begin + i (as in optim/adamw.h). Only the elements of trainable
// parameters inside the range are read or written: alignment padding and non-trainable buffers (the expert
// bias) are never touched, whatever their grads hold.
//
// The work list (ParamChunks) is built once at start-up from the table's specs: every trainable
// parameter's elements inside the range, cut into chunks of at most kParamChunkElements, each chunk
// carrying its parameter's weight-decay flag. One launch covers all parameters, whatever their sizes: the
// update and the norm run a device-filling grid of blocks that stride over the chunks (16-byte accesses
// wherever a chunk's offsets allow), with no per-element segment search.
//
// The fused step (FusedAdamWStep) is the optimizer's one pass over memory: per element it reads the
// gradient, the master value and both moments once and writes the value, the moments, optionally the bf16
// compute copy (ParamTable's, rounded as RefreshComputeValues rounds) and optionally a zero into the
// gradient, applying the clip factor on the way. Bytes per element: 4 + 4 + 2 m (read) + 4 + 2 m (write)
// + 2 (compute copy) + 4 (zeroed gradient), m = moment bytes; with the norm's read of the gradients, 30
// bytes per element for bf16 moments (ZeroOptimizer::StepTraffic in parallel/zero.h counts them for
// `fathom bench`). Measured on an H200 (tests/gpu_bench/adamw_bench.cc, 512M elements, bf16 moments): norm +
// fused pass 3.52 ms = 3.97 TB/s, 1.08x the 4.3 TB/s floor (8 elements per thread; 3.83 ms with 4).
//
// Numerics: the AdamW arithmetic runs in f32 with the operations and the order of optim/adamw.cc (explicit
// round-to-nearest intrinsics, no fused multiply-adds), and the per-step coefficients are computed on the
// host in double and narrowed once, exactly as the CPU does; so the device step equals the CPU f32 step to
// the last bit on an x86-64 build without FMA contraction (tests allow 1e-6 relative). bf16 moments follow
// the CPU contract: the unrounded f32 moment drives the update, storage rounds to nearest even.
// The grad norm accumulates g*g in double: per-thread sums, then a fixed-shape tree inside each block, then
// one block over the per-block partials in index order. No float atomics, so the result is bitwise
// reproducible run to run (the order differs from the CPU's sequential sum: equal to double round-off).
//
// Streams: work is queued on `stream`; nothing synchronises with the host. The chunk list's norm scratch is
// shared, so GradNormSquared calls on one ParamChunks must be ordered with each other.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_ADAMW_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_ADAMW_H_

#include <cstdint>

#include "framework/config.h"
#include "framework/cuda/device_arena.h"
#include "framework/cuda/stream.h"
#include "framework/param_table.h"
#include "framework/tensor.h"

namespace fathom::cuda {

inline constexpr int64_t kParamChunkElements = 4096;

// The trainable elements of [begin, end) of a table's flat buffers as a device work list.
class ParamChunks {
 public:
  // Which parameters a list takes, by whether their GEMMs run in FP8 (ParamTable::fp8).
  enum class Fp8Weights { kInclude, kExclude, kOnly };
  // Start-up code: walks the specs (REQUIRES: table finalized; 0 <= begin <= end <= table.numel(), end = -1
  // meaning table.numel()), allocates the list and the norm scratch from `arena` and copies the list to the
  // device (synchronous). The arena must outlive this object.
  ParamChunks(const ParamTable& table, DeviceArena& arena, int64_t begin = 0, int64_t end = -1,
              Fp8Weights fp8 = Fp8Weights::kInclude);
  ParamChunks(const ParamChunks&) = delete;
  ParamChunks& operator=(const ParamChunks&) = delete;

  int64_t begin() const { return begin_; }
  int64_t end() const { return end_; }
  int64_t table_numel() const { return table_numel_; }
  int64_t count() const { return count_; }  // number of chunks
  int64_t trainable_elements() const { return elements_; }
  const Tensor& list() const { return list_; }  // (count, 2) i64: flat begin, (length << 1) | decay
  const Tensor& norm_scratch() const { return scratch_; }  // (kNormBlocks) f64 per-block partial sums

  static constexpr int64_t kNormBlocks = 1024;

 private:
  int64_t begin_, end_, table_numel_;
  int64_t count_ = 0, elements_ = 0;
  Tensor list_, scratch_;
};

// Per-step AdamW coefficients, computed in double from the config, lr and the step number t (t = 1 for the
// first step, like AdamW::step() after its increment) and narrowed to f32, as optim/adamw.cc does.
struct AdamWCoeffs {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  float decay_factor;  // 1 - lr * weight_decay
  float step_size;     // lr / (1 - beta1^t)
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
};
AdamWCoeffs MakeAdamWCoeffs(const OptimConfig& cfg, double lr, int64_t step);

// One AdamW update of every trainable element of the chunks' range (optim/adamw.h's formula), fused with
// clipping and the compute copy's refresh:
//   g = float(grads[i]) * float(clip_scale)  (bitwise ScaleGrads(clip_scale) followed by AdamWStep, also
//                                             for clip_scale 1, where the product is exact)
//   values[i], exp_avg, exp_avg_sq updated as AdamWStep does;
//   compute[i] = bf16(values[i]) (round to nearest even) when `compute` is defined ((table_numel) bf16).
// The grads are only read (ParamTable zeroes them lazily, see ZeroGrads).
// Elements outside the chunks (padding, non-trainable buffers, other shards) are not touched in any
// buffer. values, grads, compute (table_numel) and the moments (end - begin) must be 16-byte aligned.
void FusedAdamWStep(const Tensor& values, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                    const Tensor& grads, const Tensor& compute, const ParamChunks& chunks,
                    const AdamWCoeffs& coeffs, double clip_scale, Stream stream);

// FusedAdamWStep without clipping, refresh or zeroing: values (table_numel) f32 updated; exp_avg,
// exp_avg_sq (end - begin) f32 or bf16 (one dtype) updated; grads (table_numel) f32 read only.
void AdamWStep(const Tensor& values, const Tensor& exp_avg, const Tensor& exp_avg_sq, const Tensor& grads,
               const ParamChunks& chunks, const AdamWCoeffs& coeffs, Stream stream);

// out (1) f64 (device, overwritten) = sum of g^2 over the chunks' elements of grads (table_numel) f32.
void GradNormSquared(const Tensor& out, const Tensor& grads, const ParamChunks& chunks, Stream stream);

// grads (table_numel) f32: every element of the chunks multiplied by float(scale) (clipping: the caller
// computes scale = min(1, max_norm / (total_norm + 1e-6)) as ClipGradients does and skips scale == 1).
void ScaleGrads(const Tensor& grads, const ParamChunks& chunks, double scale, Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_ADAMW_H_
