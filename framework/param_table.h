// ParamTable: every parameter of a model (or of one rank's slice of it) in one flat buffer, and every
// gradient in a second buffer with the same layout, so that ZeRO sharding, the global grad norm and
// checkpoint slicing are offset arithmetic over one table.
//
// Life cycle: layers Add() specs while the model is built, then Finalize(dtype) allocates values and grads
// (both zeroed); value(id)/grad(id) are views valid for the table's lifetime. Not thread safe.
//
// Mixed precision (train.dtype bf16): the values stay the f32 master weights and the grads stay f32; a
// compute copy - a bf16 mirror of the whole values buffer, same layout - is what the GEMMs read
// (compute_value). SetComputeDType(kBF16) allocates it on the table's device and fills it;
// RefreshComputeValues() rounds the masters into it again (round to nearest even), once after every
// optimizer update. Without a compute copy, compute_value(id) is value(id).
#ifndef FATHOM_FRAMEWORK_PARAM_TABLE_H_
#define FATHOM_FRAMEWORK_PARAM_TABLE_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "framework/fp8_operands.h"
#include "framework/tensor.h"

namespace fathom {

// How a parameter is replicated across data-parallel ranks (DESIGN.md, "The mesh").
enum class ParamGroup : uint8_t {
  kReplicated,  // attention, dense MLP, norms, embedding, head: replicated over dp
  kExpert,      // routed experts: sharded over ep, replicated over edp
};

enum class ParamInit : uint8_t { kNormal, kOnes, kZeros };

// Which precision a weight's GEMMs may use. kFp8: under train.precision fp8 the forward, dgrad and wgrad
// GEMMs run in e4m3 with block scaling (the DeepSeek-V3 report's Linear GEMMs of attention, the dense MLPs
// and the shared and routed experts); kCompute: always the compute dtype (embedding, output head, router,
// MTP projection, norms, biases).
enum class GemmPrecision : uint8_t { kCompute, kFp8 };

struct ParamSpec {
  // HF tensor name. A stacked routed-expert tensor of shape (E_local, ...) holds experts
  // [expert_begin, expert_begin + E_local) and its name contains "{e}", the global expert id.
  std::string name;
  Shape shape;
  ParamGroup group = ParamGroup::kReplicated;
  ParamInit init = ParamInit::kNormal;
  bool trainable = true;     // false: a buffer updated by a rule, not by the optimizer (expert bias)
  bool weight_decay = true;  // false for norms and the expert bias
  int layer = -1;            // HF decoder-layer index (MTP modules continue after the main layers)
  int expert_begin = 0;
  GemmPrecision gemm = GemmPrecision::kCompute;  // kFp8: a (N, K) weight or an (E, N, K) expert stack
  int64_t offset = 0;                            // element offset into the flat buffers; set by Finalize
};

class ParamTable {
 public:
  ParamTable() = default;
  ParamTable(const ParamTable&) = delete;
  ParamTable& operator=(const ParamTable&) = delete;

  // REQUIRES: not finalized; `spec.name` unique.
  int Add(ParamSpec spec);
  // Allocates values and grads in `dtype` (f32 or f64), each tensor aligned to 16 elements; all
  // kReplicated tensors come first (in registration order), then all kExpert tensors.
  void Finalize(DType dtype);
  bool finalized() const { return values_.defined(); }
  // Moves values, grads and the compute copy to `device` (CUDA: from the current device pool, see
  // framework/cuda/ device_pool.h). Views taken earlier keep pointing at the old buffers: take them after the
  // move.
  void MoveTo(Device device);
  Device device() const { return values_.device(); }

  int size() const { return static_cast<int>(specs_.size()); }
  const ParamSpec& spec(int id) const { return specs_.at(static_cast<size_t>(id)); }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  int Find(std::string_view name) const;  // -1 when absent

  Tensor value(int id) const;
  // The gradient's view. The table then no longer counts it as known to be zero (see GradForWrite).
  Tensor grad(int id) const;
  // Known-zero gradients: after Finalize and after every ZeroGrads() each gradient is known to hold zeros
  // until it is handed out. GradForWrite returns grad(id) and sets *known_zero to whether it still was, so
  // a gradient's writer can overwrite (=) instead of adding into zeros (+=): the same values (0 + v = v)
  // without reading the zeros. The MoE's routed-expert wgrad does so on the first weight-gradient pass of a
  // step (layers/moe.cc). grad() and grads() forget the knowledge for what they hand out, since their
  // callers may write. REQUIRES: nothing writes a gradient through a view taken before the last
  // ZeroGrads() without taking it again.
  Tensor GradForWrite(int id, bool* known_zero);
  // The weight the forward and backward GEMMs read: the compute copy's view when there is one, else
  // value(id). REQUIRES !fp8(id) (checked): an FP8 weight's GEMMs read fp8_weight(id), and its part of the
  // compute copy is not kept up to date (the GPU optimizer's refresh skips it).
  Tensor compute_value(int id) const;
  // kBF16: allocate (on the table's device) and fill the compute copy; the table's own dtype: drop it.
  // REQUIRES: finalized, f32 table for kBF16.
  void SetComputeDType(DType dtype);
  DType compute_dtype() const { return compute_.defined() ? compute_.dtype() : dtype(); }
  // compute copy <- values (no-op without a compute copy, and once after MarkComputeValuesRefreshed), and
  // the FP8 weights <- values when enabled (always).
  void RefreshComputeValues();

  // Allocates (on the table's device; CUDA: the current pool) and fills the FP8 copy of every kFp8
  // parameter. REQUIRES: finalized. Idempotent. MoveTo moves the copies along.
  void EnableFp8Weights();
  bool fp8_enabled() const { return fp8_enabled_; }
  // Whether parameter `id`'s GEMMs run in FP8 now: fp8_enabled() and registered kFp8.
  bool fp8(int id) const { return fp8_enabled_ && spec(id).gemm == GemmPrecision::kFp8; }
  // The FP8 copy of parameter `id`. REQUIRES: fp8(id) (checked).
  const Fp8Weight& fp8_weight(int id) const;
  // Bytes EnableFp8Weights allocates: Fp8Weight::Bytes of every kFp8 parameter.
  int64_t Fp8WeightBytes() const;
  Tensor values() const { return values_; }  // flat (numel())
  Tensor grads() const;                      // flat (numel()); forgets every known-zero gradient
  // The flat compute copy (numel()) in compute_dtype(), or an undefined tensor when there is none.
  Tensor compute_values() const { return compute_; }
  int64_t numel() const { return numel_; }
  DType dtype() const { return values_.dtype(); }
  // grads <- 0 on the table's device; every gradient is then known to be zero. The memory is zeroed lazily, per gradient: by grad(id) when it hands the gradient out (its
  // writer adds), never for one that GradForWrite hands to a writer that overwrites, and by grads() for
  // every gradient no writer took. So whatever reads gradients through grad() or grads() reads zeros;
  // recipes/small.yaml's routed-expert gradients (7.75 GB of f32) are never written with zeros.
  void ZeroGrads();

  // For a fused optimizer (parallel/zero.h on the GPU) whose update pass already rounded every trainable
  // value into the compute copy: the next RefreshComputeValues() skips its pass over memory. The
  // optimizer's documented call order keeps this sound: Step -> GatherParameters -> RefreshComputeValues;
  // values must not be changed between the mark and the call it cancels. Non-trainable values (the expert
  // bias) are read through value(), never through the compute copy.
  void MarkComputeValuesRefreshed() { compute_fresh_ = compute_.defined(); }
  // The element range [first, second) of the flat buffers holding `group`'s tensors.
  std::pair<int64_t, int64_t> GroupRange(ParamGroup group) const {
    return {group_begin_[static_cast<int>(group)], group_end_[static_cast<int>(group)]};
  }

 private:
  Tensor View(const Tensor& flat, int id) const;
  void QuantizeFp8Weights();  // every FP8 copy <- its master values

  std::vector<ParamSpec> specs_;
  std::unordered_map<std::string, int> by_name_;
  Tensor values_, grads_;
  Tensor compute_;                                   // bf16 mirror of values_, or undefined
  bool compute_fresh_ = false;  // see MarkComputeValuesRefreshed
  // Per parameter: its gradient holds zeros and has not been handed out since (GradForWrite). Mutable:
  // the const accessors grad() and grads() clear it.
  mutable std::vector<char> grad_known_zero_;
  // Per parameter: ZeroGrads() is owed to its memory, which still holds older values (a subset of the
  // known-zero ones). grad() pays it for one parameter, grads() for all, GradForWrite cancels it.
  mutable std::vector<char> grad_pending_zero_;
  void ZeroPendingGrads() const;
  bool fp8_enabled_ = false;
  std::map<int, Fp8Weight> fp8_;  // by parameter id, the kFp8 ones when enabled
  int64_t numel_ = 0;
  int64_t group_begin_[2] = {0, 0}, group_end_[2] = {0, 0};
};

}  // namespace fathom

#endif  // FATHOM_FRAMEWORK_PARAM_TABLE_H_
