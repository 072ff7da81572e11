// AdamW with decoupled weight decay over a ParamTable, or over the element range [begin, end) of its flat
// buffers (ZeRO-1 later passes one rank's shard; the optimizer itself knows nothing about ranks).
//
// Per element of a trainable parameter inside the range, at step t (t = step() after the increment, so the
// first Step uses t = 1):
//   p <- p * (1 - lr * weight_decay)           only for specs with weight_decay = true
//   m <- beta1 * m + (1 - beta1) * g
//   v <- beta2 * v + (1 - beta2) * g * g
//   p <- p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// which is torch.optim.AdamW's update (eps added after the bias correction of v).
//
// Precision: master weights are the table's values (f32 or f64); gradients are read from the table's grads
// (not modified, not zeroed). The arithmetic runs in the table's dtype T (float or double); the scalar
// coefficients (bias corrections, 1 - beta, lr * wd) are computed in double and cast to T once per step.
// Moments are stored in OptimConfig::moment_dtype:
//   "f32":  stored as float (for an f64 table the updated double moment is rounded to float).
//   "bf16": stored as fathom::Bf16. Each step loads the moment, widens it to T, updates it in T, uses this
//           unrounded value for this step's parameter update, then stores FloatToBf16(float(m)) (round to
//           nearest even; for an f64 table the double is first rounded to float).
// Moment element i belongs to flat element begin + i; elements of padding between parameters (ParamTable
// aligns every tensor to 16 elements) and of non-trainable parameters keep zero moments and are never
// touched in the values. Specs with trainable = false are skipped entirely, whatever their grads hold.
//
// Thread safety: none. The table must outlive the optimizer.
#ifndef FATHOM_OPTIM_ADAMW_H_
#define FATHOM_OPTIM_ADAMW_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "framework/config.h"
#include "framework/param_table.h"
#include "framework/tensor.h"

namespace fathom {

class AdamW {
 public:
  // REQUIRES: table finalized; 0 <= begin <= end <= table.numel() (end = -1 means table.numel());
  // cfg.moment_dtype is "f32" or "bf16" (OptimConfig::Validate has run). Moments start at zero, step() = 0.
  AdamW(ParamTable& table, const OptimConfig& cfg, int64_t begin = 0, int64_t end = -1);
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // One update of every trainable element in [begin, end) with learning rate `lr` (from LearningRate()).
  void Step(double lr);

  int64_t step() const { return step_; }
  // Restores the step count from a checkpoint (bias corrections depend on it). REQUIRES: step >= 0.
  void set_step(int64_t step);

  int64_t begin() const { return begin_; }
  int64_t end() const { return end_; }
  DType moment_dtype() const { return exp_avg_.dtype(); }
  // Bytes of optimizer state held: both moments, (end - begin) elements each.
  size_t state_bytes() const { return exp_avg_.nbytes() + exp_avg_sq_.nbytes(); }

  // The moments, (end - begin) f32 or bf16; views of the optimizer's storage, so a checkpoint reader can
  // CopyFrom into them. Element i is flat element begin + i.
  Tensor exp_avg() const { return exp_avg_; }
  Tensor exp_avg_sq() const { return exp_avg_sq_; }

 private:
  // A run of contiguous elements [begin, end) (flat indices) of one trainable parameter, clipped to the
  // optimizer's range.
  struct Segment {
    int64_t begin, end;
    bool weight_decay;
  };

  ParamTable* table_;
  double beta1_, beta2_, eps_, weight_decay_;
  int64_t begin_, end_;
  std::vector<Segment> segments_;
  Tensor exp_avg_, exp_avg_sq_;  // (end - begin) f32 or bf16
  int64_t step_ = 0;
};

}  // namespace fathom

#endif  // FATHOM_OPTIM_ADAMW_H_
