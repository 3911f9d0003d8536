// AVX-512 widening of FP8 e4m3 codes shared by the FP8 kernels (gemv_fp8.cpp, gemm_fp8.cpp).
//
// Through FP16: sign-extending a code to 16 bits and shifting left by 7 puts the sign in bit 15
// and exponent/mantissa in bits 13..7 (bit 14, a copy of the sign, is masked off): an exact FP16
// of value·2⁻⁸ for normals and subnormals alike, which vcvtph2ps widens exactly. e4m3 has no
// infinities; its NaN codes (0x7f, 0xff) would decode to ±480, so weights that hold them take the
// kNan variant, which patches them to NaN.
#pragma once
#include <immintrin.h>

namespace dsv3::cpu::fp8_simd {

// The 2⁻⁸-scaled FP32 values of 32 codes: lo = codes 0..15, hi = codes 16..31.
template <bool kNan>
inline void widen32(__m256i b, __m512& lo, __m512& hi) {
  __m512i v = _mm512_slli_epi16(_mm512_cvtepi8_epi16(b), 7);
  v = _mm512_and_si512(v, _mm512_set1_epi16(short(0xbfff)));
  if constexpr (kNan) {
    const __m512i mag = _mm512_and_si512(v, _mm512_set1_epi16(0x7fff));
    const __mmask32 nan = _mm512_cmpeq_epi16_mask(mag, _mm512_set1_epi16(0x3f80));
    v = _mm512_mask_mov_epi16(v, nan, _mm512_set1_epi16(0x7e00));
  }
  lo = _mm512_cvtph_ps(_mm512_castsi512_si256(v));
  hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1));
}

}  // namespace dsv3::cpu::fp8_simd
