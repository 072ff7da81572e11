#include "optim/expert_bias.h"

#include <algorithm>

#include "framework/kernels/cpu/moe.h"

namespace fathom {
namespace {

double MeanLoad(const std::vector<int64_t>& load) {
  double sum = 0.0;
  for (int64_t l : load) sum += static_cast<double>(l);
  return sum / static_cast<double>(load.size());
}

}  // namespace

void UpdateExpertBias(const Tensor& bias, const std::vector<int64_t>& load, double gamma) {
  FATHOM_CHECK(bias.ndim() == 1 && bias.dim(0) == static_cast<int64_t>(load.size()) && !load.empty(),
               "[expert_bias] bias ", bias.shape_str(), " with ", load.size(), " expert loads");
  const Tensor loads = Tensor::Empty({static_cast<int64_t>(load.size())}, DType::kI64);
  std::copy(load.begin(), load.end(), loads.data<int64_t>());
  cpu::ExpertBiasUpdate(bias, loads, gamma);  // the one definition of the rule, shared with the GPU's twin
}

void AccumulateExpertLoad(const Tensor& topk_idx, int64_t n_experts, std::vector<int64_t>& load) {
  FATHOM_CHECK(n_experts > 0, "[expert_load] n_experts ", n_experts);
  if (load.empty()) load.assign(static_cast<size_t>(n_experts), 0);
  FATHOM_CHECK(static_cast<int64_t>(load.size()) == n_experts, "[expert_load] load has ", load.size(),
               " entries for ", n_experts, " experts");
  auto count = [&](const auto* idx) {
    for (int64_t i = 0; i < topk_idx.numel(); ++i) {
      int64_t e = static_cast<int64_t>(idx[i]);
      FATHOM_CHECK(0 <= e && e < n_experts, "[expert_load] expert id ", e, " outside [0, ", n_experts, ")");
      ++load[static_cast<size_t>(e)];
    }
  };
  if (topk_idx.dtype() == DType::kI64) {
    count(topk_idx.data<int64_t>());
  } else {
    FATHOM_CHECK(topk_idx.dtype() == DType::kI32, "[expert_load] topk_idx must be i32 or i64, got ",
                 DTypeName(topk_idx.dtype()));
    count(topk_idx.data<int32_t>());
  }
}

ExpertLoadStats ComputeExpertLoadStats(const std::vector<int64_t>& load) {
  FATHOM_CHECK(!load.empty(), "[expert_load] no experts");
  const double mean = MeanLoad(load);
  if (mean == 0.0) return {0.0, 0.0};
  auto [lo, hi] = std::minmax_element(load.begin(), load.end());
  return {static_cast<double>(*hi) / mean, static_cast<double>(*lo) / mean};
}

}  // namespace fathom
