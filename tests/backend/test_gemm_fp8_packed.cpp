// Kernel tests for the packed FP8 prefill route: gemm_fp8_pack_bf16 (the weight converted into
// oneDNN's BA16a64b2a layout) against an element-by-element loop here, and linear_forward_path's
// LinearPath::Fp8Packed (that conversion and oneDNN's matmul) against a plain loop. Seeds fixed
// and printed.
//
// The route's promise (linear.hpp): y = Σ_k bf16(x[m, k]) · bf16(code(n, k) · scale(n, kb)) with
// FP32 sums; the reference computes that in double and bounds |y - ref| ≤ 1e-5 · Σ_k |terms|.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "backend/cpu/gemm_fp8.hpp"
#include "backend/cpu/linear.hpp"
#include "backend/fp8_weight_util.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"

namespace dsv3::cpu {
namespace {

using fp8_test::Fp8Weight;
using fp8_test::make_fp8_weight;
using fp8_test::normal_vector;

// code·scale rounded to FP32 (one product), then to BF16: what the conversion promises.
uint16_t packed_value(const Fp8Weight& w, int64_t n, int64_t k) {
  return f32_to_bf16(float(w.code(n, k) * double(w.s(n, k))));
}

double bf16d(uint16_t v) {
  return bf16_to_f32(v);
}

// Every element of the padded BA16a64b2a array: the weight's value where (n, k) is inside the
// weight, zero outside; NaN codes NaN.
TEST(GemmFp8Packed, LayoutAgainstLoop) {
  const int64_t shapes[][2] = {{1, 1}, {17, 33}, {64, 256}, {129, 127}, {200, 300}, {257, 513}};
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (auto [N, K] : shapes)
      for (bool nan : {false, true}) {
        const uint64_t seed = 9100 + uint64_t(N * 13 + K);
        SCOPED_TRACE(testing::Message() << "N=" << N << " K=" << K << " nan=" << nan
                                        << " threads=" << threads << " seed=" << seed);
        const Fp8Weight w = make_fp8_weight(N, K, seed, nan);
        const int64_t kp = fp8_pack_cols(K), np = (N + 63) / 64 * 64;
        std::vector<uint16_t> dst(size_t(kp * np), 0x1234);  // no element may keep this
        gemm_fp8_pack_bf16(dst.data(), w.view, nan);
        int fails = 0;
        for (int64_t n = 0; n < np; ++n)
          for (int64_t k = 0; k < kp; ++k) {
            const size_t at = size_t(((n / 64) * (kp / 16) + k / 16) * 1024 + (k % 16) / 2 * 128 +
                                     (n % 64) * 2 + k % 2);
            const uint16_t got = dst[at];
            const bool inside = n < N && k < K;
            const uint16_t want = inside ? packed_value(w, n, k) : uint16_t(0);
            const bool ok = std::isnan(bf16d(want)) ? std::isnan(bf16d(got)) : got == want;
            if (!ok && ++fails <= 5)
              ADD_FAILURE() << "(" << n << ", " << k << "): " << got << " != " << want;
          }
        ASSERT_EQ(fails, 0);
      }
  }
  set_num_threads(2);
}

// The reference of the route; returns the failures. y0: y before an accumulating call.
int check(const Fp8Weight& w, const std::vector<float>& x, const std::vector<float>& y0,
          const std::vector<float>& y, int64_t M, bool acc) {
  const int64_t N = w.view.rows, K = w.view.cols;
  return fp8_test::check_products(y0, y, M, N, K, acc, [&](int64_t m, int64_t n, int64_t k) {
    return bf16d(f32_to_bf16(x[size_t(m * K + k)])) * bf16d(packed_value(w, n, k));
  });
}

// Odd shapes (K not a multiple of 32 or 128, N not a multiple of 64), M across oneDNN's row
// blocks, 1 and 2 threads, overwrite and accumulate, NaN codes (their output columns NaN), and
// a call inside a parallel region (each thread its own buffer and a one-thread matmul).
TEST(GemmFp8Packed, RouteAgainstLoop) {
  const int64_t shapes[][2] = {{1, 1}, {17, 33}, {130, 300}, {200, 1000}, {257, 513}};
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (auto [N, K] : shapes)
      for (int64_t M : {1, 7, 48, 130}) {
        if (M == 130 && N * K > 100000) continue;  // the plain loop's time
        for (bool acc : {false, true})
          for (bool nan : {false, true}) {
            const uint64_t seed = 9300 + uint64_t(N * 31 + K * 7 + M);
            SCOPED_TRACE(testing::Message()
                         << "N=" << N << " K=" << K << " M=" << M << " acc=" << acc
                         << " nan=" << nan << " threads=" << threads << " seed=" << seed);
            const Fp8Weight w = make_fp8_weight(N, K, seed, nan);
            const LinearWeight lw(w.view, Compute::BF16);
            Rng rng(seed + 1);
            const std::vector<float> x = normal_vector(rng, M * K), y0 = normal_vector(rng, M * N);
            auto y = y0;
            linear_forward_path(y.data(), x.data(), M, lw, acc, LinearPath::Fp8Packed);
            ASSERT_EQ(check(w, x, y0, y, M, acc), 0);
          }
      }
  }
  set_num_threads(2);
  // Two weights of different shapes at once on two threads, as the MoE runs its experts.
  const Fp8Weight a = make_fp8_weight(300, 260, 9401, false),
                  b = make_fp8_weight(90, 700, 9402, true);
  std::printf("packed FP8 route seeds 9300+N*31+K*7+M, 9401, 9402\n");
  const LinearWeight la(a.view, Compute::BF16), lb(b.view, Compute::BF16);
  Rng rng(9403);
  const std::vector<float> xa = normal_vector(rng, 40 * 260), xb = normal_vector(rng, 50 * 700);
  std::vector<float> ya(size_t(40 * 300)), yb(size_t(50 * 90));
#pragma omp parallel for num_threads(2)
  for (int t = 0; t < 2; ++t) {
    if (t == 0)
      linear_forward_path(ya.data(), xa.data(), 40, la, false, LinearPath::Fp8Packed);
    else
      linear_forward_path(yb.data(), xb.data(), 50, lb, false, LinearPath::Fp8Packed);
  }
  EXPECT_EQ(check(a, xa, ya, ya, 40, false), 0);
  EXPECT_EQ(check(b, xb, yb, yb, 50, false), 0);
}

// The route takes FP8 weights under Compute::BF16 only.
TEST(GemmFp8Packed, RefusesOtherWeights) {
  const Fp8Weight w = make_fp8_weight(8, 8, 1, false);
  std::vector<float> x(8 * 9, 1.0f), y(8 * 9);
  EXPECT_THROW(linear_forward_path(y.data(), x.data(), 9, LinearWeight(w.view, Compute::F32), false,
                                   LinearPath::Fp8Packed),
               Error);
  std::vector<uint16_t> b(64, 0x3f80);
  const WeightView bv{DType::BF16, 8, 8, b.data(), nullptr};
  EXPECT_THROW(linear_forward_path(y.data(), x.data(), 9, LinearWeight(bv, Compute::BF16), false,
                                   LinearPath::Fp8Packed),
               Error);
}

}  // namespace
}  // namespace dsv3::cpu
