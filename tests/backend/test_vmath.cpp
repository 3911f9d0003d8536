// The vectorized exponentials of backend/cpu/vmath.hpp against std::exp in double: relative
// error within a few float ulps over the whole range softmax and SiLU see, exact zero at and
// below the underflow point (a softmax mask of -inf), NaN kept, and every tail length.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/vmath.hpp"
#include "core/rng.hpp"

using namespace dsv3;

TEST(VMath, ExpMatchesStdExpAcrossTheRange) {
  const uint64_t seed = 7;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  std::vector<float> x(100'003), e(x.size());
  for (auto& v : x) v = -100.0f + 188.0f * float(rng.next_u64() >> 40) / float(1 << 24);
  x[0] = 0.0f;
  x[1] = 88.7f;
  x[2] = -87.0f;
  cpu::exp_shift_sum(e.data(), x.data(), int64_t(x.size()), 0.0f);
  // The sum, shifted as a softmax shifts it (by 80, so it stays finite in float).
  const float sum = cpu::exp_shift_sum(nullptr, x.data(), int64_t(x.size()), 80.0f);
  double worst = 0, ref_sum = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double ref = std::exp(double(x[i]));
    ref_sum += std::exp(double(x[i]) - 80.0);
    if (ref < double(std::numeric_limits<float>::min())) {  // denormal results: absolute
      EXPECT_NEAR(e[i], ref, 2e-45) << x[i];
      continue;
    }
    worst = std::max(worst, std::abs(double(e[i]) - ref) / ref);
  }
  std::printf("worst relative error %.3g\n", worst);
  EXPECT_LT(worst, 4e-7);  // ~3 ulp
  EXPECT_NEAR(sum, ref_sum, 1e-5 * ref_sum);
}

TEST(VMath, UnderflowInfinityNanAndTails) {
  std::vector<float> x = {-INFINITY, -104.0f, -1e30f, std::nanf(""), 1.0f};
  std::vector<float> e(x.size());
  cpu::exp_shift_sum(e.data(), x.data(), int64_t(x.size()), 0.0f);
  EXPECT_EQ(e[0], 0.0f);
  EXPECT_EQ(e[1], 0.0f);
  EXPECT_EQ(e[2], 0.0f);
  EXPECT_TRUE(std::isnan(e[3]));
  EXPECT_NEAR(e[4], std::exp(1.0f), 1e-6);
  // Every tail length: elements past n are neither read into the sum nor written.
  for (int64_t n = 0; n <= 40; ++n) {
    std::vector<float> src(48, 0.5f), dst(48, -1.0f);
    const float s = cpu::exp_shift_sum(dst.data(), src.data(), n, 0.5f);
    EXPECT_FLOAT_EQ(s, float(n)) << n;
    for (int64_t i = 0; i < 48; ++i)
      EXPECT_EQ(dst[size_t(i)], i < n ? 1.0f : -1.0f) << n << " " << i;
  }
}

TEST(VMath, SiluMulAndBackwardMatchTheFormula) {
  const uint64_t seed = 11;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  const int64_t n = 1037;
  std::vector<float> g(n), u(n), dy(n), out(n), dg(n), du(n);
  for (int64_t i = 0; i < n; ++i) {
    g[size_t(i)] = float(int64_t(rng.below(4000)) - 2000) / 100.0f;
    u[size_t(i)] = float(int64_t(rng.below(2000)) - 1000) / 500.0f;
    dy[size_t(i)] = float(int64_t(rng.below(2000)) - 1000) / 700.0f;
  }
  cpu::silu_mul(out.data(), g.data(), u.data(), n);
  cpu::silu_mul_backward(dg.data(), du.data(), dy.data(), g.data(), u.data(), n);
  for (size_t i = 0; i < size_t(n); ++i) {
    const double s = 1.0 / (1.0 + std::exp(-double(g[i])));
    const double silu = double(g[i]) * s;
    EXPECT_NEAR(out[i], silu * u[i], 1e-5 * (1 + std::abs(silu * u[i]))) << g[i];
    const double rg = dy[i] * u[i] * s * (1 + g[i] * (1 - s));
    EXPECT_NEAR(dg[i], rg, 1e-5 * (1 + std::abs(rg))) << g[i];
    EXPECT_NEAR(du[i], dy[i] * silu, 1e-5 * (1 + std::abs(dy[i] * silu))) << g[i];
  }
}
