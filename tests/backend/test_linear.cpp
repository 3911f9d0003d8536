// Op tests for backend/cpu/linear.hpp: linear_forward for every weight dtype (F32, BF16, FP8 e4m3
// with 128×128 block scales, edge blocks included) × Compute × M on both sides of the GEMV/GEMM
// switch, odd shapes, accumulate on/off, NaN/Inf propagation, concurrent calls; gemm_f32 with
// transposes and leading dimensions; dequantize. The reference is a double-precision triple loop
// on a weight decoded here element by element. Seeds are fixed and printed.
//
// Error bounds, relative to S = Σ_k |x_k·w_k| (+ |y0| when accumulating):
//   Compute::F32  1e-5: FP32 products and sums on the effective weight; the GEMV (FP8) rounds
//                 x·scale instead of w·scale, one more rounding of 2⁻²⁴ per product.
//   Compute::BF16 2⁻⁷ + 2⁻¹⁶ + K·2⁻²³: at large M both x and w are rounded to BF16 (8 significant
//                 bits, unit roundoff u = 2⁻⁸ each, so a product is off by ≤ 2u + u²
//                 relative), plus the FP32 accumulation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <thread>
#include <utility>
#include <vector>

#include "backend/cpu/linear.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"

namespace dsv3::cpu {
namespace {

// A stored weight with its own buffers.
struct Stored {
  std::vector<uint8_t> bytes;
  std::vector<float> scale;
  WeightView view;
  // Effective value of element (r, c), decoded independently of the library's kernels.
  double at(int64_t r, int64_t c) const {
    const int64_t i = r * view.cols + c;
    switch (view.dtype) {
      case DType::F32:
        return reinterpret_cast<const float*>(bytes.data())[i];
      case DType::BF16:
        return bf16_to_f32(reinterpret_cast<const uint16_t*>(bytes.data())[i]);
      default: {
        const int64_t sc = (view.cols + 127) / 128;
        return double(fp8_e4m3_to_f32(bytes[size_t(i)])) * scale[size_t((r / 128) * sc + c / 128)];
      }
    }
  }
};

Stored make_weight(DType dt, int64_t rows, int64_t cols, uint64_t seed) {
  Stored s;
  Rng rng(seed);
  const size_t n = size_t(rows * cols);
  s.bytes.resize(n * dtype_size(dt));
  std::vector<float> v(n);
  // FP8 codes cover the whole range, subnormals included; scales vary per block.
  for (auto& x : v) x = float(rng.normal()) * (dt == DType::F8_E4M3 ? 60.0f : 1.0f);
  from_f32(s.bytes.data(), v.data(), dt, n);
  if (dt == DType::F8_E4M3) {
    s.scale.resize(size_t((rows + 127) / 128 * ((cols + 127) / 128)));
    for (auto& x : s.scale) x = float(0.001 + 0.02 * rng.uniform());
  }
  s.view = {dt, rows, cols, s.bytes.data(), s.scale.empty() ? nullptr : s.scale.data()};
  return s;
}

std::vector<float> random_vec(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(rng.normal());
  return v;
}

double rel_bound(Compute c, int64_t K) {
  return c == Compute::F32
             ? 1e-5
             : std::ldexp(1.0, -7) + std::ldexp(1.0, -16) + double(K) * std::ldexp(1.0, -23);
}

// Checks y (from y0 when accumulating) against the double reference; returns the failures.
int check_linear(const std::vector<float>& y, const std::vector<float>& y0,
                 const std::vector<float>& x, const Stored& w, int64_t M, bool acc, Compute c) {
  const int64_t N = w.view.rows, K = w.view.cols;
  int fails = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = acc ? y0[size_t(m * N + n)] : 0.0, mag = acc ? std::fabs(ref) : 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = double(x[size_t(m * K + k)]) * w.at(n, k);
        ref += p;
        mag += std::fabs(p);
      }
      const float got = y[size_t(m * N + n)];
      bool ok;
      if (std::isnan(ref))
        ok = std::isnan(got);
      else if (std::isinf(ref))
        ok = got == float(ref);
      else
        ok = std::fabs(got - ref) <= rel_bound(c, K) * mag + 1e-30;
      if (!ok && ++fails <= 5)
        ADD_FAILURE() << "y[" << m << ", " << n << "] = " << got << ", reference " << ref
                      << " (Σ|x·w| " << mag << ")";
    }
  return fails;
}

const char* name(DType d) {
  return d == DType::F32 ? "F32" : d == DType::BF16 ? "BF16" : "F8_E4M3";
}

TEST(Linear, AllDtypesComputesShapes) {
  const int64_t shapes[][2] = {{1, 1}, {3, 45}, {37, 33}, {131, 259}, {257, 130}};
  for (DType dt : {DType::F32, DType::BF16, DType::F8_E4M3})
    for (Compute c : {Compute::F32, Compute::BF16})
      for (auto [N, K] : shapes) {
        const uint64_t seed = 1000 + uint64_t(N * 7 + K) * 13 + uint64_t(dt);
        std::printf("linear %s compute=%s N=%lld K=%lld seed=%llu\n", name(dt),
                    c == Compute::F32 ? "F32" : "BF16", (long long)N, (long long)K,
                    (unsigned long long)seed);
        const Stored w = make_weight(dt, N, K, seed);
        const LinearWeight lw(w.view, c);
        for (int64_t M : {1, 2, 3, 7, 17, 64, 200})
          for (bool acc : {false, true}) {
            SCOPED_TRACE(testing::Message()
                         << name(dt) << " compute " << (c == Compute::F32 ? "F32" : "BF16") << " N="
                         << N << " K=" << K << " M=" << M << " acc=" << acc << " seed=" << seed);
            const auto x = random_vec(size_t(M * K), seed + 1);
            const auto y0 = random_vec(size_t(M * N), seed + 2);
            auto y = y0;
            linear_forward(y.data(), x.data(), M, lw, acc);
            ASSERT_EQ(check_linear(y, y0, x, w, M, acc, c), 0);
          }
      }
}

// Every path linear_forward chooses between (GEMV, skinny BF16 GEMM, oneDNN GEMM) is right at
// every M, not only where linear_path sends it; the skinny path refuses what it does not take.
TEST(Linear, EveryPathAtEveryM) {
  const int64_t N = 141, K = 200;
  for (DType dt : {DType::BF16, DType::F8_E4M3}) {
    const uint64_t seed = 4242 + uint64_t(dt);
    std::printf("paths %s seed=%llu\n", name(dt), (unsigned long long)seed);
    const Stored w = make_weight(dt, N, K, seed);
    const LinearWeight lw(w.view, Compute::BF16);
    for (LinearPath p : {LinearPath::Gemv, LinearPath::Skinny, LinearPath::Gemm})
      for (int64_t M : {1, 2, 3, 5, 9, 16, 33})
        for (bool acc : {false, true}) {
          SCOPED_TRACE(testing::Message() << name(dt) << " path " << int(p) << " M=" << M
                                          << " acc=" << acc << " seed=" << seed);
          const auto x = random_vec(size_t(M * K), seed + uint64_t(M));
          const auto y0 = random_vec(size_t(M * N), seed + 100 + uint64_t(M));
          auto y = y0;
          linear_forward_path(y.data(), x.data(), M, lw, acc, p);
          ASSERT_EQ(check_linear(y, y0, x, w, M, acc, Compute::BF16), 0);
        }
  }
  const Stored f = make_weight(DType::F32, 8, 8, 1);
  std::vector<float> x(8, 1.0f), y(8);
  EXPECT_THROW(linear_forward_path(y.data(), x.data(), 1, LinearWeight(f.view, Compute::BF16),
                                   false, LinearPath::Skinny),
               Error);
  const Stored b = make_weight(DType::BF16, 8, 8, 1);
  EXPECT_THROW(linear_forward_path(y.data(), x.data(), 1, LinearWeight(b.view, Compute::F32), false,
                                   LinearPath::Skinny),
               Error);
}

// NaN and Inf in activations and weights land where the reference puts them.
TEST(Linear, NanInfPositions) {
  const int64_t N = 133, K = 150;
  for (DType dt : {DType::F32, DType::BF16, DType::F8_E4M3})
    for (Compute c : {Compute::F32, Compute::BF16})
      for (int64_t M : {1, 3, 9, 40}) {
        const uint64_t seed = 77;
        SCOPED_TRACE(testing::Message() << name(dt) << " M=" << M << " seed=" << seed);
        Stored w = make_weight(dt, N, K, seed);
        // Weight row 5 holds a NaN; F32/BF16 row 9 holds +Inf (FP8 e4m3 has no Inf).
        if (dt == DType::F8_E4M3) {
          w.bytes[size_t(5 * K + 17)] = 0x7f;
          w.bytes[size_t(130 * K + 149)] = 0xff;
        } else {
          std::vector<float> v(size_t(N * K));
          to_f32(v.data(), w.bytes.data(), dt, v.size());
          v[size_t(5 * K + 17)] = NAN;
          v[size_t(9 * K + 3)] = INFINITY;
          from_f32(w.bytes.data(), v.data(), dt, v.size());
        }
        auto x = random_vec(size_t(M * K), seed);
        x[size_t(0 * K + 40)] = NAN;  // all of row 0 of y is NaN
        if (M > 2) x[size_t(2 * K + 41)] = INFINITY;
        const LinearWeight lw(w.view, c);
        std::vector<float> y0(size_t(M * N), 0.5f), y = y0;
        linear_forward(y.data(), x.data(), M, lw, false);
        ASSERT_EQ(check_linear(y, y0, x, w, M, false, c), 0);
        EXPECT_TRUE(std::isnan(y[5]));
        if (M > 1) {
          EXPECT_FALSE(std::isnan(y[size_t(N + 4)]));
        }
      }
}

TEST(Linear, ZeroRowsAndEmptyWeight) {
  const Stored w = make_weight(DType::BF16, 0, 16, 3);
  const LinearWeight lw(w.view, Compute::BF16);
  float y = 1.0f, x[16] = {};
  linear_forward(&y, x, 1, lw);
  EXPECT_EQ(y, 1.0f);
  const Stored w2 = make_weight(DType::F32, 4, 8, 3);
  const LinearWeight lw2(w2.view, Compute::F32);
  linear_forward(nullptr, nullptr, 0, lw2);
  EXPECT_THROW(linear_forward(&y, x, 1, LinearWeight()), std::exception);
}

// linear_prefetch is a hint only: on every dtype, an empty weight and a default one, it leaves the
// product unchanged (bit for bit) and does not throw.
TEST(Linear, PrefetchIsOnlyAHint) {
  for (DType dt : {DType::F32, DType::BF16, DType::F8_E4M3})
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{0, 16}, {1, 1}, {300, 257}}) {
      SCOPED_TRACE(testing::Message() << name(dt) << " " << rows << "x" << cols);
      const Stored w = make_weight(dt, rows, cols, 11);
      const LinearWeight lw(w.view, Compute::BF16);
      const std::vector<float> x = random_vec(size_t(cols), 12);
      std::vector<float> y0(static_cast<size_t>(rows)), y1(static_cast<size_t>(rows));
      linear_forward(y0.data(), x.data(), 1, lw);
      linear_prefetch(lw);
      linear_forward(y1.data(), x.data(), 1, lw);
      for (int64_t i = 0; i < rows; ++i) EXPECT_EQ(y0[size_t(i)], y1[size_t(i)]) << "row " << i;
    }
  linear_prefetch(LinearWeight());
}

// linear_forward_rows: rows [n0, n1) in pieces (FP8: from scale-block starts) give linear_forward's
// one-row values bit for bit, under both computes, and leave the other rows alone; the weights
// have a NaN code too (the patching FP8 variant). Bad ranges are refused.
TEST(Linear, RowsMatchTheWholeProduct) {
  for (DType dt : {DType::F32, DType::BF16, DType::F8_E4M3})
    for (Compute c : {Compute::BF16, Compute::F32})
      for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {300, 257}, {512, 1024}}) {
        SCOPED_TRACE(testing::Message() << name(dt) << " " << rows << "x" << cols << " compute "
                                        << (c == Compute::BF16 ? "bf16" : "f32"));
        Stored w = make_weight(dt, rows, cols, 21);
        if (dt == DType::F8_E4M3 && rows > 1) w.bytes[size_t(cols + 3)] = 0x7f;  // a NaN code
        const LinearWeight lw(w.view, c);
        const std::vector<float> x = random_vec(size_t(cols), 22);
        std::vector<float> y0(static_cast<size_t>(rows)), y1(static_cast<size_t>(rows), -7.0f);
        linear_forward(y0.data(), x.data(), 1, lw);
        const int64_t step = dt == DType::F8_E4M3 ? 128 : 100;
        for (int64_t n0 = 0; n0 < rows; n0 += step) {
          const int64_t n1 = std::min(rows, n0 + step);
          if (n0 > 0) EXPECT_EQ(y1[size_t(n0)], -7.0f) << "row " << n0 << " written early";
          linear_forward_rows(y1.data(), x.data(), lw, n0, n1);
        }
        for (int64_t i = 0; i < rows; ++i) {
          if (std::isnan(y0[size_t(i)])) {
            EXPECT_TRUE(std::isnan(y1[size_t(i)])) << "row " << i;
            continue;
          }
          EXPECT_EQ(y0[size_t(i)], y1[size_t(i)]) << "row " << i;
        }
        EXPECT_THROW(linear_forward_rows(y1.data(), x.data(), lw, 0, rows + 1), std::exception);
        if (dt == DType::F8_E4M3 && rows > 64)
          EXPECT_THROW(linear_forward_rows(y1.data(), x.data(), lw, 64, rows), std::exception);
      }
}

// Several threads call linear_forward at once, on shared and on private weights, with M on both
// sides of the GEMV/GEMM switch; every result must match the reference.
TEST(Linear, ConcurrentCalls) {
  const int64_t N = 97, K = 300;
  std::vector<Stored> ws;
  std::vector<LinearWeight> lws;
  for (int i = 0; i < 4; ++i)
    ws.push_back(make_weight(i % 2 ? DType::F8_E4M3 : DType::BF16, N, K, 500 + uint64_t(i)));
  for (int i = 0; i < 4; ++i) lws.emplace_back(ws[size_t(i)].view, Compute::BF16);
  std::printf("concurrent: seeds 500..503\n");
  std::vector<int> fails(8, 0);
  std::vector<std::thread> th;
  for (int t = 0; t < 8; ++t)
    th.emplace_back([&, t] {
      for (int rep = 0; rep < 6; ++rep) {
        const int wi = (t + rep) % 4;
        const int64_t M = std::array<int64_t, 3>{1, 5, 33}[size_t(rep % 3)];
        const auto x = random_vec(size_t(M * K), uint64_t(t * 10 + rep));
        std::vector<float> y(size_t(M * N)), y0;
        linear_forward(y.data(), x.data(), M, lws[size_t(wi)], false);
        fails[size_t(t)] += check_linear(y, y0, x, ws[size_t(wi)], M, false, Compute::BF16);
      }
    });
  for (auto& t : th) t.join();
  for (int f : fails) EXPECT_EQ(f, 0);
}

// Inside an OpenMP region each call runs on its own thread (MoE experts in parallel).
TEST(Linear, InsideOpenMpRegion) {
  const int64_t N = 130, K = 129, M = 20;
  const Stored w = make_weight(DType::F8_E4M3, N, K, 9);
  const LinearWeight lw(w.view, Compute::BF16), lf(w.view, Compute::F32);
  const auto x = random_vec(size_t(M * K), 10);
  std::vector<std::vector<float>> ys(4, std::vector<float>(size_t(M * N)));
#pragma omp parallel for num_threads(2)
  for (int i = 0; i < 4; ++i)
    linear_forward(ys[size_t(i)].data(), x.data(), i % 2 ? M : 2, i < 2 ? lw : lf, false);
  std::vector<float> none;
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(check_linear(ys[size_t(i)], none, x, w, i % 2 ? M : 2, false,
                           i < 2 ? Compute::BF16 : Compute::F32),
              0);
}

TEST(Gemm, TransposesAndLeadingDims) {
  const int64_t M = 13, N = 21, K = 17;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const uint64_t seed = 900 + uint64_t(ta) * 2 + uint64_t(tb);
      SCOPED_TRACE(testing::Message() << "ta=" << ta << " tb=" << tb << " seed=" << seed);
      const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
      const auto A = random_vec(size_t((ta ? K : M) * lda), seed);
      const auto B = random_vec(size_t((tb ? N : K) * ldb), seed + 1);
      auto C = random_vec(size_t(M * ldc), seed + 2);
      const auto C0 = C;
      gemm_f32(ta, tb, M, N, K, 0.75f, A.data(), lda, B.data(), ldb, 0.5f, C.data(), ldc);
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double s = 0, mag = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double p = double(ta ? A[size_t(k * lda + i)] : A[size_t(i * lda + k)]) *
                             (tb ? B[size_t(j * ldb + k)] : B[size_t(k * ldb + j)]);
            s += p;
            mag += std::fabs(p);
          }
          const double ref = 0.75 * s + 0.5 * C0[size_t(i * ldc + j)];
          EXPECT_NEAR(C[size_t(i * ldc + j)], ref,
                      1e-5 * (mag + std::fabs(C0[size_t(i * ldc + j)])));
        }
      for (int64_t i = 0; i < M; ++i)  // padding past N is untouched
        for (int64_t j = N; j < ldc; ++j)
          EXPECT_EQ(C[size_t(i * ldc + j)], C0[size_t(i * ldc + j)]);
    }
}

TEST(Dequantize, MatchesElementDecode) {
  for (DType dt : {DType::F32, DType::BF16, DType::F8_E4M3}) {
    const Stored w = make_weight(dt, 131, 257, 42);
    const auto d = dequantize(w.view);
    for (int64_t r = 0; r < 131; ++r)
      for (int64_t c = 0; c < 257; ++c)
        ASSERT_EQ(d[size_t(r * 257 + c)], float(w.at(r, c))) << name(dt) << " " << r << "," << c;
  }
}

}  // namespace
}  // namespace dsv3::cpu
