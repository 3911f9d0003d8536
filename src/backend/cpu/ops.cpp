// Plain, vectorizable loops for ops.hpp (the compiler's auto-vectorization with -march=native
// suffices: these are memory-bound next to the GEMMs).
#include "backend/cpu/ops.hpp"

#include <cmath>

#include "core/parallel.hpp"

namespace dsv3::cpu {

void rmsnorm_forward(float* out, float* rstd, const float* in, const float* weight, int64_t n,
                     int64_t d, float eps, int64_t ld_in, int64_t ld_out) {
  if (ld_in < 0) ld_in = d;
  if (ld_out < 0) ld_out = d;
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const float* x = in + r * ld_in;
          float* y = out + r * ld_out;
          float ss = 0;
          for (int64_t i = 0; i < d; ++i) ss += x[i] * x[i];
          float rs = 1.0f / std::sqrt(ss / float(d) + eps);
          if (rstd) rstd[r] = rs;
          for (int64_t i = 0; i < d; ++i) y[i] = x[i] * rs * weight[i];
        }
      },
      16);
}

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n, int64_t f) {
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const float* g = up ? gate + r * f : gate + r * 2 * f;
          const float* u = up ? up + r * f : g + f;
          float* o = out + r * f;
          for (int64_t i = 0; i < f; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
        }
      },
      16);
}

void softmax_rows(float* x, int64_t rows, int64_t cols, const int64_t* valid) {
  for (int64_t r = 0; r < rows; ++r) {
    float* p = x + r * cols;
    int64_t v = valid ? valid[r] : cols;
    float mx = -INFINITY;
    for (int64_t i = 0; i < v; ++i) mx = std::max(mx, p[i]);
    float s = 0;
    for (int64_t i = 0; i < v; ++i) {
      p[i] = std::exp(p[i] - mx);
      s += p[i];
    }
    float inv = 1.0f / s;
    for (int64_t i = 0; i < v; ++i) p[i] *= inv;
    for (int64_t i = v; i < cols; ++i) p[i] = 0;
  }
}

void rope_forward(float* x, int64_t n, int64_t heads, int64_t ld, int64_t off, int64_t rope_dim,
                  const float* cos_sin, const int64_t* positions) {
  const int64_t half = rope_dim / 2;
  for (int64_t r = 0; r < n; ++r) {
    const float* cs = cos_sin + positions[r] * half * 2;
    for (int64_t h = 0; h < heads; ++h) {
      float* p = x + (r * heads + h) * ld + off;
      for (int64_t i = 0; i < half; ++i) {
        float a = p[2 * i], b = p[2 * i + 1], c = cs[2 * i], s = cs[2 * i + 1];
        p[2 * i] = a * c - b * s;
        p[2 * i + 1] = a * s + b * c;
      }
    }
  }
}

}  // namespace dsv3::cpu
