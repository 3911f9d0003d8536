// Plain, vectorizable loops for ops.hpp (the compiler's auto-vectorization with -march=native
// suffices: these are memory-bound next to the GEMMs).
#include "backend/cpu/ops.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/vmath.hpp"
#include "backend/cpu/vreduce.hpp"
#include "core/parallel.hpp"
#include "core/scratch.hpp"

namespace dsv3::cpu {

void softmax_rows(float* x, int64_t rows, int64_t cols, const int64_t* valid) {
  for (int64_t r = 0; r < rows; ++r) {
    float* p = x + r * cols;
    int64_t v = valid ? valid[r] : cols;
    float mx = -INFINITY;
    for (int64_t i = 0; i < v; ++i) mx = std::max(mx, p[i]);
    const float s = exp_shift_sum(p, p, v, mx);
    float inv = 1.0f / s;
    for (int64_t i = 0; i < v; ++i) p[i] *= inv;
    for (int64_t i = v; i < cols; ++i) p[i] = 0;
  }
}

template <typename S>
void rmsnorm_forward(S* out, S* rstd, const S* in, const S* weight, int64_t n, int64_t d, S eps,
                     int64_t ld_in, int64_t ld_out) {
  if (ld_in < 0) ld_in = d;
  if (ld_out < 0) ld_out = d;
  parallel_for_balanced(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const S* x = in + r * ld_in;
          S* y = out + r * ld_out;
          const S ss = dot_ps(x, x, d);
          const S rs = S(1) / std::sqrt(ss / S(d) + eps);
          if (rstd) rstd[r] = rs;
          for (int64_t i = 0; i < d; ++i) y[i] = x[i] * rs * weight[i];
        }
      },
      16);
}

// Rows per partial sum of dweight: fixed (not per thread), so the sums do not depend on the
// thread count.
constexpr int64_t kNormRowChunk = 64;

template <typename S>
void rmsnorm_backward(S* din, S* dweight, const S* dout, const S* in, const S* weight,
                      const S* rstd, int64_t n, int64_t d, int64_t ld_in, int64_t ld_dout,
                      bool accumulate) {
  if (ld_in < 0) ld_in = d;
  if (ld_dout < 0) ld_dout = d;
  // dx = r·w·dy − x·r³/d · Σ_j dy_j w_j x_j; dweight_j += Σ_r dy[r, j]·x[r, j]·rstd[r], summed
  // per chunk of kNormRowChunk rows in the same pass (the rows are read once), the chunks' sums
  // then added in chunk order.
  const int64_t chunks = (n + kNormRowChunk - 1) / kNormRowChunk;
  thread_local std::vector<S> partial_buf;
  S* partial = dweight ? grow(partial_buf, size_t(chunks * d)) : nullptr;
  parallel_for_balanced(chunks, [&](int64_t cb, int64_t ce) {
    thread_local std::vector<S> wdy_buf;
    S* wdy = grow(wdy_buf, size_t(d));
    for (int64_t c = cb; c < ce; ++c) {
      S* acc = partial ? partial + c * d : nullptr;
      if (acc) std::fill_n(acc, d, S(0));
      for (int64_t r = c * kNormRowChunk, r1 = std::min(n, r + kNormRowChunk); r < r1; ++r) {
        const S* x = in + r * ld_in;
        const S* dy = dout + r * ld_dout;
        S* dx = din + r * ld_in;
        const S rs = rstd[r];
        for (int64_t i = 0; i < d; ++i) wdy[i] = dy[i] * weight[i];
        const S c3 = dot_ps(wdy, x, d) * rs * rs * rs / S(d);
        if (acc)
          for (int64_t j = 0; j < d; ++j) acc[j] += dy[j] * x[j] * rs;
        if (accumulate)
          for (int64_t i = 0; i < d; ++i) dx[i] += rs * weight[i] * dy[i] - x[i] * c3;
        else
          for (int64_t i = 0; i < d; ++i) dx[i] = rs * weight[i] * dy[i] - x[i] * c3;
      }
    }
  });
  if (!dweight) return;
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t j = 0; j < d; ++j) dweight[j] += partial[c * d + j];
}

template <typename S>
void swiglu_forward(S* out, const S* gate, const S* up, int64_t n, int64_t f) {
  parallel_for_balanced(
      n,
      [&](int64_t b, int64_t e) { silu_mul(out + b * f, gate + b * f, up + b * f, (e - b) * f); },
      16);
}

template <typename S>
void swiglu_backward(S* dgate, S* dup, const S* dout, const S* gate, const S* up, int64_t n,
                     int64_t f) {
  parallel_for_balanced(
      n,
      [&](int64_t b, int64_t e) {
        silu_mul_backward(dgate + b * f, dup + b * f, dout + b * f, gate + b * f, up + b * f,
                          (e - b) * f);
      },
      16);
}

template <typename S>
static void rope_rotate(S* x, int64_t n, int64_t heads, int64_t ld, int64_t off, int64_t rope_dim,
                        const float* cos_sin, const int64_t* positions, S sign) {
  const int64_t half = rope_dim / 2;
  parallel_for_balanced(
      n,
      [&](int64_t rb, int64_t re) {
        for (int64_t r = rb; r < re; ++r) {
          const float* cs = cos_sin + positions[r] * half * 2;
          for (int64_t h = 0; h < heads; ++h) {
            S* p = x + (r * heads + h) * ld + off;
            for (int64_t i = 0; i < half; ++i) {
              S a = p[2 * i], b = p[2 * i + 1], c = S(cs[2 * i]), s = sign * S(cs[2 * i + 1]);
              p[2 * i] = a * c - b * s;
              p[2 * i + 1] = a * s + b * c;
            }
          }
        }
      },
      32);
}

template <typename S>
void rope_forward(S* x, int64_t n, int64_t heads, int64_t ld, int64_t off, int64_t rope_dim,
                  const float* cos_sin, const int64_t* positions) {
  rope_rotate<S>(x, n, heads, ld, off, rope_dim, cos_sin, positions, S(1));
}

template <typename S>
void rope_backward(S* dx, int64_t n, int64_t heads, int64_t ld, int64_t off, int64_t rope_dim,
                   const float* cos_sin, const int64_t* positions) {
  rope_rotate<S>(dx, n, heads, ld, off, rope_dim, cos_sin, positions, S(-1));
}

#define DSV3_OPS_INSTANTIATE(S)                                                                 \
  template void rmsnorm_forward<S>(S*, S*, const S*, const S*, int64_t, int64_t, S, int64_t,    \
                                   int64_t);                                                    \
  template void rmsnorm_backward<S>(S*, S*, const S*, const S*, const S*, const S*, int64_t,    \
                                    int64_t, int64_t, int64_t, bool);                           \
  template void swiglu_forward<S>(S*, const S*, const S*, int64_t, int64_t);                    \
  template void swiglu_backward<S>(S*, S*, const S*, const S*, const S*, int64_t, int64_t);     \
  template void rope_forward<S>(S*, int64_t, int64_t, int64_t, int64_t, int64_t, const float*,  \
                                const int64_t*);                                                \
  template void rope_backward<S>(S*, int64_t, int64_t, int64_t, int64_t, int64_t, const float*, \
                                 const int64_t*);
DSV3_OPS_INSTANTIATE(float)
DSV3_OPS_INSTANTIATE(double)
#undef DSV3_OPS_INSTANTIATE

}  // namespace dsv3::cpu
