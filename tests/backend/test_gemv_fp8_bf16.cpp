// Kernel tests for the BF16 route of the FP8 decode GEMV (gemv_fp8_bf16) and the FP8 row kernels
// of MLA's absorbed decode (gemv_fp8_rows / gemv_fp8_t_rows, reached through gemv_rows /
// gemv_t_rows), each against a plain loop here. Seeds fixed and printed.
//
// gemv_fp8_bf16's reference is what it promises to compute: Σ_k bf16(x_k·scale)·w_k in double,
// where w_k is the code's exact value and 0 for subnormal codes (|code| < 2⁻⁶: BF16 denormals,
// which vdpbf16ps reads as zero). Bound |y - ref| ≤ 1e-5 · Σ_k |bf16(x_k·scale)·w_k| (FP32
// sums, as the exact route's test). Its distance to the exact product Σ x_k·scale·code_k is
// printed: the price of the route (x rounded to BF16, subnormal weights dropped).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "backend/cpu/gemv.hpp"
#include "backend/cpu/gemv_fp8.hpp"
#include "backend/fp8_weight_util.hpp"
#include "core/dtype.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"

namespace dsv3::cpu {
namespace {

using fp8_test::Fp8Weight;
using fp8_test::make_fp8_weight;
using fp8_test::normal_vector;

bool subnormal(uint8_t c) {
  return (c & 0x78) == 0;  // exponent bits zero (both zeros included: value 0 either way)
}

double bf16r(float v) {
  return bf16_to_f32(f32_to_bf16(v));
}

// Checks gemv_fp8_bf16's y against the BF16-route reference; returns the failures and adds the
// largest |y - exact| / Σ|x·w| seen to worst_vs_exact.
int check_bf16(const Fp8Weight& w, const std::vector<float>& x, const std::vector<float>& y0,
               const std::vector<float>& y, int64_t M, bool acc, double& worst_vs_exact) {
  const int64_t N = w.view.rows, K = w.view.cols;
  int fails = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = acc ? y0[size_t(m * N + n)] : 0.0, mag = std::fabs(ref);
      double exact = ref, mag_exact = mag;
      for (int64_t k = 0; k < K; ++k) {
        const float xs = x[size_t(m * K + k)] * w.s(n, k);
        const uint8_t c = w.codes[size_t(n * K + k)];
        const double p = subnormal(c) ? 0.0 : bf16r(xs) * w.code(n, k);
        ref += p;
        mag += std::fabs(p);
        exact += double(xs) * w.code(n, k);
        mag_exact += std::fabs(double(xs) * w.code(n, k));
      }
      const float got = y[size_t(m * N + n)];
      const bool ok = std::isnan(ref) ? std::isnan(got) : std::fabs(got - ref) <= 1e-5 * mag;
      if (!ok && ++fails <= 5)
        ADD_FAILURE() << "y[" << m << ", " << n << "] = " << got << ", reference " << ref;
      if (mag_exact > 0)
        worst_vs_exact = std::max(worst_vs_exact, std::fabs(got - exact) / mag_exact);
    }
  return fails;
}

TEST(GemvFp8Bf16, OddShapesAllCodes) {
  const int64_t shapes[][2] = {{1, 1},     {5, 63},    {17, 64},    {33, 65},  {129, 127},
                               {130, 129}, {257, 300}, {300, 1024}, {40, 1000}};
  double worst = 0;
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (auto [N, K] : shapes)
      for (int64_t M : {1, 2, 3})
        for (bool acc : {false, true}) {
          const uint64_t seed = 19000 + uint64_t(N * 31 + K * 7 + M);
          SCOPED_TRACE(testing::Message() << "N=" << N << " K=" << K << " M=" << M << " acc=" << acc
                                          << " threads=" << threads << " seed=" << seed);
          const Fp8Weight w = make_fp8_weight(N, K, seed, false);
          Rng rng(seed + 1);
          const std::vector<float> x = normal_vector(rng, M * K), y0 = normal_vector(rng, M * N);
          auto y = y0;
          gemv_fp8_bf16(y.data(), x.data(), M, w.view, false, acc);
          ASSERT_EQ(check_bf16(w, x, y0, y, M, acc, worst), 0);
        }
  }
  set_num_threads(2);
  std::printf("gemv_fp8_bf16 seeds 19000+N*31+K*7+M: worst |y - exact| / sum|x*w| = %.3g\n", worst);
}

// x far from 1 moves the power of two that carries the 2^120 between x and the sums: large x
// (x·scale up to ~1e30) and tiny x (~1e-30) give the same relative agreement.
TEST(GemvFp8Bf16, ExtremeActivations) {
  const int64_t N = 70, K = 200;
  const Fp8Weight w = make_fp8_weight(N, K, 31337, false);
  std::printf("gemv_fp8_bf16 extreme x seed=31337\n");
  for (float mag : {1e-30f, 1e-10f, 1e10f, 1e30f}) {
    SCOPED_TRACE(testing::Message() << "|x| ~ " << mag);
    Rng rng(77);
    std::vector<float> x(static_cast<size_t>(K)), y0(static_cast<size_t>(N)),
        y(static_cast<size_t>(N));
    for (auto& v : x) v = float(rng.normal()) * mag;
    gemv_fp8_bf16(y.data(), x.data(), 1, w.view, false, false);
    double worst = 0;
    ASSERT_EQ(check_bf16(w, x, y0, y, 1, false, worst), 0);
  }
}

// NaN codes (0x7f, 0xff) make exactly their output rows NaN, on either activation row.
TEST(GemvFp8Bf16, NanCodes) {
  const int64_t N = 200, K = 259;
  Fp8Weight w = make_fp8_weight(N, K, 4243, false);
  w.codes[size_t(3 * K + 0)] = 0x7f;
  w.codes[size_t(150 * K + 258)] = 0xff;  // in the masked tail of the last 64-group
  w.codes[size_t(199 * K + 200)] = 0x7f;
  w.codes[size_t(100 * K + 73)] = 0xff;  // in the middle of a 32-code group
  std::printf("gemv_fp8_bf16 NaN codes seed=4243\n");
  for (int64_t M : {1, 2, 3}) {
    std::vector<float> x(size_t(M * K), 0.25f), y(size_t(M * N));
    gemv_fp8_bf16(y.data(), x.data(), M, w.view, true, false);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        EXPECT_EQ(std::isnan(y[size_t(m * N + n)]), n == 3 || n == 150 || n == 199 || n == 100)
            << "m=" << m << " n=" << n;
  }
}

// Every code at every column position: a one-hot x picks single weights out, so a wrong lane
// permutation or widening shows as a wrong value. y = code·bf16(scale) for normal codes, 0 for
// subnormal ones. (A NaN code anywhere makes its row NaN, 0·NaN: they are NanCodes' part.)
TEST(GemvFp8Bf16, EveryCodeEveryColumn) {
  const int64_t N = 256, K = 197;  // three 64-groups and a masked tail
  Fp8Weight w = make_fp8_weight(N, K, 8, false);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const uint8_t c = uint8_t((n + 37 * k) & 255);
      w.codes[size_t(n * K + k)] = (c & 0x7f) == 0x7f ? uint8_t(c - 1) : c;
    }
  std::printf("gemv_fp8_bf16 one-hot seed=8\n");
  std::vector<float> x(static_cast<size_t>(K)), y(static_cast<size_t>(N));
  for (int64_t k = 0; k < K; ++k) {
    std::fill(x.begin(), x.end(), 0.0f);
    x[size_t(k)] = 1.0f;
    gemv_fp8_bf16(y.data(), x.data(), 1, w.view, false, false);
    for (int64_t n = 0; n < N; ++n) {
      const uint8_t c = w.codes[size_t(n * K + k)];
      const float got = y[size_t(n)];
      const double ref = subnormal(c) ? 0.0 : w.code(n, k) * bf16r(w.s(n, k));
      ASSERT_EQ(double(got), ref) << "code " << int(c) << " n=" << n << " k=" << k;
    }
  }
}

// gemv_rows / gemv_t_rows on FP8 weights (MLA's absorbed decode on kv_b_proj's per-head rows):
// ranges starting inside a row block and crossing one, odd column counts, NaN codes.
TEST(GemvFp8Rows, MatchPlainLoops) {
  // K = 256 is MLA's kv_lora_rank in the bench model (per-head ranges of 64 rows below); K up to
  // 513 crosses the 256-column blocks of gemv_t_rows, K < 32 is one masked group.
  for (auto [N, K] : {std::pair<int64_t, int64_t>{300, 256},
                      {260, 97},
                      {240, 300},
                      {200, 513},
                      {200, 1},
                      {201, 31}}) {
    const uint64_t seed = uint64_t(5 * N + K);
    std::printf("gemv_fp8_rows N=%lld K=%lld seed=%llu\n", (long long)N, (long long)K,
                (unsigned long long)seed);
    Fp8Weight w = make_fp8_weight(N, K, seed, false);
    w.codes[size_t(131 * K + K - 1)] = 0xff;  // row 131 (inside both ranges below), last column
    Rng rng(seed + 1);
    std::vector<float> x(size_t(std::max(N, K)));
    for (auto& v : x) v = float(rng.normal());
    for (auto [a, b] :
         {std::pair<int64_t, int64_t>{100, 200}, {0, N}, {5, 6}, {64, 128}, {130, 135}}) {
      SCOPED_TRACE(testing::Message()
                   << "N=" << N << " K=" << K << " rows [" << a << ", " << b << ")");
      std::vector<float> y(size_t(b - a));
      gemv_rows(y.data(), x.data(), w.view, a, b);
      for (int64_t n = a; n < b; ++n) {
        double ref = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double p = double(x[size_t(k)] * w.s(n, k)) * w.code(n, k);
          ref += p;
          mag += std::fabs(p);
        }
        const float got = y[size_t(n - a)];
        if (std::isnan(ref))
          ASSERT_TRUE(std::isnan(got)) << "row " << n;
        else
          ASSERT_LE(std::fabs(got - ref), 1e-5 * mag) << "row " << n;
      }
      std::vector<float> yt(static_cast<size_t>(K));
      gemv_t_rows(yt.data(), x.data(), w.view, a, b - a);
      for (int64_t c = 0; c < K; ++c) {
        double ref = 0, mag = 0;
        for (int64_t r = a; r < b; ++r) {
          const double p = double(x[size_t(r - a)] * w.s(r, c)) * w.code(r, c);
          ref += p;
          mag += std::fabs(p);
        }
        const float got = yt[size_t(c)];
        if (std::isnan(ref))
          ASSERT_TRUE(std::isnan(got)) << "column " << c;
        else
          ASSERT_LE(std::fabs(got - ref), 1e-5 * mag) << "column " << c;
      }
    }
  }
}

}  // namespace
}  // namespace dsv3::cpu
