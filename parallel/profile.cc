#include "parallel/profile.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "framework/file_io.h"
#include "framework/yaml_reader.h"

namespace fathom {
namespace {

constexpr double kGiB = 1073741824.0;

absl::Status Invalid(const std::string& origin, const std::string& message) {
  return absl::InvalidArgumentError(origin.empty() ? message : absl::StrCat(origin, ": ", message));
}

std::string Numbers(const std::vector<double>& v) {
  std::vector<std::string> parts;
  for (double x : v) parts.push_back(absl::StrFormat("%.6g", x));
  return absl::StrCat("[", absl::StrJoin(parts, ", "), "]");
}

}  // namespace

namespace {

// rates[i] at rows[i], log-linear in between, clamped outside; `otherwise` for an empty table.
double Interpolate(const std::vector<double>& rows_at, const std::vector<double>& rates, double rows,
                   double otherwise) {
  if (rows_at.empty() || rates.size() != rows_at.size()) return otherwise;
  if (rows <= rows_at.front()) return rates.front();
  if (rows >= rows_at.back()) return rates.back();
  size_t i = 1;
  while (rows_at[i] < rows) ++i;
  const double t = std::log(rows / rows_at[i - 1]) / std::log(rows_at[i] / rows_at[i - 1]);
  return rates[i - 1] + t * (rates[i] - rates[i - 1]);
}

}  // namespace

double CalibrationProfile::ExpertGemmTflops(double rows) const {
  return Interpolate(expert_rows, expert_tflops, rows, dense_gemm_tflops);
}

double CalibrationProfile::Fp8ExpertGemmTflops(double rows) const {
  return Interpolate(expert_rows, fp8_expert_tflops, rows, fp8_dense_gemm_tflops);
}

double CalibrationProfile::ActivationError() const {
  if (activation_estimated_bytes <= 0) return 0;
  return std::max(0.0, activation_measured_bytes / activation_estimated_bytes - 1.0);
}

double CalibrationProfile::MeasuredBytesPerLayerAndMicroBatch() const {
  const double units = static_cast<double>(std::max<int64_t>(1, activation_layers) *
                                           std::max<int64_t>(1, micro_batches_in_flight));
  return activation_measured_bytes / units;
}

absl::Status CalibrationProfile::Validate() const {
  if (source != "measured" && source != "derived") {
    return Invalid(path, absl::StrCat("source must be measured or derived, got '", source, "'"));
  }
  const std::vector<std::pair<const char*, double>> positive = {
      {"gemm_tflops.dense", dense_gemm_tflops},
      {"gemm_tflops.head", head_gemm_tflops},
      {"attention_tflops.forward", attention_forward_tflops},
      {"attention_tflops.backward", attention_backward_tflops},
      {"optimizer_gbps", optimizer_gbps},
      {"activations.estimated_gib", activation_estimated_bytes},
      {"activations.measured_gib", activation_measured_bytes},
  };
  for (const auto& [key, v] : positive) {
    if (!(v > 0)) return Invalid(path, absl::StrCat(key, " must be > 0, got ", v));
  }
  if (expert_rows.empty() || expert_rows.size() != expert_tflops.size()) {
    return Invalid(path, absl::StrCat("gemm_tflops.expert_rows (", expert_rows.size(),
                                      " entries) and gemm_tflops.expert (", expert_tflops.size(),
                                      ") must be non-empty lists of the same length"));
  }
  for (size_t i = 0; i < expert_rows.size(); ++i) {
    if (!(expert_rows[i] > 0) || !(expert_tflops[i] > 0) ||
        (i > 0 && !(expert_rows[i] > expert_rows[i - 1]))) {
      return Invalid(path, absl::StrCat("gemm_tflops.expert_rows must increase and every entry of it and of ",
                                        "gemm_tflops.expert be > 0; got ", Numbers(expert_rows), " and ",
                                        Numbers(expert_tflops)));
    }
  }
  if (has_fp8() || !fp8_expert_tflops.empty()) {
    bool ok = fp8_dense_gemm_tflops > 0 && fp8_expert_tflops.size() == expert_rows.size();
    for (double v : fp8_expert_tflops) ok = ok && v > 0;
    if (!ok) {
      return Invalid(path, absl::StrCat("gemm_tflops.fp8_dense (", fp8_dense_gemm_tflops,
                                        ") must be > 0 and gemm_tflops.fp8_expert (", Numbers(fp8_expert_tflops),
                                        ") have one rate > 0 per entry of gemm_tflops.expert_rows (",
                                        expert_rows.size(), "); give both or neither"));
    }
  }
  if (!(elementwise_fraction >= 0 && elementwise_fraction < 10)) {
    return Invalid(path, absl::StrCat("elementwise_fraction must be in [0, 10), got ", elementwise_fraction));
  }
  if (!(fragmentation >= 0 && fragmentation < 1)) {
    return Invalid(path, absl::StrCat("activations.fragmentation must be in [0, 1), got ", fragmentation));
  }
  if (!(all_to_all_gbps >= 0) || !(p2p_gbps >= 0)) {
    return Invalid(path, "comm_gbps.all_to_all and comm_gbps.p2p must be >= 0 (0: not measured)");
  }
  return absl::OkStatus();
}

std::string ProfileYaml(const CalibrationProfile& p) {
  std::string y = "# fathom calibration profile (parallel/profile.h): ";
  absl::StrAppend(&y,
                  p.source == "derived" ? "DERIVED from published numbers, not measured by fathom"
                                        : "measured by `fathom bench --profile`",
                  "\n");
  absl::StrAppend(&y, "source: ", p.source, "\n");
  absl::StrAppend(&y, "gpu: \"", p.gpu, "\"\n");
  absl::StrAppend(&y, "recipe: \"", p.recipe, "\"\n");
  if (!p.note.empty()) absl::StrAppend(&y, "note: \"", p.note, "\"\n");
  absl::StrAppend(
      &y, absl::StrFormat("shape: {seq_len: %d, micro_batch_size: %d, micro_batches: %d, pp: %d, ep: %d}\n",
                          p.seq_len, p.micro_batch_size, p.micro_batches, p.pp, p.ep));
  absl::StrAppend(&y, "gemm_tflops:\n");
  absl::StrAppend(&y,
                  absl::StrFormat("  dense: %.6g\n  head: %.6g\n", p.dense_gemm_tflops, p.head_gemm_tflops));
  absl::StrAppend(&y, "  expert_rows: ", Numbers(p.expert_rows), "\n");
  absl::StrAppend(&y, "  expert: ", Numbers(p.expert_tflops), "\n");
  if (p.has_fp8()) {
    absl::StrAppend(&y, absl::StrFormat("  fp8_dense: %.6g\n", p.fp8_dense_gemm_tflops));
    absl::StrAppend(&y, "  fp8_expert: ", Numbers(p.fp8_expert_tflops), "\n");
  }
  absl::StrAppend(&y, absl::StrFormat("attention_tflops: {forward: %.6g, backward: %.6g}\n",
                                      p.attention_forward_tflops, p.attention_backward_tflops));
  absl::StrAppend(&y, absl::StrFormat("elementwise_fraction: %.6g\n", p.elementwise_fraction));
  absl::StrAppend(&y, absl::StrFormat("optimizer_gbps: %.6g\n", p.optimizer_gbps));
  if (p.all_to_all_gbps > 0 || p.p2p_gbps > 0) {
    absl::StrAppend(
        &y, absl::StrFormat("comm_gbps: {all_to_all: %.6g, p2p: %.6g}\n", p.all_to_all_gbps, p.p2p_gbps));
  }
  absl::StrAppend(&y, "activations:\n");
  absl::StrAppend(&y,
                  absl::StrFormat("  estimated_gib: %.6g\n  measured_gib: %.6g\n",
                                  p.activation_estimated_bytes / kGiB, p.activation_measured_bytes / kGiB));
  absl::StrAppend(
      &y, absl::StrFormat("  layers: %d\n  micro_batches_in_flight: %d\n  tokens_per_micro_batch: %d\n",
                          p.activation_layers, p.micro_batches_in_flight, p.tokens_per_micro_batch));
  absl::StrAppend(&y, absl::StrFormat("  fragmentation: %.6g\n", p.fragmentation));
  if (p.step_ms > 0) absl::StrAppend(&y, absl::StrFormat("step_ms: %.6g\n", p.step_ms));
  return y;
}

absl::Status WriteProfile(const CalibrationProfile& profile, const std::string& path) {
  absl::Status s = WriteFileAtomically(path, ProfileYaml(profile));
  if (s.ok()) return s;
  return absl::InvalidArgumentError(absl::StrCat("cannot write the profile to ", path, ": ", s.message()));
}

absl::StatusOr<CalibrationProfile> ParseProfile(const std::string& yaml_text, const std::string& origin) {
  absl::StatusOr<YamlDocument> doc = YamlDocument::Parse(yaml_text, origin);
  if (!doc.ok()) return doc.status();
  CalibrationProfile p;
  p.path = origin;
  double estimated_gib = 0, measured_gib = 0;
  try {
    YamlMapReader r(*doc);
    if (!r.status().ok()) return r.status();  // not a map, a duplicate key
    for (const char* key : {"source", "gpu", "shape", "gemm_tflops", "attention_tflops",
                            "elementwise_fraction", "optimizer_gbps", "activations"}) {
      if (!r.Has(key)) {
        return Invalid(origin, absl::StrCat("missing key '", key,
                                            "' (a calibration profile sets every one of: source, gpu, shape, "
                                            "gemm_tflops, attention_tflops, elementwise_fraction, "
                                            "optimizer_gbps, activations)"));
      }
    }
    r.String("source", &p.source);
    r.String("gpu", &p.gpu);
    r.String("recipe", &p.recipe);
    r.String("note", &p.note);
    r.Double("elementwise_fraction", &p.elementwise_fraction);
    r.Double("optimizer_gbps", &p.optimizer_gbps);
    r.Double("step_ms", &p.step_ms);
    if (std::optional<YamlMapReader> shape = r.Map("shape")) {
      shape->Count("seq_len", &p.seq_len);
      shape->Count("micro_batch_size", &p.micro_batch_size);
      shape->Count("micro_batches", &p.micro_batches);
      shape->Count("pp", &p.pp);
      shape->Count("ep", &p.ep);
      r.Merge(shape->Finish());
    }
    if (std::optional<YamlMapReader> gemm = r.Map("gemm_tflops")) {
      gemm->Double("dense", &p.dense_gemm_tflops);
      gemm->Double("head", &p.head_gemm_tflops);
      gemm->DoubleList("expert_rows", &p.expert_rows);
      gemm->DoubleList("expert", &p.expert_tflops);
      gemm->Double("fp8_dense", &p.fp8_dense_gemm_tflops);
      gemm->DoubleList("fp8_expert", &p.fp8_expert_tflops);
      r.Merge(gemm->Finish());
    }
    if (std::optional<YamlMapReader> attn = r.Map("attention_tflops")) {
      attn->Double("forward", &p.attention_forward_tflops);
      attn->Double("backward", &p.attention_backward_tflops);
      r.Merge(attn->Finish());
    }
    if (std::optional<YamlMapReader> comm = r.Map("comm_gbps")) {
      comm->Double("all_to_all", &p.all_to_all_gbps);
      comm->Double("p2p", &p.p2p_gbps);
      r.Merge(comm->Finish());
    }
    if (std::optional<YamlMapReader> act = r.Map("activations")) {
      act->Double("estimated_gib", &estimated_gib);
      act->Double("measured_gib", &measured_gib);
      act->Count("layers", &p.activation_layers);
      act->Count("micro_batches_in_flight", &p.micro_batches_in_flight);
      act->Count("tokens_per_micro_batch", &p.tokens_per_micro_batch);
      act->Double("fragmentation", &p.fragmentation);
      r.Merge(act->Finish());
    }
    if (absl::Status s = r.Finish(); !s.ok()) return s;
  } catch (const YAML::Exception& e) {
    return Invalid(origin, absl::StrCat("YAML error: ", std::string(e.what())));
  }
  p.activation_estimated_bytes = estimated_gib * kGiB;
  p.activation_measured_bytes = measured_gib * kGiB;
  if (absl::Status s = p.Validate(); !s.ok()) return s;
  return p;
}

absl::StatusOr<CalibrationProfile> LoadProfile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("profile not found (or not a regular file): ", path));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) return absl::NotFoundError(absl::StrCat("profile could not be read: ", path));
  return ParseProfile(text.str(), path);
}

}  // namespace fathom
