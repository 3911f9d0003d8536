// Implementation of quant_train.hpp. The E4M3 rounding works on the float's bits: a normal value
// (|v| ≥ 2^-6) keeps 3 mantissa bits (round to nearest even on the 20 dropped bits), a subnormal
// one is rounded to a multiple of 2^-9 (roundscale of v·2^9, exact scalings). Both agree with
// core/dtype's f32_to_fp8_e4m3 bit for bit (tests/backend/test_lowp.cpp checks every tile kind).
#include "backend/cpu/quant_train.hpp"

#include <immintrin.h>

// GCC 12 flags the _mm512_undefined_* inside masked intrinsics as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"

namespace dsv3::cpu {
namespace {

constexpr float kE4M3Max = 448.0f;
constexpr float kE5M6Max = 65024.0f;  // (2 − 2^-6)·2^15

inline __mmask16 tail_mask(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
}

// |a| (non-negative) rounded to nearest even with M mantissa bits, on the float's bits (a carry
// moves into the exponent), or below min_normal (the format's subnormals) to a multiple of
// quantum, a power of two. Shared by the E4M3 (M = 3) and E5M6 (M = 6) codecs below.
template <int M>
inline __m512 round_mantissa_v(__m512 a, float min_normal, float quantum) {
  constexpr int kShift = 23 - M;
  const __m512i ab = _mm512_castps_si512(a);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(ab, kShift), _mm512_set1_epi32(1));
  const __m512i rn = _mm512_and_si512(
      _mm512_add_epi32(ab, _mm512_add_epi32(_mm512_set1_epi32((1 << (kShift - 1)) - 1), lsb)),
      _mm512_set1_epi32(int(~((1u << kShift) - 1))));
  const __m512 qs =
      _mm512_mul_ps(_mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(1.0f / quantum)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                    _mm512_set1_ps(quantum));
  const __mmask16 sub = _mm512_cmp_ps_mask(a, _mm512_set1_ps(min_normal), _CMP_LT_OQ);
  return _mm512_mask_blend_ps(sub, _mm512_castsi512_ps(rn), qs);
}

// E4M3 value of v (see the file comment); NaN where v is NaN or ±Inf.
inline __m512 e4m3_round_v(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i sign = _mm512_and_si512(bits, _mm512_set1_epi32(int(0x80000000u)));
  const __m512 a = _mm512_abs_ps(v);
  __m512 q = round_mantissa_v<3>(a, 1.0f / 64.0f, 1.0f / 512.0f);
  q = _mm512_min_ps(q, _mm512_set1_ps(kE4M3Max));
  q = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(q), sign));
  const __mmask16 bad = _mm512_cmp_ps_mask(a, _mm512_set1_ps(INFINITY), _CMP_NLT_UQ);
  return _mm512_mask_mov_ps(q, bad, _mm512_set1_ps(NAN));
}

// Largest finite |x| of 16 lanes (masked), folded into m.
inline __m512 amax_v(__m512 m, __m512 x, __mmask16 k) {
  const __m512 a = _mm512_abs_ps(x);
  const __mmask16 fin = k & _mm512_cmp_ps_mask(a, _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
  return _mm512_mask_max_ps(m, fin, m, a);
}

inline float scale_of(float amax) {
  const float s = amax / kE4M3Max;
  return s == 0.0f ? 1.0f : s;
}

inline __m256i to_bf16(__m512 x) {
  return (__m256i)_mm512_cvtneps_pbh(x);
}

// 16 pairs (lo[i] in the low half, hi[i] in the high half of lane i).
inline __m512i interleave(__m256i lo, __m256i hi) {
  return _mm512_or_si512(_mm512_cvtepu16_epi32(lo),
                         _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
}

void zero_pad(uint16_t* row, int64_t from, int64_t to) {
  if (to > from) std::memset(row + from, 0, size_t(to - from) * 2);
}

void check(const char* what, int64_t ld, int64_t need) {
  DSV3_CHECK(ld >= need && ld % 2 == 0, "{}: leading dimension {} must be even and >= {}", what, ld,
             need);
}

}  // namespace

float e4m3_round(float v) {
  if (!std::isfinite(v)) return NAN;
  return fp8_e4m3_to_f32(f32_to_fp8_e4m3(v));
}

void e4m3_round_n(float* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(dst + i, k, e4m3_round_v(_mm512_maskz_loadu_ps(k, src + i)));
  }
}

uint16_t e5m6_encode(float v) {
  if (std::isnan(v)) return 0x7e00;
  const float a = std::min(std::fabs(v), kE5M6Max);
  float q = 0;
  if (a > 0) {
    int e;
    std::frexp(a, &e);
    e = std::max(e - 1, -14);  // a = m·2^e, m in [1, 2); subnormals share 2^-14's quantum
    const float quantum = std::ldexp(1.0f, e - 6);
    q = std::min(std::nearbyint(a / quantum) * quantum, kE5M6Max);
  }
  return f32_to_f16(std::signbit(v) ? -q : q);
}

float e5m6_decode(uint16_t h) {
  return f16_to_f32(h);
}

void bf16_rows(uint16_t* q, int64_t ldq, const float* x, int64_t ldx, int64_t rows, int64_t cols) {
  check("bf16_rows", ldq, cols);
  parallel_for_balanced(
      rows,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const float* s = x + r * ldx;
          uint16_t* d = q + r * ldq;
          for (int64_t c = 0; c < cols; c += 16) {
            const __mmask16 k = tail_mask(cols - c);
            _mm256_mask_storeu_epi16(d + c, k, to_bf16(_mm512_maskz_loadu_ps(k, s + c)));
          }
          zero_pad(d, cols, ldq);
        }
      },
      std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)));
}

void bf16_pairs(uint32_t* p, int64_t ldp, const float* x, int64_t ldx, int64_t rows, int64_t cols) {
  DSV3_CHECK(ldp >= cols, "bf16_pairs: leading dimension {} < {}", ldp, cols);
  parallel_for_balanced(
      (rows + 1) / 2,
      [&](int64_t k0, int64_t k1) {
        for (int64_t kp = k0; kp < k1; ++kp) {
          const float* lo = x + 2 * kp * ldx;
          const bool has_hi = 2 * kp + 1 < rows;
          for (int64_t c = 0; c < cols; c += 16) {
            const __mmask16 k = tail_mask(cols - c);
            const __m512 vl = _mm512_maskz_loadu_ps(k, lo + c);
            const __m512 vh = has_hi ? _mm512_maskz_loadu_ps(k, lo + ldx + c) : _mm512_setzero_ps();
            _mm512_mask_storeu_epi32(p + kp * ldp + c, k, interleave(to_bf16(vl), to_bf16(vh)));
          }
        }
      },
      std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)));
}

void fp8_rows(uint16_t* q, int64_t ldq, float* scale, const float* x, int64_t ldx, int64_t rows,
              int64_t cols) {
  check("fp8_rows", ldq, cols);
  const int64_t tiles = quant_tiles(cols);
  parallel_for_balanced(
      rows,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const float* s = x + r * ldx;
          uint16_t* d = q + r * ldq;
          for (int64_t t = 0; t < tiles; ++t) {
            const int64_t c0 = t * kQuantTile, c1 = std::min(cols, c0 + kQuantTile);
            __m512 m = _mm512_setzero_ps();
            for (int64_t c = c0; c < c1; c += 16) {
              const __mmask16 k = tail_mask(c1 - c);
              m = amax_v(m, _mm512_maskz_loadu_ps(k, s + c), k);
            }
            const float sc = scale_of(_mm512_reduce_max_ps(m));
            scale[r * tiles + t] = sc;
            const __m512 vs = _mm512_set1_ps(sc);
            for (int64_t c = c0; c < c1; c += 16) {
              const __mmask16 k = tail_mask(c1 - c);
              const __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(k, s + c), vs);
              _mm256_mask_storeu_epi16(d + c, k, to_bf16(e4m3_round_v(v)));
            }
          }
          zero_pad(d, cols, ldq);
        }
      },
      std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)));
}

namespace {

// 128×1 tiles along the rows of x [rows, cols]: the scales into scale [cols, quant_tiles(rows)]
// and each pair of rows' E4M3 values (vl of row r, vh of row r + 1: 0 past rows) handed to
// store(r / 2, c0, mask) for columns c0.. (16 at a time).
template <typename Store>
void fp8_pairs_tiles(float* scale, const float* x, int64_t ldx, int64_t rows, int64_t cols,
                     Store&& store) {
  const int64_t tiles = quant_tiles(rows), cb = (cols + 15) / 16;
  parallel_for(tiles * cb, [&](int64_t j0, int64_t j1) {
    alignas(64) float s16[16];
    for (int64_t jb = j0; jb < j1; ++jb) {
      const int64_t t = jb / cb, c0 = (jb % cb) * 16, n = std::min<int64_t>(16, cols - c0);
      const __mmask16 k = tail_mask(n);
      const int64_t r0 = t * kQuantTile, r1 = std::min(rows, r0 + kQuantTile);
      __m512 m = _mm512_setzero_ps();
      for (int64_t r = r0; r < r1; ++r)
        m = amax_v(m, _mm512_maskz_loadu_ps(k, x + r * ldx + c0), k);
      __m512 vs = _mm512_div_ps(m, _mm512_set1_ps(kE4M3Max));
      vs = _mm512_mask_mov_ps(vs, _mm512_cmp_ps_mask(vs, _mm512_setzero_ps(), _CMP_EQ_OQ),
                              _mm512_set1_ps(1.0f));
      _mm512_store_ps(s16, vs);
      for (int64_t j = 0; j < n; ++j) scale[(c0 + j) * tiles + t] = s16[j];
      // r0 is even (tiles are 128 rows), so pairs never straddle two tiles.
      for (int64_t r = r0; r < r1; r += 2) {
        const __m512 vl = _mm512_div_ps(_mm512_maskz_loadu_ps(k, x + r * ldx + c0), vs);
        const __m512 vh = r + 1 < r1
                              ? _mm512_div_ps(_mm512_maskz_loadu_ps(k, x + (r + 1) * ldx + c0), vs)
                              : _mm512_setzero_ps();
        store(r / 2, c0, k, e4m3_round_v(vl), e4m3_round_v(vh));
      }
    }
  });
}

// The E4M3 codes (16 bits per lane, the code in the low byte) of 16 E4M3 values q (or NaN): q /
// 256 is an IEEE half whose exponent and top 3 mantissa bits are the code's (E4M3's subnormals
// land on the half's subnormals), exact.
inline __m256i e4m3_codes_v(__m512 q) {
  const __m256i h = _mm512_cvtps_ph(_mm512_mul_ps(q, _mm512_set1_ps(1.0f / 256.0f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256i c = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(h, 7), _mm256_set1_epi16(0x7f)),
                              _mm256_and_si256(_mm256_srli_epi16(h, 8), _mm256_set1_epi16(0x80)));
  const __mmask16 nan = _mm512_cmp_ps_mask(q, q, _CMP_UNORD_Q);
  return _mm256_mask_mov_epi16(c, nan, _mm256_set1_epi16(0x7f));
}

}  // namespace

void fp8_pairs(uint32_t* p, int64_t ldp, float* scale, const float* x, int64_t ldx, int64_t rows,
               int64_t cols) {
  DSV3_CHECK(ldp >= cols, "fp8_pairs: leading dimension {} < {}", ldp, cols);
  fp8_pairs_tiles(
      scale, x, ldx, rows, cols, [&](int64_t kp, int64_t c0, __mmask16 k, __m512 ql, __m512 qh) {
        _mm512_mask_storeu_epi32(p + kp * ldp + c0, k, interleave(to_bf16(ql), to_bf16(qh)));
      });
}

void fp8_pairs_codes(uint16_t* codes, int64_t ldc, float* scale, const float* x, int64_t ldx,
                     int64_t rows, int64_t cols) {
  DSV3_CHECK(ldc >= cols, "fp8_pairs_codes: leading dimension {} < {}", ldc, cols);
  fp8_pairs_tiles(
      scale, x, ldx, rows, cols, [&](int64_t kp, int64_t c0, __mmask16 k, __m512 ql, __m512 qh) {
        const __m256i c = _mm256_or_si256(e4m3_codes_v(ql), _mm256_slli_epi16(e4m3_codes_v(qh), 8));
        _mm256_mask_storeu_epi16(codes + kp * ldc + c0, k, c);
      });
}

void fp8_blocks(uint16_t* q, int64_t ldq, uint32_t* p, int64_t ldp, float* sblock, const float* w,
                int64_t rows, int64_t cols) {
  if (q) check("fp8_blocks", ldq, cols);
  DSV3_CHECK(!p || ldp >= cols, "fp8_blocks: pairs leading dimension {} < {}", ldp, cols);
  const int64_t br = quant_tiles(rows), bc = quant_tiles(cols);
  parallel_for(br * bc, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / bc, j = t % bc;
      const int64_t r0 = i * kQuantTile, r1 = std::min(rows, r0 + kQuantTile);
      const int64_t c0 = j * kQuantTile, c1 = std::min(cols, c0 + kQuantTile);
      __m512 m = _mm512_setzero_ps();
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; c += 16) {
          const __mmask16 k = tail_mask(c1 - c);
          m = amax_v(m, _mm512_maskz_loadu_ps(k, w + r * cols + c), k);
        }
      const float sc = scale_of(_mm512_reduce_max_ps(m));
      sblock[t] = sc;
      const __m512 vs = _mm512_set1_ps(sc);
      auto quant = [&](int64_t r, int64_t c, __mmask16 k) {
        if (r >= r1) return _mm256_setzero_si256();
        return to_bf16(e4m3_round_v(_mm512_div_ps(_mm512_maskz_loadu_ps(k, w + r * cols + c), vs)));
      };
      // r0 is even (blocks are 128 rows), so pairs never straddle two blocks.
      for (int64_t r = r0; r < r1; r += 2)
        for (int64_t c = c0; c < c1; c += 16) {
          const __mmask16 k = tail_mask(c1 - c);
          const __m256i lo = quant(r, c, k), hi = quant(r + 1, c, k);
          if (q) {
            _mm256_mask_storeu_epi16(q + r * ldq + c, k, lo);
            if (r + 1 < r1) _mm256_mask_storeu_epi16(q + (r + 1) * ldq + c, k, hi);
          }
          if (p) _mm512_mask_storeu_epi32(p + (r / 2) * ldp + c, k, interleave(lo, hi));
        }
    }
  });
  if (q)
    for (int64_t r = 0; r < rows; ++r) zero_pad(q + r * ldq, cols, ldq);
}

namespace {

// e5m6_encode of 16 finite values (the vector twin, bit for bit): |v| clamped to 65024, rounded
// to nearest even with 6 mantissa bits (on the float's bits, carries into the exponent) or, below
// 2^-14 (the half's subnormals), to a multiple of 2^-20; the sign kept; exact as an IEEE half.
inline __m256i e5m6_encode_v(__m512 v) {
  const __m512i sign =
      _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(int(0x80000000u)));
  const __m512 a = _mm512_min_ps(_mm512_abs_ps(v), _mm512_set1_ps(kE5M6Max));
  __m512 q = _mm512_min_ps(round_mantissa_v<6>(a, 0x1p-14f, 0x1p-20f), _mm512_set1_ps(kE5M6Max));
  q = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(q), sign));
  return _mm512_cvtps_ph(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

}  // namespace

void e5m6_rows(uint16_t* h, float* scale, const float* x, int64_t rows, int64_t cols) {
  const int64_t tiles = quant_tiles(cols);
  parallel_for(
      rows,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t t = 0; t < tiles; ++t) {
            const int64_t c0 = t * kQuantTile, c1 = std::min(cols, c0 + kQuantTile);
            const float* s = x + r * cols;
            __m512 m = _mm512_setzero_ps();
            for (int64_t c = c0; c < c1; c += 16) {
              const __mmask16 k = tail_mask(c1 - c);
              m = amax_v(m, _mm512_maskz_loadu_ps(k, s + c), k);
            }
            const float amax = _mm512_reduce_max_ps(m);
            // The power of two at or above amax / 65024 (1 for an all-zero tile).
            float sc = 1.0f;
            if (amax > 0) {
              int e;
              const float mt = std::frexp(amax / kE5M6Max, &e);  // mt in [0.5, 1)
              sc = std::ldexp(1.0f, mt == 0.5f ? e - 1 : e);
            }
            scale[r * tiles + t] = sc;
            const __m512 vs = _mm512_set1_ps(sc);
            for (int64_t c = c0; c < c1; c += 16) {
              const __mmask16 k = tail_mask(c1 - c);
              const __m512 v = _mm512_maskz_loadu_ps(k, s + c);
              const __mmask16 bad =
                  _mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(INFINITY), _CMP_NLT_UQ);
              const __m256i q = e5m6_encode_v(_mm512_div_ps(v, vs));
              _mm256_mask_storeu_epi16(h + r * cols + c, k,
                                       _mm256_mask_mov_epi16(q, bad, _mm256_set1_epi16(0x7e00)));
            }
          }
      },
      std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)));
}

void e5m6_rows_decode(float* x, const uint16_t* h, const float* scale, int64_t rows, int64_t cols) {
  const int64_t tiles = quant_tiles(cols);
  parallel_for(
      rows,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = 0; c < cols; c += 16) {
            const __mmask16 k = tail_mask(cols - c);
            const __m512 v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, h + r * cols + c));
            // c is a multiple of 16 and tiles are 128 wide: one scale per 16 lanes.
            const __m512 s = _mm512_set1_ps(scale[r * tiles + c / kQuantTile]);
            _mm512_mask_storeu_ps(x + r * cols + c, k, _mm512_mul_ps(v, s));
          }
      },
      std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)));
}

}  // namespace dsv3::cpu
