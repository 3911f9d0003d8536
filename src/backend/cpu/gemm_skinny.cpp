// AVX-512 BF16 skinny GEMM (see gemm_skinny.hpp).
//
// A register tile is MR ≤ 4 activation rows × NR weight rows: MR·NR FP32 accumulators of 16 lanes,
// each the running sum of one output's products over its 32-element K chunks (vdpbf16ps adds two
// products per lane). Per chunk the tile loads NR weight vectors (one cache line each, from
// memory) and MR activation vectors (from L1), and issues MR·NR vdpbf16ps. After the last chunk
// the accumulators are reduced four at a time (reduce4) and added to y.
//
// For M > 4 the rows go in blocks of at most 4 (balanced: 5 = 3 + 2), each block passing over
// the same NR weight rows, which the first block brought into L1/L2; the weight is read from
// memory once per call. Every block prefetches its share of the next tile (the next NR rows, one
// contiguous range), NR lines every `blocks` chunks, so the next tile's reads spread over the
// whole tile's time: with the whole next tile requested by the first block (at M = 16 a quarter
// of the time), a cold 1408×1024 weight at M = 16 took 255–284 µs on one thread, 185–214 µs
// spread (169 µs with the weight in cache).
#include "backend/cpu/gemm_skinny.hpp"

// GCC 12 flags the _mm*_undefined_* inside its own AVX-512 intrinsic headers (see gemv.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"

namespace dsv3::cpu {
namespace {

// Bytes of a range's first tile prefetched before its first chunk (as gemv.cpp's start).
constexpr int64_t kStartPrefetchBytes = 4096;

inline __m512bh as_bh(__m512i v) {
  return reinterpret_cast<__m512bh&>(v);
}

// [Σ a, Σ b, Σ c, Σ d] of four 16-lane accumulators: 128-bit halves, then quarters, then the
// four lanes of each quarter, then the four results packed into the low lanes.
inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab =
      _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  const __m512 cd =
      _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
  __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));
  return _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, t));
}

// One register tile: y[m·ldy + r] (+)= Σ_k xb[m·ldx + k] · w[r·K + k] for m < MR, r < NR.
// pf: bytes of the next tile to prefetch (pf_lines cache lines), NR lines every pf_every chunks,
// or nullptr.
template <int MR, int NR>
void tile(float* y, int64_t ldy, const uint16_t* xb, int64_t ldx, const uint16_t* w, int64_t K,
          bool acc, const char* pf, int64_t pf_lines, int pf_every) {
  constexpr int kAcc = (MR * NR + 3) / 4 * 4;
  __m512 a[kAcc];
  for (int i = 0; i < kAcc; ++i) a[i] = _mm512_setzero_ps();
  const int64_t Kf = K / 32 * 32;
  int64_t line = 0;
  int wait = 0;
  for (int64_t k = 0; k < Kf; k += 32) {
    if (pf && line < pf_lines && --wait <= 0) {
      for (int r = 0; r < NR; ++r) _mm_prefetch(pf + 64 * (line + r), _MM_HINT_NTA);
      line += NR;
      wait = pf_every;
    }
    __m512bh wv[NR];
    for (int r = 0; r < NR; ++r) wv[r] = as_bh(_mm512_loadu_si512(w + r * K + k));
    for (int m = 0; m < MR; ++m) {
      const __m512bh xv = as_bh(_mm512_loadu_si512(xb + m * ldx + k));
      for (int r = 0; r < NR; ++r) a[m * NR + r] = _mm512_dpbf16_ps(a[m * NR + r], xv, wv[r]);
    }
  }
  if (Kf < K) {  // weight lanes past K load zeros; xb is zero there too
    const __mmask32 mk = __mmask32((uint64_t(1) << (K - Kf)) - 1);
    __m512bh wv[NR];
    for (int r = 0; r < NR; ++r) wv[r] = as_bh(_mm512_maskz_loadu_epi16(mk, w + r * K + Kf));
    for (int m = 0; m < MR; ++m) {
      const __m512bh xv = as_bh(_mm512_loadu_si512(xb + m * ldx + Kf));
      for (int r = 0; r < NR; ++r) a[m * NR + r] = _mm512_dpbf16_ps(a[m * NR + r], xv, wv[r]);
    }
  }
  alignas(16) float s[kAcc];
  for (int i = 0; i < kAcc; i += 4)
    _mm_store_ps(s + i, reduce4(a[i], a[i + 1], a[i + 2], a[i + 3]));
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) {
      float& out = y[m * ldy + r];
      out = acc ? out + s[m * NR + r] : s[m * NR + r];
    }
}

template <int NR>
void tile_mr(int64_t mr, float* y, int64_t ldy, const uint16_t* xb, int64_t ldx, const uint16_t* w,
             int64_t K, bool acc, const char* pf, int64_t pf_lines, int pf_every) {
  switch (mr) {
    case 1:
      tile<1, NR>(y, ldy, xb, ldx, w, K, acc, pf, pf_lines, pf_every);
      break;
    case 2:
      tile<2, NR>(y, ldy, xb, ldx, w, K, acc, pf, pf_lines, pf_every);
      break;
    case 3:
      tile<3, NR>(y, ldy, xb, ldx, w, K, acc, pf, pf_lines, pf_every);
      break;
    default:
      tile<4, NR>(y, ldy, xb, ldx, w, K, acc, pf, pf_lines, pf_every);
      break;
  }
}

// Weight rows [n0, n1) in tiles of NR (the remainder one row at a time), each against all M
// activation rows in blocks of at most 4.
template <int NR>
void rows_nr(float* y, int64_t ldy, const uint16_t* xb, int64_t M, const uint16_t* w, int64_t K,
             int64_t n0, int64_t n1, bool acc) {
  const int64_t ldx = skinny_ldx(K), blocks = (M + 3) / 4;
  const int64_t row_bytes = K * int64_t(sizeof(uint16_t));
  {
    const char* p = reinterpret_cast<const char*>(w + n0 * K);
    const char* e = p + std::min<int64_t>((n1 - n0) * row_bytes, kStartPrefetchBytes);
    for (; p < e; p += 64) _mm_prefetch(p, _MM_HINT_NTA);
  }
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) {
    const uint16_t* wt = w + n * K;
    const char* pf = reinterpret_cast<const char*>(wt + NR * K);
    const int64_t pf_lines = std::min<int64_t>(NR, n1 - n - NR) * row_bytes / 64;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t m0 = M * b / blocks, m1 = M * (b + 1) / blocks;
      // Row block b prefetches its share of the next tile's lines (whole groups of NR; the last
      // block the rest), NR lines every `blocks` chunks.
      const int64_t l0 = pf_lines * b / blocks / NR * NR;
      const int64_t l1 = b + 1 == blocks ? pf_lines : pf_lines * (b + 1) / blocks / NR * NR;
      tile_mr<NR>(m1 - m0, y + m0 * ldy + n, ldy, xb + m0 * ldx, ldx, wt, K, acc, pf + 64 * l0,
                  l1 - l0, int(blocks));
    }
  }
  for (; n < n1; ++n)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t m0 = M * b / blocks, m1 = M * (b + 1) / blocks;
      tile_mr<1>(m1 - m0, y + m0 * ldy + n, ldy, xb + m0 * ldx, ldx, w + n * K, K, acc, nullptr, 0,
                 1);
    }
}

// Weight rows per register tile: 8 for one or two activation rows (16 accumulators at most),
// 6 for blocks of 3 or 4 (24 accumulators, 6 weight vectors and one activation vector: 31 of the
// 32 vector registers).
int64_t tile_rows(int64_t M) {
  return M <= 2 ? 8 : 6;
}

}  // namespace

void skinny_round_x(uint16_t* xb, const float* x, int64_t M, int64_t K) {
  const int64_t ldx = skinny_ldx(K);
  for (int64_t m = 0; m < M; ++m) {
    const float* s = x + m * K;
    uint16_t* d = xb + m * ldx;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k),
                          reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(s + k))));
    for (; k < K; ++k) d[k] = f32_to_bf16(s[k]);
    for (; k < ldx; ++k) d[k] = 0;
  }
}

void skinny_rows(float* y, int64_t ldy, const uint16_t* xb, int64_t M, const uint16_t* w, int64_t K,
                 int64_t n0, int64_t n1, bool accumulate) {
  if (M <= 0 || n0 >= n1) return;
  if (tile_rows(M) == 8)
    rows_nr<8>(y, ldy, xb, M, w, K, n0, n1, accumulate);
  else
    rows_nr<6>(y, ldy, xb, M, w, K, n0, n1, accumulate);
}

void gemm_skinny_bf16(float* y, const float* x, int64_t M, const WeightView& w, bool accumulate) {
  DSV3_ASSERT(w.dtype == DType::BF16, "gemm_skinny_bf16: weight dtype {} (BF16 expected)",
              dtype_name(w.dtype));
  const int64_t N = w.rows, K = w.cols;
  if (M <= 0 || N <= 0) return;
  if (K == 0) {
    if (!accumulate) std::fill(y, y + M * N, 0.0f);
    return;
  }
  thread_local std::vector<uint16_t> xbuf;  // [M, skinny_ldx(K)]; grows, then reused
  const int64_t ldx = skinny_ldx(K);
  if (xbuf.size() < size_t(M * ldx)) xbuf.resize(size_t(M * ldx));
  skinny_round_x(xbuf.data(), x, M, K);
  const uint16_t* xb = xbuf.data();
  const auto* wd = static_cast<const uint16_t*>(w.data);
  // Work splits in tiles; a chunk streams at least ~64 KiB of weight so that small weights stay
  // on one thread (a fork/join costs more than reading them).
  const int64_t nr = tile_rows(M), units = (N + nr - 1) / nr;
  const int64_t min_units = std::max<int64_t>(1, (64 * 1024) / (nr * K * 2));
  parallel_for(
      units,
      [&](int64_t u0, int64_t u1) {
        skinny_rows(y, N, xb, M, wd, K, u0 * nr, std::min(N, u1 * nr), accumulate);
      },
      min_units);
}

}  // namespace dsv3::cpu
