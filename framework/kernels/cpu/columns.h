// Column-block copies between 2-D row views, the gathers and scatters of MLA's key/value layout: the
// latent and the shared rotary key are column blocks of one projection, and the rotary key is broadcast to
// (and its gradient summed over) every head. Tensors are contiguous and of one float dtype (f32/f64).
#ifndef FATHOM_FRAMEWORK_KERNELS_CPU_COLUMNS_H_
#define FATHOM_FRAMEWORK_KERNELS_CPU_COLUMNS_H_

#include <cstdint>

#include "framework/tensor.h"

namespace fathom::cpu {

// dst[r, d0 : d0 + w] = src[r, s0 : s0 + w] for every row r; dst (N, Wd), src (N, Ws). Other columns of
// dst are left as they are.
void CopyColumns(const Tensor& dst, int64_t d0, const Tensor& src, int64_t s0, int64_t w);

// k[r, h, off:] = src[r, s0 : s0 + d] for every head h; k (N, H, Dk), src (N, Ws), d = Dk - off.
void BroadcastColumnsToHeads(const Tensor& k, int64_t off, const Tensor& src, int64_t s0);

// The transpose of BroadcastColumnsToHeads: dst[r, d0 : d0 + d] = sum over h (in order 0..H-1) of
// dk[r, h, off:]; dst (N, Wd), dk (N, H, W), d = W - off.
void SumHeadsToColumns(const Tensor& dst, int64_t d0, const Tensor& dk, int64_t off);

}  // namespace fathom::cpu

#endif  // FATHOM_FRAMEWORK_KERNELS_CPU_COLUMNS_H_
