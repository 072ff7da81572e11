#include "framework/kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace fathom::cpu {

namespace {

struct AttentionDims {
  int64_t b, t, h, dk, dv;
};

AttentionDims CheckAttention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& out, const Tensor& lse) {
  FATHOM_CHECK(q.ndim() == 4 && k.shape() == q.shape() && v.ndim() == 4, "[", op, "] q ", q.shape_str(),
               " k ", k.shape_str(), " v ", v.shape_str(), ", expected q, k (B, T, H, Dk), v (B, T, H, Dv)");
  AttentionDims d{q.dim(0), q.dim(1), q.dim(2), q.dim(3), v.dim(3)};
  FATHOM_CHECK(v.dim(0) == d.b && v.dim(1) == d.t && v.dim(2) == d.h, "[", op, "] v ", v.shape_str(),
               " does not match q ", q.shape_str());
  FATHOM_CHECK(out.shape() == v.shape(), "[", op, "] out ", out.shape_str(), ", expected ", v.shape_str());
  FATHOM_CHECK(lse.shape() == Shape({d.b, d.h, d.t}), "[", op, "] lse ", lse.shape_str(), ", expected ",
               ShapeString({d.b, d.h, d.t}));
  for (const Tensor* t : {&k, &v, &out, &lse})
    FATHOM_CHECK(t->dtype() == q.dtype(), "[", op, "] mixed dtypes: ", DTypeName(t->dtype()), " vs q ",
                 DTypeName(q.dtype()));
  return d;
}

template <class T>
T Dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

void CausalAttentionForward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, double scale) {
  const AttentionDims d = CheckAttention("causal_attention", q, k, v, out, lse);
  DispatchFloat(q.dtype(), "causal_attention", [&](auto tag) {
    using T = decltype(tag);
    const T sc = static_cast<T>(scale);
    const T* qp = q.data<T>();
    const T* kp = k.data<T>();
    const T* vp = v.data<T>();
    T* op = out.data<T>();
    T* lp = lse.data<T>();
    std::vector<T> p(static_cast<size_t>(d.t));
    for (int64_t b = 0; b < d.b; ++b) {
      for (int64_t h = 0; h < d.h; ++h) {
        for (int64_t i = 0; i < d.t; ++i) {
          const T* qi = qp + ((b * d.t + i) * d.h + h) * d.dk;
          T m = -INFINITY;
          for (int64_t j = 0; j <= i; ++j) {
            const T s = sc * Dot(qi, kp + ((b * d.t + j) * d.h + h) * d.dk, d.dk);
            p[static_cast<size_t>(j)] = s;
            if (s > m) m = s;
          }
          T l = 0;
          for (int64_t j = 0; j <= i; ++j) {
            T& pj = p[static_cast<size_t>(j)];
            pj = std::exp(pj - m);
            l += pj;
          }
          T* oi = op + ((b * d.t + i) * d.h + h) * d.dv;
          for (int64_t c = 0; c < d.dv; ++c) oi[c] = 0;
          const T inv_l = T(1) / l;
          for (int64_t j = 0; j <= i; ++j) {
            const T w = p[static_cast<size_t>(j)] * inv_l;
            const T* vj = vp + ((b * d.t + j) * d.h + h) * d.dv;
            for (int64_t c = 0; c < d.dv; ++c) oi[c] += w * vj[c];
          }
          lp[(b * d.h + h) * d.t + i] = m + std::log(l);
        }
      }
    }
  });
}

void CausalAttentionBackward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                             const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, double scale) {
  const AttentionDims d = CheckAttention("causal_attention_backward", q, k, v, out, lse);
  FATHOM_CHECK(dq.shape() == q.shape() && dk.shape() == k.shape() && dv.shape() == v.shape() &&
                   dout.shape() == out.shape(),
               "[causal_attention_backward] dq ", dq.shape_str(), " dk ", dk.shape_str(), " dv ",
               dv.shape_str(), " dout ", dout.shape_str(), " for q ", q.shape_str(), " v ", v.shape_str());
  for (const Tensor* t : {&dq, &dk, &dv, &dout})
    FATHOM_CHECK(t->dtype() == q.dtype(), "[causal_attention_backward] mixed dtypes: ", DTypeName(t->dtype()),
                 " vs q ", DTypeName(q.dtype()));
  DispatchFloat(q.dtype(), "causal_attention_backward", [&](auto tag) {
    using T = decltype(tag);
    const T sc = static_cast<T>(scale);
    const T* qp = q.data<T>();
    const T* kp = k.data<T>();
    const T* vp = v.data<T>();
    const T* op = out.data<T>();
    const T* gp = dout.data<T>();
    const T* lp = lse.data<T>();
    T* dqp = dq.data<T>();
    T* dkp = dk.data<T>();
    T* dvp = dv.data<T>();
    std::fill(dqp, dqp + dq.numel(), T(0));
    std::fill(dkp, dkp + dk.numel(), T(0));
    std::fill(dvp, dvp + dv.numel(), T(0));
    for (int64_t b = 0; b < d.b; ++b) {
      for (int64_t h = 0; h < d.h; ++h) {
        for (int64_t i = 0; i < d.t; ++i) {
          const int64_t qrow = (b * d.t + i) * d.h + h;
          const T* qi = qp + qrow * d.dk;
          const T* gi = gp + qrow * d.dv;
          T* dqi = dqp + qrow * d.dk;
          const T lse_i = lp[(b * d.h + h) * d.t + i];
          const T di = Dot(gi, op + qrow * d.dv, d.dv);
          for (int64_t j = 0; j <= i; ++j) {
            const int64_t krow = (b * d.t + j) * d.h + h;
            const T* kj = kp + krow * d.dk;
            const T* vj = vp + krow * d.dv;
            const T p = std::exp(sc * Dot(qi, kj, d.dk) - lse_i);
            T* dvj = dvp + krow * d.dv;
            for (int64_t c = 0; c < d.dv; ++c) dvj[c] += p * gi[c];
            const T ds = sc * p * (Dot(gi, vj, d.dv) - di);
            T* dkj = dkp + krow * d.dk;
            for (int64_t c = 0; c < d.dk; ++c) {
              dqi[c] += ds * kj[c];
              dkj[c] += ds * qi[c];
            }
          }
        }
      }
    }
  });
}

}  // namespace fathom::cpu
