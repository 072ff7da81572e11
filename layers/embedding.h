// Token embedding "model.embed_tokens.weight" (V, H). No input gradient: BackwardInput keeps dy and
// returns an undefined tensor; BackwardWeight scatter-adds dy into the table's gradient.
#ifndef FATHOM_LAYERS_EMBEDDING_H_
#define FATHOM_LAYERS_EMBEDDING_H_

#include <string>

#include "framework/param_table.h"
#include "layers/layer.h"

namespace fathom {

class Embedding {
 public:
  Embedding(ParamTable& table, const std::string& name, int64_t vocab, int64_t hidden);
  Embedding(ParamTable& table, int weight_id);  // a second user of the same weight (MTP)

  Tensor Forward(int mb, const Tensor& ids);       // ids (B, T) i32 -> (B, T, H)
  Tensor BackwardInput(int mb, const Tensor& dy);  // keeps dy (B, T, H); returns an undefined tensor
  void BackwardWeight(int mb);

  int weight_id() const { return weight_; }

 private:
  struct Ctx {
    Tensor ids, dy;
  };
  ParamTable* table_;
  int weight_;
  SavedByMicroBatch<Ctx> saved_;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_EMBEDDING_H_
