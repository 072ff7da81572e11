// The op layer on the CPU (framework/ops.h): every op gives the bits its cpu:: kernel gives on the same
// random inputs, in f32 and f64 (outputs start from random values, so an op that skipped or misrouted its
// kernel differs); and argument errors (device mismatch, wrong dtype, counts not on the host, a CUDA
// tensor without a backend or context) abort with a message naming the op (death tests).
#include "framework/ops.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "framework/kernels/cpu/activation.h"
#include "framework/kernels/cpu/attention.h"
#include "framework/kernels/cpu/cross_entropy.h"
#include "framework/kernels/cpu/elementwise.h"
#include "framework/kernels/cpu/embedding.h"
#include "framework/kernels/cpu/gemm.h"
#include "framework/kernels/cpu/moe.h"
#include "framework/kernels/cpu/norm.h"
#include "framework/kernels/cpu/rope.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::RandomTensor;
using testing::TestSeed;

bool SameBits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Two tensors with equal random contents (floats or integers): the op's output and the kernel's.
std::pair<Tensor, Tensor> Pair(const Shape& shape, DType dtype, std::mt19937_64& rng) {
  Tensor a;
  if (dtype == DType::kI64) {
    a = Tensor::Empty(shape, dtype);
    for (int64_t i = 0; i < a.numel(); ++i) a.data<int64_t>()[i] = static_cast<int64_t>(rng() % 1000) - 500;
  } else {
    a = RandomTensor(shape, dtype, rng);
  }
  return {a, a.Clone()};
}

Tensor Ids(const Shape& shape, int64_t vocab, std::mt19937_64& rng) {
  Tensor t = Tensor::Empty(shape, DType::kI32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<int32_t>()[i] = static_cast<int32_t>(rng() % vocab);
  return t;
}

// Per token, K distinct experts drawn at random among [0, E) minus `starved` (a routing as RouterSelect
// makes them, with one expert that receives no tokens).
Tensor RandomRouting(int64_t n, int64_t e, int64_t k, int64_t starved, std::mt19937_64& rng) {
  Tensor idx = Tensor::Empty({n, k}, DType::kI64);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int64_t> all;
    for (int64_t i = 0; i < e; ++i)
      if (i != starved) all.push_back(i);
    std::shuffle(all.begin(), all.end(), rng);
    for (int64_t j = 0; j < k; ++j) idx.data<int64_t>()[t * k + j] = all[j];
  }
  return idx;
}

class OpsCpu : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    seed_ = TestSeed();
    rng_.seed(seed_);
  }
  std::string Trace() const {
    return "seed " + std::to_string(seed_) + " " + std::string(DTypeName(GetParam()));
  }
  Tensor R(const Shape& shape, double scale = 1.0) { return RandomTensor(shape, GetParam(), rng_, scale); }
  std::pair<Tensor, Tensor> P(const Shape& shape) { return Pair(shape, GetParam(), rng_); }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

TEST_P(OpsCpu, GemmsMatchKernels) {
  SCOPED_TRACE(Trace());
  const int64_t m = 13, n = 7, k = 9;
  for (bool acc : {false, true}) {
    Tensor x = R({m, k}), w = R({n, k}), wn = R({k, n}), xt = R({k, m}), y = R({k, n});
    auto [a1, a2] = P({m, n});
    ops::MatmulNT(a1, x, w, acc);
    cpu::MatmulNT(a2, x, w, acc);
    EXPECT_TRUE(SameBits(a1, a2)) << "matmul_nt accumulate " << acc;
    auto [b1, b2] = P({m, n});
    ops::MatmulNN(b1, x, wn, acc);
    cpu::MatmulNN(b2, x, wn, acc);
    EXPECT_TRUE(SameBits(b1, b2)) << "matmul_nn accumulate " << acc;
    auto [c1, c2] = P({m, n});
    ops::MatmulTN(c1, xt, y, acc);
    cpu::MatmulTN(c2, xt, y, acc);
    EXPECT_TRUE(SameBits(c1, c2)) << "matmul_tn accumulate " << acc;
  }
  // Grouped: 4 experts, the third receives no rows.
  const Tensor counts = Tensor::FromVector({5, 3, 0, 4}, {4}, DType::kI64);
  const int64_t r = 12;
  for (bool acc : {false, true}) {
    Tensor x = R({r, k}), w = R({4, n, k}), wn = R({4, k, n});
    auto [a1, a2] = P({r, n});
    ops::GroupedMatmulNT(a1, x, w, counts, acc);
    cpu::GroupedMatmulNT(a2, x, w, counts, acc);
    EXPECT_TRUE(SameBits(a1, a2)) << "grouped_matmul_nt";
    auto [b1, b2] = P({r, n});
    ops::GroupedMatmulNN(b1, x, wn, counts, acc);
    cpu::GroupedMatmulNN(b2, x, wn, counts, acc);
    EXPECT_TRUE(SameBits(b1, b2)) << "grouped_matmul_nn";
  }
  Tensor x = R({r, m}), y = R({r, n});
  auto [g1, g2] = P({4, m, n});
  ops::GroupedMatmulTN(g1, x, y, counts);
  cpu::GroupedMatmulTN(g2, x, y, counts);
  EXPECT_TRUE(SameBits(g1, g2)) << "grouped_matmul_tn";
}

TEST_P(OpsCpu, NormRopeAttentionMatchKernels) {
  SCOPED_TRACE(Trace());
  const int64_t n = 11, c = 24;
  Tensor x = R({n, c}), w = R({c}), dy = R({n, c});
  auto [o1, o2] = P({n, c});
  auto [r1, r2] = P({n});
  ops::RmsNormForward(o1, r1, x, w, 1e-6);
  cpu::RmsNormForward(o2, r2, x, w, 1e-6);
  EXPECT_TRUE(SameBits(o1, o2) && SameBits(r1, r2)) << "rms_norm";
  auto [dx1, dx2] = P({n, c});
  ops::RmsNormBackwardInput(dx1, dy, x, w, r2);
  cpu::RmsNormBackwardInput(dx2, dy, x, w, r2);
  EXPECT_TRUE(SameBits(dx1, dx2)) << "rms_norm_backward_input";
  // With a residual: the same bits as the gradient written, then added to the residual.
  Tensor res = R({n, c});
  auto [dr1, unused] = P({n, c});
  ops::RmsNormBackwardInput(dr1, dy, x, w, r2, res);
  EXPECT_TRUE(SameBits(dr1, ops::Add(res, dx2))) << "rms_norm_backward_input with a residual";
  auto [dw1, dw2] = P({c});
  ops::RmsNormBackwardWeight(dw1, dy, x, r2);
  cpu::RmsNormBackwardWeight(dw2, dy, x, r2);
  EXPECT_TRUE(SameBits(dw1, dw2)) << "rms_norm_backward_weight";

  const int64_t b = 2, t = 5, h = 3, width = 10, half = 3;
  Tensor cos = R({t + 2, half}), sin = R({t + 2, half}), q = R({b, t, h, width});
  for (bool interleaved : {false, true}) {
    auto [f1, f2] = P({b, t, h, width});
    ops::RopeForward(f1, q, cos, sin, interleaved);
    cpu::RopeForward(f2, q, cos, sin, interleaved);
    EXPECT_TRUE(SameBits(f1, f2)) << "rope interleaved " << interleaved;
    auto [g1, g2] = P({b, t, h, width});
    ops::RopeBackward(g1, q, cos, sin, interleaved);
    cpu::RopeBackward(g2, q, cos, sin, interleaved);
    EXPECT_TRUE(SameBits(g1, g2)) << "rope_backward interleaved " << interleaved;
  }

  const int64_t dk = 6, dv = 4;
  Tensor qa = R({b, t, h, dk}), ka = R({b, t, h, dk}), va = R({b, t, h, dv}), dout = R({b, t, h, dv});
  auto [out1, out2] = P({b, t, h, dv});
  auto [lse1, lse2] = P({b, h, t});
  ops::CausalAttentionForward(out1, lse1, qa, ka, va, 0.4);
  cpu::CausalAttentionForward(out2, lse2, qa, ka, va, 0.4);
  EXPECT_TRUE(SameBits(out1, out2) && SameBits(lse1, lse2)) << "causal_attention";
  auto [dq1, dq2] = P({b, t, h, dk});
  auto [dk1, dk2] = P({b, t, h, dk});
  auto [dv1, dv2] = P({b, t, h, dv});
  ops::CausalAttentionBackward(dq1, dk1, dv1, dout, qa, ka, va, out2, lse2, 0.4);
  cpu::CausalAttentionBackward(dq2, dk2, dv2, dout, qa, ka, va, out2, lse2, 0.4);
  EXPECT_TRUE(SameBits(dq1, dq2) && SameBits(dk1, dk2) && SameBits(dv1, dv2)) << "causal_attention_backward";
}

TEST_P(OpsCpu, ActivationsEmbeddingCrossEntropyMatchKernels) {
  SCOPED_TRACE(Trace());
  const int64_t n = 9, i = 14;
  Tensor x = R({n, i}), gate = R({n, i}), up = R({n, i}), dy = R({n, i});
  auto [s1, s2] = P({n, i});
  ops::SigmoidForward(s1, x);
  cpu::SigmoidForward(s2, x);
  EXPECT_TRUE(SameBits(s1, s2)) << "sigmoid";
  auto [sb1, sb2] = P({n, i});
  ops::SigmoidBackward(sb1, dy, s2);
  cpu::SigmoidBackward(sb2, dy, s2);
  EXPECT_TRUE(SameBits(sb1, sb2)) << "sigmoid_backward";
  auto [h1, h2] = P({n, i});
  ops::SwiGluForward(h1, gate, up);
  cpu::SwiGluForward(h2, gate, up);
  EXPECT_TRUE(SameBits(h1, h2)) << "swiglu";
  auto [dg1, dg2] = P({n, i});
  auto [du1, du2] = P({n, i});
  ops::SwiGluBackward(dg1, du1, dy, gate, up);
  cpu::SwiGluBackward(dg2, du2, dy, gate, up);
  EXPECT_TRUE(SameBits(dg1, dg2) && SameBits(du1, du2)) << "swiglu_backward";

  const int64_t vocab = 17, c = 6;
  Tensor table = R({vocab, c}), ids = Ids({3, 5}, vocab, rng_), demb = R({3, 5, c});
  auto [e1, e2] = P({3, 5, c});
  ops::EmbeddingForward(e1, ids, table);
  cpu::EmbeddingForward(e2, ids, table);
  EXPECT_TRUE(SameBits(e1, e2)) << "embedding";
  auto [dt1, dt2] = P({vocab, c});
  ops::EmbeddingBackward(dt1, ids, demb);
  cpu::EmbeddingBackward(dt2, ids, demb);
  EXPECT_TRUE(SameBits(dt1, dt2)) << "embedding_backward";

  Tensor logits = R({n, vocab}, 2.0), labels = Ids({n}, vocab, rng_);
  labels.data<int32_t>()[2] = -100;  // an ignored row
  auto [l1, l2] = P({n});
  const Tensor loss1 = ops::CrossEntropyForward(l1, logits, labels, -100);
  const double loss2 = cpu::CrossEntropyForward(l2, logits, labels, -100);
  ASSERT_EQ(loss1.numel(), 1);
  EXPECT_EQ(loss1.dtype(), DType::kF64);
  EXPECT_EQ(loss1.Item(0), loss2) << "cross_entropy loss";
  EXPECT_TRUE(SameBits(l1, l2)) << "cross_entropy lse";
  auto [d1, d2] = P({n, vocab});
  ops::CrossEntropyBackward(d1, logits, l2, labels, -100, 0.125);
  cpu::CrossEntropyBackward(d2, logits, l2, labels, -100, 0.125);
  EXPECT_TRUE(SameBits(d1, d2)) << "cross_entropy_backward";
}

TEST_P(OpsCpu, ElementwiseAndCopiesMatchKernels) {
  SCOPED_TRACE(Trace());
  Tensor a = R({4, 3, 5}), b = R({4, 3, 5}), c = R({4, 3, 2});
  EXPECT_TRUE(SameBits(ops::Add(a, b), cpu::Add(a, b))) << "add";
  auto [i1, i2] = Pair(a.shape(), a.dtype(), rng_);
  ops::AddInPlace(i1, b);
  cpu::AddInPlace(i2, b);
  EXPECT_TRUE(SameBits(i1, i2)) << "add_in_place";
  const Tensor cat = ops::ConcatLastDim(a, c);
  EXPECT_TRUE(SameBits(cat, cpu::ConcatLastDim(a, c))) << "concat_last_dim";
  auto [sa1, sa2] = P(a.shape());
  auto [sc1, sc2] = P(c.shape());
  ops::SplitLastDim(cat, sa1, sc1);
  cpu::SplitLastDim(cat, sa2, sc2);
  EXPECT_TRUE(SameBits(sa1, sa2) && SameBits(sc1, sc2) && SameBits(sa1, a)) << "split_last_dim";
  Tensor f = R({7});
  ops::Fill(f, 0.375);
  for (int64_t j = 0; j < f.numel(); ++j) EXPECT_EQ(f.Item(j), 0.375) << "fill";
  ops::Zero(f);
  for (int64_t j = 0; j < f.numel(); ++j) EXPECT_EQ(f.Item(j), 0.0) << "zero";
  // Copies on the host: fresh memory, same bits.
  const Tensor cl = ops::Clone(a), to = ops::To(a, Device::kCPU);
  EXPECT_TRUE(SameBits(cl, a) && SameBits(to, a) && cl.raw() != a.raw() && to.raw() != a.raw()) << "clone/to";
  Tensor dst = R(a.shape());
  ops::Copy(dst, b);
  EXPECT_TRUE(SameBits(dst, b)) << "copy";
}

TEST_P(OpsCpu, RouterAndBalanceLossMatchKernels) {
  SCOPED_TRACE(Trace());
  const cpu::RouterDims d{.num_experts = 8,
                          .top_k = 3,
                          .n_group = 4,
                          .topk_group = 2,
                          .norm_topk_prob = true,
                          .routed_scaling_factor = 2.5};
  const int64_t batch = 2, seq = 5, n = batch * seq;
  const Tensor logits = R({n, d.num_experts}, 1.5), bias = R({d.num_experts}, 0.1);
  // The op fuses the sigmoid: compare with the router's own two kernel calls (scores written in place).
  Tensor scores1 = logits.Clone(), scores2 = logits.Clone();
  auto [idx1, idx2] = Pair({n, d.top_k}, DType::kI64, rng_);
  auto [w1, w2] = P({n, d.top_k});
  ops::RouterSelect(idx1, w1, scores1, scores1, bias, d);
  cpu::SigmoidForward(scores2, scores2);
  cpu::RouterSelect(idx2, w2, scores2, bias, d);
  EXPECT_TRUE(SameBits(scores1, scores2) && SameBits(idx1, idx2) && SameBits(w1, w2)) << "router_select";

  // Backward, with no extra score gradient, a separate one, and one aliased with dlogits.
  const Tensor dweight = R({n, d.top_k}), extra = R({n, d.num_experts});
  for (int mode = 0; mode < 3; ++mode) {
    Tensor dscores = mode == 0 ? Tensor() : extra.Clone();
    Tensor dlogits = mode == 2 ? dscores : R({n, d.num_experts});
    ops::RouterSelectBackward(dlogits, dweight, dscores, scores2, idx2, d);
    Tensor ref = mode == 0 ? Tensor::Zeros({n, d.num_experts}, GetParam()) : extra.Clone();
    cpu::RouterSelectBackward(ref, dweight, scores2, idx2, d);
    cpu::SigmoidBackward(ref, ref, scores2);
    EXPECT_TRUE(SameBits(dlogits, ref)) << "router_select_backward mode " << mode;
  }

  EXPECT_EQ(ops::SequenceBalanceLoss(scores2, idx2, batch, seq).Item(0),
            cpu::SequenceBalanceLoss(scores2, idx2, batch, seq));
  auto [ds1, ds2] = P({n, d.num_experts});
  ops::SequenceBalanceLossBackward(ds1, scores2, idx2, batch, seq, 0.3);
  cpu::SequenceBalanceLossBackward(ds2, scores2, idx2, batch, seq, 0.3);
  EXPECT_TRUE(SameBits(ds1, ds2)) << "sequence_balance_loss_backward";
}

TEST_P(OpsCpu, PermuteAndCombineMatchKernels) {
  SCOPED_TRACE(Trace());
  const int64_t n = 10, e = 6, k = 2, h = 5, r = n * k;
  const Tensor topk = RandomRouting(n, e, k, /*starved=*/4, rng_);
  Tensor x = R({n, h});
  auto [xp1, xp2] = P({r, h});
  auto [rs1, rs2] = Pair({r}, DType::kI64, rng_);
  auto [c1, c2] = Pair({e}, DType::kI64, rng_);
  ops::MoePermute(xp1, rs1, c1, x, topk);
  cpu::MoePermute(xp2, rs2, c2, x, topk);
  EXPECT_TRUE(SameBits(xp1, xp2) && SameBits(rs1, rs2) && SameBits(c1, c2)) << "moe_permute";
  EXPECT_EQ(c1.data<int64_t>()[4], 0) << "expert 4 should have no rows";

  const Tensor dx_perm = R({r, h});
  for (bool acc : {false, true}) {
    auto [dx1, dx2] = P({n, h});
    ops::MoePermuteBackward(dx1, dx_perm, rs2, acc);
    cpu::MoePermuteBackward(dx2, dx_perm, rs2, acc);
    EXPECT_TRUE(SameBits(dx1, dx2)) << "moe_permute_backward accumulate " << acc;
  }
  const Tensor y_perm = R({r, h}), weight = R({n, k}), dout = R({n, h});
  auto [o1, o2] = P({n, h});
  ops::MoeCombine(o1, y_perm, rs2, weight);
  cpu::MoeCombine(o2, y_perm, rs2, weight);
  EXPECT_TRUE(SameBits(o1, o2)) << "moe_combine";
  auto [dyp1, dyp2] = P({r, h});
  auto [dw1, dw2] = P({n, k});
  ops::MoeCombineBackward(dyp1, dw1, dout, y_perm, rs2, weight);
  cpu::MoeCombineBackward(dyp2, dw2, dout, y_perm, rs2, weight);
  EXPECT_TRUE(SameBits(dyp1, dyp2) && SameBits(dw1, dw2)) << "moe_combine_backward";
}

INSTANTIATE_TEST_SUITE_P(Dtypes, OpsCpu, ::testing::Values(DType::kF32, DType::kF64),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

// A view of host memory labelled as a CUDA tensor: the checks must reject it before anything reads it.
Tensor FakeCuda(const Tensor& host) {
  return Tensor::Wrap(host.raw(), host.shape(), host.dtype(), Device::kCUDA, std::make_shared<Tensor>(host));
}

class OpsCpuDeathTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(OpsCpuDeathTest, DeviceMismatchNamesTheOp) {
  const Tensor out = Tensor::Zeros({2, 3}, DType::kF32), x = Tensor::Zeros({2, 4}, DType::kF32);
  const Tensor w = Tensor::Zeros({3, 4}, DType::kF32);
  EXPECT_DEATH(ops::MatmulNT(out, FakeCuda(x), w), "\\[matmul_nt\\] x is on cuda but out is on cpu");
  const Tensor n = Tensor::Zeros({2, 4}, DType::kF32), rstd = Tensor::Zeros({2}, DType::kF32);
  EXPECT_DEATH(ops::RmsNormForward(n, rstd, x, FakeCuda(Tensor::Zeros({4}, DType::kF32)), 1e-6),
               "\\[rms_norm\\] w is on cuda but out is on cpu");
  EXPECT_DEATH(ops::AddInPlace(x, FakeCuda(x)), "\\[add_in_place\\] b is on cuda but a is on cpu");
  EXPECT_DEATH(
      ops::MoeCombine(n, Tensor::Zeros({4, 4}, DType::kF32), Tensor(), Tensor::Zeros({2, 2}, DType::kF32)),
      "\\[moe_combine\\] row_slot is undefined");
}

TEST_F(OpsCpuDeathTest, DTypeErrorsNameTheOp) {
  const Tensor out = Tensor::Zeros({2, 3}, DType::kF32), x = Tensor::Zeros({2, 4}, DType::kF64);
  EXPECT_DEATH(ops::MatmulNT(out, x, Tensor::Zeros({3, 4}, DType::kF32)),
               "\\[matmul_nt\\] x is f64 but out is f32: one float dtype per call on the CPU");
  const Tensor xb = Tensor::Zeros({2, 4}, DType::kF32).To(DType::kBF16);
  EXPECT_DEATH(
      ops::RmsNormForward(xb, Tensor::Zeros({2}, DType::kF32), xb, Tensor::Zeros({4}, DType::kF32), 1e-6),
      "\\[rms_norm\\] x is bf16: the CPU backend computes in f32 or f64");
  const Tensor table = Tensor::Zeros({5, 3}, DType::kF32), emb = Tensor::Zeros({2, 3}, DType::kF32);
  EXPECT_DEATH(ops::EmbeddingForward(emb, Tensor::Zeros({2}, DType::kI64), table),
               "\\[embedding\\] ids \\(2\\) is i64, expected i32");
  const Tensor rows = Tensor::Zeros({4, 3}, DType::kF32);
  EXPECT_DEATH(ops::GroupedMatmulNT(rows, Tensor::Zeros({4, 2}, DType::kF32),
                                    Tensor::Zeros({2, 3, 2}, DType::kF32), Tensor::Zeros({2}, DType::kI32)),
               "\\[grouped_matmul_nt\\] counts must be a HOST \\(E\\) i64 tensor");
  EXPECT_DEATH(ops::SplitLastDim(Tensor::Zeros({2, 5}, DType::kF32), Tensor::Zeros({2, 2}, DType::kF64),
                                 Tensor::Zeros({2, 3}, DType::kF32)),
               "\\[split_last_dim\\] x is f32, a f64, b f32");
}

TEST_F(OpsCpuDeathTest, CudaTensorsWithoutBackendOrContext) {
  const Tensor out = FakeCuda(Tensor::Zeros({2, 3}, DType::kF32)),
               x = FakeCuda(Tensor::Zeros({2, 4}, DType::kF32));
  const Tensor w = FakeCuda(Tensor::Zeros({3, 4}, DType::kF32));
#ifdef FATHOM_WITH_CUDA
  // With the backend, a CUDA op needs the thread's OpContext and allocations need a pool; both are checked
  // before any device memory is touched.
  EXPECT_DEATH(ops::MatmulNT(out, x, w), "\\[matmul_nt\\] CUDA tensors but no ops::OpContext on this thread");
  EXPECT_DEATH(Tensor::Empty({2}, DType::kF32, Device::kCUDA), "\\[Tensor::Empty\\] no current device pool");
  ops::OpContext context;
  ops::OpContextScope scope(context);
  EXPECT_DEATH(ops::Add(x, x), "\\[add\\] no current device pool");
#else
  EXPECT_DEATH(ops::MatmulNT(out, x, w), "\\[matmul_nt\\] CUDA tensor but this build has no CUDA backend");
  EXPECT_DEATH(ops::To(Tensor::Zeros({2}, DType::kF32), Device::kCUDA),
               "\\[to\\] CUDA tensor but this build has no CUDA backend");
  EXPECT_DEATH(ops::CrossEntropyForward(FakeCuda(Tensor::Zeros({2}, DType::kF32)), x,
                                        FakeCuda(Tensor::Zeros({2}, DType::kI32)), -100),
               "\\[cross_entropy\\] CUDA tensor but this build has no CUDA backend");
  EXPECT_DEATH(Tensor::Empty({2}, DType::kF32, Device::kCUDA),
               "\\[Tensor::Empty\\] CUDA tensor but this build has no CUDA backend");
  EXPECT_DEATH(Tensor::Zeros({2}, DType::kF32, Device::kCUDA),
               "\\[Tensor::Zeros\\] CUDA tensor but this build has no CUDA backend");
#endif
}

}  // namespace
}  // namespace fathom
