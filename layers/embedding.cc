#include "layers/embedding.h"

#include "framework/ops.h"

namespace fathom {

Embedding::Embedding(ParamTable& table, const std::string& name, int64_t vocab, int64_t hidden)
    : table_(&table) {
  weight_ = table.Add({.name = name + ".weight", .shape = {vocab, hidden}});
}

Embedding::Embedding(ParamTable& table, int weight_id) : table_(&table), weight_(weight_id) {}

Tensor Embedding::Forward(int mb, const Tensor& ids) {
  Tensor w = table_->compute_value(weight_);  // bf16 rows under mixed precision: activations are bf16
  Shape shape = ids.shape();
  shape.push_back(w.dim(1));
  Tensor out = Tensor::Empty(shape, w.dtype(), w.device());
  ops::EmbeddingForward(out, ids, w);
  saved_.Put(mb).ids = ids;
  return out;
}

Tensor Embedding::BackwardInput(int mb, const Tensor& dy) {
  saved_.Get(mb).dy = dy;
  return Tensor();
}

void Embedding::BackwardWeight(int mb) {
  Ctx& c = saved_.Get(mb);
  FATHOM_CHECK(c.dy.defined(), "[embedding] BackwardWeight before BackwardInput for micro-batch ", mb);
  ops::EmbeddingBackward(table_->grad(weight_), c.ids, c.dy);
  saved_.Drop(mb);
}

}  // namespace fathom
