// FP8 e4m3 kernels on the stored codes; see gemv_fp8.hpp.
//
// Decode widening, in registers, through FP16: sign-extending a code to 16 bits and shifting left
// by 7 puts the sign in bit 15 and exponent/mantissa in bits 13..7 (bit 14, a copy of the sign,
// is masked off): an exact FP16 of value·2⁻⁸ for normals and subnormals alike, which vcvtph2ps
// widens exactly. e4m3 has no infinities; its NaN codes (0x7f, 0xff) would decode to ±480, so
// weights that hold them (found once when the LinearWeight is made) take a variant that patches
// them to NaN. A table lookup instead (every e4m3 is exactly a BF16: two VPERMI2B of a 128-entry
// table per 64 codes, byte interleaves, shift/AND to FP32) was tried and measured half as fast
// here: 10 GB/s of codes on one thread against 21 for this route (bench_kernels gemv_m1,
// 2026-12-07); the VPERMI2B pair is the bottleneck on this machine.
//
// The block scale (and the 2⁸) is folded into x: per 128-row block rb, x_s[m, k] = x[m, k] ·
// scale_inv[rb, k/128] · 2⁸, computed for all row blocks before the rows are split over threads
// (N/128 · K multiplies, under 1% of the work). This rounds x·scale once instead of w·scale
// (dequantize-then-dot): both are FP32 products on the effective weight and agree to ~1 ulp per
// product.
#include "backend/cpu/gemv_fp8.hpp"

// GCC 12 flags the _mm*_undefined_* inside its own AVX-512 intrinsic headers (a known false
// positive of -W(maybe-)uninitialized once they are inlined, e.g. in _mm512_reduce_add_ps).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cpu/fp8_simd.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"

namespace dsv3::cpu {
namespace {

inline __mmask64 mask64(int64_t r) {
  return r >= 64 ? ~__mmask64(0) : (__mmask64(1) << r) - 1;
}
inline __mmask16 tail_mask16(int64_t r) {
  return r >= 16 ? __mmask16(0xffff) : r <= 0 ? __mmask16(0) : __mmask16((1u << r) - 1);
}

// Bytes ahead that the row kernel prefetches (non-temporal), as the BF16 GEMV (gemv.cpp).
constexpr int64_t kPrefetchBytes = 4096;

using fp8_simd::widen32;  // the 2⁻⁸-scaled FP32 values of 32 codes (fp8_simd.hpp)

// y[m·ldy + n] (+)= Σ_k xs[m·Kp + k]·code(w[n, k])·2⁻⁸ for rows [n0, n1), MR ≤ 2 activation rows;
// xs is zero from K to Kp (the masked tail loads code 0). Each weight row is read once, front to
// back, so the range is one sequential stream, prefetched kPrefetchBytes ahead.
template <int MR, bool kNan>
void rows(float* y, int64_t ldy, const float* xs, int64_t Kp, const uint8_t* w, int64_t K,
          int64_t n0, int64_t n1, bool acc) {
  {
    const char* p = reinterpret_cast<const char*>(w + n0 * K);
    const char* e = std::min(reinterpret_cast<const char*>(w + n1 * K), p + kPrefetchBytes);
    for (; p < e; p += 64) _mm_prefetch(p, _MM_HINT_NTA);
  }
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* wr = w + n * K;
    __m512 a[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) a[m][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 64) {
      __m512 v[4];
      if (k + 64 <= K) {
        _mm_prefetch(reinterpret_cast<const char*>(wr + k) + kPrefetchBytes, _MM_HINT_NTA);
        widen32<kNan>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + k)), v[0], v[1]);
        widen32<kNan>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + k + 32)), v[2],
                      v[3]);
      } else {
        const __mmask64 mk = mask64(K - k);
        widen32<kNan>(_mm256_maskz_loadu_epi8(__mmask32(mk), wr + k), v[0], v[1]);
        widen32<kNan>(_mm256_maskz_loadu_epi8(__mmask32(mk >> 32), wr + k + 32), v[2], v[3]);
      }
      for (int m = 0; m < MR; ++m)
        for (int j = 0; j < 4; ++j)
          a[m][j] = _mm512_fmadd_ps(_mm512_loadu_ps(xs + m * Kp + k + 16 * j), v[j], a[m][j]);
    }
    for (int m = 0; m < MR; ++m) {
      const float s = _mm512_reduce_add_ps(
          _mm512_add_ps(_mm512_add_ps(a[m][0], a[m][1]), _mm512_add_ps(a[m][2], a[m][3])));
      float& out = y[m * ldy + n];
      out = acc ? out + s : s;
    }
  }
}

template <int MR>
void rows_any(bool nan, float* y, int64_t ldy, const float* xs, int64_t Kp, const uint8_t* w,
              int64_t K, int64_t n0, int64_t n1, bool acc) {
  if (nan)
    rows<MR, true>(y, ldy, xs, Kp, w, K, n0, n1, acc);
  else
    rows<MR, false>(y, ldy, xs, Kp, w, K, n0, n1, acc);
}

// Effective FP32 values of row n, columns [0, K), handed 16 at a time (with a lane mask) to out.
template <typename Out>
void effective_row(const WeightView& w, int64_t n, Out&& out) {
  const int64_t K = w.cols, sc = (K + 127) / 128;
  const uint8_t* wr = static_cast<const uint8_t*>(w.data) + n * K;
  const float* s = w.scale_inv + (n / 128) * sc;
  for (int64_t k = 0; k < K; k += 32) {
    const int64_t r = K - k;
    const __mmask32 m = r >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << r) - 1);
    __m512 lo, hi;
    widen32<true>(_mm256_maskz_loadu_epi8(m, wr + k), lo, hi);
    const __m512 f = _mm512_set1_ps(s[k / 128] * 256.0f);  // 32 | 128: one block per 32
    out(k, _mm512_mul_ps(lo, f), __mmask16(m));
    out(k + 16, _mm512_mul_ps(hi, f), __mmask16(m >> 16));
  }
}

// ---- The BF16 route (gemv_fp8_bf16) ----
//
// Every e4m3 value is a BF16 value times 2¹²⁰: sign-extending a code to 16 bits and shifting left
// by 4 puts the sign in bit 15 and exponent/mantissa in bits 10..4; the AND with 0x87f0 clears
// the sign's copies in bits 14..11. Normals become BF16 normals and subnormals BF16 denormals
// (the same 2⁻¹²⁰ for both), which vdpbf16ps reads as zero. Three integer operations per 32 codes
// and one vdpbf16ps, against the FP16 route's three, two conversions, two extracts and two FMAs.
// The codes are read with 256-bit loads (vpmovsxbw from memory): streaming from DRAM, 512-bit
// loads measured at half the rate here (12 GB/s of codes against 30–39, 1 thread, 2026-12-07).
template <bool kNan>
inline __m512i widen32_bf16(const uint8_t* p, __mmask32 m) {
  __m512i v = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, p));
  v = _mm512_and_si512(_mm512_slli_epi16(v, 4), _mm512_set1_epi16(short(0x87f0)));
  if constexpr (kNan) {  // 0x7f / 0xff became ±0x07f0 (±480·2⁻¹²⁰): make them a quiet NaN
    const __mmask32 nan = _mm512_cmpeq_epi16_mask(_mm512_and_si512(v, _mm512_set1_epi16(0x7fff)),
                                                  _mm512_set1_epi16(0x07f0));
    v = _mm512_mask_mov_epi16(v, nan, _mm512_set1_epi16(0x7fc0));
  }
  return v;
}

// y[m·ldy + n] (+)= post · Σ_k xb[m·Kp + k]·bf16(code(w[n, k])) for rows [n0, n1), MR ≤ 2
// activation rows; xb is zero from K to Kp (the masked tail loads code 0). 128 codes per step on
// four accumulators per activation row (the vdpbf16ps latency); one sequential stream,
// prefetched as rows<>.
template <int MR, bool kNan>
void rows_bf16(float* y, int64_t ldy, const uint16_t* xb, int64_t Kp, const uint8_t* w, int64_t K,
               int64_t n0, int64_t n1, bool acc, float post) {
  {
    const char* p = reinterpret_cast<const char*>(w + n0 * K);
    const char* e = std::min(reinterpret_cast<const char*>(w + n1 * K), p + kPrefetchBytes);
    for (; p < e; p += 64) _mm_prefetch(p, _MM_HINT_NTA);
  }
  const __mmask32 all = ~__mmask32(0);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* wr = w + n * K;
    __m512 a[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) a[m][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 128 <= K; k += 128) {
      _mm_prefetch(reinterpret_cast<const char*>(wr + k) + kPrefetchBytes, _MM_HINT_NTA);
      _mm_prefetch(reinterpret_cast<const char*>(wr + k) + kPrefetchBytes + 64, _MM_HINT_NTA);
      __m512i v[4];
      for (int j = 0; j < 4; ++j) v[j] = widen32_bf16<kNan>(wr + k + 32 * j, all);
      for (int m = 0; m < MR; ++m)
        for (int j = 0; j < 4; ++j)
          a[m][j] = _mm512_dpbf16_ps(
              a[m][j], (__m512bh)_mm512_loadu_si512(xb + m * Kp + k + 32 * j), (__m512bh)v[j]);
    }
    for (; k < K; k += 32) {
      const __m512i v = widen32_bf16<kNan>(wr + k, __mmask32(mask64(K - k)));
      for (int m = 0; m < MR; ++m)
        a[m][0] =
            _mm512_dpbf16_ps(a[m][0], (__m512bh)_mm512_loadu_si512(xb + m * Kp + k), (__m512bh)v);
    }
    for (int m = 0; m < MR; ++m) {
      const float s = _mm512_reduce_add_ps(
          _mm512_add_ps(_mm512_add_ps(a[m][0], a[m][1]), _mm512_add_ps(a[m][2], a[m][3])));
      float& out = y[m * ldy + n];
      out = acc ? out + s * post : s * post;
    }
  }
}

template <int MR>
void rows_bf16_any(bool nan, float* y, int64_t ldy, const uint16_t* xb, int64_t Kp,
                   const uint8_t* w, int64_t K, int64_t n0, int64_t n1, bool acc, float post) {
  if (nan)
    rows_bf16<MR, true>(y, ldy, xb, Kp, w, K, n0, n1, acc, post);
  else
    rows_bf16<MR, false>(y, ldy, xb, Kp, w, K, n0, n1, acc, post);
}

// 32 columns of x (zero past the row's end: `left` columns remain) times f and 2^e, rounded to
// BF16 once.
inline void store32_bf16(uint16_t* d, const float* x, int64_t left, __m512 f, __m512 p2) {
  const __m512 lo =
      _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask16(left), x), f), p2);
  const __m512 hi =
      _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask16(left - 16), x + 16), f), p2);
  _mm512_storeu_si512(d, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

// max |p[i]| over i < n, NaN ignored (as std::max(m, |p[i]|) does; vmaxps returns its second
// operand, the running maximum, when either is NaN). 16 lanes at a time: a scalar loop over the
// K activations was ~2 µs of every decode GEMV call (a serial max chain), about 4% of a step.
inline float abs_max(const float* p, int64_t n) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  __m512 m = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16)
    m = _mm512_max_ps(_mm512_andnot_ps(sign, _mm512_maskz_loadu_ps(tail_mask16(n - i), p + i)), m);
  return _mm512_reduce_max_ps(m);
}

// Work split of the decode GEMVs: 16-row units; a chunk streams at least ~32 KiB so that small
// weights stay on one thread. fn(n, be, rb) runs rows [n, be) of row block rb.
template <class Fn>
void split_rows(int64_t N, int64_t K, Fn&& fn) {
  const int64_t unit = 16, units = (N + unit - 1) / unit;
  const int64_t min_units = std::max<int64_t>(1, (32 * 1024) / std::max<int64_t>(1, unit * K));
  parallel_for(
      units,
      [&](int64_t u0, int64_t u1) {
        const int64_t e = std::min(N, u1 * unit);
        for (int64_t n = u0 * unit; n < e;) {  // one row block at a time
          const int64_t rb = n / 128, be = std::min(e, rb * 128 + 128);
          fn(n, be, rb);
          n = be;
        }
      },
      min_units);
}

// ---- MLA's per-head products on kv_b_proj (gemv_fp8_rows / gemv_fp8_t_rows) ----
//
// Exact FP32 route (NaN codes patched), for one activation row on a few dozen weight rows: the
// costs that matter are per row (a horizontal sum each) and per call, not the stream.

// y[0..4) = Σ_k xs[k]·code(w[i·K + k])·2⁻⁸ for 4 rows of K codes from w; xs zero past K. Two
// accumulators per row; the 4 row sums are reduced together (one shuffle tree for 4 rows instead
// of a horizontal sum each).
inline void rows4_nan(float* y, const float* xs, const uint8_t* w, int64_t K) {
  for (const char *p = reinterpret_cast<const char*>(w) + kPrefetchBytes, *e = p + 4 * K; p < e;
       p += 64)
    _mm_prefetch(p, _MM_HINT_NTA);
  __m512 a[4][2];
  for (int i = 0; i < 4; ++i) a[i][0] = a[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 m = __mmask32(mask64(K - k));
    const __m512 x0 = _mm512_loadu_ps(xs + k), x1 = _mm512_loadu_ps(xs + k + 16);
    for (int i = 0; i < 4; ++i) {
      __m512 lo, hi;
      widen32<true>(_mm256_maskz_loadu_epi8(m, w + i * K + k), lo, hi);
      a[i][0] = _mm512_fmadd_ps(x0, lo, a[i][0]);
      a[i][1] = _mm512_fmadd_ps(x1, hi, a[i][1]);
    }
  }
  const __m512 s0 = _mm512_add_ps(a[0][0], a[0][1]), s1 = _mm512_add_ps(a[1][0], a[1][1]);
  const __m512 s2 = _mm512_add_ps(a[2][0], a[2][1]), s3 = _mm512_add_ps(a[3][0], a[3][1]);
  // Per 128-bit lane: (s0[0]+s0[2], s1[0]+s1[2], s0[1]+s0[3], s1[1]+s1[3]), the same for s2/s3,
  // then (Σs0, Σs1, Σs2, Σs3) of the lane; the four lanes are summed last.
  const __m512 t01 = _mm512_add_ps(_mm512_unpacklo_ps(s0, s1), _mm512_unpackhi_ps(s0, s1));
  const __m512 t23 = _mm512_add_ps(_mm512_unpacklo_ps(s2, s3), _mm512_unpackhi_ps(s2, s3));
  const __m512 u =
      _mm512_add_ps(_mm512_shuffle_ps(t01, t23, 0x44), _mm512_shuffle_ps(t01, t23, 0xee));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(u),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
  _mm_storeu_ps(y, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

// y[c0 + c] = Σ_{r<n} x[r]·W_eff[r0 + r, c0 + c] for the 32·G columns from c0 (fewer at the end of
// the row), G ≤ 8 groups of 32 in 2G accumulators (registers: G is fixed here).
template <int G>
void t_rows_block(float* y, const float* x, const WeightView& w, int64_t r0, int64_t n,
                  int64_t c0) {
  const int64_t C = w.cols, sc = (C + 127) / 128;
  const auto* wp = static_cast<const uint8_t*>(w.data) + c0;
  __mmask32 mk[G];
  for (int g = 0; g < G; ++g) {
    const int64_t left = C - c0 - 32 * g;
    mk[g] = left <= 0 ? __mmask32(0) : __mmask32(mask64(left));
  }
  __m512 a[2 * G];
  for (int j = 0; j < 2 * G; ++j) a[j] = _mm512_setzero_ps();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t row = r0 + r;
    const float* s = w.scale_inv + (row / 128) * sc + c0 / 128;
    const uint8_t* wr = wp + row * C;
    _mm_prefetch(reinterpret_cast<const char*>(wr) + kPrefetchBytes, _MM_HINT_NTA);
    if (G > 2) _mm_prefetch(reinterpret_cast<const char*>(wr) + kPrefetchBytes + 64, _MM_HINT_NTA);
    if (G > 4) {
      _mm_prefetch(reinterpret_cast<const char*>(wr) + kPrefetchBytes + 128, _MM_HINT_NTA);
      _mm_prefetch(reinterpret_cast<const char*>(wr) + kPrefetchBytes + 192, _MM_HINT_NTA);
    }
    const __m512 f0 = _mm512_set1_ps(x[r] * s[0] * 256.0f);
    const __m512 f1 = G > 4 ? _mm512_set1_ps(x[r] * s[1] * 256.0f) : f0;  // 128 | c0
    for (int g = 0; g < G; ++g) {
      __m512 lo, hi;
      widen32<true>(_mm256_maskz_loadu_epi8(mk[g], wr + 32 * g), lo, hi);
      const __m512 f = g < 4 ? f0 : f1;
      a[2 * g] = _mm512_fmadd_ps(f, lo, a[2 * g]);
      a[2 * g + 1] = _mm512_fmadd_ps(f, hi, a[2 * g + 1]);
    }
  }
  for (int g = 0; g < G; ++g) {
    const int64_t c = c0 + 32 * g;
    _mm512_mask_storeu_ps(y + c, tail_mask16(C - c), a[2 * g]);
    _mm512_mask_storeu_ps(y + c + 16, tail_mask16(C - c - 16), a[2 * g + 1]);
  }
}

}  // namespace

bool fp8_has_nan_code(const uint8_t* p, int64_t n) {
  const __m512i mag = _mm512_set1_epi8(0x7f);
  int64_t i = 0;
  __mmask64 any = 0;
  for (; i + 64 <= n; i += 64)
    any |= _mm512_cmpeq_epi8_mask(_mm512_and_si512(_mm512_loadu_si512(p + i), mag), mag);
  for (; i < n; ++i) any |= (p[i] & 0x7f) == 0x7f;
  return any != 0;
}

void gemv_fp8(float* y, const float* x, int64_t M, const WeightView& w, bool has_nan,
              bool accumulate) {
  const int64_t N = w.rows, K = w.cols;
  if (M <= 0 || N <= 0) return;
  DSV3_ASSERT(w.dtype == DType::F8_E4M3 && w.scale_inv, "gemv_fp8: not an FP8 weight");
  const int64_t Kp = (K + 63) / 64 * 64, sc = (K + 127) / 128, nb = (N + 127) / 128;
  // xs[rb][m][Kp]: x·2⁸ times row block rb's column scales; zero past K.
  thread_local std::vector<float> xs;
  if (xs.size() < size_t(nb * M * Kp)) xs.resize(size_t(nb * M * Kp));
  for (int64_t m = 0; m < M; ++m) {
    float* xp = xs.data() + m * Kp;  // block 0's slot holds x·2⁸ first
    for (int64_t k = 0; k < Kp; ++k) xp[k] = k < K ? x[m * K + k] * 256.0f : 0.0f;
  }
  for (int64_t rb = nb - 1; rb >= 0; --rb)  // block 0 last: its slot is the source
    for (int64_t m = 0; m < M; ++m) {
      const float* src = xs.data() + m * Kp;
      float* dst = xs.data() + (rb * M + m) * Kp;
      const float* s = w.scale_inv + rb * sc;
      for (int64_t k = 0; k < Kp; k += 16)
        _mm512_storeu_ps(dst + k,
                         _mm512_mul_ps(_mm512_loadu_ps(src + k), _mm512_set1_ps(s[k / 128])));
    }
  const float* xsp = xs.data();
  const auto* wp = static_cast<const uint8_t*>(w.data);
  split_rows(N, K, [&](int64_t n, int64_t be, int64_t rb) {
    const float* xr = xsp + rb * M * Kp;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2)
      rows_any<2>(has_nan, y + m * N, N, xr + m * Kp, Kp, wp, K, n, be, accumulate);
    if (m < M) rows_any<1>(has_nan, y + m * N, N, xr + m * Kp, Kp, wp, K, n, be, accumulate);
  });
}

void gemv_fp8_bf16(float* y, const float* x, int64_t M, const WeightView& w, bool has_nan,
                   bool accumulate) {
  const int64_t N = w.rows, K = w.cols;
  if (M <= 0 || N <= 0) return;
  DSV3_ASSERT(w.dtype == DType::F8_E4M3 && w.scale_inv, "gemv_fp8_bf16: not an FP8 weight");
  const int64_t Kp = (K + 63) / 64 * 64, sc = (K + 127) / 128, nb = (N + 127) / 128;
  // The weights are BF16 values 2⁻¹²⁰ too small; x·scale carries 2^e back, e ≤ 120 chosen so that
  // no x·scale·2^e overflows BF16, and the sums are multiplied by 2^(120-e) (1 unless |x·scale|
  // may reach 2⁵).
  //
  // Every thread makes its own setup (e, and x·scale of the row block it is in) when it first
  // needs it, after asking for the start of its rows: the scales are a short read elsewhere in
  // memory (a cache and TLB miss), and on a team of two the other thread used to wait for the
  // master's setup of all row blocks before either started streaming. e depends on the call's
  // x and scales only, so the result does not depend on the split.
  static std::atomic<uint64_t> calls{0};
  const uint64_t id = calls.fetch_add(1, std::memory_order_relaxed) + 1;
  const auto* wp = static_cast<const uint8_t*>(w.data);
  split_rows(N, K, [&](int64_t n, int64_t be, int64_t rb) {
    struct Setup {
      uint64_t id = 0;
      int64_t rb = -1;
      int e = 120;
      std::vector<uint16_t> xb;  // [M][Kp]: BF16 of x·scale(rb, k/128)·2^e; zero past K
    };
    thread_local Setup st;
    if (st.id != id) {
      const char* p = reinterpret_cast<const char*>(wp + n * K);
      const char* pe = p + std::min<int64_t>((be - n) * K, kPrefetchBytes);
      for (; p < pe; p += 64) _mm_prefetch(p, _MM_HINT_NTA);
      const float xmax = abs_max(x, M * K), smax = abs_max(w.scale_inv, nb * sc);
      int ex = 0;
      const double amax = double(xmax) * double(smax);
      if (std::isfinite(amax)) std::frexp(amax, &ex);  // amax < 2^ex
      st.e = std::clamp(125 - ex, -7, 120);            // from -7 on, x·scale overflows FP32 itself
      st.id = id;
      st.rb = -1;
      if (st.xb.size() < size_t(M * Kp)) st.xb.resize(size_t(M * Kp));
    }
    if (st.rb != rb) {
      const __m512 p2 = _mm512_set1_ps(std::ldexp(1.0f, st.e));
      for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < Kp; k += 32)
          store32_bf16(st.xb.data() + m * Kp + k, x + m * K + k, K - k,
                       _mm512_set1_ps(w.scale_inv[rb * sc + k / 128]), p2);
      st.rb = rb;
    }
    const float post = std::ldexp(1.0f, 120 - st.e);
    const uint16_t* xr = st.xb.data();
    int64_t m = 0;
    for (; m + 2 <= M; m += 2)
      rows_bf16_any<2>(has_nan, y + m * N, N, xr + m * Kp, Kp, wp, K, n, be, accumulate, post);
    if (m < M)
      rows_bf16_any<1>(has_nan, y + m * N, N, xr + m * Kp, Kp, wp, K, n, be, accumulate, post);
  });
}

void gemv_fp8_rows(float* y, const float* x, const WeightView& w, int64_t n0, int64_t n1) {
  DSV3_ASSERT(0 <= n0 && n0 <= n1 && n1 <= w.rows, "gemv_fp8_rows: rows [{}, {}) of {}", n0, n1,
              w.rows);
  const int64_t K = w.cols, Kp = (K + 63) / 64 * 64, sc = (K + 127) / 128;
  const auto* wp = static_cast<const uint8_t*>(w.data) + n0 * K;
  thread_local std::vector<float> xs;  // x·2⁸ times one row block's column scales; zero past K
  if (xs.size() < size_t(Kp)) xs.resize(size_t(Kp));
  for (int64_t n = n0; n < n1;) {
    const int64_t rb = n / 128, be = std::min(n1, rb * 128 + 128);
    const float* s = w.scale_inv + rb * sc;
    for (int64_t k = 0; k < Kp; k += 16)  // 16 columns lie in one scale block
      _mm512_storeu_ps(xs.data() + k,
                       _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask16(K - k), x + k),
                                     _mm512_set1_ps(s[k / 128] * 256.0f)));
    int64_t r = n - n0;
    for (; r + 4 <= be - n0; r += 4) rows4_nan(y + r, xs.data(), wp + r * K, K);
    if (r < be - n0) rows<1, true>(y, 0, xs.data(), Kp, wp, K, r, be - n0, false);
    n = be;
  }
}

void gemv_fp8_t_rows(float* y, const float* x, const WeightView& w, int64_t r0, int64_t n) {
  DSV3_ASSERT(0 <= r0 && 0 <= n && r0 + n <= w.rows, "gemv_fp8_t_rows: rows [{}, {}) of {}", r0,
              r0 + n, w.rows);
  const int64_t C = w.cols;
  // Columns in blocks of 256 (two scale blocks, 16 accumulators) while the rows stream by; a last
  // block of at most 128 columns takes 8.
  for (int64_t c0 = 0; c0 < C; c0 += 256) {
    if (C - c0 > 128)
      t_rows_block<8>(y, x, w, r0, n, c0);
    else
      t_rows_block<4>(y, x, w, r0, n, c0);
  }
}

void fp8_rows_to_bf16(uint16_t* dst, const WeightView& w, int64_t n0, int64_t n1) {
  const int64_t K = w.cols;
  for (int64_t n = n0; n < n1; ++n) {
    uint16_t* d = dst + (n - n0) * K;
    effective_row(w, n, [&](int64_t k, __m512 v, __mmask16 m) {
      _mm256_mask_storeu_epi16(d + k, m, (__m256i)_mm512_cvtneps_pbh(v));
    });
  }
}

void fp8_rows_to_f32(float* dst, const WeightView& w, int64_t n0, int64_t n1) {
  const int64_t K = w.cols;
  for (int64_t n = n0; n < n1; ++n) {
    float* d = dst + (n - n0) * K;
    effective_row(w, n,
                  [&](int64_t k, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(d + k, m, v); });
  }
}

void bf16_rows_to_f32(float* dst, const WeightView& w, int64_t n0, int64_t n1) {
  const int64_t K = w.cols;
  const auto* src = static_cast<const uint16_t*>(w.data);
  to_f32(dst, src + n0 * K, DType::BF16, size_t((n1 - n0) * K));
}

}  // namespace dsv3::cpu
