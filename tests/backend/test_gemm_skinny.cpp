// The skinny BF16 GEMM of backend/cpu/gemm_skinny.hpp against a plain double-precision loop on
// x rounded to BF16 here (round to nearest even, written out in the test): every activation-row
// count 1..33 (register blocks of 1..4 rows), weight rows on both sides of the 6- and 8-row
// tiles, K on both sides of the 32-element chunk, accumulate on and off, a sub-range of rows
// with a wider output stride (the rows outside are untouched), a weight large enough to be split
// over the pool, long K over many tiles at every row count, and an output that does not depend
// on the batch it is in. Seeds are fixed and printed.
//
// Error bound, relative to S = Σ_k |bf16(x_k)·w_k| (+ |y0| when accumulating): the products are
// exact in FP32 (8-bit significands), each of the 16 lanes adds K/16 of them in FP32, and the
// reduction adds 4 levels and the accumulate one more: (K/16 + 6)·2⁻²⁴ ≤ (K + 96)·2⁻²⁴.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "backend/cpu/gemm_skinny.hpp"
#include "core/dtype.hpp"
#include "core/rng.hpp"

namespace dsv3::cpu {
namespace {

// BF16 rounding to nearest even, independent of the library's (inputs are finite here).
float round_bf16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
  float r;
  std::memcpy(&r, &b, 4);
  return r;
}

struct Problem {
  std::vector<uint16_t> w;  // [N, K] BF16
  std::vector<float> x;     // [M, K]
};

Problem make(int64_t M, int64_t N, int64_t K, Rng& rng) {
  Problem p;
  std::vector<float> wf(size_t(N * K));
  for (auto& v : wf) v = float(rng.normal());
  p.w.resize(wf.size());
  from_f32(p.w.data(), wf.data(), DType::BF16, wf.size());
  p.x.resize(size_t(M * K));
  for (auto& v : p.x) v = float(rng.normal()) * 3.0f;
  return p;
}

// Checks y[m·ldy + n] for n in [n0, n1) against the loop, and that the other columns < ldy kept
// their y0 values. Returns the number of mismatches (the first few are reported).
int check(const std::vector<float>& y, const std::vector<float>& y0, const Problem& p, int64_t M,
          int64_t N, int64_t K, int64_t ldy, int64_t n0, int64_t n1, bool acc) {
  int bad = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < ldy; ++n) {
      const size_t i = size_t(m * ldy + n);
      if (n < n0 || n >= n1) {
        if (y[i] != y0[i] && bad++ < 5) ADD_FAILURE() << "touched y[" << m << ", " << n << "]";
        continue;
      }
      double ref = acc ? double(y0[i]) : 0.0, s = acc ? std::fabs(double(y0[i])) : 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double t = double(round_bf16(p.x[size_t(m * K + k)])) *
                         double(bf16_to_f32(p.w[size_t(n * K + k)]));
        ref += t;
        s += std::fabs(t);
      }
      const double tol = double(K + 96) * std::ldexp(1.0, -24) * s;
      if (!(std::fabs(double(y[i]) - ref) <= tol) && bad++ < 5)
        ADD_FAILURE() << "M " << M << " N " << N << " K " << K << " acc " << acc << ": y[" << m
                      << ", " << n << "] = " << y[i] << ", expected " << ref << " ± " << tol;
    }
  return bad;
}

TEST(GemmSkinny, MatchesLoop) {
  const uint64_t seed = 2024;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  for (int64_t M = 1; M <= 33; ++M)
    for (int64_t N : {1, 5, 6, 7, 8, 13, 50})
      for (int64_t K : {1, 31, 32, 33, 100, 257}) {
        const bool acc = (M + N + K) % 2 == 1;
        const Problem p = make(M, N, K, rng);
        std::vector<float> y(size_t(M * N));
        for (auto& v : y) v = float(rng.normal());
        const auto y0 = y;
        gemm_skinny_bf16(y.data(), p.x.data(), M,
                         WeightView{DType::BF16, N, K, p.w.data(), nullptr}, acc);
        ASSERT_EQ(check(y, y0, p, M, N, K, N, 0, N, acc), 0);
      }
}

TEST(GemmSkinny, RowRangeAndStride) {
  const uint64_t seed = 2025;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  for (int64_t M : {1, 2, 3, 7, 16})
    for (bool acc : {false, true}) {
      const int64_t N = 41, K = 70, ldy = N + 5, n0 = 3, n1 = 38;
      const Problem p = make(M, N, K, rng);
      std::vector<float> y(size_t(M * ldy));
      for (auto& v : y) v = float(rng.normal());
      const auto y0 = y;
      std::vector<uint16_t> xb(size_t(M * skinny_ldx(K)), 0xffff);
      skinny_round_x(xb.data(), p.x.data(), M, K);
      skinny_rows(y.data(), ldy, xb.data(), M, p.w.data(), K, n0, n1, acc);
      ASSERT_EQ(check(y, y0, p, M, N, K, ldy, n0, n1, acc), 0);
    }
}

// A weight of 2.2 MB: split over the pool's threads (and its tiles prefetched ahead).
TEST(GemmSkinny, LargeWeightOverThreads) {
  const uint64_t seed = 2026;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  for (int64_t M : {2, 5, 16}) {
    const int64_t N = 1027, K = 1040;
    const Problem p = make(M, N, K, rng);
    std::vector<float> y(size_t(M * N), 0.0f);
    const auto y0 = y;
    gemm_skinny_bf16(y.data(), p.x.data(), M, WeightView{DType::BF16, N, K, p.w.data(), nullptr},
                     false);
    ASSERT_EQ(check(y, y0, p, M, N, K, N, 0, N, false), 0);
  }
}

// Long K (a multiple of 32, one more chunk, a tail inside a chunk) and enough weight rows for
// many tiles and a remainder, at every row count 1..32: the next tile's prefetch is shared out
// over the row blocks.
TEST(GemmSkinny, LongKManyTiles) {
  const uint64_t seed = 2027;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  for (int64_t M = 1; M <= 32; ++M)
    for (int64_t K : {512, 544, 1057}) {
      const int64_t N = M % 2 ? 103 : 55;
      const bool acc = M % 3 == 0;
      const Problem p = make(M, N, K, rng);
      std::vector<float> y(size_t(M * N));
      for (auto& v : y) v = float(rng.normal());
      const auto y0 = y;
      std::vector<uint16_t> xb(size_t(M * skinny_ldx(K)));
      skinny_round_x(xb.data(), p.x.data(), M, K);
      skinny_rows(y.data(), N, xb.data(), M, p.w.data(), K, 0, N, acc);
      ASSERT_EQ(check(y, y0, p, M, N, K, N, 0, N, acc), 0);
    }
}

// An output's arithmetic does not depend on the other activation rows or on the weight rows a
// call takes: each row of a 16-row product equals, bit for bit, the same row in a 3-row product
// over a different range of weight rows.
TEST(GemmSkinny, RowIndependentOfBatch) {
  const uint64_t seed = 2028;
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  Rng rng(seed);
  const int64_t M = 16, N = 61, K = 1100, ldx = skinny_ldx(K);
  const Problem p = make(M, N, K, rng);
  std::vector<uint16_t> xb(size_t(M * ldx));
  skinny_round_x(xb.data(), p.x.data(), M, K);
  std::vector<float> all(size_t(M * N));
  skinny_rows(all.data(), N, xb.data(), M, p.w.data(), K, 0, N, false);
  for (int64_t m0 : {0, 5, 13}) {
    std::vector<float> part(size_t(3 * N), 0.0f);
    skinny_rows(part.data(), N, xb.data() + m0 * ldx, 3, p.w.data(), K, 7, N, false);
    for (int64_t m = 0; m < 3; ++m)
      for (int64_t n = 7; n < N; ++n)
        ASSERT_EQ(part[size_t(m * N + n)], all[size_t((m0 + m) * N + n)])
            << "row " << m0 + m << ", output " << n;
  }
}

}  // namespace
}  // namespace dsv3::cpu
