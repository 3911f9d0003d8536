// Vectorized reductions for the row loops of training (RMSNorm, attention's rowsum(P∘dP), the
// routed experts' gate-weight gradient, the softmax maxima, the gradient norm). Without
// -ffast-math GCC keeps a float sum or max in its written order, one scalar add (4 cycles of
// latency) per element: RMSNorm's forward and backward ran at ~1 element per 4 cycles, ~5% of a
// BF16 training step on the default model. These sum 16 lanes at a time in two independent
// chains and add the lanes at the end: the result differs from the ordered loop only by the
// order of the FP32 additions. max_ps is exact (NaN lanes aside: the ordered loop's NaN
// handling depends on where the NaN sits, so neither is defined for NaN inputs). The double
// overloads (finite-difference checks) stay plain loops.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "backend/cpu/vmath.hpp"

namespace dsv3::cpu {

// Σ a[i]·b[i], i < n.
inline float dot_ps(const float* a, const float* b, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
  }
  return hsum_ps(_mm512_add_ps(s0, s1));
}

inline double dot_ps(const double* a, const double* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// max a[i], i < n (-inf when n = 0).
inline float max_ps(const float* a, int64_t n) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; i += 16)
    m = _mm512_mask_max_ps(m, tail_mask(n - i), m, _mm512_maskz_loadu_ps(tail_mask(n - i), a + i));
  // Through memory, as hsum_ps: _mm512_reduce_max_ps trips the same GCC 12 warning here.
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, m);
  float r = lanes[0];
  for (float x : lanes) r = x > r ? x : r;
  return r;
}

inline double max_ps(const double* a, int64_t n) {
  double r = -INFINITY;
  for (int64_t i = 0; i < n; ++i) r = a[i] > r ? a[i] : r;
  return r;
}

// Σ double(a[i])², i < n, in double (the gradient norm).
inline double sumsq_pd(const float* a, int64_t n) {
  __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    // maskz with a full mask: the plain form goes through _mm512_undefined_pd, which GCC 12
    // flags as maybe-uninitialized.
    const __m512d lo = _mm512_maskz_cvtps_pd(0xFF, _mm256_loadu_ps(a + i));
    const __m512d hi = _mm512_maskz_cvtps_pd(0xFF, _mm256_loadu_ps(a + i + 8));
    s0 = _mm512_fmadd_pd(lo, lo, s0);
    s1 = _mm512_fmadd_pd(hi, hi, s1);
  }
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, _mm512_add_pd(s0, s1));
  double s = 0;
  for (double x : lanes) s += x;
  for (; i < n; ++i) s += double(a[i]) * double(a[i]);
  return s;
}

}  // namespace dsv3::cpu
