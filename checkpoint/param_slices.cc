#include "checkpoint/param_slices.h"

#include <algorithm>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace fathom {
namespace {

constexpr std::string_view kExpertPlaceholder = "{e}";

}  // namespace

bool IsStackedExpertSpec(const ParamSpec& spec) {
  return spec.name.find(kExpertPlaceholder) != std::string::npos;
}

std::string HfTensorName(const ParamSpec& spec, int64_t slot) {
  const size_t at = spec.name.find(kExpertPlaceholder);
  if (at == std::string::npos) return spec.name;
  FATHOM_CHECK(!spec.shape.empty() && slot >= 0 && slot < spec.shape[0], "[HfTensorName] slot ", slot,
               " of stacked spec ", spec.name, " ", ShapeString(spec.shape));
  return absl::StrCat(spec.name.substr(0, at), spec.expert_begin + slot,
                      spec.name.substr(at + kExpertPlaceholder.size()));
}

Shape HfTensorShape(const ParamSpec& spec) {
  if (!IsStackedExpertSpec(spec)) return spec.shape;
  FATHOM_CHECK(!spec.shape.empty(), "[HfTensorShape] stacked spec ", spec.name, " has no expert dimension");
  return Shape(spec.shape.begin() + 1, spec.shape.end());
}

std::vector<TensorPiece> TablePieces(const ParamTable& table, int64_t begin, int64_t end,
                                     PieceFilter filter) {
  FATHOM_CHECK(table.finalized(), "[TablePieces] the table is not finalized");
  FATHOM_CHECK(0 <= begin && begin <= end && end <= table.numel(), "[TablePieces] range [", begin, ", ", end,
               ") outside the table's ", table.numel(), " elements");
  // Specs are registered in model order but laid out replicated-first (ParamTable::Finalize): walk them
  // in layout order so the pieces come out in table order.
  std::vector<int> order(static_cast<size_t>(table.size()));
  for (int id = 0; id < table.size(); ++id) order[static_cast<size_t>(id)] = id;
  std::sort(order.begin(), order.end(),
            [&](int a, int b) { return table.spec(a).offset < table.spec(b).offset; });

  std::vector<TensorPiece> pieces;
  for (int id : order) {
    const ParamSpec& spec = table.spec(id);
    if (filter == PieceFilter::kTrainableOnly && !spec.trainable) continue;
    const int64_t numel = NumElements(spec.shape);
    const int64_t lo = std::max(begin, spec.offset), hi = std::min(end, spec.offset + numel);
    if (lo >= hi) continue;
    const bool stacked = IsStackedExpertSpec(spec);
    const int64_t slots = stacked ? spec.shape[0] : 1;
    const int64_t per_slot = slots > 0 ? numel / slots : 0;
    if (per_slot == 0) continue;  // unreachable for numel > 0; keeps the division below safe
    const Shape shape = HfTensorShape(spec);
    // Slots (experts) overlapping [lo, hi) of this spec, each cut to the overlap.
    for (int64_t slot = (lo - spec.offset) / per_slot; slot < slots; ++slot) {
      const int64_t slot_begin = spec.offset + slot * per_slot;
      if (slot_begin >= hi) break;
      const int64_t a = std::max(lo, slot_begin), b = std::min(hi, slot_begin + per_slot);
      if (a >= b) continue;
      pieces.push_back(TensorPiece{.name = HfTensorName(spec, slot),
                                   .shape = shape,
                                   .begin = a - slot_begin,
                                   .end = b - slot_begin,
                                   .table_offset = a,
                                   .trainable = spec.trainable});
    }
  }
  return pieces;
}

int64_t PieceElements(const std::vector<TensorPiece>& pieces) {
  int64_t n = 0;
  for (const TensorPiece& p : pieces) n += p.numel();
  return n;
}

}  // namespace fathom
