#include "optim/adamw.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "framework/numeric.h"
#include "tests/common/gradcheck.h"

namespace fathom {
namespace {

using testing::FillRandom;
using testing::TestSeed;

// Sizes that are not multiples of 16 leave alignment padding between the tensors.
void AddParams(ParamTable& t) {
  t.Add({.name = "a.weight", .shape = {7, 5}});
  t.Add({.name = "norm.weight", .shape = {13}, .weight_decay = false});
  t.Add({.name = "gate.e_score_correction_bias", .shape = {6}, .trainable = false, .weight_decay = false});
  t.Add({.name = "b.weight", .shape = {3, 11}});
  t.Add({.name = "c.weight", .shape = {2, 2, 9}, .weight_decay = false});
  t.Add({.name = "d.weight", .shape = {17}});
}

OptimConfig TestConfig(const std::string& moment_dtype) {
  OptimConfig cfg;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.95;
  cfg.eps = 1e-8;
  cfg.weight_decay = 0.1;
  cfg.moment_dtype = moment_dtype;
  return cfg;
}

// Rounds an updated moment to what the optimizer stores, per the header contract.
template <class T>
T RoundMoment(T x, bool bf16) {
  if (bf16) return static_cast<T>(Bf16ToFloat(FloatToBf16(static_cast<float>(x))));
  return static_cast<T>(static_cast<float>(x));
}

// The scalar reference: torch.optim.AdamW's formula, element by element, in T, over trainable params.
template <class T>
struct ReferenceAdamW {
  std::vector<T> m, v;  // per flat element
  int64_t t = 0;

  void Step(const ParamTable& table, const OptimConfig& cfg, double lr, bool bf16) {
    if (m.empty()) m.assign(static_cast<size_t>(table.numel()), T(0)), v = m;
    ++t;
    double bc1 = 1.0 - std::pow(cfg.beta1, static_cast<double>(t));
    double bc2 = 1.0 - std::pow(cfg.beta2, static_cast<double>(t));
    T* p = table.values().data<T>();
    const T* g = table.grads().data<T>();
    for (const ParamSpec& s : table.specs()) {
      if (!s.trainable) continue;
      for (int64_t i = s.offset; i < s.offset + NumElements(s.shape); ++i) {
        size_t k = static_cast<size_t>(i);
        T mi = static_cast<T>(cfg.beta1) * m[k] + static_cast<T>(1.0 - cfg.beta1) * g[i];
        T vi = static_cast<T>(cfg.beta2) * v[k] + static_cast<T>(1.0 - cfg.beta2) * g[i] * g[i];
        m[k] = RoundMoment(mi, bf16);
        v[k] = RoundMoment(vi, bf16);
        T pi = p[i];
        if (s.weight_decay) pi *= static_cast<T>(1.0 - lr * cfg.weight_decay);
        T denom = std::sqrt(vi) * static_cast<T>(1.0 / std::sqrt(bc2)) + static_cast<T>(cfg.eps);
        p[i] = pi - static_cast<T>(lr / bc1) * (mi / denom);
      }
    }
  }
};

// Flat indices that belong to no trainable parameter: padding and non-trainable buffers.
std::vector<bool> FrozenMask(const ParamTable& t) {
  std::vector<bool> frozen(static_cast<size_t>(t.numel()), true);
  for (const ParamSpec& s : t.specs()) {
    if (!s.trainable) continue;
    for (int64_t i = s.offset; i < s.offset + NumElements(s.shape); ++i)
      frozen[static_cast<size_t>(i)] = false;
  }
  return frozen;
}

template <class T>
void ExpectMatchesReference(DType dtype, const std::string& moment_dtype, double rel_tol) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const bool bf16 = moment_dtype == "bf16";
  OptimConfig cfg = TestConfig(moment_dtype);

  ParamTable table, ref_table;
  AddParams(table);
  AddParams(ref_table);
  table.Finalize(dtype);
  ref_table.Finalize(dtype);
  FillRandom(table.values(), rng);  // the whole flat buffer, padding included
  ref_table.values().CopyFrom(table.values());
  const Tensor initial = table.values().Clone();
  const std::vector<bool> frozen = FrozenMask(table);

  AdamW opt(table, cfg);
  ReferenceAdamW<T> ref;
  std::uniform_real_distribution<double> lr_dist(1e-3, 5e-2);
  for (int step = 0; step < 6; ++step) {
    FillRandom(table.grads(), rng, 0.5);  // padding and non-trainable grads are non-zero too
    ref_table.grads().CopyFrom(table.grads());
    double lr = lr_dist(rng);
    opt.Step(lr);
    ref.Step(ref_table, cfg, lr, bf16);
    EXPECT_EQ(opt.step(), step + 1);

    const T* p = table.values().template data<T>();
    const T* q = ref_table.values().template data<T>();
    const T* p0 = initial.template data<T>();
    int64_t moved = 0;
    for (int64_t i = 0; i < table.numel(); ++i) {
      if (frozen[static_cast<size_t>(i)]) {
        ASSERT_EQ(p[i], p0[i]) << "frozen element " << i << " changed at step " << step;
        EXPECT_EQ(opt.exp_avg().Item(i), 0.0);
        continue;
      }
      ASSERT_NEAR(p[i], q[i], rel_tol * std::max(1.0, std::abs(static_cast<double>(q[i]))))
          << "element " << i << " step " << step;
      // Stored moments are the reference's rounded moments.
      ASSERT_EQ(opt.exp_avg().Item(i), static_cast<double>(ref.m[static_cast<size_t>(i)])) << i;
      ASSERT_EQ(opt.exp_avg_sq().Item(i), static_cast<double>(ref.v[static_cast<size_t>(i)])) << i;
      moved += p[i] != p0[i];
    }
    EXPECT_GT(moved, 100);
  }
}

TEST(AdamWTest, F64TableF32MomentsMatchesScalarReference) {
  ExpectMatchesReference<double>(DType::kF64, "f32", 1e-13);
}

TEST(AdamWTest, F64TableBf16MomentsMatchesScalarReference) {
  ExpectMatchesReference<double>(DType::kF64, "bf16", 1e-13);
}

TEST(AdamWTest, F32TableMatchesScalarReference) {
  ExpectMatchesReference<float>(DType::kF32, "f32", 1e-6);
  ExpectMatchesReference<float>(DType::kF32, "bf16", 1e-6);
}

// Independent of the reference: on the first step (zero moments) the bias-corrected update is
// lr * g / (|g| + eps), i.e. about lr * sign(g), on top of the decoupled decay p * (1 - lr * wd).
TEST(AdamWTest, FirstStepIsSignStepPlusDecoupledDecay) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  OptimConfig cfg = TestConfig("f32");
  ParamTable table;
  AddParams(table);
  table.Finalize(DType::kF64);
  FillRandom(table.values(), rng);
  FillRandom(table.grads(), rng);
  const Tensor before = table.values().Clone();
  const double lr = 0.01;
  AdamW(table, cfg).Step(lr);
  for (const ParamSpec& s : table.specs()) {
    if (!s.trainable) continue;
    for (int64_t i = s.offset; i < s.offset + NumElements(s.shape); ++i) {
      double p0 = before.Item(i), g = table.grads().Item(i);
      double decayed = s.weight_decay ? p0 * (1.0 - lr * cfg.weight_decay) : p0;
      double expected = decayed - lr * g / (std::abs(g) + cfg.eps);
      EXPECT_NEAR(table.values().Item(i), expected, 1e-12) << s.name << " element " << i - s.offset;
    }
  }
}

TEST(AdamWTest, Bf16MomentsChangeTheTrajectory) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ParamTable t32, t16;
  AddParams(t32);
  AddParams(t16);
  t32.Finalize(DType::kF64);
  t16.Finalize(DType::kF64);
  FillRandom(t32.values(), rng);
  t16.values().CopyFrom(t32.values());
  AdamW o32(t32, TestConfig("f32")), o16(t16, TestConfig("bf16"));
  EXPECT_EQ(o16.moment_dtype(), DType::kBF16);
  EXPECT_EQ(o32.moment_dtype(), DType::kF32);
  EXPECT_EQ(o16.state_bytes() * 2, o32.state_bytes());
  EXPECT_EQ(o32.state_bytes(), static_cast<size_t>(t32.numel()) * 2 * sizeof(float));
  for (int step = 0; step < 3; ++step) {
    FillRandom(t32.grads(), rng);
    t16.grads().CopyFrom(t32.grads());
    o32.Step(0.01);
    o16.Step(0.01);
  }
  int64_t differ = 0;
  for (int64_t i = 0; i < t32.numel(); ++i) differ += t32.values().Item(i) != t16.values().Item(i);
  EXPECT_GT(differ, 0);
}

// ZeRO-1 view: optimizers over a partition of the flat buffer (cut inside parameters, not on alignment
// boundaries) give bit-identical values and moments to one optimizer over the whole table, and an
// optimizer over one range leaves everything outside it untouched.
TEST(AdamWTest, RangeUpdatesEqualTheSameElementsOfAFullUpdate) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const std::string moment_dtype : {"f32", "bf16"}) {
    SCOPED_TRACE(moment_dtype);
    OptimConfig cfg = TestConfig(moment_dtype);
    ParamTable full, sharded, single;
    AddParams(full);
    AddParams(sharded);
    AddParams(single);
    full.Finalize(DType::kF64);
    sharded.Finalize(DType::kF64);
    single.Finalize(DType::kF64);
    FillRandom(full.values(), rng);
    sharded.values().CopyFrom(full.values());
    single.values().CopyFrom(full.values());
    const Tensor initial = full.values().Clone();

    const int64_t n = full.numel();
    // Cut inside "a.weight" and inside "c.weight", so the middle range holds parts of both, whole
    // parameters, padding and the non-trainable buffer.
    auto inside = [&](int id) {
      const ParamSpec& s = full.spec(id);
      return std::uniform_int_distribution<int64_t>(s.offset + 1, s.offset + NumElements(s.shape) - 1)(rng);
    };
    const int64_t a = inside(full.Find("a.weight")), b = inside(full.Find("c.weight"));
    AdamW opt_full(full, cfg);
    AdamW s0(sharded, cfg, 0, a), s1(sharded, cfg, a, b), s2(sharded, cfg, b, -1);
    AdamW opt_single(single, cfg, a, b);
    EXPECT_EQ(s2.end(), n);
    EXPECT_EQ(s0.state_bytes() + s1.state_bytes() + s2.state_bytes(), opt_full.state_bytes());

    for (int step = 0; step < 4; ++step) {
      FillRandom(full.grads(), rng);
      sharded.grads().CopyFrom(full.grads());
      single.grads().CopyFrom(full.grads());
      double lr = 0.01 * (step + 1);
      opt_full.Step(lr);
      for (AdamW* s : {&s0, &s1, &s2}) s->Step(lr);
      opt_single.Step(lr);
    }
    const double* pf = full.values().data<double>();
    const double* ps = sharded.values().data<double>();
    const double* p1 = single.values().data<double>();
    const double* p0 = initial.data<double>();
    int64_t inside_moved = 0;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(ps[i], pf[i]) << "sharded element " << i;
      if (i >= a && i < b) {
        ASSERT_EQ(p1[i], pf[i]) << "range element " << i;
        ASSERT_EQ(opt_single.exp_avg().Item(i - a), opt_full.exp_avg().Item(i));
        ASSERT_EQ(opt_single.exp_avg_sq().Item(i - a), opt_full.exp_avg_sq().Item(i));
        inside_moved += p1[i] != p0[i];
      } else {
        ASSERT_EQ(p1[i], p0[i]) << "element " << i << " outside [" << a << ", " << b << ") changed";
      }
    }
    EXPECT_GT(inside_moved, 0);
  }
}

TEST(AdamWTest, SetStepRestoresBiasCorrection) {
  uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  OptimConfig cfg = TestConfig("f32");
  ParamTable a, b;
  AddParams(a);
  AddParams(b);
  a.Finalize(DType::kF64);
  b.Finalize(DType::kF64);
  FillRandom(a.values(), rng);
  b.values().CopyFrom(a.values());
  AdamW oa(a, cfg), ob(b, cfg);
  for (int step = 0; step < 3; ++step) {
    FillRandom(a.grads(), rng);
    b.grads().CopyFrom(a.grads());
    oa.Step(0.02);
    ob.Step(0.02);
  }
  // A fresh optimizer given b's state (as a checkpoint restore would) continues identically.
  AdamW oc(b, cfg);
  oc.exp_avg().CopyFrom(ob.exp_avg());
  oc.exp_avg_sq().CopyFrom(ob.exp_avg_sq());
  oc.set_step(ob.step());
  FillRandom(a.grads(), rng);
  b.grads().CopyFrom(a.grads());
  oa.Step(0.02);
  oc.Step(0.02);
  EXPECT_EQ(oc.step(), 4);
  int64_t moved = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    ASSERT_EQ(a.values().Item(i), b.values().Item(i)) << i;
  }
  for (int64_t i = 0; i < a.numel(); ++i) moved += oa.exp_avg().Item(i) != 0.0;
  EXPECT_GT(moved, 0);
}

}  // namespace
}  // namespace fathom
