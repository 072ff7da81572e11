// fathom's own grouped GEMMs for routed experts on Hopper (sm_90a: TMA loads, WGMMA, an mbarrier pipeline).
// The forward form (NT; FP8's dgrad is the same form with the transposed weight copy) works on DeepSeek's
// "contiguous" layout, the padded expert layout of layers/moe.h: every expert's rows are a block whose length
// is a multiple of kGroupedTileRows, blocks in expert order, and each 128-row tile's expert is read either
// from a device map built from the device counts (MoeTileExperts, sized for the worst case by
// MaxExpertTiles: unused tiles (-1) are skipped, so nothing needs the counts on the host) or, where the host
// has the counts anyway, from their tile prefix passed as a kernel parameter. This is what cuBLASLt cannot
// do (its pointer-array and grouped batches take their problem count and sizes from the host, and its
// block-scaled FP8 takes no batch at all in cuBLAS 13.1); see gemm.h and fp8_gemm.h for the cuBLASLt paths.
// The FP8 weight-gradient form (TN) reduces each expert's output over that expert's padded tokens; the bf16
// input-gradient (NN) and weight-gradient (TN) forms read row-major weights and activations as MN-major wgmma
// operands (no transposed copies), the TN form's expert tile ranges also from the device, so a MoE layer can
// run without its counts on the host (layers/moe.h, "Device layout"). On an H200 (gemm_bench, 32 experts,
// 32768 skewed rows, recipes/small.yaml's widths, 2026-12-04): bf16 NT 435-469 TFLOP/s, NN 436-473, TN
// 417-460 (cuBLASLt: NT/NN tile batches 546-582, TN 408).
//
// Kernel (persistent: one CTA of 384 threads per SM, taking the jobs (128 x BN output tiles) of a schedule
// in turn): warp group 0 is the producer (one thread issues the TMA loads of a 128-row and a BN-row tile of
// 128-byte rows, 64 bf16 or 128 e4m3 values of the reduction, into a ring of shared-memory stages, 128-byte
// swizzled, signalled by mbarriers; the ring runs on across jobs, so the next job's loads overlap this one's
// stores), warp groups 1 and 2 each multiply 64 of the 128 rows with wgmma (bf16: m64nBNk16 into the f32
// accumulators, one group kept in flight; e4m3: m64n64k32 per column half into partial sums promoted to f32
// with their scales every 128-deep block, one half promoted while the other runs), then store (bf16 or f32,
// = or +=). BN of the bf16 form is chosen per call (128, 176 or 256; 0 = TiledGroupedDefaultBlockN), the FP8
// forms use 128; partial last row and column tiles compute into registers and store only their valid part.
// In clusters of two CTAs (TiledLaunch::cluster_n 2), the pair takes one row tile's two adjacent column tiles
// and loads the row tile's A operand once, multicast to both (half of A's traffic from L2); with
// TiledLaunch::tma_store the consumers stage their results in shared memory and TMA stores them while the
// next tile's products run. A barrier wait that lasts seconds reports itself and traps, so a bug fails the
// job instead of hanging it.
#ifndef FATHOM_FRAMEWORK_KERNELS_CUDA_GROUPED_GEMM_H_
#define FATHOM_FRAMEWORK_KERNELS_CUDA_GROUPED_GEMM_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "framework/cuda/stream.h"
#include "framework/fp8_operands.h"
#include "framework/tensor.h"

namespace fathom::cuda {

inline constexpr int64_t kGroupedTileRows = 128;

// How a tiled launch runs. Unset fields take the defaults: block_n the form's (see each form), cluster_n and
// tma_store the process's (TiledDefaults). The layers take the defaults; tests and benchmarks set them.
struct TiledLaunch {
  int block_n = 0;   // the column tile BN (which widths a form takes: see each form); 0 = the form's default
  int max_ctas = 0;  // > 0: caps the persistent grid (tests: several output tiles per CTA on small problems)
  std::optional<int> cluster_n;  // CTAs per cluster sharing the row tile's A by TMA multicast: 1 or 2
  // The epilogue stores through shared memory with TMA, overlapping the next tile's k-blocks (column tiles of
  // 128 or 256, not the FP8 weight-gradient form; a bf16 output accumulated into keeps the register stores).
  // Asked for where a form cannot: an error; by default: only where it can.
  std::optional<bool> tma_store;
};

// The process's defaults for TiledLaunch's cluster_n and tma_store (1 and false until measured faster;
// neither option has run on a GPU yet, 2026-12-04). The trainer sets them once at start-up from the recipe
// (train.expert_gemm_cluster, train.expert_gemm_tma_store), before any launch.
struct TiledDefaults {
  int cluster_n = 1;
  bool tma_store = false;
};
void SetTiledDefaults(const TiledDefaults& defaults);
TiledDefaults GetTiledDefaults();

// The most 128-row tiles R rows over E experts can need when each expert's block is rounded up to whole
// tiles: sum_e ceil(c_e / 128) <= floor((R + 127 * min(E, R)) / 128).
int64_t MaxExpertTiles(int64_t rows, int64_t num_experts);

// tile_expert (T) i32, overwritten: the expert of each tile of the padded layout of counts (E) i64 (device;
// expert e owns ceil(counts[e] / 128) tiles, in expert order), then -1 for the tiles past them. E <= 1024.
// A layout that needs more than T tiles traps (the caller sized T with MaxExpertTiles). When given,
// tile_begin (E + 1) i32 receives each expert's first tile (and the total last): what TiledGroupedMatmulTN
// reads.
void MoeTileExperts(const Tensor& tile_expert, const Tensor& counts, Stream stream,
                    const Tensor& tile_begin = Tensor());

// Whether TiledGroupedMatmulNT takes these widths: K a multiple of 64 and N a multiple of 8, on an sm_90
// device (H100/H200). Callers choose between this kernel and cuBLASLt with it; the launcher itself fails
// loudly on anything else.
bool TiledGroupedSupported(int64_t n, int64_t k);

// The column-tile width BN the launcher uses when block_n = 0, for an N-wide output stored with TMA stores
// (tma_store) or from the registers.
int TiledGroupedDefaultBlockN(int64_t n, bool tma_store);

// out (T * 128, N) bf16: for every tile t with e = tile_expert[t] >= 0, its 128 rows =
//   x rows [128 t, 128 t + 128) (T * 128, K) bf16 . w[e]^T, w (E, N, K) bf16,
// with f32 accumulation and one rounding to bf16 (the twin of cpu::GroupedMatmulNT over the padded
// layout). Rows of tiles with e < 0 are not written. All tensors contiguous; block_n in {0, 128, 176, 256}.
void TiledGroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                          Stream stream, const TiledLaunch& launch = {});

// Whether the MN-major bf16 forms below take an N-wide output (NN) or N-wide b (TN) over a reduction that
// is a multiple of 64 (NN: K; TN: always, the tokens come in 128-row tiles), on an sm_90 device.
bool TiledGroupedMnSupported(int64_t n, int64_t reduction);

// The dgrad form (the twin of cpu::GroupedMatmulNN over the padded layout): out (T * 128, N) bf16 (=, or +=
// when accumulate) rows of tile t with e = tile_expert[t] >= 0 = x's rows (T * 128, K) . w[e], w (E, K, N)
// bf16 as the forward's weight is stored, read MN-major (no transposed copy). f32 accumulation, one
// rounding. Rows of tiles with e < 0 are not written. block_n in {0, 128, 256}.
void TiledGroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                          bool accumulate, Stream stream, const TiledLaunch& launch = {});

// The weight-gradient form (the twin of cpu::GroupedMatmulTN over the padded layout): out[g] (G, M, N) f32
// (=, or += when accumulate) a_g^T . b_g, where a (T * 128, M) and b (T * 128, N) bf16 hold group g's
// rows in the tiles [tile_begin[g], tile_begin[g + 1]) (MoeTileExperts' tile_begin, on the device: the
// counts never reach the host). Both operands are read MN-major straight from the row-major activations.
// A group without tokens keeps out[g] when accumulating and gets zeros when overwriting. Pad rows must be
// zero (the padded layout's are). block_n in {0, 128, 256} (out's column tile).
void TiledGroupedMatmulTN(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& tile_begin,
                          bool accumulate, Stream stream, const TiledLaunch& launch = {});

// Whether TiledFp8GroupedMatmulNT takes an N-wide output: N a multiple of 16, on an sm_90 device.
bool TiledFp8Supported(int64_t n);

// The FP8 form (train.precision fp8; operands as framework/fp8_operands.h lays them out), the twin of
// cpu::Fp8GroupedMatmulNT over the padded layout: out (T * 128, N) (=, or += when accumulate; bf16 or f32)
// rows of tile t with e = tile_expert[t] >= 0 = x's rows . w[e]^T, where per 128-deep block of the
// reduction the e4m3 products are summed in f32 (wgmma.m64n64k32 per column half) and added to the result
// times (x row scale * w block scale). x: Fp8Rows (T * 128, K); w: Fp8BlockMatrix (E, N, K) (Fp8Weight::w for
// the forward, ::wt for the dgrad). BN is 128: an output tile is one block row of w.
void TiledFp8GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w,
                             const Tensor& tile_expert, bool accumulate, Stream stream,
                             const TiledLaunch& launch = {});

// Whether HOST row counts fit the overload below: 1 to 256 groups, each a multiple of 128 rows.
bool TiledCountsOk(const std::vector<int64_t>& counts);

// The same over the padded layout of HOST counts (one per matrix of w, each a multiple of 128; x and out have
// their sum of rows). The tiles' experts travel as a kernel parameter (each group's first tile), so nothing
// is built or copied on the device: the form Fp8GemmContext::GroupedMatmulNT takes for tiled counts.
void TiledFp8GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w,
                             const std::vector<int64_t>& counts, bool accumulate, Stream stream,
                             const TiledLaunch& launch = {});

// Whether TiledFp8GroupedMatmulTN takes b with N columns over `groups` groups: N a multiple of 16, 1 to 256
// groups, on an sm_90 device.
bool TiledFp8TNSupported(int64_t n, int64_t groups);

// The FP8 weight-gradient form, the twin of cpu::Fp8GroupedMatmulTN: out[g] (G, M, N) (or (M, N) with G = 1)
// f32 += a_g (M, T_g) . b_g (N, T_g)^T over group g's padded tokens, a and b Fp8Cols (codes K-major along
// the tokens, one scale per 128-token tile and column), each 128-token block's e4m3 partial promoted to f32
// times (a's row scale * b's column scale); += when accumulate, else = (the tile's stores read nothing). One
// launch for all groups: jobs are (group, 128-row tile of out[g], 128-column tile), each reducing over its
// group's token blocks (none: out[g] untouched when accumulating, zeroed when overwriting). The counts come
// from a.counts (HOST), at most 256 groups.
void TiledFp8GroupedMatmulTN(const Tensor& out, const Fp8Cols& a, const Fp8Cols& b, bool accumulate,
                             Stream stream, const TiledLaunch& launch = {});

}  // namespace fathom::cuda

#endif  // FATHOM_FRAMEWORK_KERNELS_CUDA_GROUPED_GEMM_H_
