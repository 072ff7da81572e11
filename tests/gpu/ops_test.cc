// The op layer on the GPU (framework/ops.h): every op run on CUDA tensors against the same op run on the
// CPU with the same inputs (bf16 cases: the CPU runs in f32 on the bf16-rounded values the GPU holds;
// backward ops get the same saved statistics on both sides), through the current DevicePool and OpContext;
// copies host <-> device bit for bit; and a chain of ops that allocates and frees temporaries returns the
// pool to the same bytes in use every iteration.
//
// Tolerances (relative L2, ||gpu - cpu|| / ||cpu||, the kernel tests' contracts):
//   kF32Tol 1e-5 -- f32 on both sides: each is within a few f32 roundings per term of the exact value
//     (sums of at most a few hundred terms here, ~1e-7 .. 1e-6), in a different order; also for f32
//     outputs computed from bf16 inputs (bf16 products are exact in f32).
//   kBf16Tol 4e-3 -- a bf16 output is the f32 result rounded once, at most 2^-9 relative per element, so at
//     most 2^-9 ~ 2e-3 in L2, plus the f32 part; 4e-3 = 2^-8 is the kernel tests' bound.
//   Selections (top-k indices, row orders, counts) and copies must match exactly.
#include "framework/ops.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "framework/cuda/device_pool.h"
#include "framework/cuda/host_staging.h"
#include "framework/kernels/cpu/moe.h"
#include "gtest/gtest.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_support.h"

namespace fathom {
namespace {

using testing::Down;
using testing::ExpectBitEqual;
using testing::RandomTensor;
using testing::RelError;
using testing::TestSeed;
using testing::Up;

constexpr double kF32Tol = 1e-5;
constexpr double kBf16Tol = 4e-3;

struct GpuEnv : testing::GpuOpsEnv {
  GpuEnv() : GpuOpsEnv("ops_test", size_t{1} << 30) {}
};

// Equal element values, whatever the two dtypes (a bf16 device copy against the f32 CPU values).
bool SameValues(const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel()) return false;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (a.Item(i) != b.Item(i)) return false;
  return true;
}

// A random input held by the GPU in `dtype` and by the CPU in f32 with the same values.
struct Input {
  Tensor cpu;  // f32
  Tensor gpu;  // dtype, on the device
};

Input Draw(const Shape& shape, DType dtype, std::mt19937_64& rng, double scale = 1.0) {
  Tensor x = RandomTensor(shape, DType::kF32, rng, scale);
  if (dtype == DType::kBF16) x = x.To(DType::kBF16).To(DType::kF32);
  return {x, Up(x.To(dtype))};
}

double Tol(DType out) { return out == DType::kBF16 ? kBf16Tol : kF32Tol; }

std::string Name(DType t) { return std::string(DTypeName(t)); }

class OpsGpu : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    seed_ = TestSeed();
    rng_.seed(seed_);
  }
  std::string Trace() const { return "seed " + std::to_string(seed_) + " " + Name(GetParam()); }
  Input In(const Shape& shape, double scale = 1.0) { return Draw(shape, GetParam(), rng_, scale); }
  Tensor Out(const Shape& shape, DType dtype) { return Tensor::Empty(shape, dtype, Device::kCUDA); }
  Tensor CpuOut(const Shape& shape) { return Tensor::Empty(shape, DType::kF32); }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

TEST_P(OpsGpu, Gemms) {
  FATHOM_REQUIRE_GPU();
  SCOPED_TRACE(Trace());
  GpuEnv env;
  const DType dt = GetParam();
  const int64_t m = 77, n = 48, k = 100;
  const Input x = In({m, k}), w = In({n, k}), wn = In({k, n}), xt = In({k, m}), y = In({k, n});
  {
    Tensor out = Out({m, n}, dt), ref = CpuOut({m, n});
    ops::MatmulNT(out, x.gpu, w.gpu);
    ops::MatmulNT(ref, x.cpu, w.cpu);
    EXPECT_LT(RelError(Down(out), ref), Tol(dt)) << "matmul_nt";
    ops::MatmulNN(out, x.gpu, wn.gpu);
    ops::MatmulNN(ref, x.cpu, wn.cpu);
    EXPECT_LT(RelError(Down(out), ref), Tol(dt)) << "matmul_nn";
  }
  {
    // The weight-gradient form: accumulate into f32 (also for bf16 inputs).
    const Input acc0 = Draw({m, n}, DType::kF32, rng_);
    Tensor out = acc0.gpu, ref = acc0.cpu.Clone();
    ops::MatmulTN(out, xt.gpu, y.gpu, /*accumulate=*/true);
    ops::MatmulTN(ref, xt.cpu, y.cpu, /*accumulate=*/true);
    EXPECT_LT(RelError(Down(out), ref), kF32Tol) << "matmul_tn accumulate";
  }
  // Grouped over 5 experts, expert 2 without rows; counts live on the host for both backends.
  const Tensor counts = Tensor::FromVector({30, 1, 0, 77, 25}, {5}, DType::kI64);
  const int64_t r = 133;
  const Input xr = In({r, k}), we = In({5, n, k}), wen = In({5, k, n}), yr = In({r, n});
  {
    Tensor out = Out({r, n}, dt), ref = CpuOut({r, n});
    ops::GroupedMatmulNT(out, xr.gpu, we.gpu, counts);
    ops::GroupedMatmulNT(ref, xr.cpu, we.cpu, counts);
    EXPECT_LT(RelError(Down(out), ref), Tol(dt)) << "grouped_matmul_nt";
    ops::GroupedMatmulNN(out, xr.gpu, wen.gpu, counts);
    ops::GroupedMatmulNN(ref, xr.cpu, wen.cpu, counts);
    EXPECT_LT(RelError(Down(out), ref), Tol(dt)) << "grouped_matmul_nn";
  }
  {
    const Input g0 = Draw({5, k, n}, DType::kF32, rng_);
    Tensor out = g0.gpu, ref = g0.cpu.Clone();
    ops::GroupedMatmulTN(out, xr.gpu, yr.gpu, counts);
    ops::GroupedMatmulTN(ref, xr.cpu, yr.cpu, counts);
    EXPECT_LT(RelError(Down(out), ref), kF32Tol) << "grouped_matmul_tn";
  }
}

TEST_P(OpsGpu, RmsNormRopeAttention) {
  FATHOM_REQUIRE_GPU();
  SCOPED_TRACE(Trace());
  GpuEnv env;
  const DType dt = GetParam();
  const int64_t n = 133, c = 96;
  const Input x = In({n, c}, 2.0), w = Draw({c}, DType::kF32, rng_, 0.5), dy = In({n, c});
  Tensor out = Out({n, c}, dt), rstd = Out({n}, DType::kF32);
  Tensor out_ref = CpuOut({n, c}), rstd_ref = CpuOut({n});
  ops::RmsNormForward(out, rstd, x.gpu, w.gpu, 1e-6);
  ops::RmsNormForward(out_ref, rstd_ref, x.cpu, w.cpu, 1e-6);
  EXPECT_LT(RelError(Down(out), out_ref), Tol(dt)) << "rms_norm out";
  EXPECT_LT(RelError(Down(rstd), rstd_ref), kF32Tol) << "rms_norm rstd";
  const Tensor rstd_dev = Up(rstd_ref);  // both backwards read the same statistics
  Tensor dx = Out({n, c}, dt), dx_ref = CpuOut({n, c});
  ops::RmsNormBackwardInput(dx, dy.gpu, x.gpu, w.gpu, rstd_dev);
  ops::RmsNormBackwardInput(dx_ref, dy.cpu, x.cpu, w.cpu, rstd_ref);
  EXPECT_LT(RelError(Down(dx), dx_ref), Tol(dt)) << "rms_norm_backward_input";
  const Input dw0 = Draw({c}, DType::kF32, rng_);
  Tensor dw = dw0.gpu, dw_ref = dw0.cpu.Clone();
  ops::RmsNormBackwardWeight(dw, dy.gpu, x.gpu, rstd_dev);
  ops::RmsNormBackwardWeight(dw_ref, dy.cpu, x.cpu, rstd_ref);
  EXPECT_LT(RelError(Down(dw), dw_ref), kF32Tol) << "rms_norm_backward_weight";

  // RoPE over the trailing 16 of 24 columns; tables (T + 3, 8) f32 on both backends.
  const int64_t b = 2, t = 37, h = 3, width = 24, half = 8;
  const Input cos = Draw({t + 3, half}, DType::kF32, rng_), sin = Draw({t + 3, half}, DType::kF32, rng_);
  const Input q = In({b, t, h, width});
  for (bool interleaved : {false, true}) {
    Tensor r = Out({b, t, h, width}, dt), r_ref = CpuOut({b, t, h, width});
    ops::RopeForward(r, q.gpu, cos.gpu, sin.gpu, interleaved);
    ops::RopeForward(r_ref, q.cpu, cos.cpu, sin.cpu, interleaved);
    EXPECT_LT(RelError(Down(r), r_ref), Tol(dt)) << "rope interleaved " << interleaved;
    ops::RopeBackward(r, q.gpu, cos.gpu, sin.gpu, interleaved);
    ops::RopeBackward(r_ref, q.cpu, cos.cpu, sin.cpu, interleaved);
    EXPECT_LT(RelError(Down(r), r_ref), Tol(dt)) << "rope_backward interleaved " << interleaved;
  }

  const int64_t dk = 40, dv = 24;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
  const Input qa = In({b, t, h, dk}), ka = In({b, t, h, dk}), va = In({b, t, h, dv}),
              dout = In({b, t, h, dv});
  Tensor ao = Out({b, t, h, dv}, dt), lse = Out({b, h, t}, DType::kF32);
  Tensor ao_ref = CpuOut({b, t, h, dv}), lse_ref = CpuOut({b, h, t});
  ops::CausalAttentionForward(ao, lse, qa.gpu, ka.gpu, va.gpu, scale);
  ops::CausalAttentionForward(ao_ref, lse_ref, qa.cpu, ka.cpu, va.cpu, scale);
  EXPECT_LT(RelError(Down(ao), ao_ref), Tol(dt)) << "causal_attention out";
  EXPECT_LT(RelError(Down(lse), lse_ref), kF32Tol) << "causal_attention lse";
  // The backward reads the CPU's saved out (as the GPU would hold it) and lse on both sides.
  const Tensor saved_out = ao_ref.To(dt).To(DType::kF32);
  Tensor dq = Out({b, t, h, dk}, dt), dkk = Out({b, t, h, dk}, dt), dvv = Out({b, t, h, dv}, dt);
  Tensor dq_ref = CpuOut({b, t, h, dk}), dk_ref = CpuOut({b, t, h, dk}), dv_ref = CpuOut({b, t, h, dv});
  ops::CausalAttentionBackward(dq, dkk, dvv, dout.gpu, qa.gpu, ka.gpu, va.gpu, Up(saved_out.To(dt)),
                               Up(lse_ref), scale);
  ops::CausalAttentionBackward(dq_ref, dk_ref, dv_ref, dout.cpu, qa.cpu, ka.cpu, va.cpu, saved_out, lse_ref,
                               scale);
  EXPECT_LT(RelError(Down(dq), dq_ref), Tol(dt)) << "causal_attention_backward dq";
  EXPECT_LT(RelError(Down(dkk), dk_ref), Tol(dt)) << "causal_attention_backward dk";
  EXPECT_LT(RelError(Down(dvv), dv_ref), Tol(dt)) << "causal_attention_backward dv";
}

TEST_P(OpsGpu, ActivationsEmbeddingCrossEntropy) {
  FATHOM_REQUIRE_GPU();
  SCOPED_TRACE(Trace());
  GpuEnv env;
  const DType dt = GetParam();
  const int64_t n = 77, i = 130;
  const Input x = In({n, i}, 2.0), gate = In({n, i}, 2.0), up = In({n, i}), dy = In({n, i});
  Tensor s = Out({n, i}, dt), s_ref = CpuOut({n, i});
  ops::SigmoidForward(s, x.gpu);
  ops::SigmoidForward(s_ref, x.cpu);
  EXPECT_LT(RelError(Down(s), s_ref), Tol(dt)) << "sigmoid";
  const Input y = Draw({n, i}, dt, rng_, 0.2);  // any values: the backward only reads them
  ops::SigmoidBackward(s, dy.gpu, y.gpu);
  ops::SigmoidBackward(s_ref, dy.cpu, y.cpu);
  EXPECT_LT(RelError(Down(s), s_ref), Tol(dt)) << "sigmoid_backward";
  ops::SwiGluForward(s, gate.gpu, up.gpu);
  ops::SwiGluForward(s_ref, gate.cpu, up.cpu);
  EXPECT_LT(RelError(Down(s), s_ref), Tol(dt)) << "swiglu";
  Tensor dup = Out({n, i}, dt), dup_ref = CpuOut({n, i});
  ops::SwiGluBackward(s, dup, dy.gpu, gate.gpu, up.gpu);
  ops::SwiGluBackward(s_ref, dup_ref, dy.cpu, gate.cpu, up.cpu);
  EXPECT_LT(RelError(Down(s), s_ref), Tol(dt)) << "swiglu_backward dgate";
  EXPECT_LT(RelError(Down(dup), dup_ref), Tol(dt)) << "swiglu_backward dup";

  const int64_t vocab = 301, c = 40;
  Tensor ids = Tensor::Empty({3, 29}, DType::kI32);
  for (int64_t j = 0; j < ids.numel(); ++j)
    ids.data<int32_t>()[j] = static_cast<int32_t>(rng_() % 50);  // repeats
  const Tensor ids_dev = Up(ids);
  const Input table = In({vocab, c}), demb = In({3, 29, c});
  Tensor e = Out({3, 29, c}, dt), e_ref = CpuOut({3, 29, c});
  ops::EmbeddingForward(e, ids_dev, table.gpu);
  ops::EmbeddingForward(e_ref, ids, table.cpu);
  EXPECT_TRUE(SameValues(Down(e), e_ref)) << "embedding (a row copy)";
  const Input dt0 = Draw({vocab, c}, DType::kF32, rng_);
  Tensor dtable = dt0.gpu, dtable_ref = dt0.cpu.Clone();
  ops::EmbeddingBackward(dtable, ids_dev, demb.gpu);
  ops::EmbeddingBackward(dtable_ref, ids, demb.cpu);
  EXPECT_LT(RelError(Down(dtable), dtable_ref), kF32Tol) << "embedding_backward";

  const Input logits = In({n, vocab}, 3.0);
  Tensor labels = Tensor::Empty({n}, DType::kI32);
  for (int64_t j = 0; j < n; ++j)
    labels.data<int32_t>()[j] = j % 9 == 4 ? -100 : static_cast<int32_t>(rng_() % vocab);
  const Tensor labels_dev = Up(labels);
  Tensor lse = Out({n}, DType::kF32), lse_ref = CpuOut({n});
  const Tensor loss_dev = ops::CrossEntropyForward(lse, logits.gpu, labels_dev, -100);
  EXPECT_EQ(loss_dev.device(), Device::kCUDA) << "the loss sum stays on the device";
  const double loss = Down(loss_dev).Item(0);
  const double loss_ref = ops::CrossEntropyForward(lse_ref, logits.cpu, labels, -100).Item(0);
  EXPECT_NEAR(loss, loss_ref, kF32Tol * std::abs(loss_ref)) << "cross_entropy loss";
  EXPECT_LT(RelError(Down(lse), lse_ref), kF32Tol) << "cross_entropy lse";
  Tensor dl = Out({n, vocab}, dt), dl_ref = CpuOut({n, vocab});
  ops::CrossEntropyBackward(dl, logits.gpu, Up(lse_ref), labels_dev, -100, 0.01);
  ops::CrossEntropyBackward(dl_ref, logits.cpu, lse_ref, labels, -100, 0.01);
  EXPECT_LT(RelError(Down(dl), dl_ref), Tol(dt)) << "cross_entropy_backward";
}

TEST_P(OpsGpu, ElementwiseAndCopies) {
  FATHOM_REQUIRE_GPU();
  SCOPED_TRACE(Trace());
  GpuEnv env;
  const DType dt = GetParam();
  const Input a = In({5, 7, 9}), b = In({5, 7, 9}), c = In({5, 7, 3});
  const Tensor sum = ops::Add(a.gpu, b.gpu);
  EXPECT_EQ(sum.device(), Device::kCUDA);
  EXPECT_TRUE(env.pool.Contains(sum.raw()));
  EXPECT_LT(RelError(Down(sum), ops::Add(a.cpu, b.cpu)), Tol(dt)) << "add";
  {
    // Gradient accumulation: f32 += the parameter dtype.
    const Input acc = Draw({5, 7, 9}, DType::kF32, rng_);
    Tensor acc_ref = acc.cpu.Clone();
    ops::AddInPlace(acc.gpu, b.gpu);
    ops::AddInPlace(acc_ref, b.cpu);
    EXPECT_LT(RelError(Down(acc.gpu), acc_ref), kF32Tol) << "add_in_place";
  }
  const Tensor cat = ops::ConcatLastDim(a.gpu, c.gpu);
  EXPECT_EQ(cat.shape(), Shape({5, 7, 12}));
  EXPECT_TRUE(SameValues(Down(cat), ops::ConcatLastDim(a.cpu, c.cpu))) << "concat_last_dim";
  Tensor sa = Out(a.cpu.shape(), dt), sc = Out(c.cpu.shape(), dt);
  ops::SplitLastDim(cat, sa, sc);
  EXPECT_TRUE(SameValues(Down(sa), a.cpu) && SameValues(Down(sc), c.cpu)) << "split_last_dim";
  // Column copies: the 16-byte-word path (widths and offsets multiples of 8 elements) and the element path
  // (odd ones), each against the CPU.
  for (const auto& [ws, s0, wd, d0, w] :
       {std::array<int64_t, 5>{64, 16, 40, 8, 32}, std::array<int64_t, 5>{13, 3, 11, 1, 7}}) {
    const Input src = In({37, ws});
    const Input dst = In({37, wd});
    ops::CopyColumns(dst.gpu, d0, src.gpu, s0, w);
    Tensor want = dst.cpu.Clone();
    ops::CopyColumns(want, d0, src.cpu, s0, w);
    EXPECT_TRUE(SameValues(Down(dst.gpu), want)) << "copy_columns width " << w;
  }
  ops::Fill(sa, 0.375);
  EXPECT_TRUE(SameValues(Down(sa),
                         Tensor::FromVector(std::vector<double>(sa.numel(), 0.375), sa.shape(), DType::kF32)))
      << "fill";
  ops::Zero(sa);
  EXPECT_TRUE(SameValues(Down(sa), Tensor::Zeros(sa.shape(), DType::kF32))) << "zero";

  // Copies are bit exact for every dtype, in each direction and on the device.
  Tensor ints = Tensor::Empty({13}, DType::kI64);
  for (int64_t j = 0; j < 13; ++j) ints.data<int64_t>()[j] = static_cast<int64_t>(rng_()) >> 3;
  for (const Tensor& host : {a.cpu.To(dt), ints, Tensor::FromVector({1, -2, 3}, {3}, DType::kI32)}) {
    const Tensor dev = ops::To(host, Device::kCUDA);
    EXPECT_EQ(dev.device(), Device::kCUDA);
    ExpectBitEqual(Down(dev), host, ("to " + Name(host.dtype())).c_str());
    const Tensor clone = ops::Clone(dev);
    EXPECT_NE(clone.raw(), dev.raw());
    ExpectBitEqual(Down(clone), host, ("clone " + Name(host.dtype())).c_str());
    Tensor back = Tensor::Empty(host.shape(), host.dtype());
    ops::Copy(back, clone);
    ExpectBitEqual(back, host, ("copy " + Name(host.dtype())).c_str());
  }
}

// Router inputs whose every decision margin exceeds 1e-4 (the f32 sigmoid of either backend is within
// ~1e-7 of the exact one, so both select the same experts), as the MoE kernel tests draw them.
struct Routing {
  Tensor logits, bias;  // (N, E), (E) f32
};

Routing DrawRouting(int64_t n, const cpu::RouterDims& d, std::mt19937_64& rng) {
  Routing r{Tensor::Empty({n, d.num_experts}, DType::kF32),
            RandomTensor({d.num_experts}, DType::kF32, rng, 0.1)};
  const Tensor bias64 = r.bias.To(DType::kF64);
  Tensor s64 = Tensor::Empty({1, d.num_experts}, DType::kF64);
  std::normal_distribution<double> nd(0.0, 1.5);
  for (int64_t t = 0; t < n; ++t) {
    float* lg = r.logits.data<float>() + t * d.num_experts;
    int attempt = 0;
    do {
      FATHOM_CHECK(++attempt < 1000, "no well-separated routing for token ", t);
      for (int64_t j = 0; j < d.num_experts; ++j) {
        lg[j] = static_cast<float>(nd(rng));
        s64.data<double>()[j] = 1.0 / (1.0 + std::exp(-static_cast<double>(lg[j])));
      }
    } while (cpu::RouterSelectionMargin(s64, bias64, d) <= 1e-4);
  }
  return r;
}

TEST(OpsGpuRouter, SelectBalanceLossAndBackwards) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  GpuEnv env;
  const cpu::RouterDims d{.num_experts = 32,
                          .top_k = 6,
                          .n_group = 8,
                          .topk_group = 3,
                          .norm_topk_prob = true,
                          .routed_scaling_factor = 2.5};
  const int64_t batch = 3, seq = 41, n = batch * seq;
  const Routing in = DrawRouting(n, d, rng);
  const Tensor bias_dev = Up(in.bias);
  Tensor scores = Up(in.logits), index = Tensor::Empty({n, d.top_k}, DType::kI64, Device::kCUDA);
  Tensor weight = Tensor::Empty({n, d.top_k}, DType::kF32, Device::kCUDA);
  ops::RouterSelect(index, weight, scores, scores, bias_dev, d);  // in place, as the router runs it
  Tensor scores_ref = in.logits.Clone(), index_ref = Tensor::Empty({n, d.top_k}, DType::kI64);
  Tensor weight_ref = Tensor::Empty({n, d.top_k}, DType::kF32);
  ops::RouterSelect(index_ref, weight_ref, scores_ref, scores_ref, in.bias, d);
  ExpectBitEqual(Down(index), index_ref, "router_select topk_index");
  EXPECT_LT(RelError(Down(scores), scores_ref), kF32Tol) << "router_select scores";
  EXPECT_LT(RelError(Down(weight), weight_ref), kF32Tol) << "router_select topk_weight";

  const Tensor bal_dev = ops::SequenceBalanceLoss(scores, index, batch, seq);
  EXPECT_EQ(bal_dev.device(), Device::kCUDA) << "the balance value stays on the device";
  const double bal = Down(bal_dev).Item(0);
  const double bal_ref = ops::SequenceBalanceLoss(scores_ref, index_ref, batch, seq).Item(0);
  EXPECT_GT(bal_ref, 0.0);
  EXPECT_NEAR(bal, bal_ref, kF32Tol * bal_ref) << "sequence_balance_loss";
  const Tensor ds0 = RandomTensor({n, d.num_experts}, DType::kF32, rng, 0.3);
  Tensor ds = Up(ds0), ds_ref = ds0.Clone();
  ops::SequenceBalanceLossBackward(ds, scores, index, batch, seq, 0.7);
  ops::SequenceBalanceLossBackward(ds_ref, scores_ref, index_ref, batch, seq, 0.7);
  EXPECT_LT(RelError(Down(ds), ds_ref), kF32Tol) << "sequence_balance_loss_backward";

  // The backward with the balance gradient aliased with dlogits (the MoE layer's case) and with none.
  const Tensor dweight = RandomTensor({n, d.top_k}, DType::kF32, rng);
  const Tensor dweight_dev = Up(dweight);
  for (bool with_extra : {true, false}) {
    Tensor dl = with_extra ? Up(ds_ref) : Tensor::Empty({n, d.num_experts}, DType::kF32, Device::kCUDA);
    Tensor dl_ref = with_extra ? ds_ref.Clone() : Tensor::Empty({n, d.num_experts}, DType::kF32);
    ops::RouterSelectBackward(dl, dweight_dev, with_extra ? dl : Tensor(), scores, index, d);
    ops::RouterSelectBackward(dl_ref, dweight, with_extra ? dl_ref : Tensor(), scores_ref, index_ref, d);
    EXPECT_LT(RelError(Down(dl), dl_ref), kF32Tol) << "router_select_backward extra " << with_extra;
  }
}

TEST_P(OpsGpu, PermuteAndCombine) {
  FATHOM_REQUIRE_GPU();
  SCOPED_TRACE(Trace());
  GpuEnv env;
  const DType dt = GetParam();
  const int64_t n = 1001, e = 16, k = 4, h = 72, r = n * k;
  // K distinct experts per token, never expert 11 (it receives zero rows).
  Tensor topk = Tensor::Empty({n, k}, DType::kI64);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int64_t> all;
    for (int64_t j = 0; j < e; ++j)
      if (j != 11) all.push_back(j);
    std::shuffle(all.begin(), all.end(), rng_);
    for (int64_t j = 0; j < k; ++j) topk.data<int64_t>()[t * k + j] = all[j];
  }
  const Input x = In({n, h});
  Tensor x_perm = Out({r, h}, dt), row_slot = Tensor::Empty({r}, DType::kI64, Device::kCUDA);
  Tensor counts_dev = Tensor::Empty({e}, DType::kI64, Device::kCUDA);
  Tensor x_perm_ref = CpuOut({r, h}), row_slot_ref = Tensor::Empty({r}, DType::kI64);
  Tensor counts_ref = Tensor::Empty({e}, DType::kI64);
  ops::MoePermute(x_perm, row_slot, counts_dev, x.gpu, Up(topk));
  ops::MoePermute(x_perm_ref, row_slot_ref, counts_ref, x.cpu, topk);
  // The counts reach the host through the asynchronous staged copy, as the MoE layer brings them.
  const Tensor counts = ops::CopyToHostAsync(counts_dev).Wait();
  ExpectBitEqual(counts, counts_ref, "moe_permute counts (staged copy to the host)");
  EXPECT_EQ(counts.Item(11), 0.0);
  ExpectBitEqual(Down(row_slot), row_slot_ref, "moe_permute row_slot");
  EXPECT_TRUE(SameValues(Down(x_perm), x_perm_ref)) << "moe_permute x_perm";

  const Input dx_perm = In({r, h});
  for (bool acc : {false, true}) {
    const Input dx0 = In({n, h});
    Tensor dx = dx0.gpu, dx_ref = dx0.cpu.Clone();
    ops::MoePermuteBackward(dx, dx_perm.gpu, row_slot, acc);
    ops::MoePermuteBackward(dx_ref, dx_perm.cpu, row_slot_ref, acc);
    EXPECT_LT(RelError(Down(dx), dx_ref), Tol(dt)) << "moe_permute_backward accumulate " << acc;
  }
  const Input y_perm = In({r, h}), dout = In({n, h});
  const Input topk_weight = Draw({n, k}, DType::kF32, rng_, 0.5);
  Tensor out = Out({n, h}, dt), out_ref = CpuOut({n, h});
  ops::MoeCombine(out, y_perm.gpu, row_slot, topk_weight.gpu);
  ops::MoeCombine(out_ref, y_perm.cpu, row_slot_ref, topk_weight.cpu);
  EXPECT_LT(RelError(Down(out), out_ref), Tol(dt)) << "moe_combine";
  Tensor dy_perm = Out({r, h}, dt), dweight = Out({n, k}, DType::kF32);
  Tensor dy_perm_ref = CpuOut({r, h}), dweight_ref = CpuOut({n, k});
  ops::MoeCombineBackward(dy_perm, dweight, dout.gpu, y_perm.gpu, row_slot, topk_weight.gpu);
  ops::MoeCombineBackward(dy_perm_ref, dweight_ref, dout.cpu, y_perm.cpu, row_slot_ref, topk_weight.cpu);
  EXPECT_LT(RelError(Down(dy_perm), dy_perm_ref), Tol(dt)) << "moe_combine_backward dy_perm";
  EXPECT_LT(RelError(Down(dweight), dweight_ref), kF32Tol) << "moe_combine_backward dweight";
}

INSTANTIATE_TEST_SUITE_P(Dtypes, OpsGpu, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const ::testing::TestParamInfo<DType>& info) { return Name(info.param); });

// A layer-like chain that allocates outputs and op temporaries (pool workspaces, slot_row, loss scalars)
// and drops them every iteration: the pool's bytes in use and block count come back to the same values,
// and its peak stops growing after the first iteration (blocks are reused, nothing leaks).
TEST(OpsGpuPool, ChainOfOpsKeepsPoolUseBounded) {
  FATHOM_REQUIRE_GPU();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  GpuEnv env;
  const int64_t n = 200, c = 64, e = 8, k = 2, vocab = 97;
  const Tensor x_host = RandomTensor({n, c}, DType::kF32, rng), w_host = RandomTensor({c}, DType::kF32, rng);
  const Tensor x = Up(x_host), w = Up(w_host), proj = Up(RandomTensor({vocab, c}, DType::kF32, rng, 0.1));
  Tensor topk_host = Tensor::Empty({n, k}, DType::kI64), labels_host = Tensor::Empty({n}, DType::kI32);
  for (int64_t t = 0; t < n; ++t) {
    topk_host.data<int64_t>()[t * k] = t % e;
    topk_host.data<int64_t>()[t * k + 1] = (t * 5 + 1) % e == t % e ? (t + 1) % e : (t * 5 + 1) % e;
    labels_host.data<int32_t>()[t] = static_cast<int32_t>(rng() % vocab);
  }
  const Tensor topk = Up(topk_host), labels = Up(labels_host),
               weights = Up(RandomTensor({n, k}, DType::kF32, rng));
  Tensor dw = Tensor::Zeros({c}, DType::kF32, Device::kCUDA);
  const size_t base_bytes = env.pool.in_use();
  const int64_t base_blocks = env.pool.num_blocks();
  size_t first_peak = 0;
  double first_loss = 0;
  for (int iter = 0; iter < 25; ++iter) {
    {
      Tensor h = Tensor::Empty({n, c}, DType::kF32, Device::kCUDA),
             rstd = Tensor::Empty({n}, DType::kF32, Device::kCUDA);
      ops::RmsNormForward(h, rstd, x, w, 1e-6);
      const Tensor cat = ops::ConcatLastDim(h, x);
      Tensor a = Tensor::Empty({n, c}, DType::kF32, Device::kCUDA),
             b = Tensor::Empty({n, c}, DType::kF32, Device::kCUDA);
      ops::SplitLastDim(cat, a, b);
      const Tensor sum = ops::Add(a, b);
      ops::RmsNormBackwardWeight(dw, sum, x, rstd);  // pool workspace
      Tensor x_perm = Tensor::Empty({n * k, c}, DType::kF32, Device::kCUDA);
      Tensor row_slot = Tensor::Empty({n * k}, DType::kI64, Device::kCUDA),
             counts = Tensor::Empty({e}, DType::kI64, Device::kCUDA);
      ops::MoePermute(x_perm, row_slot, counts, sum, topk);       // slot_row, offsets, sort workspace
      ASSERT_EQ(ops::CopyToHostAsync(counts).Wait().numel(), e);  // a staging slot, reused every iteration
      Tensor y = Tensor::Empty({n, c}, DType::kF32, Device::kCUDA);
      ops::MoeCombine(y, x_perm, row_slot, weights);  // slot_row
      Tensor logits = Tensor::Empty({n, vocab}, DType::kF32, Device::kCUDA),
             lse = Tensor::Empty({n}, DType::kF32, Device::kCUDA);
      ops::MatmulNT(logits, y, proj);
      const double loss = Down(ops::CrossEntropyForward(lse, logits, labels, -100)).Item(0);  // loss scalars
      ASSERT_TRUE(std::isfinite(loss));
      if (iter == 0) first_loss = loss;
      // Same inputs every iteration: a block reused while still in use would change the loss.
      EXPECT_NEAR(loss, first_loss, 1e-6 * std::abs(first_loss)) << "iteration " << iter;
      ops::CrossEntropyBackward(logits, logits, lse, labels, -100, 1.0 / n);
      Tensor dy = Tensor::Empty({n, c}, DType::kF32, Device::kCUDA);
      ops::MatmulNN(dy, logits, proj);
      ops::AddInPlace(dw, ops::Clone(rstd).Rows(0, c));
    }
    EXPECT_EQ(env.pool.in_use(), base_bytes) << "iteration " << iter << " left blocks allocated";
    EXPECT_EQ(env.pool.num_blocks(), base_blocks) << "iteration " << iter;
    if (iter == 0) first_peak = env.pool.peak();
    EXPECT_EQ(env.pool.peak(), first_peak) << "iteration " << iter << " needed more memory than the first";
  }
  EXPECT_GT(first_peak, base_bytes) << "the chain allocated nothing: a vacuous test";
  // One count copy in flight per iteration: one page-locked staging slot, made in the first iteration.
  EXPECT_EQ(env.context.staging().slots(), 1);
  EXPECT_EQ(env.context.staging().leased(), 0);
}

}  // namespace
}  // namespace fathom
