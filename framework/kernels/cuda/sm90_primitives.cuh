// Hopper (sm_90a) device primitives of fathom's own GEMM kernels (grouped_gemm_tiled.cuh): mbarriers (in a
// CTA and across a thread block cluster), 2-D TMA loads (also multicast to a cluster) and 3-D TMA stores,
// the shared-memory descriptors of 128-byte-swizzled K-major and MN-major tiles, and the wgmma instructions
// it uses (bf16 m64nNk16 for N = 128, 176, 256, either operand K- or MN-major; e4m3 m64n64k32, K-major
// only), with the fences that keep the compiler off their accumulator registers.
// Defined only where the target is sm_90a (FATHOM_SM90A); include from .cu files only. The wgmma wrappers'
// operand lists are written out in full, one per register, as the inline-PTX syntax requires.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_SM90_PRIMITIVES_CUH_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_SM90_PRIMITIVES_CUH_

#include <cstdint>
#include <cstdio>

#include <cuda.h>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FATHOM_SM90A 1
#endif

namespace fathom::cuda::sm90 {

#ifdef FATHOM_SM90A

__device__ __forceinline__ uint32_t SmemAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void BarrierInit(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(SmemAddress(bar)), "r"(count) : "memory");
}

// One arrival that also announces `bytes` of TMA traffic to come (the producer, once per stage fill).
__device__ __forceinline__ void BarrierExpectBytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(SmemAddress(bar)), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void BarrierArrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(SmemAddress(bar)) : "memory");
}

// Whether the barrier's phase of the given parity has completed (a try_wait of the default, CTA-scope
// acquire). Also the wait of a barrier other CTAs of the cluster arrive on (the tiled kernels' empty
// barriers under clusters of two): what the remote arrivals order is the end of the peer's wgmma reads of
// a stage, and what the waiter then does is a TMA write into it, both in the async proxy, so no cluster-scope
// acquire is needed; `.acquire.cluster` made ptxas invalidate L1 (CCTL.IVALL) after every wait. fathom's
// waits take the default, as CUTLASS's and DeepGEMM's pipelines do.
__device__ __forceinline__ uint32_t BarrierTryWait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(SmemAddress(bar)), "r"(parity)
      : "memory");
  return done;
}

// Spins until the barrier's phase of the given parity has completed. A wait past ~2^33 cycles (seconds)
// is a bug (bytes that never arrive, a ring out of step): it traps, so the job fails loudly instead of
// hanging. Only debug builds (no NDEBUG) print which barrier first: printf is a function call, and a call
// anywhere in a kernel with wgmma in flight makes ptxas serialize every wgmma of that kernel (warning C7510,
// "wgmma pipeline crossing function boundary"), which release builds must not pay.
__device__ __forceinline__ void BarrierWait(uint64_t* bar, uint32_t parity) {
  if (BarrierTryWait(bar, parity)) return;  // the common case reads no clock
  const long long start = clock64();
  while (!BarrierTryWait(bar, parity)) {
    if (clock64() - start > (1ll << 33)) {
#ifndef NDEBUG
      printf("tiled_grouped_gemm: block %d thread %d stuck on the barrier at shared 0x%x, parity %u\n",
             static_cast<int>(blockIdx.x), static_cast<int>(threadIdx.x), SmemAddress(bar), parity);
#endif
      __trap();
    }
  }
}

// A 2-D TMA load of the map's box at (c0 = column, c1 = row) into shared memory, completing on `bar`.
__device__ __forceinline__ void TmaLoad(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], "
      "[%2];\n" ::"r"(SmemAddress(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(SmemAddress(bar)), "r"(c0), "r"(c1)
      : "memory");
}

// Thread block clusters (a launch with cudaLaunchAttributeClusterDimension): this CTA's rank in its
// cluster, the cluster's index in the grid and the number of clusters (1-D grids).
__device__ __forceinline__ uint32_t ClusterCtaRank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t ClusterIndex() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%clusterid.x;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t ClusterCount() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%nclusterid.x;\n" : "=r"(r));
  return r;
}

// Every thread of every CTA of the cluster: arrive (releasing this thread's writes), then wait for the rest
// (acquiring theirs). Also a barrier for the threads of this CTA.
__device__ __forceinline__ void ClusterSync() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}

// One arrival on the barrier at `bar`'s offset in the shared memory of the cluster's CTA `rank` (this CTA's
// own included), with the arrive's default semantics (release at CTA scope). The tiled kernels' consumers
// arrive so once their wgmma reads of a stage are complete (wgmma.wait_group), which needs no memory fence;
// `.release.cluster` compiled to MEMBAR.GPU + ERRBAR + CGAERRBAR before each arrive, twice per k-block on
// every consumer warp's critical path: clusters of two ran at about half the speed of one CTA (H200,
// 2026-12-05, ~0.5 us more per k-block). CUTLASS's ClusterBarrier::arrive and DeepGEMM's
// empty_barrier_arrive take the default too.
__device__ __forceinline__ void BarrierArriveCluster(uint64_t* bar, uint32_t rank) {
  asm volatile(
      "{\n.reg .b32 remote;\nmapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n}\n" ::"r"(SmemAddress(bar)),
      "r"(rank)
      : "memory");
}

// TmaLoad's box written to the same shared-memory offset `dst` in every CTA of the cluster named by `mask`
// (bit r: rank r), each completing `bar`'s bytes at the same offset in its own shared memory.
__device__ __forceinline__ void TmaLoadMulticast(void* dst, const CUtensorMap* map, uint64_t* bar, int c0,
                                                 int c1, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster "
      "[%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(SmemAddress(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(SmemAddress(bar)), "r"(c0), "r"(c1), "h"(mask)
      : "memory");
}

// TMA stores: this thread's shared-memory writes made visible to the async proxy (before a TMA store reads
// them); a 3-D store (kAdd: reduce-add, element-wise in the map's type) of the map's box at (c0, c1, c2) from
// shared memory (1024-byte aligned for a 128-byte swizzled map), in this thread's bulk group; the group
// committed; and the waits until at most N committed groups are still reading their shared memory
// (BulkWaitRead) or still writing global memory (BulkWait).
__device__ __forceinline__ void FenceProxyAsyncShared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
template <bool kAdd>
__device__ __forceinline__ void TmaStore3d(const CUtensorMap* map, const void* src, int c0, int c1, int c2) {
  if constexpr (kAdd) {
    asm volatile(
        "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::
            "l"(reinterpret_cast<uint64_t>(map)),
        "r"(SmemAddress(src)), "r"(c0), "r"(c1), "r"(c2)
        : "memory");
  } else {
    asm volatile(
        "cp.async.bulk.tensor.3d.global.shared::cta.tile.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
            reinterpret_cast<uint64_t>(map)),
        "r"(SmemAddress(src)), "r"(c0), "r"(c1), "r"(c2)
        : "memory");
  }
}
__device__ __forceinline__ void BulkCommit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void BulkWaitRead() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void BulkWait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}

// The wgmma descriptor of a K-major bf16 tile with 64-element (128-byte) rows, 128-byte swizzled as TMA
// writes it: start address / 16, leading offset 1 (unused by swizzled K-major), stride 1024 bytes between
// 8-row groups, swizzle mode 1 (128 B). The tile must start on a 1024-byte boundary; the k-th 16-element
// slice of the row starts 32 k bytes in (descriptor + 2 k).
__device__ __forceinline__ uint64_t TileDescriptor(const void* tile) {
  const uint64_t address = SmemAddress(tile);
  return ((address & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

// The wgmma descriptor of an MN-major bf16 operand (the M or N index contiguous, as a row-major matrix's
// columns are when the reduction runs down its rows), as TMA writes it in boxes of 64 reduction rows x 64
// MN elements (128 bytes), 128-byte swizzled, the boxes 8192 bytes apart along MN: the canonical
// Swizzle<3,4,3> o ((8,8,m),(8,k)) : ((1,8,LBO),(64,SBO)) layout with leading offset 8192 bytes (the next 64
// MN elements) and stride 1024 bytes (the next 8 reduction rows). The k-th 16-row slice of the reduction
// starts 2048 k bytes in (descriptor + 128 k); every box starts on a 1024-byte boundary.
__device__ __forceinline__ uint64_t MnTileDescriptor(const void* tile) {
  const uint64_t address = SmemAddress(tile);
  return ((address & 0x3FFFF) >> 4) | (uint64_t{8192 >> 4} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accumulator registers across the asynchronous wgmma instructions.
template <int R>
__device__ __forceinline__ void FenceAccumulators(float* d) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D (64 x 128, f32, 64 registers per thread) (=, or += when accumulate) A (64 x 16) . B (128 x 16)^T,
// both operands K-major bf16 in shared memory (128-byte swizzle), described by desc_a and desc_b.
template <int kTransA = 0, int kTransB = 0>
__device__ __forceinline__ void Wgmma128(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(kTransA), "n"(kTransB));
}

// D (64 x 176, f32, 88 registers per thread) (=, or += when accumulate) A (64 x 16) . B (176 x 16)^T,
// both operands K-major bf16 in shared memory (128-byte swizzle), described by desc_a and desc_b.
template <int kTransA = 0, int kTransB = 0>
__device__ __forceinline__ void Wgmma176(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %90, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n176k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87"
      "}, %88, %89, p, 1, 1, %91, %92;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(kTransA), "n"(kTransB));
}

// D (64 x 256, f32, 128 registers per thread) (=, or += when accumulate) A (64 x 16) . B (256 x 16)^T,
// both operands K-major bf16 in shared memory (128-byte swizzle), described by desc_a and desc_b.
template <int kTransA = 0, int kTransB = 0>
__device__ __forceinline__ void Wgmma256(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(kTransA), "n"(kTransB));
}

// D += A . B^T with N = BN; kTransA / kTransB: the operand is MN-major (MnTileDescriptor) instead of K-major.
template <int BN, int kTransA = 0, int kTransB = 0>
__device__ __forceinline__ void Wgmma(float* d, uint64_t desc_a, uint64_t desc_b) {
  if constexpr (BN == 128) {
    Wgmma128<kTransA, kTransB>(d, desc_a, desc_b, 1);
  } else if constexpr (BN == 176) {
    Wgmma176<kTransA, kTransB>(d, desc_a, desc_b, 1);
  } else {
    static_assert(BN == 256, "BN is 128, 176 or 256");
    Wgmma256<kTransA, kTransB>(d, desc_a, desc_b, 1);
  }
}

// D (64 x 64, f32, 32 registers) (=, or += when accumulate) A (64 x 32) . B (64 x 32)^T, e4m3 operands, both
// K-major in shared memory (128-byte swizzle).
__device__ __forceinline__ void WgmmaFp8x64(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]),
        "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

#endif  // FATHOM_SM90A

}  // namespace fathom::cuda::sm90

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_SM90_PRIMITIVES_CUH_
