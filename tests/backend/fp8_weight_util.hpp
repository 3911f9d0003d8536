// Test fixture shared by the FP8 kernel tests: a random E4M3 weight in the DeepSeek-V3 release
// layout (codes [rows, cols], one scale_inv per 128×128 block) and its exact values in double.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "backend/cpu/linear.hpp"
#include "core/dtype.hpp"
#include "core/rng.hpp"

namespace dsv3::cpu::fp8_test {

struct Fp8Weight {
  std::vector<uint8_t> codes;
  std::vector<float> scale;
  WeightView view;
  // The block scale of element (r, c), its code's value, and the dequantized weight.
  float s(int64_t r, int64_t c) const {
    return scale[size_t((r / 128) * ((view.cols + 127) / 128) + c / 128)];
  }
  double code(int64_t r, int64_t c) const {
    return fp8_e4m3_to_f32(codes[size_t(r * view.cols + c)]);
  }
  double at(int64_t r, int64_t c) const { return code(r, c) * double(s(r, c)); }
};

// Random codes over all 256 values (0x7f/0xff, the NaN codes, replaced unless nan), scales
// varying per block.
inline Fp8Weight make_fp8_weight(int64_t rows, int64_t cols, uint64_t seed, bool nan) {
  Fp8Weight w;
  Rng rng(seed);
  w.codes.resize(size_t(rows * cols));
  for (auto& c : w.codes) {
    c = uint8_t(rng.below(256));
    if (!nan && (c & 0x7f) == 0x7f) c = uint8_t(c - 1);
  }
  w.scale.resize(size_t((rows + 127) / 128 * ((cols + 127) / 128)));
  for (auto& s : w.scale) s = float(1e-3 + 0.05 * rng.uniform());
  w.view = {DType::F8_E4M3, rows, cols, w.codes.data(), w.scale.data()};
  return w;
}

// n values drawn from rng's standard normal, in order (the kernels' x and initial y).
inline std::vector<float> normal_vector(Rng& rng, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = float(rng.normal());
  return v;
}

// Checks y[M, N] (row-major) against y0 (when acc) plus Σ_k term(m, n, k) summed in double, within
// 1e-5 of Σ|terms|; a NaN reference wants a NaN. Returns the failures (the first 5 reported).
template <typename Term>
int check_products(const std::vector<float>& y0, const std::vector<float>& y, int64_t M, int64_t N,
                   int64_t K, bool acc, Term&& term) {
  int fails = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const size_t i = size_t(m * N + n);
      double ref = acc ? y0[i] : 0.0, mag = std::fabs(ref);
      for (int64_t k = 0; k < K; ++k) {
        const double p = term(m, n, k);
        ref += p;
        mag += std::fabs(p);
      }
      const bool ok = std::isnan(ref) ? std::isnan(y[i]) : std::fabs(y[i] - ref) <= 1e-5 * mag;
      if (!ok && ++fails <= 5)
        ADD_FAILURE() << "y[" << m << ", " << n << "] = " << y[i] << ", reference " << ref;
    }
  return fails;
}

}  // namespace dsv3::cpu::fp8_test
