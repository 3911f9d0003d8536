// AVX-512 small-M kernels for y = x·Wᵀ reading the stored weight (see gemv.hpp).
//
// Decode is memory-bound: each weight byte is read once and widened in registers, never written
// back. Weight rows are walked one after another, front to back, against up to two activation
// rows at a time, so a thread's share of a matrix is one sequential stream (see rows_mr).
//
// Widening: BF16 is a 16-bit shift. FP8 e4m3 weights have their own kernels (gemv_fp8.cpp).
#include "backend/cpu/gemv.hpp"

// GCC 12 flags the _mm*_undefined_* inside its own AVX-512 intrinsic headers (a known false
// positive of -W(maybe-)uninitialized once they are inlined, e.g. in _mm512_reduce_add_ps).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/gemv_fp8.hpp"
#include "backend/cpu/vmath.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"

namespace dsv3::cpu {
namespace {

struct DecF32 {
  using T = float;
  static void load(const float* p, __m512& lo, __m512& hi) {
    lo = _mm512_loadu_ps(p);
    hi = _mm512_loadu_ps(p + 16);
  }
  static void load_tail(const float* p, int64_t r, __m512& lo, __m512& hi) {
    lo = _mm512_maskz_loadu_ps(tail_mask(r), p);
    hi = _mm512_maskz_loadu_ps(tail_mask(r - 16), p + 16);
  }
  static __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
  static __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
};

struct DecBF16 {
  using T = uint16_t;
  static __m512 widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static void load(const uint16_t* p, __m512& lo, __m512& hi) {
    lo = widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    hi = widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)));
  }
  static void load_tail(const uint16_t* p, int64_t r, __m512& lo, __m512& hi) {
    lo = widen(_mm256_maskz_loadu_epi16(tail_mask(r), p));
    hi = widen(_mm256_maskz_loadu_epi16(tail_mask(r - 16), p + 16));
  }
  static __m512 load16(const uint16_t* p, __mmask16 m) {
    return widen(_mm256_maskz_loadu_epi16(m, p));
  }
  static __m512 load16(const uint16_t* p) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
};

// Bytes ahead of the current position that the row kernel prefetches. The weight is one
// sequential stream (rows are contiguous and read one after another), but a stream that starts
// cold every few KiB (each matrix, each expert) leaves the hardware prefetcher little time to
// ramp up; 4 KiB ahead (2 and 8 KiB did no better in the model's decode; docs/benchmarks.md).
// The hint is non-temporal: a weight is read once per token, and NTA prefetches gave 5–8 points
// of bandwidth more than T0 ones in A/B runs of the model's decode.
constexpr int64_t kPrefetchBytes = 4096;

// The first kPrefetchBytes of the stream [b, e), which the in-loop prefetches never cover.
inline void prefetch_start(const void* b, const void* e) {
  const char* p = static_cast<const char*>(b);
  const char* end = std::min(static_cast<const char*>(e), p + kPrefetchBytes);
  for (; p < end; p += 64) _mm_prefetch(p, _MM_HINT_NTA);
}

// y[m, n] (+)= Σ_k x[m, k]·w[n, k] for MR ≤ 2 activation rows and weight rows [n0, n1). Each weight
// row is read once, front to back, so the whole range is a single sequential stream; four
// independent accumulators per activation row cover the FMA latency.
template <class D, int MR>
void rows_mr(float* y, int64_t ldy, const float* x, int64_t ldx, const typename D::T* w, int64_t K,
             int64_t n0, int64_t n1, bool acc) {
  constexpr int64_t kLine = 64 / int64_t(sizeof(typename D::T));  // elements per cache line
  for (int64_t n = n0; n < n1; ++n) {
    const typename D::T* wr = w + n * K;
    const char* pf = reinterpret_cast<const char*>(wr) + kPrefetchBytes;
    __m512 a[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) a[m][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      for (int64_t l = 0; l < 64; l += kLine)
        _mm_prefetch(pf + (k + l) * int64_t(sizeof(typename D::T)), _MM_HINT_NTA);
      __m512 v[4];
      D::load(wr + k, v[0], v[1]);
      D::load(wr + k + 32, v[2], v[3]);
      for (int m = 0; m < MR; ++m)
        for (int j = 0; j < 4; ++j)
          a[m][j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * ldx + k + 16 * j), v[j], a[m][j]);
    }
    for (; k < K; k += 32) {
      // Lanes past K load zeros in both x and w, so they add exact zeros.
      const int64_t r = K - k;
      __m512 lo, hi;
      D::load_tail(wr + k, r, lo, hi);
      for (int m = 0; m < MR; ++m) {
        a[m][0] =
            _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail_mask(r), x + m * ldx + k), lo, a[m][0]);
        a[m][1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail_mask(r - 16), x + m * ldx + k + 16),
                                  hi, a[m][1]);
      }
    }
    for (int m = 0; m < MR; ++m) {
      const float s = _mm512_reduce_add_ps(
          _mm512_add_ps(_mm512_add_ps(a[m][0], a[m][1]), _mm512_add_ps(a[m][2], a[m][3])));
      float& out = y[m * ldy + n];
      out = acc ? out + s : s;
    }
  }
}

// Rows [n0, n1) of y for all M activation rows, two at a time; x has leading dimension ldx, y ldy.
template <class D>
void rows(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const typename D::T* w,
          int64_t K, int64_t n0, int64_t n1, bool acc) {
  prefetch_start(w + n0 * K, w + n1 * K);
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) rows_mr<D, 2>(y + m * ldy, ldy, x + m * ldx, ldx, w, K, n0, n1, acc);
  if (m < M) rows_mr<D, 1>(y + m * ldy, ldy, x + m * ldx, ldx, w, K, n0, n1, acc);
}

// y[c] = Σ_{r<n} x[r]·w[r, c] for all C columns: a product with Wᵀ over n consecutive rows.
// Columns go in blocks of kV vectors whose accumulators stay in registers while the rows stream
// by. Full blocks use plain loads: masked loads measured 2.7× slower on cold weights here. Rows
// are prefetched kPrefetchBytes ahead as in rows_mr (MLA's W_UK slices are 32 KiB streams, too
// short for the hardware prefetcher to ramp up; +1–2% decode tokens/s in paired A/B rounds).
template <class D, int kV, bool kMasked>
void rows_t_block(float* y, const float* x, const typename D::T* w, int64_t n, int64_t C,
                  int64_t c0) {
  __mmask16 mk[kV];
  __m512 a[kV];
  for (int j = 0; j < kV; ++j) {
    mk[j] = kMasked ? tail_mask(C - c0 - 16 * j) : __mmask16(0xffff);
    a[j] = _mm512_setzero_ps();
  }
  constexpr int kPerLine = 64 / (16 * int(sizeof(typename D::T)));  // vectors per cache line
  for (int64_t r = 0; r < n; ++r) {
    const __m512 xr = _mm512_set1_ps(x[r]);
    const typename D::T* wr = w + r * C + c0;
    const char* pf = reinterpret_cast<const char*>(wr) + kPrefetchBytes;
    for (int j = 0; j < kV; j += kPerLine)
      _mm_prefetch(pf + 16 * j * int64_t(sizeof(typename D::T)), _MM_HINT_NTA);
    for (int j = 0; j < kV; ++j) {
      const __m512 v = kMasked ? D::load16(wr + 16 * j, mk[j]) : D::load16(wr + 16 * j);
      a[j] = _mm512_fmadd_ps(xr, v, a[j]);
    }
  }
  for (int j = 0; j < kV; ++j) _mm512_mask_storeu_ps(y + c0 + 16 * j, mk[j], a[j]);
}

template <class D>
void rows_t(float* y, const float* x, const typename D::T* w, int64_t n, int64_t C) {
  constexpr int kV = 16;  // vectors of 16 columns per block (16 accumulators + a broadcast)
  prefetch_start(w, w + n * C);
  int64_t c0 = 0;
  for (; c0 + 16 * kV <= C; c0 += 16 * kV) rows_t_block<D, kV, false>(y, x, w, n, C, c0);
  for (; c0 < C; c0 += 16 * kV) rows_t_block<D, kV, true>(y, x, w, n, C, c0);
}

// rows_t for M activation rows at once (x [M, n] with stride ldx, y [M, C] with stride ldy): a
// tile of MR rows × kV vectors of columns shares each weight vector, which rows_t would load once
// per row. Every output sums the same products in the same order as rows_t (from zero, r
// ascending, one FMA each), so the results are rows_t's.
template <class D, int MR, bool kMasked>
void rows_t_tile(float* y, int64_t ldy, const float* x, int64_t ldx, const typename D::T* w,
                 int64_t n, int64_t C, int64_t c0) {
  constexpr int kV = 4;
  __mmask16 mk[kV];
  __m512 a[MR][kV];
  for (int j = 0; j < kV; ++j) {
    mk[j] = kMasked ? tail_mask(C - c0 - 16 * j) : __mmask16(0xffff);
    for (int m = 0; m < MR; ++m) a[m][j] = _mm512_setzero_ps();
  }
  for (int64_t r = 0; r < n; ++r) {
    const typename D::T* wr = w + r * C + c0;
    __m512 v[kV];
    for (int j = 0; j < kV; ++j)
      v[j] = kMasked ? D::load16(wr + 16 * j, mk[j]) : D::load16(wr + 16 * j);
    for (int m = 0; m < MR; ++m) {
      const __m512 xr = _mm512_set1_ps(x[m * ldx + r]);
      for (int j = 0; j < kV; ++j) a[m][j] = _mm512_fmadd_ps(xr, v[j], a[m][j]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < kV; ++j) _mm512_mask_storeu_ps(y + m * ldy + c0 + 16 * j, mk[j], a[m][j]);
}

template <class D>
void rows_t_m(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const typename D::T* w,
              int64_t n, int64_t C) {
  using Fn = void (*)(float*, int64_t, const float*, int64_t, const typename D::T*, int64_t,
                      int64_t, int64_t);
  static constexpr Fn kFull[6] = {rows_t_tile<D, 1, false>, rows_t_tile<D, 2, false>,
                                  rows_t_tile<D, 3, false>, rows_t_tile<D, 4, false>,
                                  rows_t_tile<D, 5, false>, rows_t_tile<D, 6, false>};
  static constexpr Fn kTail[6] = {rows_t_tile<D, 1, true>, rows_t_tile<D, 2, true>,
                                  rows_t_tile<D, 3, true>, rows_t_tile<D, 4, true>,
                                  rows_t_tile<D, 5, true>, rows_t_tile<D, 6, true>};
  prefetch_start(w, w + n * C);
  for (int64_t c0 = 0; c0 < C; c0 += 64)
    for (int64_t m = 0; m < M; m += 6) {
      const int64_t mr = std::min<int64_t>(6, M - m);
      (c0 + 64 <= C ? kFull : kTail)[mr - 1](y + m * ldy, ldy, x + m * ldx, ldx, w, n, C, c0);
    }
}

}  // namespace

void gemv_rows(float* y, const float* x, const WeightView& w, int64_t n0, int64_t n1) {
  DSV3_ASSERT(0 <= n0 && n0 <= n1 && n1 <= w.rows, "gemv_rows: rows [{}, {}) of {}", n0, n1,
              w.rows);
  const int64_t K = w.cols;
  switch (w.dtype) {
    case DType::F32:
      rows<DecF32>(y, 0, x, K, 1, static_cast<const float*>(w.data) + n0 * K, K, 0, n1 - n0, false);
      break;
    case DType::BF16:
      rows<DecBF16>(y, 0, x, K, 1, static_cast<const uint16_t*>(w.data) + n0 * K, K, 0, n1 - n0,
                    false);
      break;
    case DType::F8_E4M3:
      gemv_fp8_rows(y, x, w, n0, n1);
      break;
    default:
      DSV3_ASSERT(false, "gemv_rows: unsupported weight dtype {}", dtype_name(w.dtype));
  }
}

void gemv_rows_m(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const WeightView& w,
                 int64_t n0, int64_t n1, bool accumulate) {
  DSV3_ASSERT(0 <= n0 && n0 <= n1 && n1 <= w.rows, "gemv_rows_m: rows [{}, {}) of {}", n0, n1,
              w.rows);
  const int64_t K = w.cols;
  switch (w.dtype) {
    case DType::F32:
      rows<DecF32>(y, ldy, x, ldx, M, static_cast<const float*>(w.data), K, n0, n1, accumulate);
      break;
    case DType::BF16:
      rows<DecBF16>(y, ldy, x, ldx, M, static_cast<const uint16_t*>(w.data), K, n0, n1, accumulate);
      break;
    default:
      DSV3_ASSERT(false, "gemv_rows_m: unsupported weight dtype {}", dtype_name(w.dtype));
  }
}

void gemv_t_rows(float* y, const float* x, const WeightView& w, int64_t r0, int64_t n) {
  DSV3_ASSERT(0 <= r0 && 0 <= n && r0 + n <= w.rows, "gemv_t_rows: rows [{}, {}) of {}", r0, r0 + n,
              w.rows);
  const int64_t C = w.cols;
  switch (w.dtype) {
    case DType::F32:
      rows_t<DecF32>(y, x, static_cast<const float*>(w.data) + r0 * C, n, C);
      break;
    case DType::BF16:
      rows_t<DecBF16>(y, x, static_cast<const uint16_t*>(w.data) + r0 * C, n, C);
      break;
    case DType::F8_E4M3:
      gemv_fp8_t_rows(y, x, w, r0, n);
      break;
    default:
      DSV3_ASSERT(false, "gemv_t_rows: unsupported weight dtype {}", dtype_name(w.dtype));
  }
}

void gemv_t_rows_m(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M,
                   const WeightView& w, int64_t r0, int64_t n) {
  DSV3_ASSERT(0 <= r0 && 0 <= n && r0 + n <= w.rows, "gemv_t_rows_m: rows [{}, {}) of {}", r0,
              r0 + n, w.rows);
  const int64_t C = w.cols;
  switch (w.dtype) {
    case DType::F32:
      rows_t_m<DecF32>(y, ldy, x, ldx, M, static_cast<const float*>(w.data) + r0 * C, n, C);
      break;
    case DType::BF16:
      rows_t_m<DecBF16>(y, ldy, x, ldx, M, static_cast<const uint16_t*>(w.data) + r0 * C, n, C);
      break;
    default:
      for (int64_t m = 0; m < M; ++m) gemv_t_rows(y + m * ldy, x + m * ldx, w, r0, n);
  }
}

void gemv_forward(float* y, const float* x, int64_t M, const WeightView& w, bool accumulate) {
  const int64_t N = w.rows, K = w.cols;
  if (M <= 0 || N <= 0) return;
  // Work splits in 16-row units; a chunk streams at least ~64 KiB of weight so that small
  // weights stay on one thread (a fork/join costs more than reading them).
  const int64_t unit = 16, units = (N + unit - 1) / unit;
  const int64_t unit_bytes = std::max<int64_t>(1, unit * K * int64_t(dtype_size(w.dtype)));
  const int64_t min_units = std::max<int64_t>(1, (64 * 1024) / unit_bytes);
  parallel_for(
      units,
      [&](int64_t u0, int64_t u1) {
        const int64_t n0 = u0 * unit, n1 = std::min(N, u1 * unit);
        switch (w.dtype) {
          case DType::F32:
            rows<DecF32>(y, N, x, K, M, static_cast<const float*>(w.data), K, n0, n1, accumulate);
            break;
          case DType::BF16:
            rows<DecBF16>(y, N, x, K, M, static_cast<const uint16_t*>(w.data), K, n0, n1,
                          accumulate);
            break;
          default:
            DSV3_ASSERT(false, "gemv: unsupported weight dtype {}", dtype_name(w.dtype));
        }
      },
      min_units);
}

}  // namespace dsv3::cpu
