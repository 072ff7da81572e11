// Moving tensors between HF checkpoint names and a ParamTable.
//
// A ParamTable spec carries its HF name. A stacked routed-expert spec has "{e}" in its name and shape
// (E_local, ...); slice i holds global expert expert_begin + i, whose HF tensor is the name with "{e}"
// replaced by that id and the shape without the leading E_local. Everything else is one tensor of the
// spec's own name and shape.
//
// Loading converts F32 / F64 / BF16 file tensors to the table's dtype (f32 or f64); other file dtypes
// (fp8 weights need their block scales) are refused. Loading validates every tensor first and copies
// only when all are good, so a failed load leaves the table untouched. Gradients of non-trainable specs
// (the expert bias) do not exist: grad loading and collecting skip those specs.
#ifndef FATHOM_CHECKPOINT_HF_PARAMS_H_
#define FATHOM_CHECKPOINT_HF_PARAMS_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "checkpoint/safetensors.h"
#include "framework/param_table.h"

namespace fathom {

// The HF names of a spec, one per expert slice for stacked specs (in slice order), else its own name.
std::vector<std::string> ExpandHfNames(const ParamSpec& spec);

// Fills the table's values from `f`, looking up prefix + HF name for every spec. Errors
// (InvalidArgument, naming the file) list every missing tensor (unless `allow_missing`, which leaves
// those values as they are), every tensor of the wrong shape and every tensor of a dtype that cannot be
// converted. REQUIRES: table.finalized().
absl::Status LoadHfTensors(const SafetensorsFile& f, ParamTable& table, std::string_view prefix = "",
                           bool allow_missing = false);

// As LoadHfTensors, into table.grad(id) when `use_grads_buffer` (trainable specs only; e.g. golden
// gradients stored as "grad.<hf name>"), else into the values. Tensors must all be present.
absl::Status LoadHfTensorsInto(const SafetensorsFile& f, const ParamTable& table, std::string_view prefix,
                               bool use_grads_buffer);

// (prefix + HF name, tensor) for every spec in table order, stacked specs split per expert, in the
// table's dtype: the values, or the gradients of the trainable specs when `grads`. The tensors are
// views of the table's buffers, valid while the table lives; pass them to WriteSafetensors.
std::vector<std::pair<std::string, Tensor>> CollectHfTensors(const ParamTable& table, bool grads,
                                                             std::string_view prefix = "");

}  // namespace fathom

#endif  // FATHOM_CHECKPOINT_HF_PARAMS_H_
