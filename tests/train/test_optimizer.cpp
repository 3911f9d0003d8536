// AdamW (DeepSeek-V3 report §3.3.3, §4.2) against a plain double-precision implementation of
// torch.optim.AdamW's update; BF16 moments within a documented tolerance; the weight-decay mask;
// state save/restore (bytes and named tensors); global gradient-norm clipping. Seeds are fixed and
// printed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "train/optimizer.hpp"

using namespace dsv3;
using namespace dsv3::train;

namespace {

// torch.optim.AdamW in double, per element, with a decay flag and a train flag per element.
struct RefAdamW {
  double b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  std::vector<double> m, v;
  int64_t t = 0;
  void step(std::vector<double>& p, const std::vector<double>& g, double lr,
            const std::vector<int>& mode) {  // mode: 0 frozen, 1 no decay, 2 decay
    if (m.empty()) m.assign(p.size(), 0.0), v.assign(p.size(), 0.0);
    ++t;
    const double bc1 = 1 - std::pow(b1, double(t)), bc2 = 1 - std::pow(b2, double(t));
    for (size_t i = 0; i < p.size(); ++i) {
      if (mode[i] == 0) continue;
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      if (mode[i] == 2) p[i] *= 1 - lr * wd;
      p[i] -= lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
    }
  }
};

struct Problem {
  int64_t n;
  std::vector<ParamRange> ranges;
  std::vector<int> mode;  // per element, as RefAdamW reads it
};

// 1237 parameters: decay [0, 500), no decay [500, 800), frozen [800, 900), default (decay) after.
Problem make_problem() {
  Problem pr{1237, {{500, 300, false}, {0, 500, true}, {800, 100, false, false}}, {}};
  pr.mode.assign(size_t(pr.n), 2);
  for (int64_t i = 500; i < 800; ++i) pr.mode[size_t(i)] = 1;
  for (int64_t i = 800; i < 900; ++i) pr.mode[size_t(i)] = 0;
  return pr;
}

std::vector<float> randn(Rng& r, size_t n, double scale) {
  std::vector<float> v(n);
  for (auto& x : v) x = float(r.normal() * scale);
  return v;
}

struct RefErrors {
  double param = 0;  // max |p − p_ref| / max |p_ref − p_initial|
  double m = 0;      // max |m − m_ref| / max over steps of |m_ref| (per element)
  double v = 0;      // max |v − v_ref| / v_ref
};

// Runs `steps` steps of AdamW (moment type mt) and the double reference on the same float inputs.
RefErrors run_vs_reference(MomentType mt, int steps, uint64_t seed) {
  std::printf("AdamW vs double reference: %s moments, %d steps, seed=%llu\n",
              mt == MomentType::BF16 ? "BF16" : "FP32", steps, (unsigned long long)seed);
  const Problem pr = make_problem();
  Rng rng(seed);
  std::vector<float> p = randn(rng, size_t(pr.n), 1.0);
  std::vector<double> pref(p.begin(), p.end()), p0(pref), m_peak(p.size(), 0.0);
  AdamWConfig cfg;
  cfg.moments = mt;
  AdamW opt(pr.n, cfg, pr.ranges);
  RefAdamW ref;
  RefErrors err;
  for (int s = 0; s < steps; ++s) {
    // Gradients over several orders of magnitude, some exactly zero.
    std::vector<float> g = randn(rng, size_t(pr.n), 1.0);
    for (size_t i = 0; i < g.size(); ++i) g[i] *= float(std::pow(10.0, double(i % 5) - 3));
    for (size_t i = 0; i < g.size(); i += 97) g[i] = 0;
    const float lr = 1e-2f * float(s + 1);
    opt.step(p.data(), g.data(), lr);
    ref.step(pref, std::vector<double>(g.begin(), g.end()), double(lr), pr.mode);
    for (int64_t i = 0; i < pr.n; ++i) {
      const size_t j = size_t(i);
      if (pr.mode[j] == 0 || ref.v[j] == 0) continue;
      m_peak[j] = std::max(m_peak[j], std::abs(ref.m[j]));
      err.m = std::max(err.m, std::abs(opt.exp_avg(i) - ref.m[j]) / m_peak[j]);
      err.v = std::max(err.v, std::abs(opt.exp_avg_sq(i) - ref.v[j]) / ref.v[j]);
    }
  }
  EXPECT_EQ(opt.step_count(), steps);
  double change = 0;
  for (int64_t i = 0; i < pr.n; ++i) {
    err.param = std::max(err.param, std::abs(double(p[size_t(i)]) - pref[size_t(i)]));
    change = std::max(change, std::abs(pref[size_t(i)] - p0[size_t(i)]));
    if (pr.mode[size_t(i)] == 0) {
      EXPECT_EQ(double(p[size_t(i)]), p0[size_t(i)]) << "frozen element " << i << " moved";
      EXPECT_EQ(opt.exp_avg(i), 0.0f);
    }
  }
  err.param /= change;
  std::printf("  relative errors: parameters %.3g (max change %.3g), m %.3g, v %.3g\n", err.param,
              change, err.m, err.v);
  return err;
}

}  // namespace

TEST(AdamW, Fp32MomentsMatchDoubleReference) {
  const RefErrors e = run_vs_reference(MomentType::F32, 6, 31);
  // FP32 arithmetic on values of order 1: a few float ulps per step.
  EXPECT_LT(e.param, 1e-5);
  EXPECT_LT(e.m, 1e-5);
  EXPECT_LT(e.v, 1e-5);
}

TEST(AdamW, Bf16MomentsWithinDocumentedTolerance) {
  // BF16 keeps 8 significant bits, so each store is off by at most 2^-9 relative. Since
  // v_t >= β2^(t-s)·v_s, the errors of t stores add up to at most t·2^-9 of v_t; likewise m's
  // error stays below t·2^-9 of the largest |m| seen. The parameters then stay within 1% of the
  // reference's change (docs/training.md).
  const int steps = 6;
  const RefErrors e = run_vs_reference(MomentType::BF16, steps, 32);
  const double bound = steps * std::ldexp(1.0, -9) * 1.01;
  EXPECT_LT(e.m, bound);
  EXPECT_LT(e.v, bound);
  EXPECT_GT(e.v, 1e-4);  // the moments really are BF16
  EXPECT_LT(e.param, 0.01);
}

TEST(AdamW, ManyRangesAcrossThreadChunks) {
  // Enough elements for several parallel chunks, with ranges cut across chunk boundaries: every
  // element must get its own range's treatment, whatever the thread count.
  const uint64_t seed = 38;
  const int64_t n = 100003;
  std::printf("seed=%llu n=%lld\n", (unsigned long long)seed, (long long)n);
  std::vector<ParamRange> ranges;
  std::vector<int> mode(size_t(n), 2);
  for (int64_t o = 0, k = 0; o < n - 1000; o += 1000, ++k) {
    const int64_t size = 777 + k % 5;
    const bool decay = k % 2 == 0, train = k % 7 != 3;
    ranges.push_back({o, size, decay, train});
    for (int64_t i = o; i < o + size; ++i) mode[size_t(i)] = train ? (decay ? 2 : 1) : 0;
  }
  Rng rng(seed);
  std::vector<float> p = randn(rng, size_t(n), 1.0);
  std::vector<double> pref(p.begin(), p.end());
  AdamWConfig cfg;
  cfg.moments = MomentType::F32;
  AdamW opt(n, cfg, ranges);
  RefAdamW ref;
  for (int s = 0; s < 2; ++s) {
    const std::vector<float> g = randn(rng, size_t(n), 0.1);
    opt.step(p.data(), g.data(), 0.05f);
    ref.step(pref, std::vector<double>(g.begin(), g.end()), 0.05, mode);
  }
  double err = 0;
  for (int64_t i = 0; i < n; ++i) err = std::max(err, std::abs(p[size_t(i)] - pref[size_t(i)]));
  std::printf("  max |p - p_ref| %.3g\n", err);
  EXPECT_LT(err, 2e-6);
}

TEST(AdamW, Bf16MomentsAreRoundedNearestEven) {
  // One step from zero state: m = (1−β1)·g and v = (1−β2)·g² computed in FP32, then stored as
  // f32_to_bf16 of those values.
  const uint64_t seed = 33;
  std::printf("seed=%llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const int64_t n = 301;
  std::vector<float> p = randn(rng, size_t(n), 1.0), g = randn(rng, size_t(n), 1.0);
  AdamW opt(n);
  EXPECT_EQ(opt.moment_type(), MomentType::BF16);
  opt.step(p.data(), g.data(), 1e-3f);
  const float a1 = 1.0f - 0.9f, a2 = 1.0f - 0.95f;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[size_t(i)];
    EXPECT_EQ(opt.exp_avg(i), bf16_to_f32(f32_to_bf16(0.9f * 0.0f + a1 * gi))) << i;
    EXPECT_EQ(opt.exp_avg_sq(i), bf16_to_f32(f32_to_bf16(0.95f * 0.0f + a2 * gi * gi))) << i;
  }
}

TEST(AdamW, WeightDecayMaskIsRespected) {
  // Zero gradients: the Adam term vanishes, so only the decoupled decay moves the parameters.
  const Problem pr = make_problem();
  std::vector<float> p(static_cast<size_t>(pr.n)), g(static_cast<size_t>(pr.n), 0.0f);
  for (int64_t i = 0; i < pr.n; ++i) p[size_t(i)] = 1.0f + 0.001f * float(i);
  const std::vector<float> p0 = p;
  AdamW opt(pr.n, {}, pr.ranges);
  const float lr = 0.5f;
  opt.step(p.data(), g.data(), lr);
  for (int64_t i = 0; i < pr.n; ++i) {
    const float expect =
        pr.mode[size_t(i)] == 2 ? p0[size_t(i)] * (1.0f - lr * 0.1f) : p0[size_t(i)];
    EXPECT_EQ(p[size_t(i)], expect) << "element " << i << " mode " << pr.mode[size_t(i)];
  }
  // default_decay = false leaves uncovered elements undecayed.
  AdamWConfig cfg;
  cfg.default_decay = false;
  AdamW opt2(pr.n, cfg, pr.ranges);
  p = p0;
  opt2.step(p.data(), g.data(), lr);
  EXPECT_EQ(p[1000], p0[1000]);
  EXPECT_EQ(p[10], p0[10] * (1.0f - lr * 0.1f));
}

TEST(AdamW, RejectsBadRanges) {
  EXPECT_THROW(AdamW(10, {}, {{0, 6, true}, {5, 2, false}}), Error);  // overlap
  EXPECT_THROW(AdamW(10, {}, {{8, 3, true}}), Error);                 // past the end
  EXPECT_THROW(AdamW(10, {}, {{-1, 3, true}}), Error);
  AdamWConfig bad;
  bad.beta2 = 1.0f;
  EXPECT_THROW(AdamW(10, bad), Error);
}

TEST(AdamW, MinimizesNoisyQuadraticWithBf16Moments) {
  // 0.5·Σ c_i (p_i − target_i)² with noisy gradients: both moment types reach the target to
  // within the noise floor, and BF16 stays close to FP32.
  const uint64_t seed = 34;
  std::printf("noisy quadratic seed=%llu\n", (unsigned long long)seed);
  const int64_t n = 512;
  Rng init(seed);
  const std::vector<float> target = randn(init, size_t(n), 1.0);
  std::vector<float> curv(static_cast<size_t>(n));
  for (auto& c : curv) c = float(std::exp(init.normal()));
  double final_err[2];
  for (int k = 0; k < 2; ++k) {
    AdamWConfig cfg;
    cfg.moments = k == 0 ? MomentType::F32 : MomentType::BF16;
    cfg.weight_decay = 0;
    AdamW opt(n, cfg);
    Rng noise(seed + 1);
    std::vector<float> p(size_t(n), 0.0f), g(static_cast<size_t>(n));
    for (int s = 0; s < 1500; ++s) {
      const float lr = s < 1000 ? 0.02f : 0.002f;
      for (int64_t i = 0; i < n; ++i) {
        g[size_t(i)] =
            curv[size_t(i)] * (p[size_t(i)] - target[size_t(i)]) + 0.1f * float(noise.normal());
      }
      opt.step(p.data(), g.data(), lr);
    }
    double e = 0;
    for (int64_t i = 0; i < n; ++i) e += std::pow(double(p[size_t(i)] - target[size_t(i)]), 2);
    final_err[k] = std::sqrt(e / double(n));
  }
  std::printf("  RMS distance to target: FP32 moments %.4g, BF16 moments %.4g\n", final_err[0],
              final_err[1]);
  EXPECT_LT(final_err[0], 0.02);
  EXPECT_LT(final_err[1], 0.02);
  EXPECT_LT(std::abs(final_err[1] - final_err[0]), 0.25 * final_err[0] + 1e-3);
}

TEST(AdamW, SaveAndRestoreContinuesIdentically) {
  const uint64_t seed = 35;
  std::printf("seed=%llu\n", (unsigned long long)seed);
  for (MomentType mt : {MomentType::BF16, MomentType::F32}) {
    const Problem pr = make_problem();
    Rng rng(seed);
    std::vector<float> p = randn(rng, size_t(pr.n), 1.0);
    std::vector<std::vector<float>> grads;
    for (int s = 0; s < 5; ++s) grads.push_back(randn(rng, size_t(pr.n), 0.1));
    AdamWConfig cfg;
    cfg.moments = mt;
    AdamW a(pr.n, cfg, pr.ranges);
    for (int s = 0; s < 3; ++s) a.step(p.data(), grads[size_t(s)].data(), 1e-2f);
    const std::vector<uint8_t> bytes = a.save_state();
    // Named tensors, copied out as a checkpoint would.
    std::vector<std::vector<uint8_t>> owned;
    std::vector<StateTensor> views = a.state_tensors("opt.");
    ASSERT_EQ(views.size(), 3u);
    for (auto& v : views) {
      size_t nb = dtype_size(v.dtype);
      for (int64_t d : v.shape) nb *= size_t(d);
      const auto* b = static_cast<const uint8_t*>(v.data);
      owned.emplace_back(b, b + nb);
      v.data = owned.back().data();
    }
    EXPECT_EQ(views[0].name, "opt.exp_avg");
    EXPECT_EQ(views[0].dtype, mt == MomentType::BF16 ? DType::BF16 : DType::F32);
    EXPECT_EQ(views[2].name, "opt.step");

    AdamW b(pr.n, cfg, pr.ranges), c(pr.n, cfg, pr.ranges);
    b.load_state(bytes.data(), bytes.size());
    c.load_state_tensors(views, "opt.");
    EXPECT_EQ(b.step_count(), 3);
    EXPECT_EQ(c.step_count(), 3);
    std::vector<float> pa = p, pb = p, pc = p;
    for (int s = 3; s < 5; ++s) {
      a.step(pa.data(), grads[size_t(s)].data(), 1e-2f);
      b.step(pb.data(), grads[size_t(s)].data(), 1e-2f);
      c.step(pc.data(), grads[size_t(s)].data(), 1e-2f);
    }
    EXPECT_EQ(std::memcmp(pa.data(), pb.data(), pa.size() * 4), 0);
    EXPECT_EQ(std::memcmp(pa.data(), pc.data(), pa.size() * 4), 0);

    // Errors: wrong size, truncated blob, missing tensor.
    AdamW wrong(pr.n + 1, cfg);
    EXPECT_THROW(wrong.load_state(bytes.data(), bytes.size()), Error);
    EXPECT_THROW(b.load_state(bytes.data(), bytes.size() - 1), Error);
    EXPECT_THROW(b.load_state_tensors({views[0], views[2]}, "opt."), Error);
  }
}

TEST(AdamW, RestoresAcrossMomentTypes) {
  // An FP32-moment state loads into a BF16 optimizer as its nearest-even rounding, and back.
  const int64_t n = 77;
  Rng rng(36);
  std::vector<float> p = randn(rng, size_t(n), 1.0), g = randn(rng, size_t(n), 1.0);
  AdamWConfig f32cfg;
  f32cfg.moments = MomentType::F32;
  AdamW f32(n, f32cfg), bf16(n);
  f32.step(p.data(), g.data(), 1e-3f);
  const auto bytes = f32.save_state();
  bf16.load_state(bytes.data(), bytes.size());
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(bf16.exp_avg(i), bf16_to_f32(f32_to_bf16(f32.exp_avg(i))));
    EXPECT_EQ(bf16.exp_avg_sq(i), bf16_to_f32(f32_to_bf16(f32.exp_avg_sq(i))));
  }
  AdamW back(n, f32cfg);
  back.load_state_tensors(bf16.state_tensors());
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(back.exp_avg(i), bf16.exp_avg(i));
  EXPECT_EQ(back.step_count(), 1);
}

TEST(ClipGradNorm, ScalesOnlyAboveMaxNorm) {
  const uint64_t seed = 37;
  std::printf("seed=%llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const size_t n = 200003;  // several reduction blocks
  const std::vector<float> g0 = randn(rng, n, 0.01);
  double sq = 0;
  for (float x : g0) sq += double(x) * double(x);
  const double norm = std::sqrt(sq);
  std::printf("  norm %.6g\n", norm);

  std::vector<float> g = g0;
  EXPECT_NEAR(grad_sq_sum(g.data(), n), sq, 1e-12 * sq);
  const float big = float(norm) * 2;
  EXPECT_NEAR(clip_grad_norm(g.data(), n, big), norm, 1e-6 * norm);
  EXPECT_EQ(std::memcmp(g.data(), g0.data(), n * 4), 0) << "below max_norm: unchanged";

  const float max_norm = 1.0f;
  ASSERT_GT(norm, 1.5);
  EXPECT_NEAR(clip_grad_norm(g.data(), n, max_norm), norm, 1e-6 * norm);
  double after = 0;
  for (float x : g) after += double(x) * double(x);
  EXPECT_NEAR(std::sqrt(after), max_norm, 1e-5);
  const float scale = float(max_norm / norm);
  for (size_t i = 0; i < n; i += 1001) EXPECT_EQ(g[i], g0[i] * scale);

  // A non-finite norm is returned and leaves the gradients alone.
  g = g0;
  g[5] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(std::isinf(clip_grad_norm(g.data(), n, max_norm)));
  EXPECT_EQ(g[6], g0[6]);
  EXPECT_EQ(clip_grad_norm(g.data(), 0, 1.0f), 0.0f);
}
