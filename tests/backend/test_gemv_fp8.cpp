// Kernel tests for backend/cpu/gemv_fp8.hpp against plain reference loops: gemv_fp8 on odd shapes
// (K and N not multiples of 64 or 128: edge scale blocks, masked tails), all 256 codes (subnormals,
// both zeros, NaN codes), M = 1..3, accumulate on/off, on 1 and 2 threads; the tile converters
// fp8_rows_to_bf16 / fp8_rows_to_f32 / bf16_rows_to_f32 element by element. The reference decodes
// each code with core/dtype's scalar fp8_e4m3_to_f32 and sums in double. Seeds fixed and printed.
//
// Bound for the GEMV: |y - ref| ≤ 1e-5 · Σ_k |x_k·w_k| (FP32 products of x·scale and the exact
// code, FP32 sums; as tests/backend/test_linear.cpp's Compute::F32 bound).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

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

int check(const Fp8Weight& w, const std::vector<float>& x, const std::vector<float>& y0,
          const std::vector<float>& y, int64_t M, bool acc) {
  const int64_t N = w.view.rows, K = w.view.cols;
  return fp8_test::check_products(y0, y, M, N, K, acc, [&](int64_t m, int64_t n, int64_t k) {
    return double(x[size_t(m * K + k)]) * w.at(n, k);
  });
}

TEST(GemvFp8, OddShapesAllCodes) {
  const int64_t shapes[][2] = {{1, 1},     {5, 63},    {17, 64},   {33, 65},
                               {129, 127}, {130, 129}, {257, 300}, {300, 1024}};
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (auto [N, K] : shapes)
      for (int64_t M : {1, 2, 3})
        for (bool acc : {false, true}) {
          const uint64_t seed = 9000 + uint64_t(N * 31 + K * 7 + M);
          SCOPED_TRACE(testing::Message() << "N=" << N << " K=" << K << " M=" << M << " acc=" << acc
                                          << " threads=" << threads << " seed=" << seed);
          std::printf("gemv_fp8 N=%lld K=%lld M=%lld seed=%llu\n", (long long)N, (long long)K,
                      (long long)M, (unsigned long long)seed);
          const Fp8Weight w = make_fp8_weight(N, K, seed, false);
          Rng rng(seed + 1);
          const std::vector<float> x = normal_vector(rng, M * K), y0 = normal_vector(rng, M * N);
          auto y = y0;
          gemv_fp8(y.data(), x.data(), M, w.view, false, acc);
          ASSERT_EQ(check(w, x, y0, y, M, acc), 0);
        }
  }
  set_num_threads(2);
}

// NaN codes (0x7f, 0xff) make exactly their output rows NaN; every other row stays finite.
TEST(GemvFp8, NanCodes) {
  const int64_t N = 200, K = 259;
  Fp8Weight w = make_fp8_weight(N, K, 4242, false);
  w.codes[size_t(3 * K + 0)] = 0x7f;
  w.codes[size_t(150 * K + 258)] = 0xff;  // in the masked tail of the last 64-group
  w.codes[size_t(199 * K + 200)] = 0x7f;
  std::printf("gemv_fp8 NaN codes seed=4242\n");
  for (int64_t M : {1, 2}) {
    std::vector<float> x(size_t(M * K), 0.25f), y(size_t(M * N));
    ASSERT_TRUE(fp8_has_nan_code(w.codes.data(), int64_t(w.codes.size())));
    gemv_fp8(y.data(), x.data(), M, w.view, true, false);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        EXPECT_EQ(std::isnan(y[size_t(m * N + n)]), n == 3 || n == 150 || n == 199)
            << "m=" << m << " n=" << n;
  }
}

// Every code (both zeros, subnormals, the largest normals) decodes exactly: a one-hot x picks
// single weights out, and y must equal code·scale as FP32 products.
TEST(GemvFp8, EveryCodeExact) {
  const int64_t N = 256, K = 130;
  Fp8Weight w = make_fp8_weight(N, K, 7, false);
  for (int64_t n = 0; n < N; ++n) w.codes[size_t(n * K + 129)] = uint8_t(n);
  std::vector<float> x(static_cast<size_t>(K), 0.0f), y(static_cast<size_t>(N));
  x[129] = 1.0f;
  gemv_fp8(y.data(), x.data(), 1, w.view, true, false);
  const int64_t sc = (K + 127) / 128;
  for (int64_t n = 0; n < N; ++n) {
    const float ref = fp8_e4m3_to_f32(uint8_t(n)) * w.scale[size_t((n / 128) * sc + 1)];
    if (std::isnan(ref))
      EXPECT_TRUE(std::isnan(y[size_t(n)])) << "code " << n;
    else
      EXPECT_EQ(y[size_t(n)], ref) << "code " << n;
  }
}

TEST(GemvFp8, TileConverters) {
  for (auto [N, K] : {std::pair<int64_t, int64_t>{131, 33}, {300, 257}}) {
    const uint64_t seed = uint64_t(N + K);
    std::printf("fp8 tiles N=%lld K=%lld seed=%llu\n", (long long)N, (long long)K,
                (unsigned long long)seed);
    const Fp8Weight w = make_fp8_weight(N, K, seed, true);
    const int64_t n0 = 100, n1 = N;  // a range that starts inside a row block
    std::vector<uint16_t> b(size_t((n1 - n0) * K));
    std::vector<float> f(size_t((n1 - n0) * K));
    fp8_rows_to_bf16(b.data(), w.view, n0, n1);
    fp8_rows_to_f32(f.data(), w.view, n0, n1);
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const float ref = float(w.at(n, k));  // exact product rounded once
        const size_t i = size_t((n - n0) * K + k);
        if (std::isnan(ref)) {
          EXPECT_TRUE(std::isnan(f[i]));
          EXPECT_TRUE(std::isnan(bf16_to_f32(b[i])));
          continue;
        }
        ASSERT_EQ(f[i], ref) << n << "," << k;
        ASSERT_EQ(b[i], f32_to_bf16(ref)) << n << "," << k;
      }
  }
  // BF16 widening.
  std::vector<uint16_t> h(3 * 40);
  for (size_t i = 0; i < h.size(); ++i) h[i] = f32_to_bf16(float(i) * 0.37f - 5.0f);
  const WeightView v{DType::BF16, 3, 40, h.data(), nullptr};
  std::vector<float> f(2 * 40);
  bf16_rows_to_f32(f.data(), v, 1, 3);
  for (size_t i = 0; i < f.size(); ++i) EXPECT_EQ(f[i], bf16_to_f32(h[40 + i]));
}

}  // namespace
}  // namespace dsv3::cpu
