// Implementation of quant.hpp. One routine quantizes an arbitrary rectangle of a row-major
// matrix with one scale; weight tiles (block x block) and activation groups (1 x group) are both
// rectangles of it.
#include "core/quant.hpp"

#include <algorithm>
#include <cmath>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"

namespace dsv3 {

namespace {

constexpr uint8_t kE4M3NaN = 0x7f;

// Quantizes rows [r0, r1) x cols [c0, c1) of the [*, ld] matrix `w` with one scale; returns the
// scale (scale_inv in checkpoint terms).
float quantize_rect(uint8_t* codes, const float* w, int64_t ld, int64_t r0, int64_t r1, int64_t c0,
                    int64_t c1) {
  float amax = 0.0f;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) {
      float a = std::fabs(w[r * ld + c]);
      if (std::isfinite(a) && a > amax) amax = a;
    }
  float s = amax / kFp8E4M3Max;
  if (s == 0.0f) s = 1.0f;  // all-zero (or underflowing) rectangle: see quant.hpp
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) {
      float x = w[r * ld + c];
      codes[r * ld + c] = std::isfinite(x) ? f32_to_fp8_e4m3(x / s)
                                           : uint8_t(kE4M3NaN | (std::signbit(x) ? 0x80 : 0));
    }
  return s;
}

void check_sizes(const char* what, int64_t rows, int64_t cols, int64_t block) {
  DSV3_CHECK(rows >= 0 && cols >= 0 && block > 0, "{}: bad sizes rows={} cols={} block={}", what,
             rows, cols, block);
}

}  // namespace

void fp8_block_quantize(uint8_t* codes, float* scale_inv, const float* w, int64_t rows,
                        int64_t cols, int64_t block) {
  check_sizes("fp8_block_quantize", rows, cols, block);
  const int64_t br = (rows + block - 1) / block, bc = (cols + block - 1) / block;
  parallel_for(br * bc, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t i = t / bc, j = t % bc;
      const int64_t r1 = std::min(rows, (i + 1) * block), c1 = std::min(cols, (j + 1) * block);
      scale_inv[t] = quantize_rect(codes, w, cols, i * block, r1, j * block, c1);
    }
  });
}

void fp8_block_dequantize(float* w, const uint8_t* codes, const float* scale_inv, int64_t rows,
                          int64_t cols, int64_t block) {
  check_sizes("fp8_block_dequantize", rows, cols, block);
  const float* table = fp8_e4m3_table();
  const int64_t bc = (cols + block - 1) / block;
  parallel_for(
      rows,
      [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const float* s = scale_inv + (r / block) * bc;
          for (int64_t c = 0; c < cols; ++c)
            w[r * cols + c] = table[codes[r * cols + c]] * s[c / block];
        }
      },
      16);
}

void fp8_act_quantize(uint8_t* codes, float* scale, const float* x, int64_t rows, int64_t cols,
                      int64_t group) {
  check_sizes("fp8_act_quantize", rows, cols, group);
  const int64_t gc = (cols + group - 1) / group;
  parallel_for(
      rows,
      [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r)
          for (int64_t j = 0; j < gc; ++j)
            scale[r * gc + j] =
                quantize_rect(codes, x, cols, r, r + 1, j * group, std::min(cols, (j + 1) * group));
      },
      16);
}

}  // namespace dsv3
