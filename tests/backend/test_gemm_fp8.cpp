// Kernel tests for the FP8 prefill GEMM (gemm_fp8_bf16) against a plain loop here. Seeds fixed
// and printed.
//
// The reference is what the kernel promises: Σ_kb scale(n, kb) · Σ_{k in kb} bf16(x[m, k]) ·
// code(n, k) in double, with subnormal codes counted as zero (gemm_fp8.hpp). Bound |y - ref| ≤
// 1e-5 · Σ_k |terms| (FP32 sums of exact products). Its distance to the F32 dequantized product
// Σ x·code·scale is printed: the price of the route (x rounded to BF16, subnormal codes dropped).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "backend/cpu/gemm_fp8.hpp"
#include "backend/fp8_weight_util.hpp"
#include "core/dtype.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"

namespace dsv3::cpu {
namespace {

using fp8_test::Fp8Weight;
using fp8_test::make_fp8_weight;
using fp8_test::normal_vector;

double bf16r(float v) {
  return bf16_to_f32(f32_to_bf16(v));
}

bool subnormal(uint8_t c) {
  return (c & 0x78) == 0;  // exponent bits zero (both zeros included: value 0 either way)
}

// Checks y (row stride ldy; columns past N must keep their y0 values) against the reference;
// returns the failures and raises worst_vs_exact to the largest |y - exact| / Σ|terms| seen
// (overwriting calls only).
int check(const Fp8Weight& w, const std::vector<float>& x, const std::vector<float>& y0,
          const std::vector<float>& y, int64_t M, int64_t ldy, bool acc,
          double* worst_vs_exact = nullptr) {
  const int64_t N = w.view.rows, K = w.view.cols;
  int fails = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < ldy; ++n) {
      const size_t i = size_t(m * ldy + n);
      if (n >= N) {
        if (y[i] != y0[i] && ++fails <= 5) ADD_FAILURE() << "y[" << m << ", " << n << "] written";
        continue;
      }
      double ref = acc ? y0[i] : 0.0, mag = std::fabs(ref), exact = ref;
      for (int64_t k = 0; k < K; ++k) {
        const uint8_t c = w.codes[size_t(n * K + k)];
        const float xv = x[size_t(m * K + k)];
        const double p = subnormal(c) ? 0.0 : bf16r(xv) * w.code(n, k) * double(w.s(n, k));
        ref += p;
        mag += std::fabs(p);
        exact += double(xv) * w.at(n, k);
      }
      const bool ok = std::isnan(ref) ? std::isnan(y[i]) : std::fabs(y[i] - ref) <= 1e-5 * mag;
      if (!ok && ++fails <= 5)
        ADD_FAILURE() << "y[" << m << ", " << n << "] = " << y[i] << ", reference " << ref;
      if (worst_vs_exact && !acc && mag > 0)  // a row of subnormal codes only has mag 0
        *worst_vs_exact = std::max(*worst_vs_exact, std::fabs(y[i] - exact) / mag);
    }
  return fails;
}

// Odd shapes (K not a multiple of 32 or 128, N not a multiple of 16, 64 or 128), M across the
// 6-row kernel's tails, both thread counts, overwrite and accumulate, an output wider than N.
TEST(GemmFp8, OddShapesAgainstLoop) {
  const int64_t shapes[][2] = {{1, 1},     {17, 33},   {64, 256},  {129, 127},
                               {130, 300}, {257, 513}, {200, 1000}};
  double worst = 0;
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (auto [N, K] : shapes)
      for (int64_t M : {1, 5, 7, 64, 300}) {
        if (M == 300 && N * K > 100000) continue;  // the plain loop's time
        for (bool acc : {false, true}) {
          const int64_t ldy = acc ? N + 3 : N;
          const uint64_t seed = 23000 + uint64_t(N * 31 + K * 7 + M);
          SCOPED_TRACE(testing::Message() << "N=" << N << " K=" << K << " M=" << M << " acc=" << acc
                                          << " threads=" << threads << " seed=" << seed);
          const Fp8Weight w = make_fp8_weight(N, K, seed, false);
          Rng rng(seed + 1);
          const std::vector<float> x = normal_vector(rng, M * K), y0 = normal_vector(rng, M * ldy);
          auto y = y0;
          gemm_fp8_bf16(y.data(), ldy, x.data(), M, w.view, false, acc);
          ASSERT_EQ(check(w, x, y0, y, M, ldy, acc, &worst), 0);
        }
      }
  }
  set_num_threads(2);
  std::printf("gemm_fp8_bf16 seeds 23000+N*31+K*7+M: worst |y - exact| / sum|x*w| = %.3g\n", worst);
}

// The largest M of the brief (300) on a weight of several 128×256 blocks in both directions.
TEST(GemmFp8, LargeMManyBlocks) {
  const int64_t N = 300, K = 600, M = 300;
  const uint64_t seed = 515;
  std::printf("gemm_fp8_bf16 large M seed=%llu\n", static_cast<unsigned long long>(seed));
  const Fp8Weight w = make_fp8_weight(N, K, seed, false);
  Rng rng(seed + 1);
  std::vector<float> x(size_t(M * K)), y(size_t(M * N));
  for (auto& v : x) v = float(rng.normal());
  gemm_fp8_bf16(y.data(), N, x.data(), M, w.view, false, false);
  EXPECT_EQ(check(w, x, y, y, M, N, false), 0);
}

// x far from 1 moves the power of two that carries the 2¹²⁰ between x and the sums: large x
// (up to ~1e30) and tiny x (~1e-30) agree as well as x ~ 1; an Inf in one row leaves the
// scaling of the other rows alone.
TEST(GemmFp8, ExtremeActivations) {
  const int64_t N = 70, K = 300, M = 8;
  const Fp8Weight w = make_fp8_weight(N, K, 31338, false);
  std::printf("gemm_fp8_bf16 extreme x seed=31338\n");
  for (float mag : {1e-30f, 1e-10f, 1e3f, 1e10f, 1e30f}) {
    SCOPED_TRACE(testing::Message() << "|x| ~ " << mag);
    Rng rng(78);
    std::vector<float> x(size_t(M * K)), y(size_t(M * N));
    for (auto& v : x) v = float(rng.normal()) * mag;
    gemm_fp8_bf16(y.data(), N, x.data(), M, w.view, false, false);
    ASSERT_EQ(check(w, x, y, y, M, N, false), 0);
  }
  std::vector<float> x(size_t(M * K), 100.0f), y(size_t(M * N));
  x[5] = std::numeric_limits<float>::infinity();  // row 0
  gemm_fp8_bf16(y.data(), N, x.data(), M, w.view, false, false);
  for (int64_t m = 1; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) ASSERT_TRUE(std::isfinite(y[size_t(m * N + n)])) << m << n;
}

// Scales that the running sums cannot carry across blocks (a zero block, a 2⁴⁰ spread in one row,
// both signs) take the per-block route; the reference holds either way. Row blocks 0 and 2 carry,
// 1 and 3 do not.
TEST(GemmFp8, ScalesTheSumsCannotCarry) {
  const int64_t N = 500, K = 700, M = 20;
  const uint64_t seed = 4711;
  std::printf("gemm_fp8_bf16 uncarried scales seed=%llu\n", static_cast<unsigned long long>(seed));
  Fp8Weight w = make_fp8_weight(N, K, seed, false);
  const int64_t sc = (K + 127) / 128;
  w.scale[size_t(1 * sc + 2)] = 0.0f;    // row block 1: a zero block
  w.scale[size_t(3 * sc + 0)] = 1e-14f;  // row block 3: 2⁴⁰ between its blocks
  w.scale[size_t(3 * sc + 5)] = 1e-2f;
  w.scale[size_t(2 * sc + 4)] = -0.03f;  // row block 2: a negative scale (carried)
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    Rng rng(seed + 1);
    const std::vector<float> x = normal_vector(rng, M * K), y0 = normal_vector(rng, M * N);
    for (bool acc : {false, true}) {
      SCOPED_TRACE(testing::Message() << "acc=" << acc << " threads=" << threads);
      auto y = y0;
      gemm_fp8_bf16(y.data(), N, x.data(), M, w.view, false, acc);
      EXPECT_EQ(check(w, x, y0, y, M, N, acc), 0);
    }
  }
  set_num_threads(2);
}

// NaN codes (0x7f, 0xff) make exactly their output rows NaN, for every activation row.
TEST(GemmFp8, NanCodes) {
  const int64_t N = 200, K = 259, M = 13;
  Fp8Weight w = make_fp8_weight(N, K, 4244, false);
  w.codes[size_t(3 * K + 0)] = 0x7f;
  w.codes[size_t(150 * K + 258)] = 0xff;  // the last column, in the masked tail
  w.codes[size_t(199 * K + 200)] = 0x7f;
  w.codes[size_t(100 * K + 73)] = 0xff;
  std::printf("gemm_fp8_bf16 NaN codes seed=4244\n");
  std::vector<float> x(size_t(M * K), 0.25f), y(size_t(M * N));
  gemm_fp8_bf16(y.data(), N, x.data(), M, w.view, true, false);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      EXPECT_EQ(std::isnan(y[size_t(m * N + n)]), n == 3 || n == 150 || n == 199 || n == 100)
          << "m=" << m << " n=" << n;
}

// Every code at every column position: a one-hot x picks single weights out, so a wrong lane of
// the pair layout or the transpose shows as a wrong value. y = code·scale for normal codes (to
// 2⁻²⁰ relative: the sums carried across scale blocks by the ratio of their scales add a rounding
// per block; neighbouring codes differ by 2⁻⁴ at least), 0 for subnormal ones.
TEST(GemmFp8, EveryCodeEveryColumn) {
  const int64_t N = 144, K = 161;
  Fp8Weight w = make_fp8_weight(N, K, 8, false);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const uint8_t c = uint8_t((n + 37 * k) & 255);
      w.codes[size_t(n * K + k)] = (c & 0x7f) == 0x7f ? uint8_t(c - 1) : c;
    }
  std::printf("gemm_fp8_bf16 one-hot seed=8\n");
  std::vector<float> x(size_t(K * K), 0.0f), y(size_t(K * N));
  for (int64_t k = 0; k < K; ++k) x[size_t(k * K + k)] = 1.0f;  // row k picks column k
  gemm_fp8_bf16(y.data(), N, x.data(), K, w.view, false, false);
  int fails = 0;
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) {
      const uint8_t c = w.codes[size_t(n * K + k)];
      const float want = subnormal(c) ? 0.0f : float(w.code(n, k)) * w.s(n, k);
      if (std::fabs(y[size_t(k * N + n)] - want) > std::ldexp(std::fabs(want), -20) && ++fails <= 5)
        ADD_FAILURE() << "w[" << n << ", " << k << "]: " << y[size_t(k * N + n)] << " != " << want;
    }
  EXPECT_EQ(fails, 0);
}

}  // namespace
}  // namespace dsv3::cpu
