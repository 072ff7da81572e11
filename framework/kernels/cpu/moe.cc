#include "framework/kernels/cpu/moe.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "framework/kernels/cpu/gemm.h"

namespace fathom::cpu {
namespace {

void CheckIndex(const char* op, const Tensor& t, int64_t rows, int64_t cols) {
  FATHOM_CHECK(t.dtype() == DType::kI64 && t.ndim() == 2 && t.dim(0) == rows && t.dim(1) == cols, "[", op,
               "] index tensor ", t.shape_str(), " ", DTypeName(t.dtype()), ", expected i64 (", rows, ", ",
               cols, ")");
}

void CheckFloat(const char* op, const Tensor& t, DType dtype, const Shape& shape) {
  FATHOM_CHECK(t.dtype() == dtype && t.shape() == shape, "[", op, "] tensor ", t.shape_str(), " ",
               DTypeName(t.dtype()), ", expected ", ShapeString(shape), " ", DTypeName(dtype));
}

void CheckRouterDims(const char* op, const RouterDims& d) {
  FATHOM_CHECK(d.n_group >= 1 && d.num_experts % d.n_group == 0 && d.num_experts / d.n_group >= 2 &&
                   d.topk_group >= 1 && d.topk_group <= d.n_group && d.top_k >= 1 &&
                   d.top_k <= d.topk_group * (d.num_experts / d.n_group),
               "[", op, "] E ", d.num_experts, " K ", d.top_k, " n_group ", d.n_group, " topk_group ",
               d.topk_group);
}

// slot_row[slot] = the permuted row holding that slot (inverse of row_slot), with range checks.
// slot_row[s] = the row holding slot s, for `slots` slots; row_slot (P >= slots) holds each slot exactly
// once and -1 in the other (pad) rows.
std::vector<int64_t> InvertRowSlot(const char* op, const Tensor& row_slot, int64_t slots) {
  FATHOM_CHECK(row_slot.dtype() == DType::kI64 && row_slot.ndim() == 1 && row_slot.dim(0) >= slots, "[", op,
               "] row_slot ", row_slot.shape_str(), " ", DTypeName(row_slot.dtype()), " for ", slots,
               " slots");
  const int64_t p = row_slot.dim(0);
  const int64_t* rs = row_slot.data<int64_t>();
  std::vector<int64_t> slot_row(static_cast<size_t>(slots), -1);
  int64_t seen = 0;
  for (int64_t i = 0; i < p; ++i) {
    if (rs[i] == -1 && p > slots) continue;
    FATHOM_CHECK(rs[i] >= 0 && rs[i] < slots && slot_row[rs[i]] == -1, "[", op,
                 "] row_slot is not a permutation of the slots (and -1 pad rows)");
    slot_row[rs[i]] = i;
    ++seen;
  }
  FATHOM_CHECK(seen == slots, "[", op, "] row_slot holds ", seen, " of the ", slots, " slots");
  return slot_row;
}

}  // namespace

void RouterSelect(const Tensor& topk_index, const Tensor& topk_weight, const Tensor& scores,
                  const Tensor& bias, const RouterDims& d) {
  CheckRouterDims("router_select", d);
  const int64_t n = scores.dim(0), e = d.num_experts, k = d.top_k;
  CheckFloat("router_select", scores, scores.dtype(), {n, e});
  CheckFloat("router_select", bias, scores.dtype(), {e});
  CheckFloat("router_select", topk_weight, scores.dtype(), {n, k});
  CheckIndex("router_select", topk_index, n, k);
  const int64_t group_size = e / d.n_group;
  DispatchFloat(scores.dtype(), "router_select", [&](auto tag) {
    using T = decltype(tag);
    const T* sp = scores.data<T>();
    const T* bp = bias.data<T>();
    T* wp = topk_weight.data<T>();
    int64_t* ip = topk_index.data<int64_t>();
    std::vector<T> choice(static_cast<size_t>(e)), group_score(static_cast<size_t>(d.n_group));
    std::vector<int64_t> groups(static_cast<size_t>(d.n_group)), experts;
    // A strict weak order: higher value first, then lower index (the deterministic tie rule).
    auto by_value = [](const std::vector<T>& v) {
      return [&v](int64_t a, int64_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); };
    };
    for (int64_t t = 0; t < n; ++t) {
      const T* s = sp + t * e;
      for (int64_t i = 0; i < e; ++i) choice[i] = s[i] + bp[i];
      for (int64_t g = 0; g < d.n_group; ++g) {
        T first = -std::numeric_limits<T>::infinity(), second = first;
        for (int64_t i = g * group_size; i < (g + 1) * group_size; ++i) {
          if (choice[i] > first) {
            second = first;
            first = choice[i];
          } else if (choice[i] > second) {
            second = choice[i];
          }
        }
        group_score[g] = first + second;
        groups[g] = g;
      }
      std::partial_sort(groups.begin(), groups.begin() + d.topk_group, groups.end(), by_value(group_score));
      experts.clear();
      for (int64_t gi = 0; gi < d.topk_group; ++gi)
        for (int64_t i = groups[gi] * group_size; i < (groups[gi] + 1) * group_size; ++i)
          experts.push_back(i);
      std::partial_sort(experts.begin(), experts.begin() + k, experts.end(), by_value(choice));
      T sum = 0;
      for (int64_t j = 0; j < k; ++j) {
        ip[t * k + j] = experts[j];
        wp[t * k + j] = s[experts[j]];
        sum += s[experts[j]];
      }
      const T denom = d.norm_topk_prob ? sum + static_cast<T>(1e-20) : T(1);
      for (int64_t j = 0; j < k; ++j)
        wp[t * k + j] = wp[t * k + j] / denom * static_cast<T>(d.routed_scaling_factor);
    }
  });
}

// With w_j = c s_j / D and D = sum_k s_k + 1e-20: dL/ds_j = c (dw_j / D - sum_k dw_k s_k / D^2).
double RouterSelectionMargin(const Tensor& scores, const Tensor& bias, const RouterDims& d) {
  const int64_t n = scores.dim(0), e = d.num_experts, group_size = e / d.n_group;
  double margin = std::numeric_limits<double>::infinity();
  for (int64_t t = 0; t < n; ++t) {
    std::vector<double> choice(static_cast<size_t>(e)), group(static_cast<size_t>(d.n_group));
    for (int64_t i = 0; i < e; ++i) choice[i] = scores.Item(t * e + i) + bias.Item(i);
    for (int64_t g = 0; g < d.n_group; ++g) {
      std::vector<double> members(choice.begin() + g * group_size, choice.begin() + (g + 1) * group_size);
      std::sort(members.rbegin(), members.rend());
      group[g] = members[0] + (members.size() > 1 ? members[1] : 0.0);
    }
    std::vector<double> sorted_groups = group;
    std::sort(sorted_groups.rbegin(), sorted_groups.rend());
    if (d.topk_group < d.n_group)
      margin = std::min(margin, sorted_groups[d.topk_group - 1] - sorted_groups[d.topk_group]);
    const double cut = sorted_groups[d.topk_group - 1];
    std::vector<double> kept;
    for (int64_t g = 0; g < d.n_group; ++g)
      if (group[g] >= cut)
        kept.insert(kept.end(), choice.begin() + g * group_size, choice.begin() + (g + 1) * group_size);
    std::sort(kept.rbegin(), kept.rend());
    if (static_cast<int64_t>(kept.size()) > d.top_k)
      margin = std::min(margin, kept[d.top_k - 1] - kept[d.top_k]);
  }
  return margin;
}

void RouterSelectBackward(const Tensor& dscores, const Tensor& dweight, const Tensor& scores,
                          const Tensor& topk_index, const RouterDims& d) {
  const int64_t n = scores.dim(0), e = d.num_experts, k = d.top_k;
  CheckFloat("router_select_backward", scores, scores.dtype(), {n, e});
  CheckFloat("router_select_backward", dscores, scores.dtype(), {n, e});
  CheckFloat("router_select_backward", dweight, scores.dtype(), {n, k});
  CheckIndex("router_select_backward", topk_index, n, k);
  DispatchFloat(scores.dtype(), "router_select_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* sp = scores.data<T>();
    const T* gp = dweight.data<T>();
    const int64_t* ip = topk_index.data<int64_t>();
    T* dp = dscores.data<T>();
    const T c = static_cast<T>(d.routed_scaling_factor);
    for (int64_t t = 0; t < n; ++t) {
      const int64_t* idx = ip + t * k;
      const T* g = gp + t * k;
      if (!d.norm_topk_prob) {
        for (int64_t j = 0; j < k; ++j) dp[t * e + idx[j]] += c * g[j];
        continue;
      }
      T denom = 0, dot = 0;
      for (int64_t j = 0; j < k; ++j) {
        denom += sp[t * e + idx[j]];
        dot += g[j] * sp[t * e + idx[j]];
      }
      denom += static_cast<T>(1e-20);
      for (int64_t j = 0; j < k; ++j) dp[t * e + idx[j]] += c * (g[j] / denom - dot / (denom * denom));
    }
  });
}

namespace {

// f_i of one sequence: E / (K T) times the number of its tokens that chose expert i.
std::vector<double> BalanceFrequencies(const int64_t* idx, int64_t seq, int64_t e, int64_t k) {
  std::vector<double> f(static_cast<size_t>(e), 0.0);
  for (int64_t j = 0; j < seq * k; ++j) {
    FATHOM_CHECK(idx[j] >= 0 && idx[j] < e, "[sequence_balance_loss] expert id ", idx[j], " outside [0, ", e,
                 ")");
    f[idx[j]] += 1.0;
  }
  const double scale = static_cast<double>(e) / static_cast<double>(k * seq);
  for (double& v : f) v *= scale;
  return f;
}

}  // namespace

double SequenceBalanceLoss(const Tensor& scores, const Tensor& topk_index, int64_t batch, int64_t seq) {
  const int64_t e = scores.dim(1), k = topk_index.dim(1);
  CheckFloat("sequence_balance_loss", scores, scores.dtype(), {batch * seq, e});
  CheckIndex("sequence_balance_loss", topk_index, batch * seq, k);
  return DispatchFloat(scores.dtype(), "sequence_balance_loss", [&](auto tag) {
    using T = decltype(tag);
    const T* sp = scores.data<T>();
    double total = 0;
    for (int64_t b = 0; b < batch; ++b) {
      std::vector<double> f = BalanceFrequencies(topk_index.data<int64_t>() + b * seq * k, seq, e, k);
      double bal = 0;
      for (int64_t t = b * seq; t < (b + 1) * seq; ++t) {
        double sum = 0, dot = 0;
        for (int64_t i = 0; i < e; ++i) {
          sum += sp[t * e + i];
          dot += f[i] * sp[t * e + i];
        }
        bal += dot / sum;
      }
      total += bal / static_cast<double>(seq);
    }
    return total / static_cast<double>(batch);
  });
}

// With g_i = weight f_i / (B T) = dL/ds'_{i,t} and S_t = sum_j s_{j,t}:
// dL/ds_{j,t} = (g_j - g . s'_t) / S_t.
void SequenceBalanceLossBackward(const Tensor& dscores, const Tensor& scores, const Tensor& topk_index,
                                 int64_t batch, int64_t seq, double weight) {
  const int64_t e = scores.dim(1), k = topk_index.dim(1);
  CheckFloat("sequence_balance_loss_backward", scores, scores.dtype(), {batch * seq, e});
  CheckFloat("sequence_balance_loss_backward", dscores, scores.dtype(), {batch * seq, e});
  CheckIndex("sequence_balance_loss_backward", topk_index, batch * seq, k);
  DispatchFloat(scores.dtype(), "sequence_balance_loss_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* sp = scores.data<T>();
    T* dp = dscores.data<T>();
    for (int64_t b = 0; b < batch; ++b) {
      std::vector<double> g = BalanceFrequencies(topk_index.data<int64_t>() + b * seq * k, seq, e, k);
      for (double& v : g) v *= weight / static_cast<double>(batch * seq);
      for (int64_t t = b * seq; t < (b + 1) * seq; ++t) {
        double sum = 0, dot = 0;
        for (int64_t i = 0; i < e; ++i) {
          sum += sp[t * e + i];
          dot += g[i] * sp[t * e + i];
        }
        dot /= sum;
        for (int64_t i = 0; i < e; ++i) dp[t * e + i] += static_cast<T>((g[i] - dot) / sum);
      }
    }
  });
}

void MoeSortByExpert(const Tensor& row_slot, const Tensor& counts, const Tensor& topk_index) {
  FATHOM_CHECK(topk_index.dtype() == DType::kI64 && topk_index.ndim() == 2,
               "[moe_sort_by_expert] topk_index ", topk_index.shape_str());
  const int64_t r = topk_index.numel();
  FATHOM_CHECK(row_slot.dtype() == DType::kI64 && row_slot.shape() == Shape{r} &&
                   counts.dtype() == DType::kI64 && counts.ndim() == 1,
               "[moe_sort_by_expert] row_slot ", row_slot.shape_str(), " counts ", counts.shape_str());
  const int64_t e = counts.numel();
  const int64_t* ip = topk_index.data<int64_t>();
  int64_t* cp = counts.data<int64_t>();
  int64_t* rs = row_slot.data<int64_t>();
  std::fill(cp, cp + e, int64_t{0});
  for (int64_t s = 0; s < r; ++s) {
    FATHOM_CHECK(ip[s] >= 0 && ip[s] < e, "[moe_sort_by_expert] expert id ", ip[s], " outside [0, ", e, ")");
    ++cp[ip[s]];
  }
  std::vector<int64_t> next(static_cast<size_t>(e), 0);
  for (int64_t i = 1; i < e; ++i) next[i] = next[i - 1] + cp[i - 1];
  for (int64_t s = 0; s < r; ++s) rs[next[ip[s]]++] = s;
}

void MoeGatherRows(const Tensor& x_perm, const Tensor& x, const Tensor& row_slot, int64_t top_k) {
  FATHOM_CHECK(x.ndim() == 2 && top_k >= 1 && row_slot.dtype() == DType::kI64 && row_slot.ndim() == 1,
               "[moe_gather_rows] x ", x.shape_str(), " row_slot ", row_slot.shape_str(), " top_k ", top_k);
  const int64_t n = x.dim(0), h = x.dim(1), p = row_slot.dim(0);
  const int64_t* rs = row_slot.data<int64_t>();
  auto source = [&](int64_t row) {  // x's row for x_perm's `row`, -1 for a pad row
    if (rs[row] == -1) return int64_t{-1};
    FATHOM_CHECK(rs[row] >= 0 && rs[row] / top_k < n, "[moe_gather_rows] slot ", rs[row], " outside [0, ",
                 n * top_k, ")");
    return rs[row] / top_k;
  };
  if (x.dtype() == DType::kF8E4M3) {  // packed FP8 rows: bytes
    FATHOM_CHECK(
        x_perm.dtype() == DType::kF8E4M3 && x_perm.ndim() == 2 && x_perm.dim(0) == p && x_perm.dim(1) == h,
        "[moe_gather_rows] x_perm ", x_perm.shape_str(), " ", DTypeName(x_perm.dtype()), ", expected (", p,
        ", ", h, ") FP8 rows");
    const auto* xp = static_cast<const uint8_t*>(x.raw());
    auto* out = static_cast<uint8_t*>(x_perm.raw());
    for (int64_t row = 0; row < p; ++row) {
      const int64_t t = source(row);
      if (t < 0) {
        std::memset(out + row * h, 0, static_cast<size_t>(h));
      } else {
        std::memcpy(out + row * h, xp + t * h, static_cast<size_t>(h));
      }
    }
    return;
  }
  CheckFloat("moe_gather_rows", x_perm, x.dtype(), {p, h});
  DispatchFloat(x.dtype(), "moe_gather_rows", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    T* op = x_perm.data<T>();
    for (int64_t row = 0; row < p; ++row) {
      const int64_t t = source(row);
      if (t < 0) {
        std::fill(op + row * h, op + (row + 1) * h, T(0));
      } else {
        std::copy(xp + t * h, xp + (t + 1) * h, op + row * h);
      }
    }
  });
}

void MoePermute(const Tensor& x_perm, const Tensor& row_slot, const Tensor& counts, const Tensor& x,
                const Tensor& topk_index) {
  const int64_t n = x.dim(0), h = x.dim(1), k = topk_index.dim(1), r = n * k;
  CheckIndex("moe_permute", topk_index, n, k);
  CheckFloat("moe_permute", x_perm, x.dtype(), {r, h});
  MoeSortByExpert(row_slot, counts, topk_index);
  MoeGatherRows(x_perm, x, row_slot, k);
}

int64_t PaddedRows(const Tensor& counts, int64_t tile) {
  FATHOM_CHECK(
      counts.device() == Device::kCPU && counts.dtype() == DType::kI64 && counts.ndim() == 1 && tile >= 1,
      "[padded_rows] counts ", counts.shape_str(), " ", DTypeName(counts.dtype()), " on ",
      DeviceName(counts.device()), ", tile ", tile);
  int64_t rows = 0;
  for (int64_t e = 0; e < counts.numel(); ++e) rows += (counts.data<int64_t>()[e] + tile - 1) / tile * tile;
  return rows;
}

int64_t MaxPaddedRows(int64_t rows, int64_t experts, int64_t tile) {
  FATHOM_CHECK(rows >= 0 && experts >= 1 && tile >= 1, "[max_padded_rows] rows ", rows, ", experts ", experts,
               ", tile ", tile);
  return (rows + (tile - 1) * std::min(rows, experts)) / tile * tile;
}

void MoePadLayout(const Tensor& padded, const Tensor& row_slot, const Tensor& counts, int64_t tile) {
  const int64_t p = PaddedRows(counts, tile), e = counts.numel();
  FATHOM_CHECK(padded.dtype() == DType::kI64 && padded.shape() == Shape{p} &&
                   row_slot.dtype() == DType::kI64 && row_slot.ndim() == 1,
               "[moe_pad_layout] padded ", padded.shape_str(), " (expected (", p, ")), row_slot ",
               row_slot.shape_str());
  const int64_t* cp = counts.data<int64_t>();
  const int64_t* rs = row_slot.data<int64_t>();
  int64_t* out = padded.data<int64_t>();
  int64_t from = 0, at = 0;
  for (int64_t i = 0; i < e; ++i) {
    const int64_t block = (cp[i] + tile - 1) / tile * tile;
    for (int64_t j = 0; j < block; ++j) out[at + j] = j < cp[i] ? rs[from + j] : -1;
    from += cp[i];
    at += block;
  }
  FATHOM_CHECK(from == row_slot.dim(0), "[moe_pad_layout] counts sum to ", from, ", row_slot has ",
               row_slot.dim(0), " rows");
}

void MoePermuteBackward(const Tensor& dx, const Tensor& dx_perm, const Tensor& row_slot, bool accumulate,
                        int64_t top_k) {
  const int64_t n = dx.dim(0), h = dx.dim(1), p = dx_perm.dim(0);
  FATHOM_CHECK(top_k > 0 || (n > 0 ? p % n == 0 : p == 0), "[moe_permute_backward] ", p, " rows for ", n,
               " tokens");
  CheckFloat("moe_permute_backward", dx_perm, dx.dtype(), {p, h});
  const int64_t k = top_k > 0 ? top_k : n > 0 ? p / n : 0;
  FATHOM_CHECK(row_slot.numel() == p, "[moe_permute_backward] row_slot ", row_slot.shape_str(), " for ", p,
               " rows");
  std::vector<int64_t> slot_row = InvertRowSlot("moe_permute_backward", row_slot, n * k);
  DispatchFloat(dx.dtype(), "moe_permute_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = dx_perm.data<T>();
    T* dp = dx.data<T>();
    for (int64_t t = 0; t < n; ++t) {
      T* out = dp + t * h;
      if (!accumulate) std::fill(out, out + h, T(0));
      for (int64_t j = 0; j < k; ++j) {
        const T* src = gp + slot_row[t * k + j] * h;
        for (int64_t c = 0; c < h; ++c) out[c] += src[c];
      }
    }
  });
}

void MoeCombine(const Tensor& out, const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight) {
  const int64_t n = out.dim(0), h = out.dim(1), k = topk_weight.dim(1), r = n * k;
  CheckFloat("moe_combine", y_perm, out.dtype(), {row_slot.numel(), h});
  CheckFloat("moe_combine", topk_weight, out.dtype(), {n, k});
  std::vector<int64_t> slot_row = InvertRowSlot("moe_combine", row_slot, r);
  DispatchFloat(out.dtype(), "moe_combine", [&](auto tag) {
    using T = decltype(tag);
    const T* yp = y_perm.data<T>();
    const T* wp = topk_weight.data<T>();
    T* op = out.data<T>();
    for (int64_t t = 0; t < n; ++t) {
      T* o = op + t * h;
      std::fill(o, o + h, T(0));
      for (int64_t j = 0; j < k; ++j) {
        const T w = wp[t * k + j];
        const T* y = yp + slot_row[t * k + j] * h;
        for (int64_t c = 0; c < h; ++c) o[c] += w * y[c];
      }
    }
  });
}

void MoeCombineBackward(const Tensor& dy_perm, const Tensor& dweight, const Tensor& dout,
                        const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight) {
  const int64_t n = dout.dim(0), h = dout.dim(1), k = topk_weight.dim(1), r = n * k;
  FATHOM_CHECK(row_slot.dtype() == DType::kI64 && row_slot.ndim() == 1 && row_slot.dim(0) >= r,
               "[moe_combine_backward] row_slot ", row_slot.shape_str(), " for ", r, " slots");
  const int64_t p = row_slot.dim(0);
  CheckFloat("moe_combine_backward", y_perm, dout.dtype(), {p, h});
  CheckFloat("moe_combine_backward", dy_perm, dout.dtype(), {p, h});
  CheckFloat("moe_combine_backward", topk_weight, dout.dtype(), {n, k});
  CheckFloat("moe_combine_backward", dweight, dout.dtype(), {n, k});
  DispatchFloat(dout.dtype(), "moe_combine_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = dout.data<T>();
    const T* yp = y_perm.data<T>();
    const T* wp = topk_weight.data<T>();
    const int64_t* rs = row_slot.data<int64_t>();
    T* dyp = dy_perm.data<T>();
    T* dwp = dweight.data<T>();
    for (int64_t row = 0; row < p; ++row) {
      const int64_t slot = rs[row];
      if (slot == -1 && p > r) {  // a pad row of MoePadLayout's layout
        std::fill(dyp + row * h, dyp + (row + 1) * h, T(0));
        continue;
      }
      FATHOM_CHECK(slot >= 0 && slot < r, "[moe_combine_backward] slot ", slot, " outside [0, ", r, ")");
      const T* g = gp + (slot / k) * h;
      const T* y = yp + row * h;
      T* dy = dyp + row * h;
      T dot = 0;
      for (int64_t c = 0; c < h; ++c) {
        dy[c] = wp[slot] * g[c];
        dot += g[c] * y[c];
      }
      dwp[slot] = dot;
    }
  });
}

namespace {

// Checks counts (E_local) against the stacked weight and the row count; returns the block offsets.
std::vector<int64_t> BlockOffsets(const char* op, const Tensor& counts, int64_t experts, int64_t rows) {
  FATHOM_CHECK(counts.dtype() == DType::kI64 && counts.shape() == Shape{experts}, "[", op, "] counts ",
               counts.shape_str(), " ", DTypeName(counts.dtype()), ", expected i64 (", experts, ")");
  const int64_t* cp = counts.data<int64_t>();
  std::vector<int64_t> offsets(static_cast<size_t>(experts) + 1, 0);
  for (int64_t e = 0; e < experts; ++e) {
    FATHOM_CHECK(cp[e] >= 0, "[", op, "] negative count ", cp[e], " for expert ", e);
    offsets[e + 1] = offsets[e] + cp[e];
  }
  FATHOM_CHECK(offsets.back() == rows, "[", op, "] counts sum to ", offsets.back(), ", tensors have ", rows,
               " rows");
  return offsets;
}

}  // namespace

void GroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                     bool accumulate) {
  FATHOM_CHECK(w.ndim() == 3 && x.ndim() == 2 && x.dim(1) == w.dim(2), "[grouped_matmul_nt] x ",
               x.shape_str(), " w ", w.shape_str());
  const int64_t experts = w.dim(0), nn = w.dim(1), kk = w.dim(2), r = x.dim(0);
  CheckFloat("grouped_matmul_nt", out, x.dtype(), {r, nn});
  CheckFloat("grouped_matmul_nt", w, x.dtype(), w.shape());
  std::vector<int64_t> off = BlockOffsets("grouped_matmul_nt", counts, experts, r);
  DispatchFloat(x.dtype(), "grouped_matmul_nt", [&](auto tag) {
    using T = decltype(tag);
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t rows = off[e + 1] - off[e];
      if (rows == 0) continue;
      Gemm<T>(false, true, rows, nn, kk, T(1), x.data<T>() + off[e] * kk, kk, w.data<T>() + e * nn * kk, kk,
              accumulate ? T(1) : T(0), out.data<T>() + off[e] * nn, nn);
    }
  });
}

void GroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                     bool accumulate) {
  FATHOM_CHECK(w.ndim() == 3 && x.ndim() == 2 && x.dim(1) == w.dim(1), "[grouped_matmul_nn] x ",
               x.shape_str(), " w ", w.shape_str());
  const int64_t experts = w.dim(0), kk = w.dim(1), nn = w.dim(2), r = x.dim(0);
  CheckFloat("grouped_matmul_nn", out, x.dtype(), {r, nn});
  CheckFloat("grouped_matmul_nn", w, x.dtype(), w.shape());
  std::vector<int64_t> off = BlockOffsets("grouped_matmul_nn", counts, experts, r);
  DispatchFloat(x.dtype(), "grouped_matmul_nn", [&](auto tag) {
    using T = decltype(tag);
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t rows = off[e + 1] - off[e];
      if (rows == 0) continue;
      Gemm<T>(false, false, rows, nn, kk, T(1), x.data<T>() + off[e] * kk, kk, w.data<T>() + e * kk * nn, nn,
              accumulate ? T(1) : T(0), out.data<T>() + off[e] * nn, nn);
    }
  });
}

void GroupedMatmulTN(const Tensor& out, const Tensor& x, const Tensor& y, const Tensor& counts,
                     bool accumulate) {
  FATHOM_CHECK(out.ndim() == 3 && x.ndim() == 2 && y.ndim() == 2 && x.dim(0) == y.dim(0),
               "[grouped_matmul_tn] out ", out.shape_str(), " x ", x.shape_str(), " y ", y.shape_str());
  const int64_t experts = out.dim(0), m = out.dim(1), nn = out.dim(2), r = x.dim(0);
  CheckFloat("grouped_matmul_tn", x, out.dtype(), {r, m});
  CheckFloat("grouped_matmul_tn", y, out.dtype(), {r, nn});
  std::vector<int64_t> off = BlockOffsets("grouped_matmul_tn", counts, experts, r);
  if (!accumulate) {
    Tensor view = out;  // Zero is a non-const member; the view shares out's memory
    view.Zero();
  }
  DispatchFloat(out.dtype(), "grouped_matmul_tn", [&](auto tag) {
    using T = decltype(tag);
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t rows = off[e + 1] - off[e];
      if (rows == 0) continue;
      Gemm<T>(true, false, m, nn, rows, T(1), x.data<T>() + off[e] * m, m, y.data<T>() + off[e] * nn, nn,
              T(1), out.data<T>() + e * m * nn, nn);
    }
  });
}

void ExpertBiasUpdate(const Tensor& bias, const Tensor& load, double gamma) {
  FATHOM_CHECK(bias.ndim() == 1 && load.ndim() == 1 && load.dim(0) == bias.dim(0) && bias.dim(0) > 0 &&
                   load.dtype() == DType::kI64,
               "[expert_bias] bias ", bias.shape_str(), " with load ", load.shape_str(), " ",
               DTypeName(load.dtype()), ", expected (E) and (E) i64");
  const int64_t n = load.numel();
  const int64_t* l = load.data<int64_t>();
  int64_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    FATHOM_CHECK(l[i] >= 0, "[expert_bias] negative expert load ", l[i]);
    sum += l[i];
  }
  if (gamma == 0.0) return;
  // sign(mean - load_i) = sign(sum - E * load_i): compared in integers, so a load equal to the mean is
  // recognised exactly whatever E is.
  DispatchFloat(bias.dtype(), "expert_bias", [&](auto tag) {
    using T = decltype(tag);
    T* b = bias.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t scaled = n * l[i];
      const double sign = sum > scaled ? 1.0 : (sum < scaled ? -1.0 : 0.0);
      b[i] = static_cast<T>(static_cast<double>(b[i]) + gamma * sign);
    }
  });
}

}  // namespace fathom::cpu
