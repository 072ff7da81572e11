#include "framework/kernels/cpu/embedding.h"

#include <cstring>

namespace fathom::cpu {

void EmbeddingForward(const Tensor& out, const Tensor& ids, const Tensor& table) {
  const int64_t n = ids.numel(), v = table.dim(0), c = table.dim(1);
  FATHOM_CHECK(out.numel() == n * c, "[embedding] out ", out.shape_str(), " ids ", ids.shape_str(), " table ",
               table.shape_str());
  const int32_t* id = ids.data<int32_t>();
  const size_t row = static_cast<size_t>(c) * DTypeSize(table.dtype());
  for (int64_t i = 0; i < n; ++i) {
    FATHOM_CHECK(id[i] >= 0 && id[i] < v, "[embedding] token id ", id[i], " at position ", i,
                 " outside the vocabulary [0, ", v, ")");
    std::memcpy(static_cast<char*>(out.raw()) + i * row, static_cast<const char*>(table.raw()) + id[i] * row,
                row);
  }
}

void EmbeddingBackward(const Tensor& dtable, const Tensor& ids, const Tensor& dy) {
  const int64_t n = ids.numel(), c = dtable.dim(1);
  FATHOM_CHECK(dy.numel() == n * c, "[embedding backward] dy ", dy.shape_str(), " ids ", ids.shape_str());
  DispatchFloat(dtable.dtype(), "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    const int32_t* id = ids.data<int32_t>();
    const T* g = dy.data<T>();
    T* d = dtable.data<T>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j) d[id[i] * c + j] += g[i * c + j];
  });
}

}  // namespace fathom::cpu
