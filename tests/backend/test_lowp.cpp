// Op tests for the mixed-precision training kernels (backend/cpu/quant_train.hpp, gemm_lowp.hpp,
// linear_lowp.hpp). References are independent plain code: core/dtype's scalar E4M3 codec,
// core/quant's FP8 block and activation quantizers (codes + scales), a nearest-value search over
// the E5M6 value set, and double-precision loops on the dequantized operands. Seeds are fixed and
// printed.
//
// GEMM bounds: the operands are exactly representable (BF16, or E4M3 values) and every product
// is exact in FP32, so the kernels differ from the double reference by FP32 summation only:
// |err| ≤ 1e-5 · Σ|terms| for the K ≤ 600 used here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <tuple>
#include <vector>

#include "backend/cpu/gemm_lowp.hpp"
#include "backend/cpu/linear.hpp"
#include "backend/cpu/linear_lowp.hpp"
#include "backend/cpu/quant_train.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/quant.hpp"
#include "core/rng.hpp"

namespace dsv3::cpu {
namespace {

bool same(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || a == b;
}

// Values spanning E4M3's normal, subnormal and saturating ranges, signed zeros and specials.
std::vector<float> probe_values(Rng& rng, size_t n) {
  std::vector<float> v = {0.0f,    -0.0f,    448.0f,     -448.0f,    464.0f,  463.99f, 480.0f,
                          1e6f,    -1e30f,   INFINITY,   -INFINITY,  NAN,     0x1p-6f, 0x1p-7f,
                          0x1p-9f, 0x1p-10f, 0x1.8p-10f, 0x1.7fp-7f, 1.0625f, 1.1875f, 0x1p-20f};
  while (v.size() < n) {
    const double mag = std::ldexp(1.0, int(rng.below(30)) - 14);
    v.push_back(float(rng.normal() * mag));
  }
  return v;
}

TEST(Lowp, E4M3RoundingBitExact) {
  const uint64_t seed = 11;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  std::vector<float> x = probe_values(rng, 20000), y(x.size());
  e4m3_round_n(y.data(), x.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const float ref = std::isfinite(x[i]) ? fp8_e4m3_to_f32(f32_to_fp8_e4m3(x[i])) : NAN;
    ASSERT_TRUE(same(y[i], ref)) << "x=" << x[i] << " got " << y[i] << " want " << ref;
    ASSERT_TRUE(same(e4m3_round(x[i]), ref));
    if (ref == 0) {
      ASSERT_EQ(std::signbit(y[i]), std::signbit(x[i])) << x[i];
    }
  }
  EXPECT_EQ(e4m3_round(1e6f), 448.0f);  // saturation, not NaN
  EXPECT_EQ(e4m3_round(-500.0f), -448.0f);
}

// A [rows, cols] matrix with a zero tile, a NaN tile member, an Inf and tiny values.
std::vector<float> test_matrix(Rng& rng, int64_t rows, int64_t cols) {
  std::vector<float> x(size_t(rows * cols));
  for (auto& v : x) v = float(rng.normal() * std::ldexp(1.0, int(rng.below(12)) - 6));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < std::min<int64_t>(cols, 128); ++c)
      if (r == 1) x[size_t(r * cols + c)] = 0.0f;  // an all-zero 1×128 tile
  if (rows > 2 && cols > 5) {
    x[size_t(2 * cols + 3)] = NAN;
    x[size_t(2 * cols + 5)] = INFINITY;
    x[size_t(2 * cols + 4)] = 1e-30f;
  }
  return x;
}

TEST(Lowp, Fp8RowsMatchActQuantize) {
  const uint64_t seed = 12;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{5, 300}, {3, 128}, {7, 17}, {4, 257}}) {
    const auto x = test_matrix(rng, rows, cols);
    const int64_t ld = lowp_pad_k(cols) + 2, tiles = quant_tiles(cols);
    std::vector<uint16_t> q(size_t(rows * ld), 0xffff);
    std::vector<float> s(size_t(rows * tiles)), rs(s.size());
    std::vector<uint8_t> codes(x.size());
    fp8_rows(q.data(), ld, s.data(), x.data(), cols, rows, cols);
    fp8_act_quantize(codes.data(), rs.data(), x.data(), rows, cols);
    for (size_t i = 0; i < s.size(); ++i) ASSERT_EQ(s[i], rs[i]) << "tile " << i;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c)
        ASSERT_TRUE(
            same(bf16_to_f32(q[size_t(r * ld + c)]), fp8_e4m3_to_f32(codes[size_t(r * cols + c)])))
            << rows << "x" << cols << " at " << r << "," << c;
      for (int64_t c = cols; c < ld; ++c) ASSERT_EQ(q[size_t(r * ld + c)], 0);
    }
    if (rows > 1) {
      EXPECT_EQ(s[size_t(1 * tiles)], 1.0f);  // the zero tile
    }
  }
}

// Element (r, c) of a [rows, cols] matrix stored in the pairs layout.
float pair_at(const std::vector<uint32_t>& p, int64_t ldp, int64_t r, int64_t c) {
  return bf16_to_f32(uint16_t(p[size_t((r / 2) * ldp + c)] >> (16 * (r & 1))));
}

TEST(Lowp, Fp8PairsMatchTransposedActQuantize) {
  const uint64_t seed = 13;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{300, 5}, {129, 33}, {17, 7}}) {
    const auto x = test_matrix(rng, rows, cols);
    std::vector<float> xt(x.size());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) xt[size_t(c * rows + r)] = x[size_t(r * cols + c)];
    const int64_t ld = cols + 3, tiles = quant_tiles(rows);
    std::vector<uint32_t> p(size_t((rows + 1) / 2 * ld));
    std::vector<float> s(size_t(cols * tiles)), rs(s.size());
    std::vector<uint8_t> codes(x.size());
    fp8_pairs(p.data(), ld, s.data(), x.data(), cols, rows, cols);
    fp8_act_quantize(codes.data(), rs.data(), xt.data(), cols, rows);
    for (size_t i = 0; i < s.size(); ++i) ASSERT_EQ(s[i], rs[i]) << "tile " << i;
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t r = 0; r < rows; ++r)
        ASSERT_TRUE(same(pair_at(p, ld, r, c), fp8_e4m3_to_f32(codes[size_t(c * rows + r)])));
      if (rows % 2) {
        ASSERT_EQ(pair_at(p, ld, rows, c), 0.0f);  // the padding half
      }
    }
    // BF16 pairs of the same matrix.
    bf16_pairs(p.data(), ld, x.data(), cols, rows, cols);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        ASSERT_TRUE(same(pair_at(p, ld, r, c), bf16_to_f32(f32_to_bf16(x[size_t(r * cols + c)]))));
  }
}

TEST(Lowp, Fp8BlocksMatchBlockQuantize) {
  const uint64_t seed = 14;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{200, 300}, {129, 7}, {3, 130}}) {
    const auto w = test_matrix(rng, rows, cols);
    const int64_t ld = lowp_pad_k(cols);
    std::vector<uint16_t> q(size_t(rows * ld));
    std::vector<uint32_t> p(size_t((rows + 1) / 2 * cols));
    const size_t nb = size_t(quant_tiles(rows) * quant_tiles(cols));
    std::vector<float> s(nb), rs(nb);
    std::vector<uint8_t> codes(w.size());
    fp8_blocks(q.data(), ld, p.data(), cols, s.data(), w.data(), rows, cols);
    fp8_block_quantize(codes.data(), rs.data(), w.data(), rows, cols);
    for (size_t i = 0; i < nb; ++i) ASSERT_EQ(s[i], rs[i]) << "block " << i;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const float ref = fp8_e4m3_to_f32(codes[size_t(r * cols + c)]);
        ASSERT_TRUE(same(bf16_to_f32(q[size_t(r * ld + c)]), ref));
        ASSERT_TRUE(same(pair_at(p, cols, r, c), ref));
      }
  }
}

TEST(Lowp, E5M6NearestWithPowerOfTwoScales) {
  // The E5M6 value set: halves whose 4 low mantissa bits are zero, finite.
  std::vector<float> set;
  for (uint32_t h = 0; h < 0x7c00; h += 16) set.push_back(f16_to_f32(uint16_t(h)));
  const uint64_t seed = 15;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  for (int i = 0; i < 20000; ++i) {
    const float v = float(rng.normal() * std::ldexp(1.0, int(rng.below(40)) - 24));
    const uint16_t h = e5m6_encode(v);
    ASSERT_EQ(h & 0xf, 0) << v;
    const float q = e5m6_decode(h), a = std::fabs(v);
    auto it = std::lower_bound(set.begin(), set.end(), a);
    const float hi = it == set.end() ? set.back() : *it, lo = it == set.begin() ? 0.0f : *(it - 1);
    const float best = std::min(std::fabs(a - lo), std::fabs(hi - a));
    ASSERT_LE(std::fabs(std::fabs(q) - a), best) << v;
    if (q != 0) {
      ASSERT_EQ(std::signbit(q), std::signbit(v));
    }
  }
  EXPECT_EQ(e5m6_decode(e5m6_encode(1e9f)), 65024.0f);
  EXPECT_TRUE(std::isnan(e5m6_decode(e5m6_encode(NAN))));
  // Tiles: power-of-two scales, relative error ≤ 2^-7 on normal values.
  const int64_t rows = 3, cols = 200;
  auto x = test_matrix(rng, rows, cols);
  std::vector<uint16_t> h(x.size());
  std::vector<float> s(size_t(rows * quant_tiles(cols))), y(x.size());
  e5m6_rows(h.data(), s.data(), x.data(), rows, cols);
  e5m6_rows_decode(y.data(), h.data(), s.data(), rows, cols);
  for (float sc : s) {
    int e;
    ASSERT_EQ(std::frexp(sc, &e), 0.5f) << sc;
  }
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) {
      EXPECT_TRUE(std::isnan(y[i]));
      continue;
    }
    EXPECT_LE(std::fabs(y[i] - x[i]), std::ldexp(std::fabs(x[i]), -7) + 1e-30) << i;
  }
}

// e5m6_rows against a plain reference: per 1×128 tile the smallest power of two s with
// 65024·s ≥ amax over the finite elements (1 for an all-zero tile), each finite element the
// E5M6 value nearest to x / s (ties to the even mantissa) found by search over the value set,
// NaN/±Inf to NaN. Rows: zero tiles (signed zeros), NaN/Inf among normal values, huge and tiny
// magnitudes, a tile whose amax / 65024 is exactly a power of two, random.
TEST(Lowp, E5M6RowsMatchPlainReference) {
  std::vector<std::pair<double, uint16_t>> set;  // (value, container) of the finite E5M6 values
  for (uint32_t h = 0; h < 0x7c00; h += 16) set.push_back({f16_to_f32(uint16_t(h)), uint16_t(h)});
  const uint64_t seed = 20;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const int64_t rows = 6, cols = 300, tiles = quant_tiles(cols);
  std::vector<float> x(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const double n = rng.normal();
      float& v = x[size_t(r * cols + c)];
      switch (r) {
        case 0:  // zero tiles
          v = c % 2 ? -0.0f : 0.0f;
          break;
        case 1:  // specials among normal values
          v = float(n * std::ldexp(1.0, int(rng.below(20)) - 10));
          break;
        case 2:
          v = float(n * 1e37);
          break;
        case 3:
          v = float(n * 1e-35);
          break;
        case 4:  // amax = 65024·8 exactly in every tile
          v = c % 128 == 7 ? -65024.0f * 8 : float(n * 1000);
          break;
        default:
          v = float(n * std::ldexp(1.0, int(rng.below(40)) - 20));
      }
    }
  x[size_t(1 * cols + 3)] = NAN;
  x[size_t(1 * cols + 140)] = INFINITY;
  x[size_t(1 * cols + 141)] = -INFINITY;
  std::vector<uint16_t> h(x.size());
  std::vector<float> s(size_t(rows * tiles)), y(x.size());
  e5m6_rows(h.data(), s.data(), x.data(), rows, cols);
  e5m6_rows_decode(y.data(), h.data(), s.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t c0 = t * 128, c1 = std::min(cols, c0 + 128);
      double amax = 0;
      for (int64_t c = c0; c < c1; ++c)
        if (std::isfinite(x[size_t(r * cols + c)]))
          amax = std::max(amax, std::fabs(double(x[size_t(r * cols + c)])));
      int e = -160;
      while (amax > 0 && 65024.0 * std::ldexp(1.0, e) < amax) ++e;
      const double sc = amax > 0 ? std::ldexp(1.0, e) : 1.0;
      ASSERT_EQ(double(s[size_t(r * tiles + t)]), sc) << "row " << r << " tile " << t;
      for (int64_t c = c0; c < c1; ++c) {
        const float v = x[size_t(r * cols + c)];
        const float got = y[size_t(r * cols + c)];
        if (!std::isfinite(v)) {
          EXPECT_TRUE(std::isnan(got)) << r << "," << c;
          continue;
        }
        const double a = std::fabs(double(v)) / sc;
        ASSERT_LE(a, 65024.0);
        auto it = std::lower_bound(set.begin(), set.end(), std::make_pair(a, uint16_t(0)));
        double best = it->first;
        if (it != set.begin()) {
          const auto lo = *(it - 1);
          const double dl = a - lo.first, dh = it->first - a;
          if (dl < dh || (dl == dh && (lo.second >> 4) % 2 == 0)) best = lo.first;
        }
        const double want = (std::signbit(v) ? -best : best) * sc;
        ASSERT_EQ(double(got), want) << "row " << r << " col " << c << " x " << v;
        ASSERT_EQ(std::signbit(got), std::signbit(v)) << r << "," << c;
      }
    }
  // Saturation of the element codec: at the largest finite value, 65024.
  for (float v : {65024.0f, 65100.0f, 65535.0f, 1e30f})
    EXPECT_EQ(e5m6_decode(e5m6_encode(v)), 65024.0f) << v;
  EXPECT_EQ(e5m6_decode(e5m6_encode(-70000.0f)), -65024.0f);
}

// Low-precision storage of a Wgrad activation (SavedAct): quantized once (BF16, or E4M3 per
// 128×1 tile along the tokens), the Wgrad read from it is bit for bit the one computed from the
// FP32 activation (which converts it inside the GEMM). Token counts cover odd M, a partial last
// tile and the split of the tokens between threads; x holds an all-zero tile, NaN, ±Inf and huge
// and tiny values. The FP8 codes and scales are core/quant's (the transposed activation's 1×128
// quantization), checked through decode().
TEST(Lowp, SavedActWgradMatchesFp32Input) {
  const uint64_t seed = 21;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  for (Precision p : {Precision::BF16, Precision::FP8})
    for (auto shape : {std::tuple<int64_t, int64_t, int64_t>{67, 45, 200},
                       {1, 8, 5},
                       {301, 40, 33},
                       {513, 32, 160},
                       {700, 96, 70}}) {
      const int64_t M = std::get<0>(shape), out = std::get<1>(shape), in = std::get<2>(shape);
      std::vector<float> x(size_t(M * in)), dy(size_t(M * out));
      for (auto& v : x) v = float(rng.normal() * std::ldexp(1.0, int(rng.below(12)) - 6));
      for (auto& v : dy) v = float(1e-3 * rng.normal());
      if (M > 256)
        for (int64_t t = 128; t < 256; ++t) x[size_t(t * in + 1)] = 0.0f;  // a zero 128×1 tile
      if (M > 2 && in > 4) {
        x[size_t(1 * in + 2)] = 1e30f;
        x[size_t(2 * in + 2)] = 1e-30f;
        x[size_t(2 * in + 3)] = NAN;
        x[size_t((M - 1) * in + 4)] = -INFINITY;
      }
      const char* what = precision_name(p);
      std::vector<float> ref(size_t(out * in), 0.5f), got(ref);
      lowp_backward_weight(ref.data(), dy.data(), x.data(), M, in, out, p);
      SavedAct sa;
      sa.save(x.data(), M, in, p == Precision::BF16 ? ActForm::BF16 : ActForm::FP8);
      lowp_backward_weight(got.data(), dy.data(), sa, out, p);
      ASSERT_EQ(std::memcmp(ref.data(), got.data(), ref.size() * 4), 0)
          << what << " " << M << "x" << out << "x" << in;
      const size_t pairs = size_t((M + 1) / 2 * in);
      EXPECT_EQ(sa.bytes(),
                p == Precision::BF16 ? pairs * 4 : pairs * 2 + size_t(in * quant_tiles(M)) * 4);
      // The saved values against the references.
      std::vector<float> dec(x.size());
      sa.decode(dec.data());
      std::vector<float> want(x.size());
      if (p == Precision::BF16) {
        for (size_t i = 0; i < x.size(); ++i) want[i] = bf16_to_f32(f32_to_bf16(x[i]));
      } else {
        std::vector<float> xt(x.size());
        for (int64_t t = 0; t < M; ++t)
          for (int64_t i = 0; i < in; ++i) xt[size_t(i * M + t)] = x[size_t(t * in + i)];
        std::vector<uint8_t> c(x.size());
        std::vector<float> sc(size_t(in * quant_tiles(M)));
        fp8_act_quantize(c.data(), sc.data(), xt.data(), in, M);
        for (int64_t t = 0; t < M; ++t)
          for (int64_t i = 0; i < in; ++i)
            want[size_t(t * in + i)] =
                fp8_e4m3_to_f32(c[size_t(i * M + t)]) * sc[size_t(i * quant_tiles(M) + t / 128)];
      }
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_TRUE(same(dec[i], want[i])) << what << " element " << i << " x " << x[i];
    }
  // An E5M6 activation: the Wgrad of its decoded values.
  const int64_t M = 300, out = 24, in = 130;
  std::vector<float> x(size_t(M * in)), dy(size_t(M * out));
  for (auto& v : x) v = float(rng.normal());
  for (auto& v : dy) v = float(rng.normal());
  SavedAct sa;
  sa.save(x.data(), M, in, ActForm::E5M6);
  std::vector<float> dec(x.size()), ref(size_t(out * in), 0.0f), got(ref);
  sa.decode(dec.data());
  lowp_backward_weight(ref.data(), dy.data(), dec.data(), M, in, out, Precision::FP8);
  lowp_backward_weight(got.data(), dy.data(), sa, out, Precision::FP8);
  EXPECT_EQ(ref, got);
  EXPECT_THROW(lowp_backward_weight(got.data(), dy.data(), sa, out, Precision::F32), Error);
  sa.release();
  EXPECT_FALSE(sa.saved());
  EXPECT_EQ(sa.bytes(), 0u);
}

// Double reference of C = Σ_chunks sa·sb·Σ A·B on BF16 operands [*, ld].
double ref_dot(const uint16_t* a, const uint16_t* b, int64_t K, const float* sa, const float* sb,
               double* mag) {
  double t = 0, m = 0;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t c = k / kQuantTile;
    double p = double(bf16_to_f32(a[k])) * double(bf16_to_f32(b[k]));
    if (sa) p *= double(sa[c]) * double(sb[c]);
    t += p;
    m += std::fabs(p);
  }
  *mag = m;
  return t;
}

TEST(Lowp, GemmMatchesReferenceOddShapes) {
  const uint64_t seed = 16;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  for (bool scaled : {false, true})
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1},
                           {7, 33, 129},
                           {13, 70, 300},
                           {100, 40, 600},
                           {37, 97, 256},
                           {9, 5, 2}})
      for (bool acc : {false, true}) {
        const int64_t ld = lowp_pad_k(K), Kc = quant_tiles(K);
        std::vector<float> xa(size_t(M * K)), xb(size_t(N * K));
        for (auto& v : xa) v = float(rng.normal());
        for (auto& v : xb) v = float(rng.normal());
        std::vector<uint16_t> a(size_t(M * ld)), b(size_t(N * ld));
        std::vector<float> sa(size_t(M * Kc)), sb(size_t(N * Kc));
        if (scaled) {
          fp8_rows(a.data(), ld, sa.data(), xa.data(), K, M, K);
          fp8_rows(b.data(), ld, sb.data(), xb.data(), K, N, K);
        } else {
          bf16_rows(a.data(), ld, xa.data(), K, M, K);
          bf16_rows(b.data(), ld, xb.data(), K, N, K);
        }
        std::vector<float> C(size_t(M * N)), C0(C.size());
        for (auto& v : C0) v = float(rng.normal());
        C = C0;
        gemm_lowp_nt(C.data(), N, M, N, K, a.data(), ld, b.data(), ld, scaled ? sa.data() : nullptr,
                     scaled ? sb.data() : nullptr, acc);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            double mag;
            double r = ref_dot(a.data() + m * ld, b.data() + n * ld, K,
                               scaled ? sa.data() + m * Kc : nullptr,
                               scaled ? sb.data() + n * Kc : nullptr, &mag);
            if (acc) {
              r += C0[size_t(m * N + n)];
              mag += std::fabs(C0[size_t(m * N + n)]);
            }
            ASSERT_NEAR(C[size_t(m * N + n)], r, 1e-5 * mag + 1e-30)
                << (scaled ? "fp8 " : "bf16 ") << M << "x" << N << "x" << K << " at " << m << ","
                << n;
          }
      }
}

// gemm_lowp_a32 converts A per block of rows and lowp_pack_b_f32 converts B while packing: the
// same operands and sums as quantizing first (quant_train.hpp) and calling gemm_lowp, so the
// results must agree bit for bit, in both A layouts, both precisions, and with several row
// blocks, panel groups and 128-tiles.
TEST(Lowp, GemmA32MatchesQuantizedOperands) {
  const uint64_t seed = 21;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  for (bool fp8 : {false, true})
    for (bool trans : {false, true})
      for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1},
                             {250, 70, 301},
                             {97, 200, 130},
                             {5, 33, 2}}) {
        const int64_t ld = lowp_pad_k(K), Kc = quant_tiles(K), kp = ld / 2;
        // A as an FP32 [M, K] (trans: [K, M]) and B as an FP32 [K, N] (the Wgrad activation).
        std::vector<float> a(size_t(M * K)), b(size_t(K * N));
        for (auto& v : a) v = float(rng.normal() * std::ldexp(1.0, int(rng.below(8)) - 4));
        for (auto& v : b) v = float(rng.normal());
        std::vector<uint16_t> qa(size_t(M * ld));
        std::vector<uint32_t> pa(size_t(kp * M)), pb(size_t(kp * N));
        std::vector<float> sa(size_t(M * Kc)), sb(size_t(N * Kc));
        LowpOperand A{qa.data(), ld, false};
        if (!trans && fp8) fp8_rows(qa.data(), ld, sa.data(), a.data(), K, M, K);
        if (!trans && !fp8) bf16_rows(qa.data(), ld, a.data(), K, M, K);
        if (trans) {
          A = {pa.data(), M, true};
          if (fp8)
            fp8_pairs(pa.data(), M, sa.data(), a.data(), M, K, M);
          else
            bf16_pairs(pa.data(), M, a.data(), M, K, M);
        }
        if (fp8)
          fp8_pairs(pb.data(), N, sb.data(), b.data(), N, K, N);
        else
          bf16_pairs(pb.data(), N, b.data(), N, K, N);
        std::vector<float> want(size_t(M * N)), got(want.size());
        for (auto& v : want) v = float(rng.normal());
        got = want;
        gemm_lowp(want.data(), N, M, N, K, A, {pb.data(), N, true}, fp8 ? sa.data() : nullptr,
                  fp8 ? sb.data() : nullptr, true);
        LowpPackedB packed;
        lowp_pack_b_f32(packed, b.data(), N, N, K, fp8);
        gemm_lowp_a32(got.data(), N, M, a.data(), trans ? M : K, trans, fp8, packed, true);
        for (size_t i = 0; i < got.size(); ++i)
          ASSERT_EQ(got[i], want[i]) << (fp8 ? "fp8 " : "bf16 ") << (trans ? "trans " : "") << M
                                     << "x" << N << "x" << K << " at " << i;
      }
  // A scaled B needs an FP8 A, and the other way round.
  LowpPackedB packed;
  std::vector<float> b(64, 1.0f), c(16);
  lowp_pack_b_f32(packed, b.data(), 4, 4, 16, false);
  EXPECT_THROW(gemm_lowp_a32(c.data(), 4, 4, b.data(), 16, false, true, packed, false), Error);
}

TEST(Lowp, EmulatedAccumulationMatchesKernelWhenExact) {
  const uint64_t seed = 17;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const int64_t M = 4, N = 6, K = 384, Kc = 3;
  std::vector<float> xa(size_t(M * K)), xb(size_t(N * K)), sa(size_t(M * Kc)), sb(size_t(N * Kc));
  for (auto& v : xa) v = float(rng.normal());
  for (auto& v : xb) v = float(rng.normal());
  std::vector<uint16_t> a(size_t(M * K)), b(size_t(N * K));
  fp8_rows(a.data(), K, sa.data(), xa.data(), K, M, K);
  fp8_rows(b.data(), K, sb.data(), xb.data(), K, N, K);
  std::vector<float> fa(a.size()), fb(b.size());
  for (size_t i = 0; i < a.size(); ++i) fa[i] = bf16_to_f32(a[i]);
  for (size_t i = 0; i < b.size(); ++i) fb[i] = bf16_to_f32(b[i]);
  std::vector<float> C(size_t(M * N)), E(C.size()), L(C.size());
  gemm_lowp_nt(C.data(), N, M, N, K, a.data(), K, b.data(), K, sa.data(), sb.data(), false);
  gemm_fp8_emulated(E.data(), M, N, K, fa.data(), sa.data(), fb.data(), sb.data(), 128, 0);
  gemm_fp8_emulated(L.data(), M, N, K, fa.data(), sa.data(), fb.data(), sb.data(), 0, 8);
  double diff_exact = 0, diff_limited = 0, mag = 0;
  for (size_t i = 0; i < C.size(); ++i) {
    mag += std::fabs(C[i]);
    diff_exact += std::fabs(C[i] - E[i]);
    diff_limited += std::fabs(C[i] - L[i]);
  }
  EXPECT_LE(diff_exact, 1e-5 * mag);
  EXPECT_GT(diff_limited, diff_exact);  // an 8-bit accumulator does lose precision
}

// The three GEMMs of a linear layer against double loops on the dequantized operands.
TEST(Lowp, LinearFpropDgradWgrad) {
  const uint64_t seed = 18;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  for (Precision p : {Precision::BF16, Precision::FP8})
    for (auto shape : {std::tuple<int64_t, int64_t, int64_t>{67, 45, 200},
                       {130, 129, 33},
                       {3, 8, 5},
                       {301, 200, 259},
                       {700, 40, 70}}) {
      // Plain names, not a structured binding: lambdas below capture them (clang 14 refuses
      // captured bindings).
      const int64_t M = std::get<0>(shape), out = std::get<1>(shape), in = std::get<2>(shape);
      std::vector<float> W(size_t(out * in)), x(size_t(M * in)), dy(size_t(M * out));
      for (auto& v : W) v = float(0.05 * rng.normal());
      for (auto& v : x) v = float(rng.normal());
      for (auto& v : dy) v = float(1e-3 * rng.normal());
      LowpWeight lw;
      lw.refresh(W.data(), out, in, p);
      // Dequantized operands, by the plain references.
      auto deq_rows = [&](const std::vector<float>& v, int64_t rows, int64_t cols) {
        std::vector<float> d(v.size());
        if (p == Precision::BF16) {
          for (size_t i = 0; i < v.size(); ++i) d[i] = bf16_to_f32(f32_to_bf16(v[i]));
          return d;
        }
        std::vector<uint8_t> c(v.size());
        std::vector<float> s(size_t(rows * quant_tiles(cols)));
        fp8_act_quantize(c.data(), s.data(), v.data(), rows, cols);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t k = 0; k < cols; ++k)
            d[size_t(r * cols + k)] = fp8_e4m3_to_f32(c[size_t(r * cols + k)]) *
                                      s[size_t(r * quant_tiles(cols) + k / 128)];
        return d;
      };
      auto transpose = [](const std::vector<float>& v, int64_t rows, int64_t cols) {
        std::vector<float> t(v.size());
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) t[size_t(c * rows + r)] = v[size_t(r * cols + c)];
        return t;
      };
      std::vector<float> Wd(W.size());
      if (p == Precision::BF16) {
        Wd = deq_rows(W, out, in);
      } else {
        std::vector<uint8_t> c(W.size());
        std::vector<float> s(size_t(quant_tiles(out) * quant_tiles(in)));
        fp8_block_quantize(c.data(), s.data(), W.data(), out, in);
        fp8_block_dequantize(Wd.data(), c.data(), s.data(), out, in);
      }
      const auto xd = deq_rows(x, M, in), dyd = deq_rows(dy, M, out);
      // Wgrad operands are tiled along the tokens: quantize the transposes per row.
      const auto dyTd = deq_rows(transpose(dy, M, out), out, M);
      const auto xTd = deq_rows(transpose(x, M, in), in, M);

      std::vector<float> y(size_t(M * out)), dx(size_t(M * in)), dW(W.size(), 0.5f);
      lowp_forward(y.data(), x.data(), M, lw, false);
      lowp_backward_input(dx.data(), dy.data(), M, lw, false);
      lowp_backward_weight(dW.data(), dy.data(), x.data(), M, in, out, p);
      auto check = [&](const char* what, float got, double want, double mag) {
        ASSERT_NEAR(got, want, 1e-5 * mag + 1e-30)
            << what << " " << precision_name(p) << " " << M << "x" << out << "x" << in;
      };
      for (int64_t m = 0; m < M; ++m)
        for (int64_t o = 0; o < out; ++o) {
          double t = 0, g = 0;
          for (int64_t i = 0; i < in; ++i) {
            t += double(xd[size_t(m * in + i)]) * Wd[size_t(o * in + i)];
            g += std::fabs(double(xd[size_t(m * in + i)]) * Wd[size_t(o * in + i)]);
          }
          check("fprop", y[size_t(m * out + o)], t, g);
        }
      for (int64_t m = 0; m < M; ++m)
        for (int64_t i = 0; i < in; ++i) {
          double t = 0, g = 0;
          for (int64_t o = 0; o < out; ++o) {
            t += double(dyd[size_t(m * out + o)]) * Wd[size_t(o * in + i)];
            g += std::fabs(double(dyd[size_t(m * out + o)]) * Wd[size_t(o * in + i)]);
          }
          check("dgrad", dx[size_t(m * in + i)], t, g);
        }
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) {
          double t = 0.5, g = 0.5;
          for (int64_t m = 0; m < M; ++m) {
            t += double(dyTd[size_t(o * M + m)]) * xTd[size_t(i * M + m)];
            g += std::fabs(double(dyTd[size_t(o * M + m)]) * xTd[size_t(i * M + m)]);
          }
          check("wgrad", dW[size_t(o * in + i)], t, g);
        }
    }
}

// Through LinearWeight: the lowp copy takes over forward and backward_input; the scope selects
// the Wgrad precision; without either the FP32 path runs.
TEST(Lowp, LinearWeightDispatch) {
  const int64_t M = 20, out = 16, in = 24;
  Rng rng(19);
  std::vector<float> W(size_t(out * in)), x(size_t(M * in)), y(size_t(M * out)), y32(y.size());
  for (auto& v : W) v = float(rng.normal());
  for (auto& v : x) v = float(rng.normal() * 1.001);
  LinearWeight lin({DType::F32, out, in, W.data(), nullptr}, Compute::F32);
  linear_forward(y32.data(), x.data(), M, lin);
  LowpWeight lw;
  lw.refresh(W.data(), out, in, Precision::BF16);
  lin.set_lowp(&lw);
  linear_forward(y.data(), x.data(), M, lin);
  std::vector<float> yl(y.size());
  lowp_forward(yl.data(), x.data(), M, lw, false);
  EXPECT_EQ(y, yl);
  EXPECT_NE(y, y32);
  EXPECT_EQ(wgrad_precision(), Precision::F32);
  {
    WgradPrecision scope(Precision::FP8);
    EXPECT_EQ(wgrad_precision(), Precision::FP8);
  }
  EXPECT_EQ(wgrad_precision(), Precision::F32);
  EXPECT_EQ(parse_precision("bf16"), Precision::BF16);
  EXPECT_THROW(parse_precision("fp4"), std::exception);
}

}  // namespace
}  // namespace dsv3::cpu
