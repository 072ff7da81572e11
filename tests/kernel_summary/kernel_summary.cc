// A per-kernel time summary of any CUDA program, for finding the next bottleneck where Nsight Systems is not
// installed (the GPU machine has the toolkit's CUPTI but no nsys). Preloaded, it records every kernel
// through CUPTI's activity API and, at exit, prints the kernels by total GPU time: calls, total, mean, and
// the share of all kernel time. Names are demangled and cut at 140 characters.
//   FATHOM_KERNEL_SUMMARY=OUT.txt LD_PRELOAD=build/tests/kernel_summary/libfathom_kernel_summary.so
//   build/fathom bench recipes/small.yaml --warmup 0 --steps 3      (both on one command line)
// FATHOM_KERNEL_SUMMARY names the output file (default: standard error); FATHOM_KERNEL_SUMMARY_TOP the
// number of rows (default 60). Overlapping kernels (several streams) each count their own time; the device
// busy and idle times come from the union of all kernel spans.
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
struct Span {
  uint64_t start, end;
  const std::string* name;  // a key of g_totals (std::map keys stay put)
  bool operator<(const Span& o) const { return start < o.start; }
};
std::vector<Span>* g_spans = nullptr;  // every kernel's [start, end)
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
    auto it = g_totals->try_emplace(Demangle(k->name)).first;
    KernelTotal& t = it->second;
    t.calls += 1;
    t.ns += k->end - k->start;
    g_spans->push_back({k->start, k->end, &it->first});
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
  // The device's idle time between kernels: the gaps of the union of all kernel spans, within the last
  // FATHOM_KERNEL_SUMMARY_WINDOW_MS of the run (default: all of it; a bench's timed steps are its end).
  // Gaps under 1 ms are the bubbles inside a step (launch latency, host synchronisation); longer ones are
  // start-up and host work. Each short gap is charged to the kernel that ends it: the launch that came late.
  std::sort(g_spans->begin(), g_spans->end());
  const char* window_env = std::getenv("FATHOM_KERNEL_SUMMARY_WINDOW_MS");
  const double window_ms = window_env != nullptr ? std::strtod(window_env, nullptr) : 0;
  const uint64_t from_ns = window_ms > 0 && g_last > static_cast<uint64_t>(window_ms * 1e6)
                               ? g_last - static_cast<uint64_t>(window_ms * 1e6)
                               : 0;
  uint64_t busy = 0, short_idle = 0, long_idle = 0, covered_to = 0;
  int64_t short_gaps = 0;
  std::map<const std::string*, std::pair<uint64_t, int64_t>> late;  // idle ns and gaps before each kernel
  for (const Span& sp : *g_spans) {
    if (sp.start < from_ns) continue;
    if (covered_to != 0 && sp.start > covered_to) {
      const uint64_t gap = sp.start - covered_to;
      if (gap < 1000000) {
        short_idle += gap;
        short_gaps += 1;
        late[sp.name].first += gap;
        late[sp.name].second += 1;
      } else {
        long_idle += gap;
      }
    }
    const uint64_t from = std::max(sp.start, covered_to);
    if (sp.end > from) busy += sp.end - from;
    covered_to = std::max(covered_to, sp.end);
  }
  std::fprintf(
      out,
      "window %s: device busy (union of kernel spans) %.3f ms; idle %.3f ms in %lld gaps under 1 ms, "
      "%.3f ms in longer gaps\n",
      window_ms > 0 ? (std::to_string(window_ms) + " ms").c_str() : "whole run", busy * 1e-6,
      short_idle * 1e-6, static_cast<long long>(short_gaps), long_idle * 1e-6);
  std::vector<std::pair<const std::string*, std::pair<uint64_t, int64_t>>> lates(late.begin(), late.end());
  std::sort(lates.begin(), lates.end(),
            [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  std::fprintf(out, "short idle gaps by the kernel that ended them:\n%10s %8s  %s\n", "idle ms", "gaps",
               "kernel");
  for (size_t i = 0; i < lates.size() && i < 25; ++i)
    std::fprintf(out, "%10.3f %8lld  %s\n", lates[i].second.first * 1e-6,
                 static_cast<long long>(lates[i].second.second), lates[i].first->c_str());
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
  g_spans = new std::vector<Span>();
  if (cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
    std::fprintf(stderr, "kernel summary: CUPTI refused the activity API; no summary\n");
    return;
  }
  cuptiActivityFlushPeriod(200);  // buffers reach BufferCompleted every 200 ms, not only when full
  g_ok = true;
}

}  // namespace
