// The vectorized reductions of backend/cpu/vreduce.hpp, and the RMSNorm kernels built on them
// (ops.cpp: the forward's sum of squares, the backward's fused dweight partial sums), against
// plain loops in double: every tail length, odd shapes, strided rows, accumulate on and off.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "backend/cpu/ops.hpp"
#include "backend/cpu/vreduce.hpp"
#include "core/rng.hpp"

using namespace dsv3;

namespace {

std::vector<float> randn(Rng& rng, size_t n, float scale = 1.0f) {
  std::vector<float> v(n);
  for (auto& x : v) x = scale * (float(rng.next_u64() >> 40) / float(1 << 24) * 2.0f - 1.0f);
  return v;
}

}  // namespace

TEST(VReduce, DotMaxSumsqMatchPlainLoopsForEveryLength) {
  const uint64_t seed = 11;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  const std::vector<float> a = randn(rng, 300), b = randn(rng, 300);
  for (int64_t n = 0; n <= 300; ++n) {
    double dot = 0, abs_sum = 0, sq = 0;
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; ++i) {
      dot += double(a[size_t(i)]) * double(b[size_t(i)]);
      abs_sum += std::abs(double(a[size_t(i)]) * double(b[size_t(i)]));
      sq += double(a[size_t(i)]) * double(a[size_t(i)]);
      mx = std::max(mx, a[size_t(i)]);
    }
    // FP32 sums in another order: within n ulps of the magnitudes summed.
    EXPECT_NEAR(cpu::dot_ps(a.data(), b.data(), n), dot, 1e-6 * abs_sum + 1e-30) << n;
    EXPECT_EQ(cpu::max_ps(a.data(), n), mx) << n;  // exact
    EXPECT_NEAR(cpu::sumsq_pd(a.data(), n), sq, 1e-14 * sq) << n;
  }
  // Elements past n are not read: a NaN there changes nothing.
  std::vector<float> c(a.begin(), a.begin() + 40);
  c[37] = std::nanf("");
  EXPECT_FALSE(std::isnan(cpu::dot_ps(c.data(), c.data(), 37)));
  EXPECT_FALSE(std::isnan(cpu::max_ps(c.data(), 37)));
  EXPECT_FALSE(std::isnan(cpu::sumsq_pd(c.data(), 37)));
}

TEST(VReduce, RmsnormMatchesPlainLoops) {
  const uint64_t seed = 12;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  struct Shape {
    int64_t n, d, ld_in, ld_dout;
  };
  for (const Shape s : {Shape{1, 5, 5, 5}, Shape{67, 48, 61, 48}, Shape{130, 192, 192, 200},
                        Shape{200, 77, 80, 77}}) {
    const float eps = 1e-6f;
    const std::vector<float> in = randn(rng, size_t(s.n * s.ld_in), 2.0f);
    const std::vector<float> w = randn(rng, size_t(s.d));
    const std::vector<float> dy = randn(rng, size_t(s.n * s.ld_dout));
    // Forward.
    std::vector<float> out(size_t(s.n * s.d)), rstd(size_t(s.n));
    cpu::rmsnorm_forward(out.data(), rstd.data(), in.data(), w.data(), s.n, s.d, eps, s.ld_in, s.d);
    std::vector<double> rs(size_t(s.n));
    for (int64_t r = 0; r < s.n; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < s.d; ++i)
        ss += double(in[size_t(r * s.ld_in + i)]) * in[size_t(r * s.ld_in + i)];
      rs[size_t(r)] = 1.0 / std::sqrt(ss / double(s.d) + eps);
      EXPECT_NEAR(rstd[size_t(r)], rs[size_t(r)], 1e-6 * rs[size_t(r)]);
      for (int64_t i = 0; i < s.d; ++i) {
        const double ref = double(in[size_t(r * s.ld_in + i)]) * rs[size_t(r)] * w[size_t(i)];
        EXPECT_NEAR(out[size_t(r * s.d + i)], ref, 1e-5 * (std::abs(ref) + 1e-3));
      }
    }
    // Backward, both modes; dweight accumulates onto what is there.
    for (bool accumulate : {false, true}) {
      std::vector<float> dx(size_t(s.n * s.ld_in), 0.5f), dw(size_t(s.d), 0.25f);
      cpu::rmsnorm_backward(dx.data(), dw.data(), dy.data(), in.data(), w.data(), rstd.data(), s.n,
                            s.d, s.ld_in, s.ld_dout, accumulate);
      std::vector<double> dw_ref(size_t(s.d), 0.25);
      for (int64_t r = 0; r < s.n; ++r) {
        const float* x = in.data() + r * s.ld_in;
        const float* g = dy.data() + r * s.ld_dout;
        const double r_ = rstd[size_t(r)];
        double dot = 0;
        for (int64_t i = 0; i < s.d; ++i) dot += double(g[i]) * w[size_t(i)] * x[i];
        const double c = dot * r_ * r_ * r_ / double(s.d);
        for (int64_t i = 0; i < s.d; ++i) {
          const double ref = (accumulate ? 0.5 : 0.0) + r_ * w[size_t(i)] * g[i] - x[i] * c;
          EXPECT_NEAR(dx[size_t(r * s.ld_in + i)], ref, 2e-5 * (std::abs(ref) + 1.0))
              << s.n << "x" << s.d << " row " << r << " col " << i;
          dw_ref[size_t(i)] += double(g[i]) * x[i] * r_;
        }
        // Columns past d in a strided row are left alone.
        for (int64_t i = s.d; i < s.ld_in; ++i) EXPECT_EQ(dx[size_t(r * s.ld_in + i)], 0.5f);
      }
      for (int64_t i = 0; i < s.d; ++i)
        EXPECT_NEAR(dw[size_t(i)], dw_ref[size_t(i)], 1e-5 * (std::abs(dw_ref[size_t(i)]) + 1.0))
            << i;
      // Without dweight the input gradient is the same.
      std::vector<float> dx2(size_t(s.n * s.ld_in), 0.5f);
      cpu::rmsnorm_backward(dx2.data(), static_cast<float*>(nullptr), dy.data(), in.data(),
                            w.data(), rstd.data(), s.n, s.d, s.ld_in, s.ld_dout, accumulate);
      EXPECT_EQ(dx2, dx);
    }
  }
}
