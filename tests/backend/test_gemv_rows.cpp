// The several-row GEMV kernels of the batched decode attention (gemv_t_rows_m: all tokens'
// query absorption through one head's W_UK slice; gemv_rows_m: all tokens' W_UV product) against
// a plain double loop, and bit for bit against the one-row kernels they stand in for
// (gemv_t_rows, gemv_rows: what each sequence's decode alone runs), on F32, BF16 and FP8 weights,
// ragged column counts (masked tails) and row counts across the register tiles. Seeds fixed and
// printed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/gemv.hpp"
#include "core/dtype.hpp"
#include "core/rng.hpp"
#include "fp8_weight_util.hpp"

using namespace dsv3;
using namespace dsv3::cpu;

namespace {

// A random weight [rows, cols] of dtype dt and its effective values in double.
struct TestWeight {
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  fp8_test::Fp8Weight fp8;
  WeightView view;
  std::vector<double> eff;
};

TestWeight make_weight(DType dt, int64_t rows, int64_t cols, uint64_t seed) {
  TestWeight t;
  Rng rng(seed);
  t.eff.resize(size_t(rows * cols));
  if (dt == DType::F8_E4M3) {
    t.fp8 = fp8_test::make_fp8_weight(rows, cols, seed, false);
    t.view = t.fp8.view;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) t.eff[size_t(r * cols + c)] = t.fp8.at(r, c);
    return t;
  }
  t.f32.resize(size_t(rows * cols));
  for (auto& v : t.f32) v = float(rng.uniform() * 2 - 1);
  if (dt == DType::BF16) {
    t.bf16.resize(t.f32.size());
    for (size_t i = 0; i < t.f32.size(); ++i) {
      t.bf16[i] = f32_to_bf16(t.f32[i]);
      t.eff[i] = bf16_to_f32(t.bf16[i]);
    }
    t.view = {DType::BF16, rows, cols, t.bf16.data(), nullptr};
  } else {
    for (size_t i = 0; i < t.f32.size(); ++i) t.eff[i] = t.f32[i];
    t.view = {DType::F32, rows, cols, t.f32.data(), nullptr};
  }
  return t;
}

bool same_bits(float a, float b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

TEST(GemvRows, TransposedSeveralRowsEqualOneRow) {
  const uint64_t seed = 2024;
  std::printf("seed %llu\n", (unsigned long long)seed);
  for (const DType dt : {DType::F32, DType::BF16, DType::F8_E4M3})
    for (const int64_t cols : {int64_t(256), int64_t(200), int64_t(40)}) {
      const int64_t rows = 192, r0 = 64, n = 64;  // one head's W_UK slice: rows r0..r0+n
      TestWeight w = make_weight(dt, rows, cols, seed + uint64_t(cols));
      for (const int64_t M : {1, 2, 5, 6, 7, 16}) {
        Rng rng(seed + uint64_t(M));
        const int64_t ldx = n + 3, ldy = cols + 5;  // strided rows, as q and qabs are
        std::vector<float> x(size_t(M * ldx)), y(size_t(M * ldy), -7.0f),
            y1(static_cast<size_t>(cols));
        for (auto& v : x) v = float(rng.uniform() * 2 - 1);
        gemv_t_rows_m(y.data(), ldy, x.data(), ldx, M, w.view, r0, n);
        for (int64_t m = 0; m < M; ++m) {
          gemv_t_rows(y1.data(), x.data() + m * ldx, w.view, r0, n);
          for (int64_t c = 0; c < cols; ++c) {
            double want = 0;
            for (int64_t r = 0; r < n; ++r)
              want += double(x[size_t(m * ldx + r)]) * w.eff[size_t((r0 + r) * cols + c)];
            const float got = y[size_t(m * ldy + c)];
            ASSERT_NEAR(got, want, 1e-4 * (1 + std::abs(want)))
                << dtype_name(dt) << " cols " << cols << " M " << M << " m " << m << " c " << c;
            ASSERT_TRUE(same_bits(got, y1[size_t(c)]))
                << dtype_name(dt) << " cols " << cols << " M " << M << " m " << m << " c " << c;
          }
          for (int64_t c = cols; c < ldy; ++c) ASSERT_EQ(y[size_t(m * ldy + c)], -7.0f);
        }
      }
    }
}

TEST(GemvRows, SeveralRowsEqualOneRow) {
  const uint64_t seed = 2025;
  std::printf("seed %llu\n", (unsigned long long)seed);
  for (const DType dt : {DType::F32, DType::BF16})
    for (const int64_t K : {int64_t(256), int64_t(100)}) {
      const int64_t rows = 80, n0 = 16, n1 = 80;
      TestWeight w = make_weight(dt, rows, K, seed + uint64_t(K));
      for (const int64_t M : {1, 2, 3, 16}) {
        Rng rng(seed + uint64_t(M));
        const int64_t ldx = K + 9, ldy = rows + 2;
        std::vector<float> x(size_t(M * ldx)), y(size_t(M * ldy), -7.0f),
            y1(static_cast<size_t>(rows));
        for (auto& v : x) v = float(rng.uniform() * 2 - 1);
        gemv_rows_m(y.data(), ldy, x.data(), ldx, M, w.view, n0, n1, false);
        for (int64_t m = 0; m < M; ++m) {
          gemv_rows(y1.data(), x.data() + m * ldx, w.view, n0, n1);
          for (int64_t r = 0; r < rows; ++r) {
            const float got = y[size_t(m * ldy + r)];
            if (r < n0 || r >= n1) {
              ASSERT_EQ(got, -7.0f) << "row outside [n0, n1) written";
              continue;
            }
            double want = 0;
            for (int64_t k = 0; k < K; ++k)
              want += double(x[size_t(m * ldx + k)]) * w.eff[size_t(r * K + k)];
            ASSERT_NEAR(got, want, 1e-4 * (1 + std::abs(want)))
                << dtype_name(dt) << " K " << K << " M " << M << " m " << m << " r " << r;
            ASSERT_TRUE(same_bits(got, y1[size_t(r - n0)]))
                << dtype_name(dt) << " K " << K << " M " << M << " m " << m << " r " << r;
          }
        }
        // accumulate adds onto y
        std::vector<float> acc(y);
        gemv_rows_m(acc.data(), ldy, x.data(), ldx, M, w.view, n0, n1, true);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t r = n0; r < n1; ++r)
            ASSERT_NEAR(acc[size_t(m * ldy + r)], 2 * y[size_t(m * ldy + r)],
                        1e-5 * (1 + std::abs(y[size_t(m * ldy + r)])));
      }
    }
}

}  // namespace
