// The CUDA implementations behind framework/ops.h (defined in framework/ops_cuda.cu, CUDA builds only):
// called by the op families (ops.cc, ops_nn.cc, ops_moe.cc) after their device and dtype checks. Private to
// the op layer: not an API for layers, never included by users of ops.h.
#ifndef FATHOM_FRAMEWORK_OPS_CUDA_H_
#define FATHOM_FRAMEWORK_OPS_CUDA_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "framework/ops.h"
#include "framework/tensor.h"

namespace fathom::ops {

namespace cuda_impl {
enum class Form { kNT, kNN, kTN };
// A fresh CUDA tensor from the current pool, after checking that the pool exists and shares the current
// OpContext's stream (the condition for the pool's stream-ordered reuse).
Tensor Empty(const char* op, const Shape& shape, DType dtype);
void Matmul(Form form, const Tensor& out, const Tensor& x, const Tensor& w, bool accumulate);
void GroupedMatmul(Form form, const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& counts,
                   bool accumulate);
// FP8 (framework/ops_cuda_fp8.cu).
void QuantizeRows1x128(const Fp8Rows& q, const Tensor& x);
void DequantizeRows1x128(const Tensor& out, const Fp8Rows& q);
void QuantizeCols1x128(const Fp8Cols& q, const Tensor& x);
void QuantizeCols1x128(const Fp8Cols& q, const Fp8Rows& x);
void QuantizeWeight128x128(const Fp8Weight& q, const Tensor& w);
void Fp8GroupedMatmulNT(const Tensor& out, const Fp8Rows& x, const Fp8BlockMatrix& w, const Tensor& counts,
                        bool accumulate);
void Fp8GroupedMatmulTN(const Tensor& out, const Fp8Cols& a, const Fp8Cols& b, bool accumulate);
void RmsNormForward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w, double eps);
void RmsNormBackwardInput(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& w,
                          const Tensor& rstd, const Tensor& residual);
void RmsNormBackwardWeight(const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& rstd);
void Rope(bool backward, const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin,
          bool interleaved);
void CausalAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, double scale);
void CausalAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                             const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, double scale);
void SigmoidForward(const Tensor& out, const Tensor& x);
void SigmoidBackward(const Tensor& dx, const Tensor& dy, const Tensor& y);
void SwiGluForward(const Tensor& out, const Tensor& gate, const Tensor& up);
void SwiGluBackward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                    const Tensor& up);
void EmbeddingForward(const Tensor& out, const Tensor& ids, const Tensor& table);
void EmbeddingBackward(const Tensor& dtable, const Tensor& ids, const Tensor& dy);
Tensor CrossEntropyForward(const Tensor& lse, const Tensor& logits, const Tensor& labels,
                           int64_t ignore_index);
void CrossEntropyBackward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                          const Tensor& labels, int64_t ignore_index, double scale);
Tensor Add(const Tensor& a, const Tensor& b);
void AddInPlace(const Tensor& a, const Tensor& b);
Tensor ConcatLastDim(const Tensor& a, const Tensor& b);
void SplitLastDim(const Tensor& x, const Tensor& a, const Tensor& b);
void Fill(const Tensor& t, double value);
void Zero(const Tensor& t);
void CopyColumns(const Tensor& dst, int64_t d0, const Tensor& src, int64_t s0, int64_t w);
void BroadcastColumnsToHeads(const Tensor& k, int64_t off, const Tensor& src, int64_t s0);
void SumHeadsToColumns(const Tensor& dst, int64_t d0, const Tensor& dk, int64_t off);
void RouterSelect(const Tensor& topk_index, const Tensor& topk_weight, const Tensor& scores,
                  const Tensor& logits, const Tensor& bias, const RouterDims& d);
void RouterSelectBackward(const Tensor& dlogits, const Tensor& dweight, const Tensor& dscores,
                          const Tensor& scores, const Tensor& topk_index, const RouterDims& d);
Tensor SequenceBalanceLoss(const Tensor& scores, const Tensor& topk_index, int64_t batch, int64_t seq);
void SequenceBalanceLossBackward(const Tensor& dscores, const Tensor& scores, const Tensor& topk_index,
                                 int64_t batch, int64_t seq, double weight);
void MoePermute(const Tensor& x_perm, const Tensor& row_slot, const Tensor& counts, const Tensor& x,
                const Tensor& topk_index);
void MoeSortByExpert(const Tensor& row_slot, const Tensor& counts, const Tensor& topk_index);
void MoeGatherRows(const Tensor& x_perm, const Tensor& x, const Tensor& row_slot, int64_t top_k);
void MoePadLayout(const Tensor& padded, const Tensor& row_slot, const Tensor& counts, int64_t tile, bool budget);
void MoeTileExperts(const Tensor& tile_expert, const Tensor& tile_begin, const Tensor& counts);
void TiledGroupedMatmulNT(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert);
void TiledGroupedMatmulNN(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& tile_expert,
                          bool accumulate);
void TiledGroupedMatmulTN(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& tile_begin,
                          bool accumulate);
void MoePermuteBackward(const Tensor& dx, const Tensor& dx_perm, const Tensor& row_slot, bool accumulate,
                        int64_t top_k);
void MoeCombine(const Tensor& out, const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight);
void MoeCombineBackward(const Tensor& dy_perm, const Tensor& dweight, const Tensor& dout,
                        const Tensor& y_perm, const Tensor& row_slot, const Tensor& topk_weight);
bool MoeCombineBackwardFp8Supported(const Tensor& dout, const Tensor& y_perm);
void MoeCombineBackwardFp8(const Tensor& dyq, const Tensor& dweight, const Tensor& dout, const Tensor& y_perm,
                           const Tensor& row_slot, const Tensor& topk_weight);
void ExpertBiasUpdate(const Tensor& bias, const Tensor& load, double gamma);
void AccumulateF64(const Tensor& sums, const std::vector<AccumulationTerm>& terms);
void Copy(const Tensor& dst, const Tensor& src);
void Convert(const Tensor& dst, const Tensor& src);
Tensor ToDeviceAsync(const Tensor& src);
// CopyToHostAsync's CUDA half: leases a staging slot of the current context and queues the copy into it.
std::shared_ptr<StagingLease> StartHostCopy(const Tensor& src);
// PendingHostCopy::Wait's: waits for the lease's copy, returns the values in a fresh host tensor and frees
// the slot.
Tensor FinishHostCopy(StagingLease& lease);
}  // namespace cuda_impl

}  // namespace fathom::ops

#endif  // FATHOM_FRAMEWORK_OPS_CUDA_H_
