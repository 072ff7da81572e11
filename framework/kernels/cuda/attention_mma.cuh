// Tensor-core bodies of the bf16 causal attention kernels (attention.h lists the head dims that take them):
// FlashAttention-2 on mma.sync.m16n8k16 (bf16 x bf16 -> f32) fed by ldmatrix from padded shared-memory tiles
// that cp.async fills (K/V or Q/dO tiles double-buffered). Included by attention_mma.cu only.
//
// Conventions shared by the three kernels:
//   - bf16 values travel as raw uint16_t bits; products and accumulations are f32 on the tensor cores.
//   - Shared-memory tiles are row-major with kPad extra bf16 per row: a row stride of 16 bytes mod 128 makes
//     every ldmatrix phase (8 rows x 16 bytes) hit 32 distinct banks without a swizzle.
//   - Rows past T are zero-filled by cp.async (src-size 0), so padded keys and queries contribute exact
//     zeros, never stale shared memory.
//   - Scores run in log2 units: x = scale * log2(e) * q.k, p = 2^(x - m), lse = ln(2) * (m + log2(l)).
//   - Masked (j > i, or i >= T) probabilities are selected to exactly 0, so changing keys j > i can never
//     change row i (the causality test checks this bit for bit).
//   - No atomics: every output element is written by exactly one thread, after a fixed-order reduction.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_ATTENTION_MMA_CUH_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_ATTENTION_MMA_CUH_

#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>

namespace fathom::cuda::attention_mma {

constexpr int kPad = 8;  // bf16 elements appended to every shared-memory row (16 bytes)

// Forward: one block of 8 warps per (128-query tile, b, h); each warp owns 16 query rows; 64-key K/V tiles.
constexpr int kFwdThreads = 256, kFwdRows = 128, kFwdKeys = 64;
// dK/dV: one block of 8 warps per (64-key tile, b, h), walking 64-query tiles from the diagonal to T.
constexpr int kKvThreads = 256, kKvKeys = 64, kKvRows = 64;
// dQ: one block of 4 warps per (64-query tile, b, h), walking 32-key tiles up to the diagonal.
constexpr int kQThreads = 128, kQRows = 64, kQKeys = 32;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct ForwardArgs {
  uint16_t* out;      // (B, T, H, Dv) bf16
  float* lse;         // (B, H, T)
  const uint16_t* q;  // (B, T, H, Dk) bf16
  const uint16_t* k;  // (B, T, H, Dk) bf16
  const uint16_t* v;  // (B, T, H, Dv) bf16
  int t, h;
  float scale_log2;  // scale * log2(e)
};

struct BackwardArgs {
  uint16_t* dq;          // (B, T, H, Dk) bf16
  uint16_t* dk;          // (B, T, H, Dk) bf16
  uint16_t* dv;          // (B, T, H, Dv) bf16
  const uint16_t* dout;  // (B, T, H, Dv) bf16
  const uint16_t* q;
  const uint16_t* k;
  const uint16_t* v;
  const uint16_t* out;  // (B, T, H, Dv) bf16, the forward's output
  const float* lse;     // (B, H, T), the forward's log-sum-exp
  int t, h;
  float scale, scale_log2;
};

constexpr size_t ForwardSmemBytes(int dk, int dv) {
  return 2 * (static_cast<size_t>(kFwdRows + 2 * kFwdKeys) * (dk + kPad) + 2 * kFwdKeys * (dv + kPad));
}
constexpr size_t BackwardQSmemBytes(int dk, int dv) {
  return 2 * (static_cast<size_t>(kQRows + 2 * kQKeys) * (dk + kPad) + (kQRows + 2 * kQKeys) * (dv + kPad));
}
constexpr size_t BackwardKvSmemBytes(int dk, int dv) {
  return 2 * (static_cast<size_t>(kKvKeys + 2 * kKvRows) * (dk + kPad) +
              (kKvKeys + 3 * kKvRows) * (dv + kPad) + 2 * kKvRows * (kKvKeys + kPad)) +
         sizeof(float) * 3 * kKvRows;
}

// ---- warp-level primitives (PTX) ----

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, or 16 zero bytes when !valid (src-size 0 reads nothing).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CpAsync4(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(SmemAddr(smem)), "l"(gmem),
               "r"(valid ? 4 : 0)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8x8 bf16 matrices; lanes 8i..8i+7 give the row addresses of matrix i; register i of lane l holds
// row l/4, columns 2(l%4), 2(l%4)+1 of matrix i (Trans: column l/4, rows 2(l%4), 2(l%4)+1).
__device__ __forceinline__ void Ldmatrix4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}
__device__ __forceinline__ void Ldmatrix4Trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}

// c (16x8 f32) += a (16x16 bf16, row) * b (16x8 bf16, col).
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to bf16 (nearest even), lo in the low half: the element order of mma fragments.
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ float Bf16Lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float Bf16Hi(uint32_t v) { return __uint_as_float(v & 0xFFFF0000u); }

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float ShflXor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }

// ---- tile helpers ----

// Rows [row0, row0 + kRows) of one head (g = element (b, 0, h, 0), rows `stride` apart) into a padded shared
// tile of kD columns; rows >= t are zero-filled.
template <int kRows, int kD, int kThreads>
__device__ __forceinline__ void LoadRows(uint16_t* s, const uint16_t* g, int64_t stride, int row0, int t) {
  constexpr int kChunks = kD / 8, kTotal = kRows * kChunks;
#pragma unroll
  for (int it = 0; it < (kTotal + kThreads - 1) / kThreads; ++it) {
    const int idx = static_cast<int>(threadIdx.x) + it * kThreads;
    if (kTotal % kThreads == 0 || idx < kTotal) {
      const int r = idx / kChunks, c = idx % kChunks, row = row0 + r;
      const bool valid = row < t;
      CpAsync16(s + r * (kD + kPad) + c * 8, valid ? g + row * stride + c * 8 : g, valid);
    }
  }
}

// The A fragments (16 x 16, row-major) of a 16-row shared tile at columns [16kk, 16kk + 16).
__device__ __forceinline__ void LoadA(uint32_t (&af)[4], const uint16_t* a, int lda, int kk, int lane) {
  Ldmatrix4(af, a + (lane % 16) * lda + kk * 16 + (lane / 16) * 8);
}

// acc (16 x 8kN8) = A (16 x kD) B^T with B (8kN8 x kD) row-major in shared memory (rows = keys): S = Q K^T,
// dP = dO V^T. A comes as register fragments (kD / 16 of them).
template <int kD, int kN8>
__device__ __forceinline__ void WarpGemmRegABt(float (&acc)[kN8][4], const uint32_t (&af)[kD / 16][4],
                                               const uint16_t* b, int ldb, int lane) {
#pragma unroll
  for (int n = 0; n < kN8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
#pragma unroll
    for (int n2 = 0; n2 < kN8 / 2; ++n2) {
      uint32_t bf[4];
      Ldmatrix4(bf, b + (n2 * 16 + lane % 8 + (lane / 16) * 8) * ldb + kk * 16 + ((lane / 8) % 2) * 8);
      Mma(acc[2 * n2], af[kk], bf[0], bf[1]);
      Mma(acc[2 * n2 + 1], af[kk], bf[2], bf[3]);
    }
  }
}

// As WarpGemmRegABt with A (16 x kD) read from shared memory (a = the warp's first row).
template <int kD, int kN8>
__device__ __forceinline__ void WarpGemmABt(float (&acc)[kN8][4], const uint16_t* a, int lda,
                                            const uint16_t* b, int ldb, int lane) {
#pragma unroll
  for (int n = 0; n < kN8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    uint32_t af[4];
    LoadA(af, a, lda, kk, lane);
#pragma unroll
    for (int n2 = 0; n2 < kN8 / 2; ++n2) {
      uint32_t bf[4];
      Ldmatrix4(bf, b + (n2 * 16 + lane % 8 + (lane / 16) * 8) * ldb + kk * 16 + ((lane / 8) % 2) * 8);
      Mma(acc[2 * n2], af, bf[0], bf[1]);
      Mma(acc[2 * n2 + 1], af, bf[2], bf[3]);
    }
  }
}

// acc (16 x 8kN8) += A B, A (16 x 16kK16) as register fragments, B (16kK16 x 8kN8) row-major in shared
// memory with the reduction index along rows: O += P V, dQ += dS K.
template <int kK16, int kN8>
__device__ __forceinline__ void WarpGemmRegAB(float (&acc)[kN8][4], const uint32_t (&af)[kK16][4],
                                              const uint16_t* b, int ldb, int lane) {
#pragma unroll
  for (int kk = 0; kk < kK16; ++kk) {
#pragma unroll
    for (int n2 = 0; n2 < kN8 / 2; ++n2) {
      uint32_t bf[4];
      Ldmatrix4Trans(bf, b + (kk * 16 + lane % 16) * ldb + n2 * 16 + (lane / 16) * 8);
      Mma(acc[2 * n2], af[kk], bf[0], bf[1]);
      Mma(acc[2 * n2 + 1], af[kk], bf[2], bf[3]);
    }
  }
}

// acc (16 x 8kN8) += A^T B with A (16kK16 x 16) and B (16kK16 x 8kN8) row-major in shared memory, the
// reduction index along rows of both: dV += P^T dO, dK += dS^T Q (a = the warp's first key column).
template <int kK16, int kN8>
__device__ __forceinline__ void WarpGemmAtB(float (&acc)[kN8][4], const uint16_t* a, int lda,
                                            const uint16_t* b, int ldb, int lane) {
#pragma unroll
  for (int kk = 0; kk < kK16; ++kk) {
    uint32_t af[4];
    Ldmatrix4Trans(af, a + (kk * 16 + lane % 8 + (lane / 16) * 8) * lda + ((lane / 8) % 2) * 8);
#pragma unroll
    for (int n2 = 0; n2 < kN8 / 2; ++n2) {
      uint32_t bf[4];
      Ldmatrix4Trans(bf, b + (kk * 16 + lane % 16) * ldb + n2 * 16 + (lane / 16) * 8);
      Mma(acc[2 * n2], af, bf[0], bf[1]);
      Mma(acc[2 * n2 + 1], af, bf[2], bf[3]);
    }
  }
}

// Accumulator fragments (16 x 32kK16, C layout) as bf16 A fragments for the next product: the C layout of two
// neighbouring n8 blocks is the A layout of one k16 block.
template <int kK16>
__device__ __forceinline__ void ToAFragments(uint32_t (&af)[kK16][4], const float (&c)[2 * kK16][4]) {
#pragma unroll
  for (int kk = 0; kk < kK16; ++kk) {
    af[kk][0] = PackBf16(c[2 * kk][0], c[2 * kk][1]);
    af[kk][1] = PackBf16(c[2 * kk][2], c[2 * kk][3]);
    af[kk][2] = PackBf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    af[kk][3] = PackBf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
  }
}

// dout_i . out_i (f32) over kDv columns of one row: dout from a shared row, out from global (nullptr: row
// past T, 0). Every lane returns the full sum (fixed xor-shuffle order).
template <int kDv>
__device__ __forceinline__ float RowDot(const uint16_t* sdo_row, const uint16_t* out_row, int lane) {
  float s = 0.f;
  if (out_row != nullptr) {
#pragma unroll
    for (int c = 2 * lane; c < kDv; c += 64) {
      const uint32_t o = *reinterpret_cast<const uint32_t*>(out_row + c);
      const uint32_t d = *reinterpret_cast<const uint32_t*>(sdo_row + c);
      s += Bf16Lo(o) * Bf16Lo(d) + Bf16Hi(o) * Bf16Hi(d);
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += ShflXor(s, off);
  return s;
}

// ---- forward ----

template <int kDk, int kDv>
__device__ __forceinline__ void ForwardBlock(const ForwardArgs& p, char* smem) {
  constexpr int kLdk = kDk + kPad, kLdv = kDv + kPad, kN8 = kFwdKeys / 8;
  static_assert(kFwdRows % kFwdKeys == 0 && kFwdRows == kFwdThreads / 2, "16 rows per warp, whole key tiles");
  static_assert(kDk % 16 == 0 && kDv % 16 == 0, "head dims in whole k16 / n16 mma steps");
  uint16_t* sq = reinterpret_cast<uint16_t*>(smem);  // (128, kLdk) queries
  uint16_t* sk = sq + kFwdRows * kLdk;               // 2 x (64, kLdk) keys
  uint16_t* sv = sk + 2 * kFwdKeys * kLdk;           // 2 x (64, kLdv) values
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, tq = lane % 4;
  const int bh = static_cast<int>(blockIdx.x), bi = bh / p.h, hi = bh % p.h;
  const int qb = static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y);  // longest rows first
  const int q0 = qb * kFwdRows;
  const int64_t qk_stride = static_cast<int64_t>(p.h) * kDk, v_stride = static_cast<int64_t>(p.h) * kDv;
  const int64_t row_base = static_cast<int64_t>(bi) * p.t * p.h + hi;
  const uint16_t* gq = p.q + row_base * kDk;
  const uint16_t* gk = p.k + row_base * kDk;
  const uint16_t* gv = p.v + row_base * kDv;

  LoadRows<kFwdRows, kDk, kFwdThreads>(sq, gq, qk_stride, q0, p.t);
  LoadRows<kFwdKeys, kDk, kFwdThreads>(sk, gk, qk_stride, 0, p.t);
  LoadRows<kFwdKeys, kDv, kFwdThreads>(sv, gv, v_stride, 0, p.t);
  CpAsyncCommit();

  uint32_t qf[kDk / 16][4];
  float o[kDv / 8][4];
#pragma unroll
  for (int n = 0; n < kDv / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int warp_row = q0 + warp * 16, row0 = warp_row + g;  // this thread's rows: row0 and row0 + 8
  // Key tiles up to the one holding the block's last valid query.
  const int num_kb = ((q0 + kFwdRows < p.t ? q0 + kFwdRows : p.t) - 1) / kFwdKeys + 1;

  for (int kb = 0; kb < num_kb; ++kb) {
    CpAsyncWait<0>();
    __syncthreads();  // tile kb landed for every thread; everyone is done with the other stage
    if (kb + 1 < num_kb) {
      const int nb = (kb + 1) & 1;
      LoadRows<kFwdKeys, kDk, kFwdThreads>(sk + nb * kFwdKeys * kLdk, gk, qk_stride, (kb + 1) * kFwdKeys,
                                           p.t);
      LoadRows<kFwdKeys, kDv, kFwdThreads>(sv + nb * kFwdKeys * kLdv, gv, v_stride, (kb + 1) * kFwdKeys, p.t);
      CpAsyncCommit();
    }
    if (kb == 0) {
#pragma unroll
      for (int kk = 0; kk < kDk / 16; ++kk) LoadA(qf[kk], sq + warp * 16 * kLdk, kLdk, kk, lane);
    }
    const int k0 = kb * kFwdKeys;
    // Nothing to do for a warp whose rows all precede the tile's keys, or all lie past T.
    if (k0 > warp_row + 15 || warp_row >= p.t) continue;
    const uint16_t* skb = sk + (kb & 1) * kFwdKeys * kLdk;
    const uint16_t* svb = sv + (kb & 1) * kFwdKeys * kLdv;

    float s[kN8][4];
    WarpGemmRegABt<kDk, kN8>(s, qf, skb, kLdk, lane);
    const bool diagonal = k0 + kFwdKeys - 1 > warp_row;  // some key of the tile is in some row's future
#pragma unroll
    for (int n = 0; n < kN8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] *= p.scale_log2;
        if (diagonal && k0 + n * 8 + 2 * tq + (e & 1) > row0 + 8 * (e >> 1)) s[n][e] = -INFINITY;
      }
      // Online softmax; the four lanes of a quad share a row.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int n = 0; n < kN8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      mx = fmaxf(mx, ShflXor(mx, 1));
      mx = fmaxf(mx, ShflXor(mx, 2));
      const float base = mx == -INFINITY ? 0.f : mx;  // a row with no visible key yet: keep everything 0
      const float alpha = Exp2(m[r] - base);
      m[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < kN8; ++n) {
        s[n][2 * r] = Exp2(s[n][2 * r] - base);
        s[n][2 * r + 1] = Exp2(s[n][2 * r + 1] - base);
        sum += s[n][2 * r] + s[n][2 * r + 1];
      }
      l[r] = l[r] * alpha + sum;
#pragma unroll
      for (int n = 0; n < kDv / 8; ++n) {
        o[n][2 * r] *= alpha;
        o[n][2 * r + 1] *= alpha;
      }
    }
    uint32_t pf[kFwdKeys / 16][4];
    ToAFragments<kFwdKeys / 16>(pf, s);
    WarpGemmRegAB<kFwdKeys / 16, kDv / 8>(o, pf, svb, kLdv, lane);
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += ShflXor(l[r], 1);
    l[r] += ShflXor(l[r], 2);
    const int i = row0 + 8 * r;
    if (i < p.t) {
      const float inv = 1.f / l[r];
      uint16_t* gout = p.out + (row_base + static_cast<int64_t>(i) * p.h) * kDv;
#pragma unroll
      for (int n = 0; n < kDv / 8; ++n)
        *reinterpret_cast<uint32_t*>(gout + n * 8 + 2 * tq) =
            PackBf16(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
      if (tq == 0) p.lse[static_cast<int64_t>(bh) * p.t + i] = (m[r] + log2f(l[r])) * kLn2;
    }
  }
}

// ---- backward: dQ ----

template <int kDk, int kDv>
__device__ __forceinline__ void BackwardQBlock(const BackwardArgs& p, char* smem) {
  constexpr int kLdk = kDk + kPad, kLdv = kDv + kPad, kN8 = kQKeys / 8;
  static_assert(kDk % 16 == 0 && kDv % 16 == 0, "head dims in whole k16 / n16 mma steps");
  uint16_t* sq = reinterpret_cast<uint16_t*>(smem);  // (64, kLdk) this block's queries
  uint16_t* sdo = sq + kQRows * kLdk;                // (64, kLdv) this block's dout
  uint16_t* sk = sdo + kQRows * kLdv;                // 2 x (32, kLdk) keys
  uint16_t* sv = sk + 2 * kQKeys * kLdk;             // 2 x (32, kLdv) values
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, tq = lane % 4;
  const int bh = static_cast<int>(blockIdx.x), bi = bh / p.h, hi = bh % p.h;
  const int qb = static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y);
  const int q0 = qb * kQRows;
  const int64_t qk_stride = static_cast<int64_t>(p.h) * kDk, v_stride = static_cast<int64_t>(p.h) * kDv;
  const int64_t row_base = static_cast<int64_t>(bi) * p.t * p.h + hi;
  const uint16_t* gk = p.k + row_base * kDk;
  const uint16_t* gv = p.v + row_base * kDv;

  LoadRows<kQRows, kDk, kQThreads>(sq, p.q + row_base * kDk, qk_stride, q0, p.t);
  LoadRows<kQRows, kDv, kQThreads>(sdo, p.dout + row_base * kDv, v_stride, q0, p.t);
  LoadRows<kQKeys, kDk, kQThreads>(sk, gk, qk_stride, 0, p.t);
  LoadRows<kQKeys, kDv, kQThreads>(sv, gv, v_stride, 0, p.t);
  CpAsyncCommit();

  const int row0 = q0 + warp * 16 + g;  // this thread's rows: row0 and row0 + 8
  float lse2[2], delta[2] = {0.f, 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row0 + 8 * r;
    lse2[r] = i < p.t ? p.lse[static_cast<int64_t>(bh) * p.t + i] * kLog2e : 0.f;
  }
  float dq[kDk / 8][4];
#pragma unroll
  for (int n = 0; n < kDk / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[n][e] = 0.f;

  const int last_row = (q0 + kQRows < p.t ? q0 + kQRows : p.t) - 1;
  const int num_kb = last_row / kQKeys + 1;
  for (int kb = 0; kb < num_kb; ++kb) {
    CpAsyncWait<0>();
    __syncthreads();
    if (kb + 1 < num_kb) {
      const int nb = (kb + 1) & 1;
      LoadRows<kQKeys, kDk, kQThreads>(sk + nb * kQKeys * kLdk, gk, qk_stride, (kb + 1) * kQKeys, p.t);
      LoadRows<kQKeys, kDv, kQThreads>(sv + nb * kQKeys * kLdv, gv, v_stride, (kb + 1) * kQKeys, p.t);
      CpAsyncCommit();
    }
    if (kb == 0) {
      // D_i = dout_i . out_i for the warp's 16 rows (dout is in shared memory now).
#pragma unroll 1
      for (int r = 0; r < 16; ++r) {
        const int i = q0 + warp * 16 + r;
        const float d =
            RowDot<kDv>(sdo + (warp * 16 + r) * kLdv,
                        i < p.t ? p.out + (row_base + static_cast<int64_t>(i) * p.h) * kDv : nullptr, lane);
        if (r == g) delta[0] = d;
        if (r == g + 8) delta[1] = d;
      }
    }
    const uint16_t* skb = sk + (kb & 1) * kQKeys * kLdk;
    const uint16_t* svb = sv + (kb & 1) * kQKeys * kLdv;
    float s[kN8][4], dp[kN8][4];
    WarpGemmABt<kDk, kN8>(s, sq + warp * 16 * kLdk, kLdk, skb, kLdk, lane);
    WarpGemmABt<kDv, kN8>(dp, sdo + warp * 16 * kLdv, kLdv, svb, kLdv, lane);
    const int k0 = kb * kQKeys;
    const bool need_mask = k0 + kQKeys - 1 > q0 || q0 + kQRows > p.t;
#pragma unroll
    for (int n = 0; n < kN8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = row0 + 8 * (e >> 1), j = k0 + n * 8 + 2 * tq + (e & 1);
        const bool masked = need_mask && (j > i || i >= p.t);
        const float pr = masked ? 0.f : Exp2(s[n][e] * p.scale_log2 - lse2[e >> 1]);
        s[n][e] = pr * (dp[n][e] - delta[e >> 1]);  // dS (unscaled)
      }
    uint32_t af[kQKeys / 16][4];
    ToAFragments<kQKeys / 16>(af, s);
    WarpGemmRegAB<kQKeys / 16, kDk / 8>(dq, af, skb, kLdk, lane);
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row0 + 8 * r;
    if (i < p.t) {
      uint16_t* gdq = p.dq + (row_base + static_cast<int64_t>(i) * p.h) * kDk;
#pragma unroll
      for (int n = 0; n < kDk / 8; ++n)
        *reinterpret_cast<uint32_t*>(gdq + n * 8 + 2 * tq) =
            PackBf16(dq[n][2 * r] * p.scale, dq[n][2 * r + 1] * p.scale);
    }
  }
}

// ---- backward: dK, dV ----

template <int kDk, int kDv>
__device__ __forceinline__ void BackwardKvBlock(const BackwardArgs& p, char* smem) {
  constexpr int kLdk = kDk + kPad, kLdv = kDv + kPad, kLdp = kKvKeys + kPad;
  static_assert(kKvRows == kKvKeys, "the diagonal query tile is the key tile's index");
  static_assert(kDk % 32 == 0 && kDv % 32 == 0, "two warps split each head dim into n16 halves");
  uint16_t* sk = reinterpret_cast<uint16_t*>(smem);              // (64, kLdk) this block's keys
  uint16_t* sv = sk + kKvKeys * kLdk;                            // (64, kLdv) this block's values
  uint16_t* sq = sv + kKvKeys * kLdv;                            // 2 x (64, kLdk) queries
  uint16_t* sdo = sq + 2 * kKvRows * kLdk;                       // 2 x (64, kLdv) dout
  uint16_t* so = sdo + 2 * kKvRows * kLdv;                       // (64, kLdv) out, for D
  uint16_t* sp = so + kKvRows * kLdv;                            // (64 queries, kLdp) P, bf16
  uint16_t* sds = sp + kKvRows * kLdp;                           // (64 queries, kLdp) dS, bf16
  float* slse = reinterpret_cast<float*>(sds + kKvRows * kLdp);  // 2 x (64) lse
  float* sd = slse + 2 * kKvRows;                                // (64) D
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, tq = lane % 4;
  const int bh = static_cast<int>(blockIdx.x), bi = bh / p.h, hi = bh % p.h;
  const int kb = static_cast<int>(blockIdx.y);  // key tile 0 walks the most query tiles: scheduled first
  const int k0 = kb * kKvKeys;
  const int num_qb = (p.t + kKvRows - 1) / kKvRows;
  const int64_t qk_stride = static_cast<int64_t>(p.h) * kDk, v_stride = static_cast<int64_t>(p.h) * kDv;
  const int64_t row_base = static_cast<int64_t>(bi) * p.t * p.h + hi;
  const uint16_t* gq = p.q + row_base * kDk;
  const uint16_t* gdo = p.dout + row_base * kDv;
  const uint16_t* go = p.out + row_base * kDv;
  const float* glse = p.lse + static_cast<int64_t>(bh) * p.t;

  // Query tile qb (rows q0..q0+63) into stage st: Q, dout, lse; out into the single `so` buffer.
  auto load_queries = [&](int qb, int st) {
    const int q0 = qb * kKvRows;
    LoadRows<kKvRows, kDk, kKvThreads>(sq + st * kKvRows * kLdk, gq, qk_stride, q0, p.t);
    LoadRows<kKvRows, kDv, kKvThreads>(sdo + st * kKvRows * kLdv, gdo, v_stride, q0, p.t);
    LoadRows<kKvRows, kDv, kKvThreads>(so, go, v_stride, q0, p.t);
    if (threadIdx.x < kKvRows) {
      const int i = q0 + static_cast<int>(threadIdx.x);
      CpAsync4(slse + st * kKvRows + threadIdx.x, i < p.t ? glse + i : glse, i < p.t);
    }
  };
  LoadRows<kKvKeys, kDk, kKvThreads>(sk, p.k + row_base * kDk, qk_stride, k0, p.t);
  LoadRows<kKvKeys, kDv, kKvThreads>(sv, p.v + row_base * kDv, v_stride, k0, p.t);
  load_queries(kb, 0);
  CpAsyncCommit();

  // S/dP roles: 16 query rows (wr) x 32 keys (wc). dK/dV roles: 16 keys (kr) x half the head dim (kc).
  const int wr = warp % 4, wc = warp / 4, kr = warp % 4, kc = warp / 4;
  float dv[kDv / 16][4], dk[kDk / 16][4];
#pragma unroll
  for (int n = 0; n < kDv / 16; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dv[n][e] = 0.f;
#pragma unroll
  for (int n = 0; n < kDk / 16; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = 0.f;

  for (int qb = kb; qb < num_qb; ++qb) {
    const int st = (qb - kb) & 1, q0 = qb * kKvRows;
    const uint16_t* sqs = sq + st * kKvRows * kLdk;
    const uint16_t* sdos = sdo + st * kKvRows * kLdv;
    CpAsyncWait<0>();
    __syncthreads();  // (A) tile qb landed; the previous step is done with P, dS and the other stage
                      // D_i = dout_i . out_i, 8 rows per warp.
#pragma unroll 1
    for (int r = warp * 8; r < warp * 8 + 8; ++r) {
      float s = 0.f;
#pragma unroll
      for (int c = 2 * lane; c < kDv; c += 64) {
        const uint32_t o = *reinterpret_cast<const uint32_t*>(so + r * kLdv + c);
        const uint32_t d = *reinterpret_cast<const uint32_t*>(sdos + r * kLdv + c);
        s += Bf16Lo(o) * Bf16Lo(d) + Bf16Hi(o) * Bf16Hi(d);
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) s += ShflXor(s, off);
      if (lane == 0) sd[r] = s;
    }
    __syncthreads();  // (B) D visible; `so` free for the next tile
    if (qb + 1 < num_qb) {
      load_queries(qb + 1, st ^ 1);
      CpAsyncCommit();
    }

    float s[4][4], dp[4][4];
    WarpGemmABt<kDk, 4>(s, sqs + wr * 16 * kLdk, kLdk, sk + wc * 32 * kLdk, kLdk, lane);
    WarpGemmABt<kDv, 4>(dp, sdos + wr * 16 * kLdv, kLdv, sv + wc * 32 * kLdv, kLdv, lane);
    const bool need_mask = qb == kb || q0 + kKvRows > p.t;
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int h2 = 0; h2 < 2; ++h2) {
        const int il = wr * 16 + g + 8 * h2, i = q0 + il, jl = wc * 32 + n * 8 + 2 * tq, j = k0 + jl;
        const float lse2 = slse[st * kKvRows + il] * kLog2e, d = sd[il];
        float pr[2], ds[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const bool masked = need_mask && (j + e > i || i >= p.t);
          pr[e] = masked ? 0.f : Exp2(s[n][2 * h2 + e] * p.scale_log2 - lse2);
          ds[e] = pr[e] * (dp[n][2 * h2 + e] - d);
        }
        *reinterpret_cast<uint32_t*>(sp + il * kLdp + jl) = PackBf16(pr[0], pr[1]);
        *reinterpret_cast<uint32_t*>(sds + il * kLdp + jl) = PackBf16(ds[0], ds[1]);
      }
    __syncthreads();  // (C) P and dS complete
    WarpGemmAtB<kKvRows / 16, kDv / 16>(dv, sp + kr * 16, kLdp, sdos + kc * (kDv / 2), kLdv, lane);
    WarpGemmAtB<kKvRows / 16, kDk / 16>(dk, sds + kr * 16, kLdp, sqs + kc * (kDk / 2), kLdk, lane);
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = k0 + kr * 16 + g + 8 * r;
    if (j < p.t) {
      uint16_t* gdk = p.dk + (row_base + static_cast<int64_t>(j) * p.h) * kDk + kc * (kDk / 2);
      uint16_t* gdv = p.dv + (row_base + static_cast<int64_t>(j) * p.h) * kDv + kc * (kDv / 2);
#pragma unroll
      for (int n = 0; n < kDk / 16; ++n)
        *reinterpret_cast<uint32_t*>(gdk + n * 8 + 2 * tq) =
            PackBf16(dk[n][2 * r] * p.scale, dk[n][2 * r + 1] * p.scale);
#pragma unroll
      for (int n = 0; n < kDv / 16; ++n)
        *reinterpret_cast<uint32_t*>(gdv + n * 8 + 2 * tq) = PackBf16(dv[n][2 * r], dv[n][2 * r + 1]);
    }
  }
}

}  // namespace fathom::cuda::attention_mma

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_ATTENTION_MMA_CUH_
