#include "parallel/cluster.h"

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "framework/yaml_reader.h"

namespace fathom {
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

absl::Status CheckPositive(const std::string& key, double value) {
  if (value > 0) return absl::OkStatus();
  return Invalid(absl::StrCat(key, " must be > 0, got ", value));
}

absl::Status CheckFraction(const std::string& key, double value, bool allow_zero, bool allow_one) {
  const bool ok = (allow_zero ? value >= 0 : value > 0) && (allow_one ? value <= 1 : value < 1);
  if (ok) return absl::OkStatus();
  return Invalid(absl::StrCat(key, " must be in ", allow_zero ? "[0, " : "(0, ", allow_one ? "1]" : "1)",
                              ", got ", value));
}

}  // namespace

double ClusterConfig::EstimateError() const {
  if (estimate_error) return *estimate_error;
  return profile ? profile->ActivationError() : kUncalibratedEstimateError;
}

double ClusterConfig::Fragmentation() const {
  if (fragmentation) return *fragmentation;
  return profile && profile->fragmentation > 0 ? profile->fragmentation : kDefaultFragmentation;
}

std::string ClusterConfig::Calibration() const {
  if (profile) {
    return absl::StrCat("calibrated by ", profile->path, " (",
                        profile->source == "derived"
                            ? "derived by hand from other measurements, not by fathom bench --profile"
                            : "measured by fathom bench --profile",
                        profile->gpu.empty() ? "" : ", " + profile->gpu, ")");
  }
  return absl::StrCat("UNCALIBRATED: the cluster file's guessed efficiencies (gemm ", efficiency.gemm,
                      ", attention ", efficiency.attention, ", comm ", efficiency.comm,
                      "); give the cluster a `profile:` from `fathom bench --profile`");
}

std::string ClusterConfig::Fp8Caveat(bool fp8_gemm, bool fathom_policy) const {
  if (!fp8_gemm || (profile && profile->has_fp8())) return "";
  std::string s = absl::StrCat("FP8 GEMMs are not measured by ", profile ? "the profile" : "this cluster file",
                               ": rated at the FP8 peak (", peak_fp8_tflops, " TFLOP/s) with the bf16 efficiency");
  if (fathom_policy) {
    absl::StrAppend(&s, ", an optimistic guess fathom's FP8 path does not reach yet (on one H200, 2026-12-04: "
                        "recipes/small.yaml's fp8 step ran at 0.82x of its bf16 step's speed); `fathom bench RECIPE "
                        "--profile OUT.yaml` measures the FP8 rates into the profile");
  }
  return s;
}

absl::Status ClusterConfig::Validate() const {
  const std::vector<absl::Status> checks = {
      nodes >= 1 ? absl::OkStatus() : Invalid(absl::StrCat("nodes must be >= 1, got ", nodes)),
      gpus_per_node >= 1 ? absl::OkStatus()
                         : Invalid(absl::StrCat("gpus_per_node must be >= 1, got ", gpus_per_node)),
      CheckPositive("hbm_gib", hbm_gib),
      CheckPositive("hbm_tbps", hbm_tbps),
      CheckPositive("peak_bf16_tflops", peak_bf16_tflops),
      CheckPositive("peak_fp8_tflops", peak_fp8_tflops),
      CheckPositive("nvlink_gbps", nvlink_gbps),
      CheckPositive("network_gbps_per_gpu", network_gbps_per_gpu),
      network_latency_us >= 0
          ? absl::OkStatus()
          : Invalid(absl::StrCat("network_latency_us must be >= 0, got ", network_latency_us)),
      nvlink_latency_us >= 0
          ? absl::OkStatus()
          : Invalid(absl::StrCat("nvlink_latency_us must be >= 0, got ", nvlink_latency_us)),
      memory_reserve_gib >= 0 && memory_reserve_gib < hbm_gib
          ? absl::OkStatus()
          : Invalid(absl::StrCat("memory_reserve_gib must be in [0, hbm_gib = ", hbm_gib, "), got ",
                                 memory_reserve_gib)),
      CheckFraction("comm_sm_fraction", comm_sm_fraction, /*allow_zero=*/true, /*allow_one=*/false),
      CheckFraction("efficiency.gemm", efficiency.gemm, false, true),
      CheckFraction("efficiency.attention", efficiency.attention, false, true),
      CheckFraction("efficiency.comm", efficiency.comm, false, true),
      !estimate_error || (*estimate_error >= 0 && *estimate_error < 1)
          ? absl::OkStatus()
          : Invalid(absl::StrCat("memory_headroom.estimate_error must be in [0, 1), got ", *estimate_error)),
      !fragmentation || (*fragmentation >= 0 && *fragmentation < 1)
          ? absl::OkStatus()
          : Invalid(absl::StrCat("memory_headroom.fragmentation must be in [0, 1), got ", *fragmentation)),
      !run || (run->checkpoint_gbps_per_gpu > 0 && run->checkpoint_interval_min > 0 &&
               run->gpu_mtbf_hours > 0 && run->restart_min >= 0 && run->eval_fraction >= 0 &&
               run->eval_fraction < 1 && run->batch_ramp_tokens >= 0)
          ? absl::OkStatus()
          : Invalid("run: checkpoint_gbps_per_gpu, checkpoint_interval_min and gpu_mtbf_hours must be > 0, "
                    "restart_min and batch_ramp_tokens >= 0, eval_fraction in [0, 1)"),
  };
  for (const absl::Status& s : checks) {
    if (!s.ok()) {
      return path.empty() ? s : absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ClusterConfig> ParseCluster(const std::string& yaml_text, const std::string& origin) {
  absl::StatusOr<YamlDocument> doc = YamlDocument::Parse(yaml_text, origin);
  if (!doc.ok()) return doc.status();
  ClusterConfig c;
  c.path = origin;
  // Every number is required: a cluster file that forgets one would otherwise be simulated with a zero.
  const std::vector<std::string> required = {"nodes",
                                             "gpus_per_node",
                                             "hbm_gib",
                                             "hbm_tbps",
                                             "peak_bf16_tflops",
                                             "peak_fp8_tflops",
                                             "nvlink_gbps",
                                             "network_gbps_per_gpu",
                                             "network_latency_us",
                                             "nvlink_latency_us",
                                             "memory_reserve_gib",
                                             "comm_sm_fraction",
                                             "efficiency"};
  try {
    YamlMapReader r(*doc);
    // Not a map or a duplicate key: said before anything is looked up.
    if (!r.status().ok()) return r.status();
    r.String("name", &c.name);
    r.String("gpu", &c.gpu);
    r.Count("nodes", &c.nodes);
    r.Count("gpus_per_node", &c.gpus_per_node);
    r.Double("hbm_gib", &c.hbm_gib);
    r.Double("hbm_tbps", &c.hbm_tbps);
    r.Double("peak_bf16_tflops", &c.peak_bf16_tflops);
    r.Double("peak_fp8_tflops", &c.peak_fp8_tflops);
    r.Double("nvlink_gbps", &c.nvlink_gbps);
    r.Double("network_gbps_per_gpu", &c.network_gbps_per_gpu);
    r.Double("network_latency_us", &c.network_latency_us);
    r.Double("nvlink_latency_us", &c.nvlink_latency_us);
    r.Double("memory_reserve_gib", &c.memory_reserve_gib);
    r.Double("comm_sm_fraction", &c.comm_sm_fraction);
    std::string profile_path;
    r.String("profile", &profile_path);
    if (!profile_path.empty() && r.status().ok()) {
      // Relative to the cluster file, so a checkout's recipes/clusters and recipes/profiles travel together.
      std::filesystem::path full(profile_path);
      if (full.is_relative()) full = std::filesystem::path(origin).parent_path() / full;
      absl::StatusOr<CalibrationProfile> profile = LoadProfile(full.lexically_normal().string());
      if (!profile.ok()) {
        return absl::Status(profile.status().code(),
                            absl::StrCat(origin, ": profile: ", profile.status().message()));
      }
      c.profile = *std::move(profile);
    }
    if (std::optional<YamlMapReader> head = r.Map("memory_headroom")) {
      double error = -1, fragmentation = -1;
      head->Double("estimate_error", &error);
      head->Double("fragmentation", &fragmentation);
      if (head->Has("estimate_error")) c.estimate_error = error;
      if (head->Has("fragmentation")) c.fragmentation = fragmentation;
      r.Merge(head->Finish());
    }
    if (std::optional<YamlMapReader> run = r.Map("run")) {
      RunAssumptions a;
      for (const char* key : {"checkpoint_gbps_per_gpu", "checkpoint_interval_min", "gpu_mtbf_hours",
                              "restart_min", "eval_fraction", "batch_ramp_start", "batch_ramp_tokens"}) {
        if (!run->Has(key)) {
          return Invalid(absl::StrCat(origin, ": missing key 'run.", key,
                                      "' (run sets checkpoint_gbps_per_gpu, checkpoint_interval_min, "
                                      "gpu_mtbf_hours, restart_min, eval_fraction, batch_ramp_start, "
                                      "batch_ramp_tokens)"));
        }
      }
      run->Double("checkpoint_gbps_per_gpu", &a.checkpoint_gbps_per_gpu);
      run->Double("checkpoint_interval_min", &a.checkpoint_interval_min);
      run->Double("gpu_mtbf_hours", &a.gpu_mtbf_hours);
      run->Double("restart_min", &a.restart_min);
      run->Double("eval_fraction", &a.eval_fraction);
      run->Count("batch_ramp_start", &a.batch_ramp_start);
      run->Double("batch_ramp_tokens", &a.batch_ramp_tokens);
      r.Merge(run->Finish());
      c.run = a;
    }
    std::optional<YamlMapReader> eff = r.Map("efficiency");
    if (eff) {
      for (const std::string key : {"gemm", "attention", "comm"}) {
        if (!eff->Has(key)) {
          return Invalid(absl::StrCat(origin, ": missing key 'efficiency.", key,
                                      "' (efficiency sets gemm, attention and comm)"));
        }
      }
      eff->Double("gemm", &c.efficiency.gemm);
      eff->Double("attention", &c.efficiency.attention);
      eff->Double("comm", &c.efficiency.comm);
      r.Merge(eff->Finish());
    }
    // Unknown keys first (a misspelled key is named with the one it resembles), then the missing ones.
    if (absl::Status s = r.Finish(); !s.ok()) return s;
    for (const std::string& key : required) {
      if (!r.Has(key)) {
        return Invalid(
            absl::StrCat(origin, ": missing key '", key, "' (a cluster file sets every one of: ",
                         "nodes, gpus_per_node, hbm_gib, hbm_tbps, peak_bf16_tflops, peak_fp8_tflops, ",
                         "nvlink_gbps, network_gbps_per_gpu, network_latency_us, nvlink_latency_us, ",
                         "memory_reserve_gib, comm_sm_fraction, efficiency)"));
      }
    }
  } catch (const YAML::Exception& e) {
    return Invalid(absl::StrCat(origin, ": YAML error: ", std::string(e.what())));
  }
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  return c;
}

absl::StatusOr<ClusterConfig> LoadCluster(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("cluster file not found (or not a regular file): ", path));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof())
    return absl::NotFoundError(absl::StrCat("cluster file could not be read: ", path));
  return ParseCluster(text.str(), path);
}

}  // namespace fathom
