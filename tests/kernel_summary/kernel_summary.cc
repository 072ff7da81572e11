// A per-kernel time summary of any CUDA program, for finding the next bottleneck where Nsight Systems is not
// installed (the GPU machine has the toolkit's CUPTI but no nsys). Preloaded, it records every kernel
// through CUPTI's activity API and, at exit, prints the kernels by total GPU time: calls, total, mean, and
// the share of all kernel time. Names are demangled and cut at 140 characters.
//   FATHOM_KERNEL_SUMMARY=OUT.txt LD_PRELOAD=build/tests/kernel_summary/libfathom_kernel_summary.so
//   build/fathom bench recipes/small.yaml --warmup 0 --steps 3      (both on one command line)
// FATHOM_KERNEL_SUMMARY names the output file (default: standard error); FATHOM_KERNEL_SUMMARY_TOP the
// number of rows (default 60). Overlapping kernels (several streams) each count their own time.
#include <cupti.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct KernelTotal {
  int64_t calls = 0;
  uint64_t ns = 0;
};

std::mutex g_mutex;
std::map<std::string, KernelTotal>* g_totals = nullptr;
uint64_t g_first = UINT64_MAX, g_last = 0;
bool g_ok = false;

constexpr size_t kBufferBytes = size_t{8} << 20;

std::string Demangle(const char* name) {
  if (name == nullptr) return "(unnamed)";
  int status = 0;
  char* out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = status == 0 && out != nullptr ? out : name;
  std::free(out);
  if (s.size() > 140) s = s.substr(0, 137) + "...";
  return s;
}

void Report();

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  // Registered at the first buffer, after the CUDA runtime's own exit handler: handlers run in reverse, so
  // the final flush comes while the context still exists.
  static const bool registered = std::atexit(Report) == 0;
  (void)registered;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  std::lock_guard<std::mutex> lock(g_mutex);
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && record->kind != CUPTI_ACTIVITY_KIND_KERNEL)
      continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel9*>(record);
    KernelTotal& t = (*g_totals)[Demangle(k->name)];
    t.calls += 1;
    t.ns += k->end - k->start;
    g_first = std::min<uint64_t>(g_first, k->start);
    g_last = std::max<uint64_t>(g_last, k->end);
  }
  std::free(buffer);
}

void Report() {
  if (!g_ok) return;
  cuptiActivityFlushAll(1);
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<std::pair<std::string, KernelTotal>> rows(g_totals->begin(), g_totals->end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  uint64_t all = 0;
  int64_t calls = 0;
  for (const auto& r : rows) all += r.second.ns, calls += r.second.calls;
  const char* path = std::getenv("FATHOM_KERNEL_SUMMARY");
  FILE* out = path != nullptr && *path != '\0' ? std::fopen(path, "w") : stderr;
  if (out == nullptr) out = stderr;
  const char* top_env = std::getenv("FATHOM_KERNEL_SUMMARY_TOP");
  const size_t top = top_env != nullptr ? std::strtoul(top_env, nullptr, 10) : 60;
  std::fprintf(out,
               "kernel summary: %lld kernels, %.3f ms of kernel time, %.3f ms from the first start to the "
               "last end\n",
               static_cast<long long>(calls), all * 1e-6, g_last > g_first ? (g_last - g_first) * 1e-6 : 0.0);
  std::fprintf(out, "%10s %8s %10s %6s  %s\n", "total ms", "calls", "mean us", "%", "kernel");
  for (size_t i = 0; i < rows.size() && i < top; ++i) {
    const KernelTotal& t = rows[i].second;
    std::fprintf(out, "%10.3f %8lld %10.2f %5.1f%%  %s\n", t.ns * 1e-6, static_cast<long long>(t.calls),
                 t.ns * 1e-3 / static_cast<double>(t.calls), all > 0 ? 100.0 * t.ns / all : 0.0,
                 rows[i].first.c_str());
  }
  if (out != stderr) std::fclose(out);
}

__attribute__((constructor)) void Start() {
  g_totals = new std::map<std::string, KernelTotal>();
  if (cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
    std::fprintf(stderr, "kernel summary: CUPTI refused the activity API; no summary\n");
    return;
  }
  cuptiActivityFlushPeriod(200);  // buffers reach BufferCompleted every 200 ms, not only when full
  g_ok = true;
}

}  // namespace
