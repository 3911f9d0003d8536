// Register-tiled FP32 products for few rows; see gemm_small.hpp.
//
// A·Bᵀ: a 4×4 tile of dot products, K in steps of 16 (both operands are read along K, so each
// of the 16 accumulators sums one output); the horizontal sums happen once per tile, all 16 in
// one transposing reduction (reduce16). Per output, a 16-lane horizontal sum costs as much as
// ~8 of its FMAs: for the scores of a 16-position cache block (K = 256 latent + 32 rope) the
// per-output sums of the two products were half the instructions.
// A·B: a 4-row × 64-column tile, K in steps of 1: four vectors of B's row k are scaled by a
// broadcast of A[m, k] and accumulated, so B streams row by row and A is read once per tile.
// Column and K tails use masked loads (zeros add exact zeros).
#include "backend/cpu/gemm_small.hpp"

// GCC 12 flags the _mm*_undefined_* inside its own AVX-512 intrinsic headers (a known false
// positive of -W(maybe-)uninitialized once they are inlined, e.g. in _mm512_reduce_add_ps).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <array>

#include "backend/cpu/vmath.hpp"

namespace dsv3::cpu {
namespace {

// The 16 sums of v[0..15] in one vector: lane 4·(o % 4) + o / 4 holds Σ v[o] (a 4×4 transpose of
// o = 4·i + j, i.e. lane 4·j + i). The pairs summed are those of _mm512_reduce_add_ps (lanes l and
// l + 8, then l + 4, l + 2, l + 1), so each sum is bit for bit that of reducing its vector alone:
// 45 instructions for the 16 sums instead of ~9 for each.
inline __m512 reduce16(const __m512* v) {
  __m512 a[8], b[4], e[2];
  for (int i = 0; i < 8; ++i)  // [v2i: l + (l+8) | v2i+1: l + (l+8)]
    a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)  // 128-bit block p: v4i+p's l + (l+4)
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)  // block p: v8i+p (lanes 0, 1), v8i+4+p (lanes 2, 3): l + (l+2)
    e[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xEE));
  // block p: v_p, v4+p, v8+p, v12+p
  return _mm512_add_ps(_mm512_shuffle_ps(e[0], e[1], 0x88), _mm512_shuffle_ps(e[0], e[1], 0xDD));
}

// acc[4·n + m] += Σ_k A[m, k] · B[n, k] over 16-lane chunks of K (zeros past K in the tail).
template <int MR, int NR>
inline void nt_segment(__m512* acc, int64_t K, const float* A, int64_t lda, const float* B,
                       int64_t ldb) {
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 b[NR];
    for (int n = 0; n < NR; ++n) b[n] = _mm512_loadu_ps(B + n * ldb + k);
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_loadu_ps(A + m * lda + k);
      for (int n = 0; n < NR; ++n) acc[4 * n + m] = _mm512_fmadd_ps(a, b[n], acc[4 * n + m]);
    }
  }
  if (k < K) {
    const __mmask16 mk = tail_mask(K - k);
    __m512 b[NR];
    for (int n = 0; n < NR; ++n) b[n] = _mm512_maskz_loadu_ps(mk, B + n * ldb + k);
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_maskz_loadu_ps(mk, A + m * lda + k);
      for (int n = 0; n < NR; ++n) acc[4 * n + m] = _mm512_fmadd_ps(a, b[n], acc[4 * n + m]);
    }
  }
}

// One tile of the A·Bᵀ products (NtArgs), rows m < MR, columns n < NR: the 16 accumulators are
// summed together (reduce16), and row m's NR results are lanes 4m..4m+NR-1 of the sums.
struct NtArgs {
  int64_t K;
  const float *A, *B;
  int64_t lda, ldb;
  int64_t K2;  // a second product added before the sum (0: none)
  const float *A2, *B2;
  int64_t lda2, ldb2;
  float alpha, beta;
  float* C;
  int64_t ldc;
};

template <int MR, int NR>
void nt_tile(const NtArgs& g, int64_t m0, int64_t n0) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  nt_segment<MR, NR>(acc, g.K, g.A + m0 * g.lda, g.lda, g.B + n0 * g.ldb, g.ldb);
  if (g.K2 > 0)
    nt_segment<MR, NR>(acc, g.K2, g.A2 + m0 * g.lda2, g.lda2, g.B2 + n0 * g.ldb2, g.ldb2);
  const __m512 s = _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(g.alpha));
  constexpr __mmask8 kCols = (1u << NR) - 1;
  for (int m = 0; m < MR; ++m) {
    __m128 v = _mm512_extractf32x4_ps(s, 0);
    if (m == 1) v = _mm512_extractf32x4_ps(s, 1);
    if (m == 2) v = _mm512_extractf32x4_ps(s, 2);
    if (m == 3) v = _mm512_extractf32x4_ps(s, 3);
    float* c = g.C + (m0 + m) * g.ldc + n0;
    if (g.beta != 0.0f)
      v = _mm_add_ps(v, _mm_mul_ps(_mm_set1_ps(g.beta), _mm_maskz_loadu_ps(kCols, c)));
    _mm_mask_storeu_ps(c, kCols, v);
  }
}

using NtFn = void (*)(const NtArgs&, int64_t, int64_t);
template <int MR>
constexpr std::array<NtFn, 4> nt_row() {
  return {nt_tile<MR, 1>, nt_tile<MR, 2>, nt_tile<MR, 3>, nt_tile<MR, 4>};
}

void nt_tiles(int64_t M, int64_t N, const NtArgs& g) {
  static constexpr std::array<std::array<NtFn, 4>, 4> kTiles = {nt_row<1>(), nt_row<2>(),
                                                                nt_row<3>(), nt_row<4>()};
  for (int64_t n = 0; n < N; n += 4) {
    const int64_t nr = std::min<int64_t>(4, N - n);
    for (int64_t m = 0; m < M; m += 4)
      kTiles[size_t(std::min<int64_t>(4, M - m) - 1)][size_t(nr - 1)](g, m, n);
  }
}

constexpr int kNV = 4;  // vectors of 16 columns per A·B tile

template <int MR, bool kMasked>
void nn_tile(int64_t K, int64_t ncols, const float* A, int64_t lda, const float* B, int64_t ldb,
             float* C, int64_t ldc, bool accumulate) {
  __mmask16 mk[kNV];
  __m512 acc[MR][kNV];
  for (int j = 0; j < kNV; ++j) {
    mk[j] = kMasked ? tail_mask(ncols - 16 * j) : __mmask16(0xffff);
    for (int m = 0; m < MR; ++m)
      acc[m][j] =
          accumulate ? _mm512_maskz_loadu_ps(mk[j], C + m * ldc + 16 * j) : _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    __m512 b[kNV];
    for (int j = 0; j < kNV; ++j)
      b[j] = kMasked ? _mm512_maskz_loadu_ps(mk[j], B + k * ldb + 16 * j)
                     : _mm512_loadu_ps(B + k * ldb + 16 * j);
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_set1_ps(A[m * lda + k]);
      for (int j = 0; j < kNV; ++j) acc[m][j] = _mm512_fmadd_ps(a, b[j], acc[m][j]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < kNV; ++j) _mm512_mask_storeu_ps(C + m * ldc + 16 * j, mk[j], acc[m][j]);
}

}  // namespace

void gemm_small_nt(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  nt_tiles(M, N, {K, A, B, lda, ldb, 0, nullptr, nullptr, 0, 0, alpha, beta, C, ldc});
}

void gemm_small_nt2(int64_t M, int64_t N, float alpha, int64_t K, const float* A, int64_t lda,
                    const float* B, int64_t ldb, int64_t K2, const float* A2, int64_t lda2,
                    const float* B2, int64_t ldb2, float* C, int64_t ldc) {
  nt_tiles(M, N, {K, A, B, lda, ldb, K2, A2, B2, lda2, ldb2, alpha, 0.0f, C, ldc});
}

void gemm_small_nn(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                   int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  using NnFn = void (*)(int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*,
                        int64_t, bool);
  // Full 64-column tiles use plain loads (masked loads measured far slower on data that is not
  // in the caches); the column tail is masked.
  static constexpr std::array<std::array<NnFn, 4>, 2> kTiles = {
      {{nn_tile<1, false>, nn_tile<2, false>, nn_tile<3, false>, nn_tile<4, false>},
       {nn_tile<1, true>, nn_tile<2, true>, nn_tile<3, true>, nn_tile<4, true>}}};
  for (int64_t n = 0; n < N; n += 16 * kNV) {
    const int64_t nc = std::min<int64_t>(16 * kNV, N - n);
    for (int64_t m = 0; m < M; m += 4) {
      const int64_t mr = std::min<int64_t>(4, M - m);
      kTiles[nc < 16 * kNV][size_t(mr - 1)](K, nc, A + m * lda, lda, B + n, ldb, C + m * ldc + n,
                                            ldc, accumulate);
    }
  }
}

}  // namespace dsv3::cpu
