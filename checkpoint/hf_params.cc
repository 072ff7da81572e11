#include "checkpoint/hf_params.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace fathom {
namespace {

constexpr std::string_view kExpertPlaceholder = "{e}";

bool IsStacked(const ParamSpec& spec) { return spec.name.find(kExpertPlaceholder) != std::string::npos; }

// The shape of one HF tensor of `spec`: a stacked spec drops its leading expert dimension.
Shape HfShape(const ParamSpec& spec) {
  if (!IsStacked(spec)) return spec.shape;
  return Shape(spec.shape.begin() + 1, spec.shape.end());
}

// Slice i of a stacked spec's tensor (its own HF shape), or the whole tensor.
Tensor HfSlice(const ParamSpec& spec, const Tensor& t, int64_t i) {
  if (!IsStacked(spec)) return t;
  return t.Rows(i, i + 1).Reshape(HfShape(spec));
}

bool Convertible(const std::string& dtype) { return dtype == "F32" || dtype == "F64" || dtype == "BF16"; }

absl::Status Load(const SafetensorsFile& f, const ParamTable& table, std::string_view prefix,
                  bool allow_missing, bool grads) {
  FATHOM_CHECK(table.finalized(), "[LoadHfTensors] the table is not finalized");
  struct Copy {
    std::string name;
    Tensor dst;
  };
  std::vector<Copy> copies;
  std::vector<std::string> problems;
  for (int id = 0; id < table.size(); ++id) {
    const ParamSpec& spec = table.spec(id);
    if (grads && !spec.trainable) continue;
    const Tensor whole = grads ? table.grad(id) : table.value(id);
    const Shape want = HfShape(spec);
    const std::vector<std::string> names = ExpandHfNames(spec);
    for (size_t i = 0; i < names.size(); ++i) {
      std::string name = absl::StrCat(std::string(prefix), names[i]);
      absl::StatusOr<SafetensorsInfo> info = f.Info(name);
      if (!info.ok()) {
        if (!allow_missing) problems.push_back(absl::StrCat("'", name, "' is missing"));
        continue;
      }
      if (info->shape != want) {
        problems.push_back(absl::StrCat("'", name, "' has shape ", ShapeString(info->shape), ", expected ",
                                        ShapeString(want)));
        continue;
      }
      if (!Convertible(info->dtype)) {
        problems.push_back(
            absl::StrCat("'", name, "' has dtype ", info->dtype, ", expected F32, F64 or BF16"));
        continue;
      }
      copies.push_back({std::move(name), HfSlice(spec, whole, static_cast<int64_t>(i))});
    }
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "[safetensors] ", f.path(), ": ", problems.size(), " parameter tensor(s) cannot be loaded",
        grads ? " as gradients" : "", ": ", absl::StrJoin(problems, "; ")));
  }
  for (Copy& c : copies) {
    absl::StatusOr<Tensor> src = f.Get(c.name);
    FATHOM_CHECK(src.ok(), "[LoadHfTensors] validated tensor unreadable: ", src.status().ToString());
    c.dst.CopyFrom(src->To(c.dst.dtype()));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> ExpandHfNames(const ParamSpec& spec) {
  const size_t at = spec.name.find(kExpertPlaceholder);
  if (at == std::string::npos) return {spec.name};
  FATHOM_CHECK(!spec.shape.empty(), "[ExpandHfNames] stacked spec ", spec.name, " has no expert dimension");
  std::vector<std::string> names;
  for (int64_t i = 0; i < spec.shape[0]; ++i) {
    names.push_back(absl::StrCat(spec.name.substr(0, at), spec.expert_begin + i,
                                 spec.name.substr(at + kExpertPlaceholder.size())));
  }
  return names;
}

absl::Status LoadHfTensors(const SafetensorsFile& f, ParamTable& table, std::string_view prefix,
                           bool allow_missing) {
  return Load(f, table, prefix, allow_missing, /*grads=*/false);
}

absl::Status LoadHfTensorsInto(const SafetensorsFile& f, const ParamTable& table, std::string_view prefix,
                               bool use_grads_buffer) {
  return Load(f, table, prefix, /*allow_missing=*/false, use_grads_buffer);
}

std::vector<std::pair<std::string, Tensor>> CollectHfTensors(const ParamTable& table, bool grads,
                                                             std::string_view prefix) {
  FATHOM_CHECK(table.finalized(), "[CollectHfTensors] the table is not finalized");
  std::vector<std::pair<std::string, Tensor>> out;
  for (int id = 0; id < table.size(); ++id) {
    const ParamSpec& spec = table.spec(id);
    if (grads && !spec.trainable) continue;
    const Tensor whole = grads ? table.grad(id) : table.value(id);
    const std::vector<std::string> names = ExpandHfNames(spec);
    for (size_t i = 0; i < names.size(); ++i) {
      out.emplace_back(absl::StrCat(std::string(prefix), names[i]),
                       HfSlice(spec, whole, static_cast<int64_t>(i)));
    }
  }
  return out;
}

}  // namespace fathom
