// Vectorized exponentials for the softmax, cross-entropy and SiLU loops (AVX-512, 16 floats at a
// time, masked tails). std::exp in those loops does not vectorize and was ~15% of a training step
// (bench_train). exp_ps is the Cephes single-precision scheme: x = n·ln2 + r with |r| ≤ ln2/2,
// a degree-6 polynomial for e^r, then 2^n by vscalefps (which also underflows to exactly 0 for
// x < -104, so exp(-inf) = 0 as a softmax mask needs); max error ~1 ulp. NaN propagates.
// The double overloads (finite-difference checks) stay scalar std::exp. Also the tail mask the
// CPU kernels share.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>

namespace dsv3::cpu {

inline __m512 exp_ps(__m512 x) {
  // The maskz forms with a full mask are the plain instructions; unlike the unmasked intrinsics
  // they do not go through _mm512_undefined_ps, which GCC 12 flags as maybe-uninitialized.
  constexpr __mmask16 kAll = 0xFFFF;
  // max/min return their second operand when either is NaN: x stays NaN.
  x = _mm512_maskz_min_ps(kAll, _mm512_set1_ps(88.72283935546875f), x);
  x = _mm512_maskz_max_ps(kAll, _mm512_set1_ps(-104.0f), x);
  const __m512 n =
      _mm512_maskz_roundscale_ps(kAll, _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_scalef_ps(kAll, p, n);
}

// The first min(left, 16) lanes (none when left ≤ 0): masked loads and stores of a tail.
inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
}

// The sum of v's 16 lanes, in lane order, through memory: _mm512_reduce_add_ps trips a GCC 12
// maybe-uninitialized false positive.
inline float hsum_ps(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0;
  for (float x : lanes) s += x;
  return s;
}

// dst[i] = exp(src[i] - shift) for i < n (dst may be src; nullptr: not stored); returns the sum.
inline float exp_shift_sum(float* dst, const float* src, int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, src + i), s));
    acc = _mm512_mask_add_ps(acc, m, acc, e);
    if (dst) _mm512_mask_storeu_ps(dst + i, m, e);
  }
  return hsum_ps(acc);
}

inline double exp_shift_sum(double* dst, const double* src, int64_t n, double shift) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double e = std::exp(src[i] - shift);
    if (dst) dst[i] = e;
    sum += e;
  }
  return sum;
}

// out[i] = silu(gate[i]) · up[i] = gate / (1 + exp(-gate)) · up.
inline void silu_mul(float* out, const float* gate, const float* up, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u));
  }
}

inline void silu_mul(double* out, const double* gate, const double* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
}

// The SwiGLU backward of silu_mul: dgate = dy·u·σ(g)·(1 + g·(1 − σ(g))), dup = dy·silu(g).
inline void silu_mul_backward(float* dgate, float* dup, const float* dout, const float* gate,
                              const float* up, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i),
                 dy = _mm512_maskz_loadu_ps(m, dout + i);
    const __m512 sg =
        _mm512_div_ps(one, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    const __m512 dsilu = _mm512_mul_ps(sg, _mm512_fmadd_ps(g, _mm512_sub_ps(one, sg), one));
    _mm512_mask_storeu_ps(dgate + i, m, _mm512_mul_ps(_mm512_mul_ps(dy, u), dsilu));
    _mm512_mask_storeu_ps(dup + i, m, _mm512_mul_ps(dy, _mm512_mul_ps(g, sg)));
  }
}

inline void silu_mul_backward(double* dgate, double* dup, const double* dout, const double* gate,
                              const double* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i], u = up[i], dy = dout[i];
    const double sg = 1.0 / (1.0 + std::exp(-g));
    dgate[i] = dy * u * sg * (1.0 + g * (1.0 - sg));
    dup[i] = dy * g * sg;
  }
}

}  // namespace dsv3::cpu
