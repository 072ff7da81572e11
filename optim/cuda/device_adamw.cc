#include "optim/cuda/device_adamw.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "framework/cuda/check.h"

namespace fathom {
namespace {

DType MomentDType(const OptimConfig& cfg) { return cfg.moment_dtype == "bf16" ? DType::kBF16 : DType::kF32; }

// DeviceArena hands out 256-byte aligned blocks: every allocation may waste up to that much.
constexpr size_t kAlign = 256;

// Bytes of one work list over `elements` flat elements of `table`, with its norm scratch: at most one chunk
// per kParamChunkElements of the range plus one partial chunk per parameter (16 B each).
size_t ChunkListBytes(const ParamTable& table, int64_t elements) {
  const size_t chunks =
      static_cast<size_t>(elements / cuda::kParamChunkElements) + static_cast<size_t>(table.size()) + 1;
  return chunks * 2 * sizeof(int64_t) + kAlign + cuda::ParamChunks::kNormBlocks * sizeof(double) + kAlign;
}

std::vector<std::pair<int64_t, int64_t>> Intersections(const std::vector<std::pair<int64_t, int64_t>>& ranges,
                                                       int64_t begin, int64_t end) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (auto [b, e] : ranges) {
    const int64_t lo = std::max(b, begin), hi = std::min(e, end);
    if (hi > lo) out.push_back({lo, hi});
  }
  return out;
}

size_t ArenaBytes(const ParamTable& table, const OptimConfig& cfg, int64_t begin, int64_t end,
                  const std::vector<std::pair<int64_t, int64_t>>& excluded) {
  size_t bytes = ChunkListBytes(table, end - begin);
  if (table.fp8_enabled()) bytes += 2 * ChunkListBytes(table, end - begin);  // the split for the refresh
  for (auto [b, e] : excluded) bytes += ChunkListBytes(table, e - b);
  bytes += 2 * (static_cast<size_t>(end - begin) * DTypeSize(MomentDType(cfg)) + kAlign);
  return bytes + kAlign;
}

int64_t ResolveEnd(const ParamTable& table, int64_t end) { return end < 0 ? table.numel() : end; }

}  // namespace

DeviceAdamW::DeviceAdamW(ParamTable& table, const OptimConfig& cfg, int64_t begin, int64_t end,
                         const std::vector<std::pair<int64_t, int64_t>>& exclude_from_norm)
    : table_(table),
      cfg_(cfg),
      begin_(begin),
      end_(ResolveEnd(table, end)),
      arena_("adamw [" + std::to_string(begin) + ", " + std::to_string(ResolveEnd(table, end)) + ")",
             ArenaBytes(table, cfg, begin, ResolveEnd(table, end),
                        Intersections(exclude_from_norm, begin, ResolveEnd(table, end)))) {
  FATHOM_CHECK(table.finalized() && table.device() == Device::kCUDA && table.dtype() == DType::kF32,
               "[device_adamw] needs a finalized f32 table on the GPU, got ", DTypeName(table.dtype()),
               " on ", DeviceName(table.device()));
  FATHOM_CHECK(0 <= begin_ && begin_ <= end_ && end_ <= table.numel(), "[device_adamw] range [", begin_, ", ",
               end_, ") outside the table's ", table.numel(), " elements");
  FATHOM_CHECK(cfg.moment_dtype == "f32" || cfg.moment_dtype == "bf16", "[device_adamw] moment_dtype '",
               cfg.moment_dtype, "' (expected f32 or bf16; OptimConfig::Validate should have caught it)");
  chunks_ = std::make_unique<cuda::ParamChunks>(table, arena_, begin_, end_);
  if (table.fp8_enabled()) {
    using Fp8 = cuda::ParamChunks::Fp8Weights;
    copied_chunks_ = std::make_unique<cuda::ParamChunks>(table, arena_, begin_, end_, Fp8::kExclude);
    fp8_chunks_ = std::make_unique<cuda::ParamChunks>(table, arena_, begin_, end_, Fp8::kOnly);
  }
  for (auto [b, e] : Intersections(exclude_from_norm, begin_, end_))
    excluded_.push_back(std::make_unique<cuda::ParamChunks>(table, arena_, b, e));
  exp_avg_ = arena_.Zeros({end_ - begin_}, MomentDType(cfg), nullptr);
  exp_avg_sq_ = arena_.Zeros({end_ - begin_}, MomentDType(cfg), nullptr);
  // Cleared on the legacy default stream, which does not order non-blocking streams: wait here (start-up),
  // so the moments are zero whichever stream the first Step runs on.
  FATHOM_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

DeviceAdamW::~DeviceAdamW() = default;

void DeviceAdamW::QueueGradNormTerms(const Tensor& out, cuda::Stream stream) const {
  FATHOM_CHECK(out.device() == Device::kCUDA && out.dtype() == DType::kF64 && out.ndim() == 1 &&
                   out.numel() == norm_terms(),
               "[device_adamw] norm terms ", out.shape_str(), " ", DTypeName(out.dtype()), " on ",
               DeviceName(out.device()), ", expected (", norm_terms(), ") f64 on cuda");
  cuda::GradNormSquared(out.Rows(0, 1), table_.grads(), *chunks_, stream);
  for (size_t j = 0; j < excluded_.size(); ++j) {
    const int64_t k = static_cast<int64_t>(j) + 1;
    cuda::GradNormSquared(out.Rows(k, k + 1), table_.grads(), *excluded_[j], stream);
  }
}

void DeviceAdamW::ScaleGrads(double scale, cuda::Stream stream) {
  cuda::ScaleGrads(table_.grads(), *chunks_, scale, stream);
}

void DeviceAdamW::Step(double lr, cuda::Stream stream) {
  ++step_;
  cuda::AdamWStep(table_.values(), exp_avg_, exp_avg_sq_, table_.grads(), *chunks_,
                  cuda::MakeAdamWCoeffs(cfg_, lr, step_), stream);
}

void DeviceAdamW::FusedStep(double lr, double clip_scale, bool refresh_compute, cuda::Stream stream) {
  const Tensor compute = refresh_compute ? table_.compute_values() : Tensor();
  FATHOM_CHECK(!refresh_compute || compute.defined(),
               "[device_adamw] refresh_compute asked for, but the table has no compute copy");
  ++step_;
  const cuda::AdamWCoeffs coeffs = cuda::MakeAdamWCoeffs(cfg_, lr, step_);
  const Tensor values = table_.values(), grads = table_.grads();
  if (!refresh_compute || !copied_chunks_) {
    cuda::FusedAdamWStep(values, exp_avg_, exp_avg_sq_, grads, compute, *chunks_, coeffs, clip_scale, stream);
    return;
  }
  // The same elements in two launches: the compute copy refreshed only where the table keeps one.
  cuda::FusedAdamWStep(values, exp_avg_, exp_avg_sq_, grads, compute, *copied_chunks_, coeffs, clip_scale, stream);
  cuda::FusedAdamWStep(values, exp_avg_, exp_avg_sq_, grads, Tensor(), *fp8_chunks_, coeffs, clip_scale, stream);
}

void DeviceAdamW::set_step(int64_t step) {
  FATHOM_CHECK(step >= 0, "[device_adamw] negative step ", step);
  step_ = step;
}

}  // namespace fathom
