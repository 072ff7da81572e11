// Causal attention through cuDNN's fused flash-attention (SDPA) engines, described with cuDNN's graph
// (backend) API directly: no cudnn_frontend, one operation graph per direction built from cuDNN's
// primitive operations in the pattern its fused SDPA engines recognise:
//   forward : S = Q K^T (f32), S *= scale, causal mask (row index >= column index, else -inf), softmax with
//             statistics (max, subtract, exp, sum, log, add -> lse = max + log(sum), kept f32 for the
//             backward), P = exp / sum rounded to bf16, O = P V.
//   backward: D = rowsum(dO * O) (f32, workspace), S = scale Q K^T, P = exp(mask(S - lse)),
//             dV = P^T dO, dP = dO V^T, dS = P * (dP - D) * scale, dK = dS^T Q, dQ = dS K (accumulated in
//             f32 in the workspace, then rounded to bf16).
// Same math, layouts and lse definition as framework/kernels/cuda/attention.h (natural-log log-sum-exp of
// the scaled scores, (B, H, T) f32): a forward of one path and a backward of the other agree.
//
// Layout: q, k (B, T, H, Dk), v, out and their gradients (B, T, H, Dv) bf16 row-major, lse (B, H, T) f32;
// cuDNN reads and writes them in place through strides (no transposes, no copies). Every data pointer must
// be 16-byte aligned (checked).
//
// Plans. The first PrepareCudnnAttention (or first call) for a shape on a device builds both operation
// graphs, asks cuDNN's heuristics (mode A, then the fallback list) for engine configurations, keeps the
// first one whose execution plan finalizes, and allocates one device workspace per direction (the engine's
// workspace; the backward adds D (B, H, T) f32 and the dq accumulator (B, H, T, Dk) f32) with cudaMalloc.
// Plans and workspaces are cached for the process's lifetime (never freed: they are released with the
// CUDA context), keyed by (device, B, T, H, Dk, Dv); a refusal is cached too. Building takes cuDNN's
// run-time compilation (about a second per plan), so the trainer prepares its shapes at start-up (then
// nothing is allocated inside the step loop). The softmax scale is passed by value at each call and is not
// part of the key.
//
// Measured (H200, cuDNN 9.14, B 2 T 4096 H 16 Dk 192 Dv 128, tests/gpu_bench/attention_bench.cc): forward
// 0.352 ms = 489 TFLOP/s, backward 1.16 ms = 371 TFLOP/s (the own tensor-core kernels: 264 / 127).
//
// Numerics (cuDNN's): f32 scores, softmax and accumulators; P and dS enter their second products as bf16
// (like the tensor-core path); outputs rounded to bf16 once. By default dq is accumulated with f32 atomics
// across key tiles, so it is NOT bitwise reproducible run to run (differences are f32 round-off before the
// final bf16 rounding); out, lse, dk and dv are. SetCudnnAttentionDeterministic(true) asks for plans that
// are (below).
//
// Threads and streams: thread safe (one mutex around the cache); work is queued on `stream` with no host
// synchronisation. Calls for one shape share that shape's workspace, so they must be ordered with each
// other (one stream, as the trainer's compute stream does).
// Builds without cuDNN (FATHOM_WITH_CUDNN undefined) compile this file; PrepareCudnnAttention then returns
// kUnimplemented and the run functions fail a FATHOM_CHECK.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_ATTENTION_CUDNN_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_ATTENTION_CUDNN_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "framework/cuda/stream.h"
#include "framework/tensor.h"

namespace fathom::cuda {

// One attention problem: q, k (b, t, h, dk), v (b, t, h, dv), bf16.
struct AttentionShape {
  int64_t b = 0, t = 0, h = 0, dk = 0, dv = 0;
  bool operator==(const AttentionShape&) const = default;
};

// "B2 T4096 H16 Dk192 Dv128".
std::string AttentionShapeName(const AttentionShape& shape);

// Whether this build links cuDNN.
bool CudnnAttentionCompiled();

// Deterministic mode (train.deterministic), process-wide and read at every call (each mode has its own cached
// plans): set it once at start-up, before preparing the shapes (changing it later builds the other mode's
// plans at their first use, with their workspace allocation, inside whatever step makes that call). On: the
// backward is spelled with dQ = dS K written straight into dq (cuDNN's dP-workspace algorithm, no f32
// accumulator and no atomics), and in both directions an engine configuration whose engine carries
// CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC is passed over; a shape for which nothing remains is refused
// (PrepareCudnnAttention says why) and the dispatcher (attention.h) takes the own tensor-core kernels, which
// are deterministic. The deterministic backward's engine workspace (the size its plan reports) can hold dP
// for the whole problem, B x H x T^2 x 2 bytes as cudnn_frontend sizes it (1 GiB at recipes/small.yaml's B 2,
// H 16, T 4096), allocated with the plan outside the activation pool, from the memory plan's reserve; when
// it does not fit, the shape is refused (kResourceExhausted) and the own kernels run. Off (default): the
// fastest plans, dq not bitwise reproducible.
void SetCudnnAttentionDeterministic(bool on);
bool CudnnAttentionDeterministic();

// Builds (first call per device and shape) or looks up the cached forward and backward plans of `shape` on
// the current device. OK when both exist (their workspaces allocated); otherwise why cuDNN is not used:
// kUnimplemented (no cuDNN in this build), kFailedPrecondition (cuDNN older than 9.0, no device) or
// kNotFound (cuDNN refused the graphs: the message lists each graph variant tried and cuDNN's reason).
absl::Status PrepareCudnnAttention(const AttentionShape& shape);

// One line about the cached plans of `shape` (REQUIRES PrepareCudnnAttention(shape) OK):
// "cuDNN 91400 fused SDPA (forward engine 2 variant 0, backward engine 2 variant 0; workspace 96.5 MiB)".
std::string CudnnAttentionSummary(const AttentionShape& shape);

// out (B, T, H, Dv) bf16 and lse (B, H, T) f32 overwritten; q, k (B, T, H, Dk), v (B, T, H, Dv) bf16.
// s_ij = scale * q_i . k_j for j <= i. Prepares the shape on first use; a refused shape fails a
// FATHOM_CHECK (callers choose this path only after PrepareCudnnAttention returned OK).
void CudnnAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                           const Tensor& v, double scale, Stream stream);

// dq, dk (B, T, H, Dk) and dv (B, T, H, Dv) bf16 overwritten; dout, out (B, T, H, Dv) bf16 and lse
// (B, H, T) f32 as a forward (either path) saved them. The gradients must not alias the inputs.
void CudnnAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                            const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse, double scale, Stream stream);

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_ATTENTION_CUDNN_H_
