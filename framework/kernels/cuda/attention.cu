#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "framework/cuda/check.h"
#include "framework/cuda/numeric.cuh"
#include "framework/kernels/cuda/attention.h"
#include "framework/kernels/cuda/attention_mma.cuh"

namespace fathom::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kFwdBlockQ = 64;  // query rows per forward block
constexpr int kFwdBlockK = 32;  // keys per streamed K/V tile (forward)
constexpr int kBwdBlock = 32;   // query and key tile of both backward kernels
constexpr int kLdS = 33;        // shared-memory row stride of every score-sized (x 32) tile
constexpr int kMaxHeadDim = 256;

// Shapes as the kernels see them. Head dims are padded to a multiple of 4 (dkp, dvp) with zeros so the 4-wide
// micro-tiles divide them; shared-memory row strides (ldk, ldv) are odd so that threads walking different
// rows of one column hit different banks.
struct Dims {
  int b, t, h, dk, dv, dkp, dvp, ldk, ldv;
};

Dims MakeDims(int64_t b, int64_t t, int64_t h, int64_t dk, int64_t dv) {
  Dims d{};
  d.b = static_cast<int>(b);
  d.t = static_cast<int>(t);
  d.h = static_cast<int>(h);
  d.dk = static_cast<int>(dk);
  d.dv = static_cast<int>(dv);
  d.dkp = (d.dk + 3) / 4 * 4;
  d.dvp = (d.dv + 3) / 4 * 4;
  d.ldk = d.dkp + 1;
  d.ldv = d.dvp + 1;
  return d;
}

// Shared-memory footprints (floats), mirroring the carve-up at the top of each kernel.
size_t ForwardSmemBytes(const Dims& d) {
  return sizeof(float) * (static_cast<size_t>(kFwdBlockQ + kFwdBlockK) * (d.ldk + d.ldv) + kFwdBlockQ * kLdS +
                          3 * kFwdBlockQ);
}
size_t BackwardKvSmemBytes(const Dims& d) {
  return sizeof(float) *
         (3 * kBwdBlock * static_cast<size_t>(d.ldk + d.ldv) + 2 * kBwdBlock * kLdS + 2 * kBwdBlock);
}
size_t BackwardQSmemBytes(const Dims& d) {
  return sizeof(float) *
         (kBwdBlock * static_cast<size_t>(3 * d.ldk + 2 * d.ldv) + 2 * kBwdBlock * kLdS + 2 * kBwdBlock);
}

// Copies rows [row0, row0 + rows) of one head of x (B, T, H, D) into s (rows x ld floats, f32): `base` is the
// offset of element (b, 0, h, 0), `stride` = H * D. Rows >= T and columns [D, dp) are zero so padded lanes
// contribute nothing to any product.
template <class T>
__device__ void LoadTile(float* s, int ld, const T* x, int64_t base, int64_t stride, int row0, int rows,
                         int t, int d, int dp) {
  for (int idx = threadIdx.x; idx < rows * dp; idx += kThreads) {
    const int r = idx / dp, c = idx % dp, row = row0 + r;
    s[r * ld + c] = (row < t && c < d) ? LoadF32(x + base + row * stride + c) : 0.f;
  }
}

__device__ void ZeroTile(float* s, int ld, int rows, int cols) {
  for (int idx = threadIdx.x; idx < rows * cols; idx += kThreads) s[(idx / cols) * ld + idx % cols] = 0.f;
}

// C (m x n) = A (m x k) B (k x n) over shared-memory operands, element (r, c) of A at a[r * a_rs + c * a_cs]
// (likewise B), so transposed operands are a matter of strides. Each thread computes TM x TN micro-tiles
// whose rows are strided by m / TM and columns by n / TN (neighbouring threads read neighbouring columns: no
// bank conflicts on row-major B, broadcasts on A) and hands every result to epi(row, col, value). Which
// thread owns an element depends only on (m, n, TM, TN), so an epilogue may read-modify-write a shared-memory
// accumulator that the same call pattern owns, or read what an earlier call with the same (m, n, TM, TN)
// wrote, without a barrier. Summation over k is sequential: results depend only on the shapes
// (deterministic).
template <int TM, int TN, class Epilogue>
__device__ __forceinline__ void BlockGemm(int m, int n, int k, const float* a, int a_rs, int a_cs,
                                          const float* b, int b_rs, int b_cs, Epilogue epi) {
  const int gm = m / TM, gn = n / TN;
  for (int tile = threadIdx.x; tile < gm * gn; tile += kThreads) {
    const int tm = tile / gn, tn = tile % gn;
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;
    const float* ap = a + tm * a_rs;
    const float* bp = b + tn * b_cs;
    for (int kk = 0; kk < k; ++kk) {
      float av[TM], bv[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) av[i] = ap[i * gm * a_rs + kk * a_cs];
#pragma unroll
      for (int j = 0; j < TN; ++j) bv[j] = bp[kk * b_rs + j * gn * b_cs];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) epi(tm + i * gm, tn + j * gn, acc[i][j]);
  }
}

// delta[r] = dout_i . out_i for the tile's rows i = q0 + r (0 past T), one warp per row, fixed shuffle order.
template <class T>
__device__ void RowDelta(float* delta, const float* sdo, int ldv, const T* out, int64_t base, int64_t stride,
                         int q0, int rows, int t, int dv) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < rows; r += kWarps) {
    const int i = q0 + r;
    float s = 0.f;
    if (i < t)
      for (int c = lane; c < dv; c += 32) s = fmaf(sdo[r * ldv + c], LoadF32(out + base + i * stride + c), s);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) delta[r] = s;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    AttentionForwardKernel(T* out, float* lse, const T* q, const T* k, const T* v, Dims d, float scale) {
  extern __shared__ float smem[];
  float* sq = smem;                     // (kFwdBlockQ, ldk)  queries
  float* sk = sq + kFwdBlockQ * d.ldk;  // (kFwdBlockK, ldk)  keys
  float* sv = sk + kFwdBlockK * d.ldk;  // (kFwdBlockK, ldv)  values
  float* so = sv + kFwdBlockK * d.ldv;  // (kFwdBlockQ, ldv)  unnormalised output accumulator
  float* ss = so + kFwdBlockQ * d.ldv;  // (kFwdBlockQ, kLdS) scores, then probabilities
  float* sm = ss + kFwdBlockQ * kLdS;   // (kFwdBlockQ) running max
  float* sl = sm + kFwdBlockQ;          // (kFwdBlockQ) running sum
  float* salpha = sl + kFwdBlockQ;      // (kFwdBlockQ) rescale of this step

  const int bh = blockIdx.y, bi = bh / d.h, hi = bh % d.h;
  const int q0 = blockIdx.x * kFwdBlockQ;
  const int64_t qk_base = (static_cast<int64_t>(bi) * d.t * d.h + hi) * d.dk;
  const int64_t qk_stride = static_cast<int64_t>(d.h) * d.dk;
  const int64_t v_base = (static_cast<int64_t>(bi) * d.t * d.h + hi) * d.dv;
  const int64_t v_stride = static_cast<int64_t>(d.h) * d.dv;

  LoadTile(sq, d.ldk, q, qk_base, qk_stride, q0, kFwdBlockQ, d.t, d.dk, d.dkp);
  ZeroTile(so, d.ldv, kFwdBlockQ, d.dvp);
  for (int r = threadIdx.x; r < kFwdBlockQ; r += kThreads) {
    sm[r] = -INFINITY;
    sl[r] = 0.f;
  }
  // Key tiles up to the one holding the tile's last valid query. Tile 0 comes first and key 0 is visible to
  // every row, so every running max is finite after the first step (no -inf - -inf).
  const int last_row = min(q0 + kFwdBlockQ, d.t) - 1;
  const int num_kb = last_row / kFwdBlockK + 1;
  for (int kb = 0; kb < num_kb; ++kb) {
    const int k0 = kb * kFwdBlockK;
    __syncthreads();  // the previous step is done with sk, sv, ss
    LoadTile(sk, d.ldk, k, qk_base, qk_stride, k0, kFwdBlockK, d.t, d.dk, d.dkp);
    LoadTile(sv, d.ldv, v, v_base, v_stride, k0, kFwdBlockK, d.t, d.dv, d.dvp);
    __syncthreads();
    BlockGemm<4, 4>(kFwdBlockQ, kFwdBlockK, d.dkp, sq, d.ldk, 1, sk, 1, d.ldk, [&](int r, int c, float acc) {
      const int i = q0 + r, j = k0 + c;
      ss[r * kLdS + c] = (j <= i && j < d.t) ? scale * acc : -INFINITY;
    });
    __syncthreads();
    // One thread per row: 32 scores each, negligible next to the products.
    for (int r = threadIdx.x; r < kFwdBlockQ; r += kThreads) {
      float* row = ss + r * kLdS;
      const float m_old = sm[r];
      float m_new = m_old;
      for (int c = 0; c < kFwdBlockK; ++c) m_new = fmaxf(m_new, row[c]);
      const float alpha = expf(m_old - m_new);
      float sum = 0.f;
      for (int c = 0; c < kFwdBlockK; ++c) {
        const float p = expf(row[c] - m_new);
        row[c] = p;
        sum += p;
      }
      sm[r] = m_new;
      sl[r] = sl[r] * alpha + sum;
      salpha[r] = alpha;
    }
    __syncthreads();
    BlockGemm<4, 4>(kFwdBlockQ, d.dvp, kFwdBlockK, ss, kLdS, 1, sv, d.ldv, 1, [&](int r, int c, float acc) {
      float* o = so + r * d.ldv + c;
      *o = *o * salpha[r] + acc;
    });
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kFwdBlockQ * d.dv; idx += kThreads) {
    const int r = idx / d.dv, c = idx % d.dv, i = q0 + r;
    if (i < d.t) StoreF32(out + v_base + i * v_stride + c, so[r * d.ldv + c] / sl[r]);
  }
  for (int r = threadIdx.x; r < kFwdBlockQ; r += kThreads) {
    const int i = q0 + r;
    if (i < d.t) lse[static_cast<int64_t>(bh) * d.t + i] = sm[r] + logf(sl[r]);
  }
}

// Scores and dS of one (32-query, 32-key) tile pair, shared by both backward kernels:
//   sp  = P  = exp(scale * q k^T - lse) on the causal, in-range entries, 0 elsewhere;
//   sds = dS = P * (dout v^T - delta)   (the softmax scale is applied once, to the final dq / dk).
// Both products use the same (m, n, TM, TN), so the dS epilogue reads the P its own thread wrote.
__device__ __forceinline__ void TilePAndDs(float* sp, float* sds, const float* sq, const float* sdo,
                                           const float* sk, const float* sv, const float* slse,
                                           const float* sdelta, const Dims& d, int q0, int k0, float scale) {
  BlockGemm<2, 4>(kBwdBlock, kBwdBlock, d.dkp, sq, d.ldk, 1, sk, 1, d.ldk, [&](int r, int c, float acc) {
    const int i = q0 + r, j = k0 + c;
    sp[r * kLdS + c] = (i < d.t && j <= i) ? expf(scale * acc - slse[r]) : 0.f;
  });
  BlockGemm<2, 4>(kBwdBlock, kBwdBlock, d.dvp, sdo, d.ldv, 1, sv, 1, d.ldv,
                  [&](int r, int c, float acc) { sds[r * kLdS + c] = sp[r * kLdS + c] * (acc - sdelta[r]); });
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    AttentionBackwardKvKernel(T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out,
                              const float* lse, Dims d, float scale) {
  extern __shared__ float smem[];
  float* sk = smem;                      // (32, ldk) this block's keys
  float* sv = sk + kBwdBlock * d.ldk;    // (32, ldv) this block's values
  float* sdk = sv + kBwdBlock * d.ldv;   // (32, ldk) dk accumulator (unscaled)
  float* sdv = sdk + kBwdBlock * d.ldk;  // (32, ldv) dv accumulator
  float* sq = sdv + kBwdBlock * d.ldv;   // (32, ldk) query tile
  float* sdo = sq + kBwdBlock * d.ldk;   // (32, ldv) dout tile
  float* sp = sdo + kBwdBlock * d.ldv;   // (32, kLdS) P
  float* sds = sp + kBwdBlock * kLdS;    // (32, kLdS) dS
  float* slse = sds + kBwdBlock * kLdS;  // (32)
  float* sdelta = slse + kBwdBlock;      // (32)

  const int bh = blockIdx.y, bi = bh / d.h, hi = bh % d.h;
  const int k0 = blockIdx.x * kBwdBlock;
  const int64_t qk_base = (static_cast<int64_t>(bi) * d.t * d.h + hi) * d.dk;
  const int64_t qk_stride = static_cast<int64_t>(d.h) * d.dk;
  const int64_t v_base = (static_cast<int64_t>(bi) * d.t * d.h + hi) * d.dv;
  const int64_t v_stride = static_cast<int64_t>(d.h) * d.dv;
  const float* lse_bh = lse + static_cast<int64_t>(bh) * d.t;

  LoadTile(sk, d.ldk, k, qk_base, qk_stride, k0, kBwdBlock, d.t, d.dk, d.dkp);
  LoadTile(sv, d.ldv, v, v_base, v_stride, k0, kBwdBlock, d.t, d.dv, d.dvp);
  ZeroTile(sdk, d.ldk, kBwdBlock, d.dkp);
  ZeroTile(sdv, d.ldv, kBwdBlock, d.dvp);
  // Queries before k0 see none of these keys: start at the diagonal tile (tiles are equal-sized).
  const int num_qb = (d.t + kBwdBlock - 1) / kBwdBlock;
  for (int qb = blockIdx.x; qb < num_qb; ++qb) {
    const int q0 = qb * kBwdBlock;
    __syncthreads();  // the previous step is done with sq, sdo, sp, sds, slse, sdelta
    LoadTile(sq, d.ldk, q, qk_base, qk_stride, q0, kBwdBlock, d.t, d.dk, d.dkp);
    LoadTile(sdo, d.ldv, dout, v_base, v_stride, q0, kBwdBlock, d.t, d.dv, d.dvp);
    for (int r = threadIdx.x; r < kBwdBlock; r += kThreads) slse[r] = q0 + r < d.t ? lse_bh[q0 + r] : 0.f;
    __syncthreads();
    RowDelta(sdelta, sdo, d.ldv, out, v_base, v_stride, q0, kBwdBlock, d.t, d.dv);
    __syncthreads();
    TilePAndDs(sp, sds, sq, sdo, sk, sv, slse, sdelta, d, q0, k0, scale);
    __syncthreads();
    // dv += P^T dout and dk += dS^T q: the transposes are strides (a_rs = 1, a_cs = kLdS).
    BlockGemm<4, 4>(kBwdBlock, d.dvp, kBwdBlock, sp, 1, kLdS, sdo, d.ldv, 1,
                    [&](int r, int c, float acc) { sdv[r * d.ldv + c] += acc; });
    BlockGemm<4, 4>(kBwdBlock, d.dkp, kBwdBlock, sds, 1, kLdS, sq, d.ldk, 1,
                    [&](int r, int c, float acc) { sdk[r * d.ldk + c] += acc; });
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kBwdBlock * d.dk; idx += kThreads) {
    const int r = idx / d.dk, c = idx % d.dk, j = k0 + r;
    if (j < d.t) StoreF32(dk + qk_base + j * qk_stride + c, scale * sdk[r * d.ldk + c]);
  }
  for (int idx = threadIdx.x; idx < kBwdBlock * d.dv; idx += kThreads) {
    const int r = idx / d.dv, c = idx % d.dv, j = k0 + r;
    if (j < d.t) StoreF32(dv + v_base + j * v_stride + c, sdv[r * d.ldv + c]);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    AttentionBackwardQKernel(T* dq, const T* dout, const T* q, const T* k, const T* v, const T* out,
                             const float* lse, Dims d, float scale) {
  extern __shared__ float smem[];
  float* sq = smem;                      // (32, ldk) this block's queries
  float* sdq = sq + kBwdBlock * d.ldk;   // (32, ldk) dq accumulator (unscaled)
  float* sk = sdq + kBwdBlock * d.ldk;   // (32, ldk) key tile
  float* sdo = sk + kBwdBlock * d.ldk;   // (32, ldv) this block's dout
  float* sv = sdo + kBwdBlock * d.ldv;   // (32, ldv) value tile
  float* sp = sv + kBwdBlock * d.ldv;    // (32, kLdS) P
  float* sds = sp + kBwdBlock * kLdS;    // (32, kLdS) dS
  float* slse = sds + kBwdBlock * kLdS;  // (32)
  float* sdelta = slse + kBwdBlock;      // (32)

  const int bh = blockIdx.y, bi = bh / d.h, hi = bh % d.h;
  const int q0 = blockIdx.x * kBwdBlock;
  const int64_t qk_base = (static_cast<int64_t>(bi) * d.t * d.h + hi) * d.dk;
  const int64_t qk_stride = static_cast<int64_t>(d.h) * d.dk;
  const int64_t v_base = (static_cast<int64_t>(bi) * d.t * d.h + hi) * d.dv;
  const int64_t v_stride = static_cast<int64_t>(d.h) * d.dv;
  const float* lse_bh = lse + static_cast<int64_t>(bh) * d.t;

  LoadTile(sq, d.ldk, q, qk_base, qk_stride, q0, kBwdBlock, d.t, d.dk, d.dkp);
  LoadTile(sdo, d.ldv, dout, v_base, v_stride, q0, kBwdBlock, d.t, d.dv, d.dvp);
  ZeroTile(sdq, d.ldk, kBwdBlock, d.dkp);
  for (int r = threadIdx.x; r < kBwdBlock; r += kThreads) slse[r] = q0 + r < d.t ? lse_bh[q0 + r] : 0.f;
  __syncthreads();
  RowDelta(sdelta, sdo, d.ldv, out, v_base, v_stride, q0, kBwdBlock, d.t, d.dv);
  const int num_kb = (min(q0 + kBwdBlock, d.t) - 1) / kBwdBlock + 1;
  for (int kb = 0; kb < num_kb; ++kb) {
    const int k0 = kb * kBwdBlock;
    __syncthreads();  // sdelta is written; the previous step is done with sk, sv, sp, sds
    LoadTile(sk, d.ldk, k, qk_base, qk_stride, k0, kBwdBlock, d.t, d.dk, d.dkp);
    LoadTile(sv, d.ldv, v, v_base, v_stride, k0, kBwdBlock, d.t, d.dv, d.dvp);
    __syncthreads();
    TilePAndDs(sp, sds, sq, sdo, sk, sv, slse, sdelta, d, q0, k0, scale);
    __syncthreads();
    BlockGemm<4, 4>(kBwdBlock, d.dkp, kBwdBlock, sds, kLdS, 1, sk, d.ldk, 1,
                    [&](int r, int c, float acc) { sdq[r * d.ldk + c] += acc; });
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kBwdBlock * d.dk; idx += kThreads) {
    const int r = idx / d.dk, c = idx % d.dk, i = q0 + r;
    if (i < d.t) StoreF32(dq + qk_base + i * qk_stride + c, scale * sdq[r * d.ldk + c]);
  }
}

void CheckDevice(const char* op, const Tensor& t, const char* name) {
  FATHOM_CHECK(t.device() == Device::kCUDA, "[", op, "] ", name, " is a ", DeviceName(t.device()),
               " tensor, expected CUDA");
}

Dims CheckAttention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                    const Tensor& lse) {
  FATHOM_CHECK(q.ndim() == 4 && k.shape() == q.shape() && v.ndim() == 4, "[", op, "] q ", q.shape_str(),
               " k ", k.shape_str(), " v ", v.shape_str(), ", expected q, k (B, T, H, Dk), v (B, T, H, Dv)");
  const int64_t b = q.dim(0), t = q.dim(1), h = q.dim(2), dk = q.dim(3), dv = v.dim(3);
  FATHOM_CHECK(v.dim(0) == b && v.dim(1) == t && v.dim(2) == h, "[", op, "] v ", v.shape_str(),
               " does not match q ", q.shape_str());
  FATHOM_CHECK(out.shape() == v.shape(), "[", op, "] out ", out.shape_str(), ", expected ", v.shape_str());
  FATHOM_CHECK(lse.shape() == Shape({b, h, t}) && lse.dtype() == DType::kF32, "[", op, "] lse ",
               lse.shape_str(), " ", DTypeName(lse.dtype()), ", expected ", ShapeString({b, h, t}), " f32");
  FATHOM_CHECK(q.dtype() == DType::kF32 || q.dtype() == DType::kBF16, "[", op,
               "] supports f32 and bf16, got ", DTypeName(q.dtype()));
  for (const Tensor* x : {&k, &v, &out})
    FATHOM_CHECK(x->dtype() == q.dtype(), "[", op, "] mixed dtypes: ", DTypeName(x->dtype()), " vs q ",
                 DTypeName(q.dtype()));
  FATHOM_CHECK(dk >= 1 && dk <= kMaxHeadDim && dv >= 1 && dv <= kMaxHeadDim, "[", op, "] head dims Dk ", dk,
               " Dv ", dv, " outside [1, ", kMaxHeadDim, "]");
  FATHOM_CHECK(b * h <= 65535 && t < (int64_t{1} << 30), "[", op, "] B * H = ", b * h,
               " (max 65535), T = ", t);
  // Element offsets inside one (b, h) slice stay in int: T * H * D < 2^31.
  FATHOM_CHECK(t * h * std::max(dk, dv) < (int64_t{1} << 31), "[", op,
               "] T * H * D too large: ", q.shape_str());
  CheckDevice(op, q, "q");
  CheckDevice(op, k, "k");
  CheckDevice(op, v, "v");
  CheckDevice(op, out, "out");
  CheckDevice(op, lse, "lse");
  return MakeDims(b, t, h, dk, dv);
}

template <class Kernel>
void SetSmem(Kernel kernel, size_t bytes) {
  FATHOM_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <class T>
void LaunchForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Dims& d, float scale, cudaStream_t stream) {
  const size_t smem = ForwardSmemBytes(d);
  SetSmem(AttentionForwardKernel<T>, smem);
  const dim3 grid((d.t + kFwdBlockQ - 1) / kFwdBlockQ, d.b * d.h);
  AttentionForwardKernel<T><<<grid, kThreads, smem, stream>>>(
      static_cast<T*>(out.raw()), lse.data<float>(), static_cast<const T*>(q.raw()),
      static_cast<const T*>(k.raw()), static_cast<const T*>(v.raw()), d, scale);
  FATHOM_CUDA_CHECK_LAUNCH();
}

template <class T>
void LaunchBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                    const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Dims& d,
                    float scale, cudaStream_t stream) {
  const dim3 grid((d.t + kBwdBlock - 1) / kBwdBlock, d.b * d.h);
  const size_t smem_kv = BackwardKvSmemBytes(d);
  SetSmem(AttentionBackwardKvKernel<T>, smem_kv);
  AttentionBackwardKvKernel<T><<<grid, kThreads, smem_kv, stream>>>(
      static_cast<T*>(dk.raw()), static_cast<T*>(dv.raw()), static_cast<const T*>(dout.raw()),
      static_cast<const T*>(q.raw()), static_cast<const T*>(k.raw()), static_cast<const T*>(v.raw()),
      static_cast<const T*>(out.raw()), lse.data<float>(), d, scale);
  FATHOM_CUDA_CHECK_LAUNCH();
  const size_t smem_q = BackwardQSmemBytes(d);
  SetSmem(AttentionBackwardQKernel<T>, smem_q);
  AttentionBackwardQKernel<T><<<grid, kThreads, smem_q, stream>>>(
      static_cast<T*>(dq.raw()), static_cast<const T*>(dout.raw()), static_cast<const T*>(q.raw()),
      static_cast<const T*>(k.raw()), static_cast<const T*>(v.raw()), static_cast<const T*>(out.raw()),
      lse.data<float>(), d, scale);
  FATHOM_CUDA_CHECK_LAUNCH();
}

// ---- tensor-core path (bf16, the head dims listed in attention.h) ----

template <int kDk, int kDv>
__global__ void __launch_bounds__(attention_mma::kFwdThreads, 1)
    AttentionMmaForwardKernel(attention_mma::ForwardArgs p) {
  extern __shared__ __align__(16) char attention_mma_smem[];
  attention_mma::ForwardBlock<kDk, kDv>(p, attention_mma_smem);
}

template <int kDk, int kDv>
__global__ void __launch_bounds__(attention_mma::kKvThreads, 1)
    AttentionMmaBackwardKvKernel(attention_mma::BackwardArgs p) {
  extern __shared__ __align__(16) char attention_mma_smem[];
  attention_mma::BackwardKvBlock<kDk, kDv>(p, attention_mma_smem);
}

template <int kDk, int kDv>
__global__ void __launch_bounds__(attention_mma::kQThreads, 2)
    AttentionMmaBackwardQKernel(attention_mma::BackwardArgs p) {
  extern __shared__ __align__(16) char attention_mma_smem[];
  attention_mma::BackwardQBlock<kDk, kDv>(p, attention_mma_smem);
}

// Whether (dtype, Dk, Dv) takes the tensor-core kernels: the list in attention.h.
bool UsesTensorCores(DType dtype, int dk, int dv) {
  return dtype == DType::kBF16 &&
         ((dk == 64 && dv == 64) || (dk == 128 && dv == 128) || (dk == 192 && dv == 128));
}

// The tensor-core kernels' extra preconditions: 16-byte aligned rows for cp.async and one grid row per
// 64-token tile.
void CheckMmaOperands(const char* op, const Dims& d, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* x : tensors)
    FATHOM_CHECK(reinterpret_cast<uintptr_t>(x->raw()) % 16 == 0, "[", op,
                 "] the bf16 tensor-core path needs 16-byte aligned tensors, got a pointer at ", x->raw());
  FATHOM_CHECK((d.t + 63) / 64 <= 65535, "[", op, "] T = ", d.t, " exceeds 65535 64-token tiles");
}

uint16_t* Bits(const Tensor& x) { return static_cast<uint16_t*>(x.raw()); }

template <int kDk, int kDv>
void LaunchMmaForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                      const Dims& d, float scale, cudaStream_t stream) {
  constexpr size_t kSmem = attention_mma::ForwardSmemBytes(kDk, kDv);
  SetSmem(AttentionMmaForwardKernel<kDk, kDv>, kSmem);
  const attention_mma::ForwardArgs p{.out = Bits(out),
                                     .lse = lse.data<float>(),
                                     .q = Bits(q),
                                     .k = Bits(k),
                                     .v = Bits(v),
                                     .t = d.t,
                                     .h = d.h,
                                     .scale_log2 = scale * attention_mma::kLog2e};
  const dim3 grid(d.b * d.h, (d.t + attention_mma::kFwdRows - 1) / attention_mma::kFwdRows);
  AttentionMmaForwardKernel<kDk, kDv><<<grid, attention_mma::kFwdThreads, kSmem, stream>>>(p);
  FATHOM_CUDA_CHECK_LAUNCH();
}

template <int kDk, int kDv>
void LaunchMmaBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                       const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                       const Tensor& lse, const Dims& d, float scale, cudaStream_t stream) {
  const attention_mma::BackwardArgs p{.dq = Bits(dq),
                                      .dk = Bits(dk),
                                      .dv = Bits(dv),
                                      .dout = Bits(dout),
                                      .q = Bits(q),
                                      .k = Bits(k),
                                      .v = Bits(v),
                                      .out = Bits(out),
                                      .lse = lse.data<float>(),
                                      .t = d.t,
                                      .h = d.h,
                                      .scale = scale,
                                      .scale_log2 = scale * attention_mma::kLog2e};
  constexpr size_t kSmemKv = attention_mma::BackwardKvSmemBytes(kDk, kDv);
  SetSmem(AttentionMmaBackwardKvKernel<kDk, kDv>, kSmemKv);
  const dim3 grid_kv(d.b * d.h, (d.t + attention_mma::kKvKeys - 1) / attention_mma::kKvKeys);
  AttentionMmaBackwardKvKernel<kDk, kDv><<<grid_kv, attention_mma::kKvThreads, kSmemKv, stream>>>(p);
  FATHOM_CUDA_CHECK_LAUNCH();
  constexpr size_t kSmemQ = attention_mma::BackwardQSmemBytes(kDk, kDv);
  SetSmem(AttentionMmaBackwardQKernel<kDk, kDv>, kSmemQ);
  const dim3 grid_q(d.b * d.h, (d.t + attention_mma::kQRows - 1) / attention_mma::kQRows);
  AttentionMmaBackwardQKernel<kDk, kDv><<<grid_q, attention_mma::kQThreads, kSmemQ, stream>>>(p);
  FATHOM_CUDA_CHECK_LAUNCH();
}

void MmaForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                const Dims& d, float scale, cudaStream_t stream) {
  if (d.dk == 64) {
    LaunchMmaForward<64, 64>(out, lse, q, k, v, d, scale, stream);
  } else if (d.dk == 128) {
    LaunchMmaForward<128, 128>(out, lse, q, k, v, d, scale, stream);
  } else {
    LaunchMmaForward<192, 128>(out, lse, q, k, v, d, scale, stream);
  }
}

void MmaBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                 const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Dims& d,
                 float scale, cudaStream_t stream) {
  if (d.dk == 64) {
    LaunchMmaBackward<64, 64>(dq, dk, dv, dout, q, k, v, out, lse, d, scale, stream);
  } else if (d.dk == 128) {
    LaunchMmaBackward<128, 128>(dq, dk, dv, dout, q, k, v, out, lse, d, scale, stream);
  } else {
    LaunchMmaBackward<192, 128>(dq, dk, dv, dout, q, k, v, out, lse, d, scale, stream);
  }
}

}  // namespace

const char* AttentionPathName(AttentionPath path) {
  switch (path) {
    case AttentionPath::kCudnn:
      return "cuDNN fused SDPA";
    case AttentionPath::kTensorCores:
      return "own tensor-core kernels";
    case AttentionPath::kSimt:
      return "SIMT";
  }
  return "?";
}

bool AttentionPathSupports(AttentionPath path, DType dtype, const AttentionShape& shape) {
  switch (path) {
    case AttentionPath::kCudnn:
      return dtype == DType::kBF16 && PrepareCudnnAttention(shape).ok();
    case AttentionPath::kTensorCores:
      return UsesTensorCores(dtype, static_cast<int>(shape.dk), static_cast<int>(shape.dv));
    case AttentionPath::kSimt:
      return true;
  }
  return false;
}

AttentionPath SelectAttentionPath(DType dtype, const AttentionShape& shape) {
  if (AttentionPathSupports(AttentionPath::kCudnn, dtype, shape)) return AttentionPath::kCudnn;
  if (AttentionPathSupports(AttentionPath::kTensorCores, dtype, shape)) return AttentionPath::kTensorCores;
  return AttentionPath::kSimt;
}

std::string DescribeAttentionPath(DType dtype, const AttentionShape& shape) {
  std::string line = "attention " + AttentionShapeName(shape) + " " + std::string(DTypeName(dtype)) + ": ";
  const AttentionPath path = SelectAttentionPath(dtype, shape);
  if (path == AttentionPath::kCudnn) return line + CudnnAttentionSummary(shape);
  line += AttentionPathName(path);
  if (dtype == DType::kBF16)
    line += " (cuDNN not used: " + std::string(PrepareCudnnAttention(shape).message()) + ")";
  return line;
}

void CausalAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, double scale, Stream stream) {
  const Dims d = CheckAttention("causal_attention_cuda", q, k, v, out, lse);
  if (d.t == 0 || d.b * d.h == 0) return;
  CausalAttentionForward(out, lse, q, k, v, scale, stream,
                         SelectAttentionPath(q.dtype(), {d.b, d.t, d.h, d.dk, d.dv}));
}

void CausalAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, double scale, Stream stream, AttentionPath path) {
  const Dims d = CheckAttention("causal_attention_cuda", q, k, v, out, lse);
  if (d.t == 0 || d.b * d.h == 0) return;
  FATHOM_CHECK(AttentionPathSupports(path, q.dtype(), {d.b, d.t, d.h, d.dk, d.dv}),
               "[causal_attention_cuda] ", AttentionPathName(path), " cannot run ", q.shape_str(), " ",
               DTypeName(q.dtype()));
  const float sc = static_cast<float>(scale);
  if (path == AttentionPath::kCudnn) {
    CudnnAttentionForward(out, lse, q, k, v, scale, stream);
  } else if (path == AttentionPath::kTensorCores) {
    CheckMmaOperands("causal_attention_cuda", d, {&out, &q, &k, &v});
    MmaForward(out, lse, q, k, v, d, sc, stream);
  } else if (q.dtype() == DType::kF32) {
    LaunchForward<float>(out, lse, q, k, v, d, sc, stream);
  } else {
    LaunchForward<__nv_bfloat16>(out, lse, q, k, v, d, sc, stream);
  }
}

void CausalAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                             const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, double scale, Stream stream) {
  const Dims d = CheckAttention("causal_attention_backward_cuda", q, k, v, out, lse);
  if (d.t == 0 || d.b * d.h == 0) return;
  CausalAttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, scale, stream,
                          SelectAttentionPath(q.dtype(), {d.b, d.t, d.h, d.dk, d.dv}));
}

void CausalAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                             const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, double scale, Stream stream, AttentionPath path) {
  const char* op = "causal_attention_backward_cuda";
  const Dims d = CheckAttention(op, q, k, v, out, lse);
  FATHOM_CHECK(dq.shape() == q.shape() && dk.shape() == k.shape() && dv.shape() == v.shape() &&
                   dout.shape() == out.shape(),
               "[", op, "] dq ", dq.shape_str(), " dk ", dk.shape_str(), " dv ", dv.shape_str(), " dout ",
               dout.shape_str(), " for q ", q.shape_str(), " v ", v.shape_str());
  for (const Tensor* x : {&dq, &dk, &dv, &dout})
    FATHOM_CHECK(x->dtype() == q.dtype(), "[", op, "] mixed dtypes: ", DTypeName(x->dtype()), " vs q ",
                 DTypeName(q.dtype()));
  CheckDevice(op, dq, "dq");
  CheckDevice(op, dk, "dk");
  CheckDevice(op, dv, "dv");
  CheckDevice(op, dout, "dout");
  if (d.t == 0 || d.b * d.h == 0) return;
  FATHOM_CHECK(AttentionPathSupports(path, q.dtype(), {d.b, d.t, d.h, d.dk, d.dv}), "[", op, "] ",
               AttentionPathName(path), " cannot run ", q.shape_str(), " ", DTypeName(q.dtype()));
  const float sc = static_cast<float>(scale);
  if (path == AttentionPath::kCudnn) {
    CudnnAttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, scale, stream);
  } else if (path == AttentionPath::kTensorCores) {
    CheckMmaOperands(op, d, {&dq, &dk, &dv, &dout, &q, &k, &v, &out});
    MmaBackward(dq, dk, dv, dout, q, k, v, out, lse, d, sc, stream);
  } else if (q.dtype() == DType::kF32) {
    LaunchBackward<float>(dq, dk, dv, dout, q, k, v, out, lse, d, sc, stream);
  } else {
    LaunchBackward<__nv_bfloat16>(dq, dk, dv, dout, q, k, v, out, lse, d, sc, stream);
  }
}

}  // namespace fathom::cuda
