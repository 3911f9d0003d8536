// Register-tiled FP32 products for few rows; see gemm_small.hpp.
//
// A·Bᵀ: a 4×4 tile of dot products, K in steps of 16 (both operands are read along K, so each
// of the 16 accumulators sums one output); the horizontal sums happen once per tile.
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

template <int MR, int NR>
void nt_tile(int64_t K, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
             float beta, float* C, int64_t ldc) {
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 b[NR];
    for (int n = 0; n < NR; ++n) b[n] = _mm512_loadu_ps(B + n * ldb + k);
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_loadu_ps(A + m * lda + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(a, b[n], acc[m][n]);
    }
  }
  if (k < K) {
    const __mmask16 mk = tail_mask(K - k);
    __m512 b[NR];
    for (int n = 0; n < NR; ++n) b[n] = _mm512_maskz_loadu_ps(mk, B + n * ldb + k);
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_maskz_loadu_ps(mk, A + m * lda + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(a, b[n], acc[m][n]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) {
      const float v = alpha * _mm512_reduce_add_ps(acc[m][n]);
      float& c = C[m * ldc + n];
      c = beta == 0.0f ? v : v + beta * c;
    }
}

using NtFn = void (*)(int64_t, float, const float*, int64_t, const float*, int64_t, float, float*,
                      int64_t);
template <int MR>
constexpr std::array<NtFn, 4> nt_row() {
  return {nt_tile<MR, 1>, nt_tile<MR, 2>, nt_tile<MR, 3>, nt_tile<MR, 4>};
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
  static constexpr std::array<std::array<NtFn, 4>, 4> kTiles = {nt_row<1>(), nt_row<2>(),
                                                                nt_row<3>(), nt_row<4>()};
  for (int64_t n = 0; n < N; n += 4) {
    const int64_t nr = std::min<int64_t>(4, N - n);
    for (int64_t m = 0; m < M; m += 4) {
      const int64_t mr = std::min<int64_t>(4, M - m);
      kTiles[size_t(mr - 1)][size_t(nr - 1)](K, alpha, A + m * lda, lda, B + n * ldb, ldb, beta,
                                             C + m * ldc + n, ldc);
    }
  }
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
