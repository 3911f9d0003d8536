// FP8 block quantization tests (core/quant.hpp): exact codes and scales on hand-built tiles,
// ties to even, partial edge tiles, zero tiles, NaN/Inf handling, the derived e4m3 round-trip
// error bound, and an independent brute-force nearest-value search over all e4m3 codes standing in
// for a reference FP8 checkpoint (none is shipped).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/quant.hpp"
#include "core/rng.hpp"

using namespace dsv3;

namespace {

struct Quantized {
  std::vector<uint8_t> codes;
  std::vector<float> scale_inv;
};

Quantized quantize(const std::vector<float>& w, int64_t rows, int64_t cols, int64_t block = 128) {
  Quantized q;
  q.codes.assign(size_t(rows * cols), 0xaa);
  q.scale_inv.assign(size_t(((rows + block - 1) / block) * ((cols + block - 1) / block)), -1.0f);
  fp8_block_quantize(q.codes.data(), q.scale_inv.data(), w.data(), rows, cols, block);
  return q;
}

std::vector<float> dequantize(const Quantized& q, int64_t rows, int64_t cols, int64_t block = 128) {
  std::vector<float> w(size_t(rows * cols), -7.0f);
  fp8_block_dequantize(w.data(), q.codes.data(), q.scale_inv.data(), rows, cols, block);
  return w;
}

std::vector<float> random_matrix(Rng& rng, int64_t rows, int64_t cols) {
  std::vector<float> w(size_t(rows * cols));
  // Magnitudes over several decades so subnormal codes, normal codes and the saturating top
  // of the range all occur.
  for (auto& x : w) x = float(rng.normal() * std::pow(10.0, rng.uniform() * 4 - 3));
  return w;
}

// Independent nearest search: the finite e4m3 value closest to y, ties to the even code (even
// mantissa), zero keeping the sign of y. Saturation needs no special case: beyond 448 the
// nearest finite value is 448.
uint8_t brute_nearest_e4m3(float y) {
  int best = -1;
  double best_d = INFINITY;
  for (int v = 0; v < 256; ++v) {
    float f = fp8_e4m3_to_f32(uint8_t(v));
    if (std::isnan(f)) continue;
    if ((v & 0x80) != (std::signbit(y) ? 0x80 : 0)) continue;  // same sign (incl. +-0)
    double d = std::fabs(double(f) - double(y));
    if (d < best_d || (d == best_d && (v & 1) == 0)) {
      best_d = d;
      best = v;
    }
  }
  return uint8_t(best);
}

// The round-trip bound derived in RoundTripWithinDerivedBound.
double e4m3_bound(float x, float s) {
  const double u = 0x1p-24;
  return std::max(0x1p-4 * std::fabs(double(x)), 0x1p-10 * double(s)) * (1 + 4 * u) +
         3 * u * std::fabs(double(x));
}

}  // namespace

TEST(Quant, HandBuiltTileExactCodes) {
  // amax 448 makes scale_inv exactly 1, so codes are the e4m3 encodings of the values
  // themselves; 17 and 19 sit halfway between e4m3 neighbours (spacing 2 in [16, 32)) and round to
  // the even mantissa: 17 -> 16, 19 -> 20. 2^-10 is halfway between 0 and the smallest subnormal.
  const std::vector<float> vals = {448.0f,  -448.0f,  1.0f, -0.5f, 17.0f, 19.0f,
                                   0x1p-9f, 0x1p-10f, 0.0f, -0.0f, 3.0f,  240.0f};
  const std::vector<uint8_t> want = {0x7e, 0xfe, 0x38, 0xb0, 0x58, 0x5a,
                                     0x01, 0x00, 0x00, 0x80, 0x44, 0x77};
  const int64_t rows = 3, cols = 4;
  Quantized q = quantize(vals, rows, cols);
  ASSERT_EQ(q.scale_inv.size(), 1u);
  EXPECT_EQ(q.scale_inv[0], 1.0f);
  for (size_t i = 0; i < vals.size(); ++i) EXPECT_EQ(q.codes[i], want[i]) << "element " << i;
  std::vector<float> back = dequantize(q, rows, cols);
  const std::vector<float> want_back = {448, -448, 1, -0.5, 16, 20, 0x1p-9f, 0, 0, -0.0f, 3, 240};
  for (size_t i = 0; i < vals.size(); ++i) EXPECT_EQ(back[i], want_back[i]) << "element " << i;
  EXPECT_TRUE(std::signbit(back[9]));
}

TEST(Quant, ScaledTileIsExactForRepresentableMultiples) {
  // amax 7 gives scale_inv 7/448 = 2^-6 exactly; every value e4m3(c) * 2^-6 then quantizes to
  // code c and dequantizes bit-exactly.
  std::vector<float> w;
  std::vector<uint8_t> want;
  for (int v = 0; v < 256; ++v) {
    float f = fp8_e4m3_to_f32(uint8_t(v));
    if (std::isnan(f) || std::fabs(f) > 7 * 64 || v == 0x80) continue;
    w.push_back(f * 0x1p-6f);
    want.push_back(uint8_t(v));
  }
  w.push_back(7.0f);
  want.push_back(0x7e);
  const int64_t n = int64_t(w.size());
  Quantized q = quantize(w, 1, n);
  ASSERT_EQ(q.scale_inv.size(), size_t((n + 127) / 128));
  std::vector<float> back = dequantize(q, 1, n);
  for (size_t j = 0; j < q.scale_inv.size(); ++j) {
    // Each 1x128 tile has its own amax; check the codes against the tile's own scale.
    float amax = 0;
    for (int64_t c = int64_t(j) * 128; c < std::min<int64_t>(n, int64_t(j + 1) * 128); ++c)
      amax = std::max(amax, std::fabs(w[c]));
    EXPECT_EQ(q.scale_inv[j], amax / 448.0f) << "tile " << j;
  }
  // The last tile holds 7.0 and so has scale exactly 2^-6: its codes are the constructed ones.
  ASSERT_EQ(q.scale_inv.back(), 0x1p-6f);
  for (int64_t c = (n - 1) / 128 * 128; c < n; ++c) {
    EXPECT_EQ(q.codes[c], want[c]) << "column " << c;
    EXPECT_EQ(back[c], w[c]) << "column " << c;
  }
}

TEST(Quant, EdgeTilesAndScaleLayout) {
  const uint64_t seed = 20240601;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const int64_t rows = 130, cols = 257;  // tiles 2 x 3, the last row/column of tiles partial
  std::vector<float> w = random_matrix(rng, rows, cols);
  // Give each tile a distinct amax at a known place, inside the partial tiles too.
  const int64_t br = 2, bc = 3;
  for (int64_t i = 0; i < br; ++i)
    for (int64_t j = 0; j < bc; ++j) {
      int64_t r = std::min(rows - 1, i * 128 + 1), c = std::min(cols - 1, j * 128 + 5);
      w[size_t(r * cols + c)] = float(-100.0 * (1 + i * bc + j));
    }
  Quantized q = quantize(w, rows, cols);
  ASSERT_EQ(q.scale_inv.size(), size_t(br * bc));
  for (int64_t i = 0; i < br; ++i)
    for (int64_t j = 0; j < bc; ++j)
      EXPECT_EQ(q.scale_inv[size_t(i * bc + j)], float(100.0 * (1 + i * bc + j)) / 448.0f)
          << "tile " << i << "," << j;
  // The element carrying each tile's amax maps to -448 exactly.
  EXPECT_EQ(q.codes[size_t(129 * cols + 256)], 0xfe);
  std::vector<float> back = dequantize(q, rows, cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float s = q.scale_inv[size_t((r / 128) * bc + c / 128)];
      float x = w[size_t(r * cols + c)];
      ASSERT_LE(std::fabs(double(back[size_t(r * cols + c)]) - x), e4m3_bound(x, s))
          << r << "," << c;
    }
}

TEST(Quant, NonDefaultBlockSize) {
  // Block 4 on a 5x6 matrix: tiles [2, 2], the dequantized value is code * its tile's scale.
  const uint64_t seed = 77;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  std::vector<float> w = random_matrix(rng, 5, 6);
  Quantized q = quantize(w, 5, 6, 4);
  ASSERT_EQ(q.scale_inv.size(), 4u);
  std::vector<float> back = dequantize(q, 5, 6, 4);
  for (int64_t r = 0; r < 5; ++r)
    for (int64_t c = 0; c < 6; ++c) {
      float s = q.scale_inv[size_t((r / 4) * 2 + c / 4)];
      EXPECT_EQ(back[size_t(r * 6 + c)], fp8_e4m3_to_f32(q.codes[size_t(r * 6 + c)]) * s);
    }
}

TEST(Quant, ZeroTiles) {
  // Tile (0,1) all zeros (with a -0), tile (0,0) non-zero; tile (1,*) tiny values whose
  // amax/448 underflows to 0 in float32.
  const int64_t rows = 200, cols = 200;
  std::vector<float> w(size_t(rows * cols), 0.0f);
  w[0] = 3.0f;
  w[size_t(5 * cols + 150)] = -0.0f;
  w[size_t(150 * cols + 10)] = 0x1p-149f;  // smallest subnormal: 2^-149 / 448 == 0
  Quantized q = quantize(w, rows, cols);
  ASSERT_EQ(q.scale_inv.size(), 4u);
  EXPECT_EQ(q.scale_inv[0], 3.0f / 448.0f);
  EXPECT_EQ(q.scale_inv[1], 1.0f);
  EXPECT_EQ(q.scale_inv[2], 1.0f);
  EXPECT_EQ(q.scale_inv[3], 1.0f);
  EXPECT_EQ(q.codes[size_t(5 * cols + 150)], 0x80);
  std::vector<float> back = dequantize(q, rows, cols);
  EXPECT_EQ(back[0], 3.0f);
  for (size_t i = 1; i < back.size(); ++i) {
    ASSERT_EQ(back[i], 0.0f) << i;
    ASSERT_FALSE(std::isnan(back[i])) << i;
  }
}

TEST(Quant, NanAndInfAreNaNCodesAndDoNotSpoilTheTile) {
  // Documented convention: NaN/Inf are left out of amax and stored as the e4m3fn NaN code.
  std::vector<float> w = {2.0f, NAN, -INFINITY, INFINITY, -1.0f, 0.5f};
  Quantized q = quantize(w, 2, 3);
  EXPECT_EQ(q.scale_inv[0], 2.0f / 448.0f);
  EXPECT_EQ(q.codes[1] & 0x7f, 0x7f);
  EXPECT_EQ(q.codes[2], 0xff);
  EXPECT_EQ(q.codes[3], 0x7f);
  std::vector<float> back = dequantize(q, 2, 3);
  EXPECT_EQ(back[0], 2.0f);
  EXPECT_TRUE(std::isnan(back[1]));
  EXPECT_TRUE(std::isnan(back[2]));
  EXPECT_TRUE(std::isnan(back[3]));
  EXPECT_EQ(back[4], -1.0f);
  EXPECT_EQ(back[5], 0.5f);
  // A tile of NaNs only behaves like a zero tile for its scale.
  std::vector<float> nan_tile = {NAN, NAN};
  Quantized qn = quantize(nan_tile, 1, 2);
  EXPECT_EQ(qn.scale_inv[0], 1.0f);
}

TEST(Quant, RoundTripWithinDerivedBound) {
  // Derivation. s = fl(A/448) for tile amax A, y = fl(x/s) = (x/s)(1+d1), |d1| <= u = 2^-24.
  // e4m3 round-to-nearest: a normal y (|y| >= 2^-6) has ulp 2^(e-3) for |y| in [2^e, 2^(e+1)), so
  // |q - y| <= 2^(e-4) <= 2^-4 |y|; a subnormal y has ulp 2^-9, |q - y| <= 2^-10; saturation at
  // 448 costs at most 448 * 2u since |y| <= 448(1+2u). Dequantization w = fl(q s) = q s (1+d2):
  // |w - x| <= |q - y| s (1+u) + |y s (1+d2) - x|
  //         <= max(2^-4 |x|, 2^-10 s)(1+4u) + 3u|x|   (the helper e4m3_bound),
  // so every element is within 2^-4 of its own magnitude plus 2^-10 s <= 2^-10 A / 448, i.e. well
  // inside 2^-4 of the tile amax.
  const uint64_t seed = 987654321;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const int64_t rows = 300, cols = 384;
  std::vector<float> w = random_matrix(rng, rows, cols);
  Quantized q = quantize(w, rows, cols);
  std::vector<float> back = dequantize(q, rows, cols);
  const int64_t bc = 3;
  double worst_ratio = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float s = q.scale_inv[size_t((r / 128) * bc + c / 128)];
      float x = w[size_t(r * cols + c)];
      double err = std::fabs(double(back[size_t(r * cols + c)]) - x);
      double bound = e4m3_bound(x, s);
      ASSERT_LE(err, bound) << r << "," << c << " x=" << x << " s=" << s;
      ASSERT_LE(err, 0x1p-4 * 448.0 * s * (1 + 1e-6));  // 2^-4 of the tile amax
      worst_ratio = std::max(worst_ratio, err / bound);
    }
  // The bound is attained up to rounding (halfway cases occur in random data), so it is tight.
  std::printf("worst err/bound %.4f\n", worst_ratio);
  EXPECT_GT(worst_ratio, 0.9);
}

TEST(Quant, MatchesBruteForceNearestSearch) {
  // Stand-in for a released FP8 checkpoint: recompute scale_inv (float32 amax / 448) and each code
  // by exhaustive nearest search over the 254 finite e4m3 values of w / scale_inv in float32.
  const uint64_t seed = 4242;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const int64_t rows = 257, cols = 131;
  std::vector<float> w = random_matrix(rng, rows, cols);
  Quantized q = quantize(w, rows, cols);
  const int64_t br = 3, bc = 2;
  std::vector<float> amax(size_t(br * bc), 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float& a = amax[size_t((r / 128) * bc + c / 128)];
      a = std::max(a, std::fabs(w[size_t(r * cols + c)]));
    }
  for (size_t t = 0; t < amax.size(); ++t) ASSERT_EQ(q.scale_inv[t], amax[t] / 448.0f) << t;
  int checked = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      if (rng.below(4) != 0 && r != 0) continue;  // a sample, plus all of row 0
      float s = q.scale_inv[size_t((r / 128) * bc + c / 128)];
      float y = w[size_t(r * cols + c)] / s;
      ASSERT_EQ(q.codes[size_t(r * cols + c)], brute_nearest_e4m3(y)) << r << "," << c;
      ++checked;
    }
  // Exact ties: with amax 448 (s = 1) the midpoints between neighbouring codes, both signs, go
  // to the even code.
  std::vector<float> ties;
  for (int v = 0; v < 0x7e; ++v) {
    float mid = 0.5f * (fp8_e4m3_to_f32(uint8_t(v)) + fp8_e4m3_to_f32(uint8_t(v + 1)));
    ties.push_back(mid);
    ties.push_back(-mid);
  }
  ties.push_back(448.0f);
  Quantized qt = quantize(ties, 1, int64_t(ties.size()), 512);
  ASSERT_EQ(qt.scale_inv.size(), 1u);
  ASSERT_EQ(qt.scale_inv[0], 1.0f);
  for (size_t i = 0; i + 1 < ties.size(); ++i) {
    ASSERT_EQ(qt.codes[i], brute_nearest_e4m3(ties[i])) << i;
    ASSERT_EQ(qt.codes[i] & 1, 0) << i;
  }
  std::printf("checked %d sampled codes\n", checked);
}

TEST(Quant, ActivationGroupsPerRow) {
  const uint64_t seed = 31337;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  const int64_t rows = 5, cols = 300, gc = 3;  // groups of 128, 128, 44 per row
  std::vector<float> x = random_matrix(rng, rows, cols);
  for (int64_t c = 0; c < 128; ++c) x[size_t(2 * cols + c)] = 0.0f;  // one zero group
  std::vector<uint8_t> codes(size_t(rows * cols));
  std::vector<float> scale(size_t(rows * gc));
  fp8_act_quantize(codes.data(), scale.data(), x.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < gc; ++g) {
      float amax = 0;
      for (int64_t c = g * 128; c < std::min(cols, (g + 1) * 128); ++c)
        amax = std::max(amax, std::fabs(x[size_t(r * cols + c)]));
      float s = scale[size_t(r * gc + g)];
      EXPECT_EQ(s, amax == 0 ? 1.0f : amax / 448.0f) << r << "," << g;
      for (int64_t c = g * 128; c < std::min(cols, (g + 1) * 128); ++c) {
        float v = x[size_t(r * cols + c)];
        ASSERT_EQ(codes[size_t(r * cols + c)], brute_nearest_e4m3(v / s)) << r << "," << c;
        ASSERT_LE(std::fabs(double(fp8_e4m3_to_f32(codes[size_t(r * cols + c)])) * s - v),
                  e4m3_bound(v, s));
      }
    }
}

TEST(Quant, RejectsBadSizes) {
  uint8_t c = 0;
  float s = 0, w = 0;
  EXPECT_THROW(fp8_block_quantize(&c, &s, &w, 1, 1, 0), Error);
  EXPECT_THROW(fp8_block_dequantize(&w, &c, &s, -1, 1), Error);
  EXPECT_THROW(fp8_act_quantize(&c, &s, &w, 1, 1, -5), Error);
  // Empty matrices are fine and touch nothing.
  fp8_block_quantize(nullptr, nullptr, nullptr, 0, 5);
  fp8_block_dequantize(nullptr, nullptr, nullptr, 3, 0);
}
