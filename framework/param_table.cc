#include "framework/param_table.h"

#include <algorithm>

#include "framework/ops.h"

namespace fathom {

int ParamTable::Add(ParamSpec spec) {
  FATHOM_CHECK(!finalized(), "ParamTable::Add(", spec.name, ") after Finalize");
  FATHOM_CHECK(!by_name_.count(spec.name), "duplicate parameter ", spec.name);
  int id = size();
  by_name_[spec.name] = id;
  specs_.push_back(std::move(spec));
  return id;
}

void ParamTable::Finalize(DType dtype) {
  FATHOM_CHECK(!finalized(), "ParamTable finalized twice");
  FATHOM_CHECK(IsFloatingCompute(dtype), "ParamTable dtype must be f32 or f64, got ", DTypeName(dtype));
  // Replicated parameters first, then routed experts: each group is one contiguous range, so ZeRO can
  // reduce-scatter each over its own data-parallel group.
  int64_t off = 0;
  for (ParamGroup g : {ParamGroup::kReplicated, ParamGroup::kExpert}) {
    group_begin_[static_cast<int>(g)] = off;
    for (ParamSpec& s : specs_) {
      if (s.group != g) continue;
      s.offset = off;
      off += (NumElements(s.shape) + 15) / 16 * 16;
    }
    group_end_[static_cast<int>(g)] = off;
  }
  numel_ = off;
  values_ = Tensor::Zeros({numel_}, dtype);
  grads_ = Tensor::Zeros({numel_}, dtype);
  grad_known_zero_.assign(specs_.size(), 1);
  grad_pending_zero_.assign(specs_.size(), 0);
}

int ParamTable::Find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? -1 : it->second;
}

Tensor ParamTable::View(const Tensor& flat, int id) const {
  FATHOM_CHECK(finalized(), "ParamTable used before Finalize");
  const ParamSpec& s = spec(id);
  char* base = static_cast<char*>(flat.raw()) + static_cast<size_t>(s.offset) * DTypeSize(flat.dtype());
  return Tensor::Wrap(base, s.shape, flat.dtype(), flat.device(), nullptr);
}

Tensor ParamTable::value(int id) const { return View(values_, id); }
Tensor ParamTable::grad(int id) const {
  Tensor g = View(grads_, id);
  if (grad_pending_zero_[static_cast<size_t>(id)]) {
    ops::Zero(g);
    grad_pending_zero_[static_cast<size_t>(id)] = 0;
  }
  grad_known_zero_[static_cast<size_t>(id)] = 0;
  return g;
}

Tensor ParamTable::GradForWrite(int id, bool* known_zero) {
  Tensor g = View(grads_, id);
  *known_zero = grad_known_zero_[static_cast<size_t>(id)] != 0;
  grad_known_zero_[static_cast<size_t>(id)] = 0;
  grad_pending_zero_[static_cast<size_t>(id)] = 0;  // the writer overwrites: the zeros are never needed
  return g;
}

void ParamTable::ZeroPendingGrads() const {
  const size_t pending = static_cast<size_t>(
      std::count(grad_pending_zero_.begin(), grad_pending_zero_.end(), static_cast<char>(1)));
  if (pending == grad_pending_zero_.size() && pending > 0) {
    ops::Zero(grads_);  // the whole buffer (padding included) in one pass
  } else if (pending > 0) {
    for (int id = 0; id < size(); ++id)
      if (grad_pending_zero_[static_cast<size_t>(id)]) ops::Zero(View(grads_, id));
  }
  std::fill(grad_pending_zero_.begin(), grad_pending_zero_.end(), 0);
}

Tensor ParamTable::grads() const {
  ZeroPendingGrads();
  std::fill(grad_known_zero_.begin(), grad_known_zero_.end(), 0);
  return grads_;
}
Tensor ParamTable::compute_value(int id) const {
  FATHOM_CHECK(!fp8(id), "[param_table] ", spec(id).name,
               " runs its GEMMs in FP8: read fp8_weight(id); no compute copy of it is kept");
  return View(compute_.defined() ? compute_ : values_, id);
}

void ParamTable::SetComputeDType(DType dtype) {
  FATHOM_CHECK(finalized(), "ParamTable::SetComputeDType before Finalize");
  compute_fresh_ = false;
  if (dtype == values_.dtype()) {
    compute_ = Tensor();
    return;
  }
  FATHOM_CHECK(dtype == DType::kBF16 && values_.dtype() == DType::kF32,
               "ParamTable compute copy: bf16 copies of an f32 table only, asked for ", DTypeName(dtype),
               " copies of ", DTypeName(values_.dtype()));
  compute_ = Tensor::Empty({numel_}, dtype, values_.device());
  RefreshComputeValues();
}

void ParamTable::RefreshComputeValues() {
  QuantizeFp8Weights();  // the fused optimizer's pass makes the bf16 copy, never these
  if (compute_fresh_) {
    compute_fresh_ = false;
    return;
  }
  if (compute_.defined()) ops::Convert(compute_, values_);
}

void ParamTable::EnableFp8Weights() {
  FATHOM_CHECK(finalized(), "ParamTable::EnableFp8Weights before Finalize");
  if (fp8_enabled_) return;
  for (int id = 0; id < size(); ++id) {
    const ParamSpec& s = spec(id);
    if (s.gemm != GemmPrecision::kFp8) continue;
    FATHOM_CHECK(s.shape.size() == 2 || s.shape.size() == 3, "[param_table] FP8 weight ", s.name, " ",
                 ShapeString(s.shape), ": expected (N, K) or an expert stack (E, N, K)");
    fp8_.emplace(id, Fp8Weight::Empty(s.shape, values_.device()));
  }
  fp8_enabled_ = true;
  QuantizeFp8Weights();
}

const Fp8Weight& ParamTable::fp8_weight(int id) const {
  auto it = fp8_.find(id);
  FATHOM_CHECK(fp8_enabled_ && it != fp8_.end(), "[param_table] ", spec(id).name,
               " has no FP8 copy: FP8 weights are ", fp8_enabled_ ? "enabled" : "not enabled",
               ", the parameter is registered ",
               spec(id).gemm == GemmPrecision::kFp8 ? "for FP8" : "for the compute dtype");
  return it->second;
}

int64_t ParamTable::Fp8WeightBytes() const {
  int64_t bytes = 0;
  for (const ParamSpec& s : specs_)
    if (s.gemm == GemmPrecision::kFp8) bytes += Fp8Weight::Bytes(s.shape);
  return bytes;
}

void ParamTable::QuantizeFp8Weights() {
  // f32 masters quantise directly; f64 ones (CPU reference runs) are rounded to f32 by the quantiser.
  for (const auto& [id, q] : fp8_) ops::QuantizeWeight128x128(q, value(id));
}

void ParamTable::ZeroGrads() {
  std::fill(grad_known_zero_.begin(), grad_known_zero_.end(), 1);
  // Lazily: each gradient is zeroed when it is handed out for accumulation (grad()), never when its writer
  // overwrites it (GradForWrite), and whatever no writer took is zeroed by the next grads().
  std::fill(grad_pending_zero_.begin(), grad_pending_zero_.end(), 1);
}

void ParamTable::MoveTo(Device device) {
  FATHOM_CHECK(finalized(), "ParamTable::MoveTo before Finalize");
  if (values_.device() == device) return;
  ZeroPendingGrads();
  compute_fresh_ = false;
  std::fill(grad_known_zero_.begin(), grad_known_zero_.end(), 0);  // known again after the next ZeroGrads
  values_ = ops::To(values_, device);
  grads_ = ops::To(grads_, device);
  if (compute_.defined()) compute_ = ops::To(compute_, device);
  for (auto& [id, q] : fp8_) {
    for (Tensor* t : {&q.w.codes, &q.w.scales, &q.wt.codes, &q.wt.scales}) *t = ops::To(*t, device);
  }
}

}  // namespace fathom
