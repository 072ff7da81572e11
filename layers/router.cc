#include "layers/router.h"

#include "framework/ops.h"

namespace fathom {

Router::Router(ParamTable& table, const ModelConfig& config, const std::string& prefix, int layer)
    : table_(&table), hidden_(config.hidden_size) {
  dims_ = {.num_experts = config.n_routed_experts,
           .top_k = config.num_experts_per_tok,
           .n_group = config.n_group,
           .topk_group = config.topk_group,
           .norm_topk_prob = config.norm_topk_prob,
           .routed_scaling_factor = config.routed_scaling_factor};
  const int64_t e = dims_.num_experts;
  FATHOM_CHECK(dims_.n_group >= 1 && e % dims_.n_group == 0 && e / dims_.n_group >= 2 &&
                   dims_.topk_group >= 1 && dims_.topk_group <= dims_.n_group && dims_.top_k >= 1 &&
                   dims_.top_k <= dims_.topk_group * (e / dims_.n_group),
               "[router ", prefix, "] n_routed_experts ", e, " num_experts_per_tok ", dims_.top_k,
               " n_group ", dims_.n_group, " topk_group ", dims_.topk_group);
  weight_ = table.Add({.name = prefix + ".gate.weight", .shape = {e, hidden_}, .layer = layer});
  bias_ = table.Add({.name = prefix + ".gate.e_score_correction_bias",
                     .shape = {e},
                     .init = ParamInit::kZeros,
                     .trainable = false,
                     .weight_decay = false,
                     .layer = layer});
}

namespace {

// x in `dtype`: x itself, or an exact widened copy (bf16 -> f32).
Tensor Widened(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor wide = Tensor::Empty(x.shape(), dtype, x.device());
  ops::Convert(wide, x);
  return wide;
}

}  // namespace

RouterOutput Router::Forward(int mb, const Tensor& x) {
  FATHOM_CHECK(x.ndim() == 2 && x.dim(1) == hidden_, "[router ", table_->spec(weight_).name, "] input ",
               x.shape_str(), ", expected (N, ", hidden_, ")");
  const int64_t n = x.dim(0);
  // Router tensors are in the statistics dtype (the activation dtype on the CPU, f32 on CUDA); the logits
  // are written into scores, which RouterSelect turns into sigmoid scores in place.
  const DType st = ops::StatsDType(x.dtype());
  const Tensor xr = Widened(x, st);
  RouterOutput r;
  r.scores = Tensor::Empty({n, dims_.num_experts}, st, x.device());
  ops::MatmulNT(r.scores, xr, table_->value(weight_));
  r.topk_index = Tensor::Empty({n, dims_.top_k}, DType::kI64, x.device());
  r.topk_weight = Tensor::Empty({n, dims_.top_k}, st, x.device());
  ops::RouterSelect(r.topk_index, r.topk_weight, r.scores, /*logits=*/r.scores, table_->value(bias_), dims_);
  Ctx& c = saved_.Put(mb);
  c.x = x;
  c.scores = r.scores;
  c.index = r.topk_index;
  return r;
}

void Router::BackwardInput(int mb, const Tensor& dx, const Tensor& dweight, const Tensor& dscores) {
  Ctx& c = saved_.Get(mb);
  FATHOM_CHECK(dx.shape() == c.x.shape(), "[router] dx ", dx.shape_str(), ", input was ", c.x.shape_str());
  FATHOM_CHECK(!dscores.defined() || dscores.shape() == c.scores.shape(), "[router] dscores ",
               dscores.shape_str(), ", scores are ", c.scores.shape_str());
  // ds = dscores (or zeros) + the selection's gradient, times the sigmoid's derivative.
  Tensor ds = Tensor::Empty(c.scores.shape(), c.scores.dtype(), c.scores.device());
  ops::RouterSelectBackward(ds, dweight, dscores, c.scores, c.index, dims_);
  if (dx.dtype() == ds.dtype()) {
    ops::MatmulNN(dx, ds, table_->value(weight_), /*accumulate=*/true);
  } else {  // bf16 activations: the f32 product added to dx in f32, the sum rounded once
    Tensor d32 = Tensor::Empty(c.x.shape(), ds.dtype(), ds.device());
    ops::MatmulNN(d32, ds, table_->value(weight_));
    ops::AddInPlace(dx, d32);
  }
  c.dlogits = ds;
}

void Router::BackwardWeight(int mb) {
  Ctx& c = saved_.Get(mb);
  FATHOM_CHECK(c.dlogits.defined(), "[router] BackwardWeight before BackwardInput for micro-batch ", mb);
  ops::MatmulTN(table_->grad(weight_), c.dlogits, Widened(c.x, c.dlogits.dtype()), /*accumulate=*/true);
  saved_.Drop(mb);
}

}  // namespace fathom
