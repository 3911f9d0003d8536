// The FP8 prefill GEMM; see gemm_fp8.hpp.
//
// vdpbf16ps multiplies pairs: lane l of an accumulator gains a[2l]·b[2l] + a[2l+1]·b[2l+1]. The
// kernel holds 6 activation rows × 64 weight rows in 24 accumulators; per pair of columns it
// loads 4 vectors of the converted weight (64 rows, one BF16 pair each: the "VNNI" layout) and
// broadcasts one 32-bit pair of each activation row (x as rounded, row-major: a pair is
// adjacent), 24 vdpbf16ps against 10 loads.
//
// Conversion, per 16 rows × 32 columns: each row's 32 codes become BF16 by integer shifts (as
// in gemv_fp8_bf16: a code sign-extended to 16 bits, shifted left by 4 and ANDed with 0x87f0 is
// the BF16 of its value·2⁻¹²⁰; three operations per 32 codes, where the FP16 route with the
// scale folded in took nine), then a 16×16 transpose of 32-bit elements turns 16 rows of 16
// pairs into 16 pairs of 16 rows. The 2¹²⁰ comes back through x (rounded to BF16 as x·2^e, e =
// 120 unless x is large) and the block scales through the FP32 sums: y += (Σ x·2^e·code·2⁻¹²⁰)
// ·2^(120−e)·scale_inv. Measured against the folded-scale version on one thread: 5% faster at
// M = 48 (an expert's share of a 512-token prompt), equal at M = 512.
//
// The scales: the sums of a 128-column block used to go to y at the block's end (24 loads, FMAs
// and stores per 64 pairs); now they stay in the accumulators, multiplied by s[b] / s[b+1] at
// each block boundary, and reach y once per kKc columns (block_rows says when that is safe).
// dev/gemm_fp8_variants.cpp, one thread, medians of 9 interleaved runs (2026-12-07): +11-12% at
// M = 48 (512 × 1024, 1024 × 512), +3-5% at M = 512; with the y tile prefetched at the kernel's
// start as well, +9% at M = 512 on 2816 × 1024 (its 5.8 MB y misses the caches). A variant that
// keeps the codes as bytes in the buffer (transposed as 16-bit pairs, half the stores) and
// widens them in the kernel was +2-4% at M = 48 and 4% slower at M = 512: not taken.
//
// Blocking: a thread takes a 128-row block of the weight (one scale row) and, column block by
// column block, converts 128 × kKc into its 128 KiB buffer (L2) and runs all its activation rows
// over it, one 64-row panel at a time, adding into y.
#include "backend/cpu/gemm_fp8.hpp"

// GCC 12 flags the _mm*_undefined_* inside its own AVX-512 intrinsic headers (see gemv_fp8.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/fp8_simd.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/scratch.hpp"

namespace dsv3::cpu {
namespace {

constexpr int kMR = 6;          // activation rows per kernel call
constexpr int64_t kNR = 64;     // weight rows per panel (4 vectors of 16 lanes)
constexpr int64_t kRows = 128;  // weight rows per block: one row of scale blocks
constexpr int64_t kKc = 512;    // columns per converted block (a multiple of 128)

// In place: r[j] lane i = old r[i] lane j (32-bit elements).
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + c], 128-bit lane L: column 4L + c of rows 4i..4i+3.
  __m512i u[16];
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44);
    const __m512i v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xee);
    const __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
    const __m512i w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xee);
    r[c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(v0, w0, 0xdd);
    r[8 + c] = _mm512_shuffle_i32x4(v1, w1, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(v1, w1, 0xdd);
  }
}

// Converts weight rows [0, nt) (nt ≤ kRows; rows past nt are zero) × columns [k0, k0 + kc) of
// one 128-row block (codes `w` at its first row, row stride K) into buf as BF16 values·2⁻¹²⁰
// (see the file comment; NaN codes patched to NaN when kNan): panel j (rows 64j..64j+63) holds,
// for each pair p < kc/2, 64 lanes of (w[r, k0+2p], w[r, k0+2p+1]) at buf[(j·kc/2 + p)·128 ...].
// Columns past K are zero.
//
// Each 16-row group fetches the next group's codes while it converts (`next`: the next block's
// first group after the last), in memory order, spread over its steps. The hardware prefetchers
// do not see 16 streams of 8 lines; without this a weight read from memory (prefill: each
// expert once per layer) converted at ~6 GB/s. dev/gemm_fp8_variants.cpp, one thread, weights
// cold in 2 MiB pages (2026-12-07): 224 → 307 GFLOP/s at M = 48 on 512 × 1024 (the warm
// speed), 126 → 168 at M = 16.
struct Lines {  // rows × bytes of codes at w, row stride K
  const uint8_t* w = nullptr;
  int64_t rows = 0, bytes = 0;
};

//
// kScaled (gemm_fp8_pack_bf16): the values are code·scale rounded to BF16 (s: this block's row
// of scales), through FP16 and FP32 (fp8_simd.hpp: exact for subnormal codes), and only the
// panels holding rows below rows_out (nt rounded up to a panel) are written.
template <bool kNan, bool kScaled = false>
void convert_block(uint16_t* buf, const uint8_t* w, int64_t K, int64_t nt, int64_t k0, int64_t kc,
                   const Lines& next, const float* s = nullptr, int64_t rows_out = kRows) {
  const int64_t pc = kc / 2;
  for (int64_t r0 = 0; r0 < rows_out; r0 += 16) {
    uint16_t* pan = buf + (r0 / kNR) * pc * 128 + (r0 % kNR) * 2;
    const bool in = r0 + 16 < nt;  // the next group: this block's, else next's first
    const uint8_t* gw = in ? w + (r0 + 16) * K + k0 : next.w;
    const int64_t grows = std::min<int64_t>(16, in ? nt - r0 - 16 : next.rows);
    const int64_t glines = ((in ? std::min(kc, K - k0) : next.bytes) + 63) / 64;
    const int64_t gtotal = gw ? grows * glines : 0, per = (gtotal + kc / 32 - 1) / (kc / 32);
    for (int64_t c = 0, f = 0; c < kc; c += 32) {
      for (const int64_t fe = std::min(gtotal, f + per); f < fe; ++f)
        _mm_prefetch(reinterpret_cast<const char*>(gw + (f / glines) * K + (f % glines) * 64),
                     _MM_HINT_T0);
      const int64_t k = k0 + c;
      const __mmask32 km = K - k >= 32 ? ~__mmask32(0) : __mmask32((1u << (K - k)) - 1);
      // kScaled: widen32's values are 2⁻⁸ of the codes'; sf = 2⁸·scale, or two steps where that
      // overflows.
      const float sk = kScaled ? s[k / 128] : 0.0f, sf = sk * 256.0f;
      const bool two = kScaled && std::isinf(sf) && !std::isinf(sk);
      __m512i t[16];
      for (int i = 0; i < 16; ++i) {
        if (kScaled && r0 + i < nt) {
          __m512 lo, hi;
          fp8_simd::widen32<kNan>(_mm256_maskz_loadu_epi8(km, w + (r0 + i) * K + k), lo, hi);
          if (two) {
            lo = _mm512_mul_ps(_mm512_mul_ps(lo, _mm512_set1_ps(256.0f)), _mm512_set1_ps(sk));
            hi = _mm512_mul_ps(_mm512_mul_ps(hi, _mm512_set1_ps(256.0f)), _mm512_set1_ps(sk));
          } else {
            lo = _mm512_mul_ps(lo, _mm512_set1_ps(sf));
            hi = _mm512_mul_ps(hi, _mm512_set1_ps(sf));
          }
          t[i] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        } else if (r0 + i < nt) {
          __m512i v = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(km, w + (r0 + i) * K + k));
          v = _mm512_and_si512(_mm512_slli_epi16(v, 4), _mm512_set1_epi16(short(0x87f0)));
          if constexpr (kNan) {
            const __mmask32 nan = _mm512_cmpeq_epi16_mask(
                _mm512_and_si512(v, _mm512_set1_epi16(0x7fff)), _mm512_set1_epi16(0x07f0));
            v = _mm512_mask_mov_epi16(v, nan, _mm512_set1_epi16(0x7fc0));
          }
          t[i] = v;
        } else {
          t[i] = _mm512_setzero_si512();
        }
      }
      transpose16(t);
      for (int q = 0; q < 16; ++q) _mm512_storeu_si512(pan + (c / 2 + q) * 128, t[q]);
    }
  }
}

// y[m·ldy + n] (+)= Σ_b s[b] · post · Σ_{p in b} xb[m, 2p..2p+1] · panel[p, n] for MR rows,
// n < nv (≤ 64) lanes of one panel of pc pairs, b the 64-pair (128-column) scale blocks; xp
// points at the rows' first column (stride ldx). The sums are FP32. With r (r[b] = s[b] / s[b+1],
// see block_rows), the sums stay in the accumulators across blocks, multiplied by r[b] at each
// boundary, and s[last]·post is applied once as they are added into y; without r, the sums of
// each block are added into y with s[b]·post (into y = when !acc and b = 0).
inline __m512bh bcast_pair(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return (__m512bh)_mm512_set1_epi32(v);
}

template <int MR>
void kernel(float* y, int64_t ldy, const uint16_t* xp, int64_t ldx, const uint16_t* panel,
            int64_t pc, int64_t nv, bool acc, const float* s, const float* r, float post) {
  __mmask16 mk[4];
  for (int j = 0; j < 4; ++j) {
    const int64_t left = nv - 16 * j;
    mk[j] = left >= 16 ? __mmask16(0xffff) : left <= 0 ? 0 : __mmask16((1u << left) - 1);
  }
  const __m512 vpost = _mm512_set1_ps(post);
  // The y tile is read or written only after the pc pairs: fetch it now (a y of many MB misses
  // the caches; +9% at M = 512 on 2816 × 1024, one thread, 2026-12-07).
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j)
      if (mk[j]) _mm_prefetch(reinterpret_cast<const char*>(y + m * ldy + 16 * j), _MM_HINT_T0);
  const uint16_t* b = panel;
  __m512 a[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) a[m][j] = _mm512_setzero_ps();
  for (int64_t p0 = 0; p0 < pc; p0 += 64) {
    const int64_t pe = std::min<int64_t>(pc, p0 + 64);
#pragma GCC unroll 4  // +2-5% on one thread (2026-12-07)
    for (int64_t p = p0; p < pe; ++p, b += 128) {
      __m512bh bv[4];
      for (int j = 0; j < 4; ++j) bv[j] = (__m512bh)_mm512_loadu_si512(b + 32 * j);
      for (int m = 0; m < MR; ++m) {
        const __m512bh xv = bcast_pair(xp + m * ldx + 2 * p);
        for (int j = 0; j < 4; ++j) a[m][j] = _mm512_dpbf16_ps(a[m][j], xv, bv[j]);
      }
    }
    if (r && pe < pc) {  // carry the sums into the next block's scale
      const __m512 vr = _mm512_set1_ps(r[p0 / 64]);
      for (int m = 0; m < MR; ++m)
        for (int j = 0; j < 4; ++j) a[m][j] = _mm512_mul_ps(a[m][j], vr);
      continue;
    }
    const __m512 vs = _mm512_set1_ps(s[p0 / 64]);
    const bool add = acc || (p0 > 0 && !r);
    for (int j = 0; j < 4; ++j) {
      if (!mk[j]) break;
      for (int m = 0; m < MR; ++m) {
        float* d = y + m * ldy + 16 * j;
        const __m512 v = _mm512_mul_ps(a[m][j], vpost);
        _mm512_mask_storeu_ps(
            d, mk[j],
            add ? _mm512_fmadd_ps(v, vs, _mm512_maskz_loadu_ps(mk[j], d)) : _mm512_mul_ps(v, vs));
      }
    }
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) a[m][j] = _mm512_setzero_ps();
  }
}

void kernel_any(int mr, float* y, int64_t ldy, const uint16_t* xp, int64_t ldx,
                const uint16_t* panel, int64_t pc, int64_t nv, bool acc, const float* s,
                const float* r, float post) {
  static constexpr decltype(&kernel<1>) kernels[] = {kernel<1>, kernel<2>, kernel<3>,
                                                     kernel<4>, kernel<5>, kernel<6>};
  static_assert(std::size(kernels) == kMR);
  kernels[std::min(mr, kMR) - 1](y, ldy, xp, ldx, panel, pc, nv, acc, s, r, post);
}

// Rows [m0, m1) of x against weight rows [n0, n0 + nt) (one 128-row block).
void block_rows(float* y, int64_t ldy, const uint16_t* xb, int64_t ldx, int64_t m0, int64_t m1,
                const WeightView& w, int64_t n0, bool has_nan, bool accumulate, uint16_t* buf,
                float post) {
  const int64_t K = w.cols, nt = std::min(kRows, w.rows - n0), sc = (K + 127) / 128;
  const auto* codes = static_cast<const uint8_t*>(w.data) + n0 * K;
  const float* s = w.scale_inv + (n0 / 128) * sc;
  // The ratios of consecutive scales of this row of blocks, when every scale is finite and
  // nonzero and the largest is at most 2³² times the smallest: the running sums then stay far
  // inside FP32's range (terms below 2¹⁵, see gemm_fp8_bf16, so |sums| < 2⁴⁷·K), at the cost of
  // one rounding per boundary (≤ 3 per kKc columns). Otherwise each block's sums go to y alone.
  thread_local std::vector<float> ratio;
  ratio.resize(size_t(sc));
  float lo = std::numeric_limits<float>::infinity(), hi = 0.0f;
  bool carry = true;
  for (int64_t b = 0; b < sc; ++b) {
    const float a = std::fabs(s[b]);
    carry = carry && std::isfinite(a) && a > 0.0f;
    lo = std::min(lo, a);
    hi = std::max(hi, a);
    if (b + 1 < sc) ratio[size_t(b)] = s[b] / s[b + 1];
  }
  carry = carry && hi <= std::ldexp(lo, 32);
  for (int64_t k0 = 0; k0 < ldx; k0 += kKc) {
    const int64_t kc = std::min(kKc, ldx - k0), pc = kc / 2;
    Lines next;  // the block after this one: the next columns, else the next 128 rows
    if (k0 + kKc < K)
      next = {codes + k0 + kKc, nt, std::min(kKc, K - k0 - kKc)};
    else if (n0 + kRows < w.rows)
      next = {codes + kRows * K, std::min(kRows, w.rows - n0 - kRows), std::min(kKc, K)};
    if (has_nan)
      convert_block<true>(buf, codes, K, nt, k0, kc, next);
    else
      convert_block<false>(buf, codes, K, nt, k0, kc, next);
    const bool acc = accumulate || k0 > 0;
    for (int64_t j = 0; j * kNR < nt; ++j)
      for (int64_t m = m0; m < m1; m += kMR) {
        const int mr = int(std::min<int64_t>(kMR, m1 - m));
        kernel_any(mr, y + m * ldy + n0 + j * kNR, ldy, xb + m * ldx + k0, ldx, buf + j * pc * 128,
                   pc, std::min(kNR, nt - j * kNR), acc, s + k0 / 128,
                   carry ? ratio.data() + k0 / 128 : nullptr, post);
      }
  }
}

// The largest |x[i]| over the finite values (an Inf or NaN must not scale the rest).
float finite_absmax(const float* x, int64_t n) {
  const __m512 big = _mm512_set1_ps(std::numeric_limits<float>::max());
  __m512 mx = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 in = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(in, x + i));
    mx = _mm512_mask_max_ps(mx, _mm512_cmp_ps_mask(a, big, _CMP_LE_OQ), mx, a);
  }
  return _mm512_reduce_max_ps(mx);
}

}  // namespace

void gemm_fp8_pack_bf16(uint16_t* dst, const WeightView& w, bool has_nan) {
  const int64_t N = w.rows, K = w.cols, kp = fp8_pack_cols(K), sc = (K + 127) / 128;
  if (N <= 0 || K <= 0) return;
  DSV3_ASSERT(w.dtype == DType::F8_E4M3 && w.scale_inv, "gemm_fp8_pack_bf16: not an FP8 weight");
  const auto* codes = static_cast<const uint8_t*>(w.data);
  parallel_for((N + kRows - 1) / kRows, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kRows, nt = std::min(kRows, N - n0);
      Lines next;  // the next block's first rows
      if (n0 + kRows < N)
        next = {codes + (n0 + kRows) * K, std::min<int64_t>(16, N - n0 - kRows), K};
      uint16_t* d = dst + n0 * kp;
      const int64_t rows_out = (nt + kNR - 1) / kNR * kNR;
      const float* s = w.scale_inv + b * sc;
      if (has_nan)
        convert_block<true, true>(d, codes + n0 * K, K, nt, 0, kp, next, s, rows_out);
      else
        convert_block<false, true>(d, codes + n0 * K, K, nt, 0, kp, next, s, rows_out);
    }
  });
}

void gemm_fp8_bf16(float* y, int64_t ldy, const float* x, int64_t M, const WeightView& w,
                   bool has_nan, bool accumulate) {
  const int64_t N = w.rows, K = w.cols;
  if (M <= 0 || N <= 0) return;
  DSV3_ASSERT(w.dtype == DType::F8_E4M3 && w.scale_inv, "gemm_fp8_bf16: not an FP8 weight");
  DSV3_ASSERT(ldy >= N, "gemm_fp8_bf16: ldy {} < {} rows", ldy, N);
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill(y + m * ldy, y + m * ldy + N, 0.0f);
    return;
  }
  // x·2^e rounded to BF16 in rows of ldx (a multiple of 32) zero past K. The weights are BF16
  // values 2⁻¹²⁰ too small; e ≤ 120 keeps every x·2^e below 2¹²⁶ (BF16's range), and the sums
  // are multiplied back by 2^(120−e) (1 unless |x| reaches 2⁶).
  const float xmax = finite_absmax(x, M * K);
  int ex = 0;
  if (std::isfinite(xmax)) std::frexp(xmax, &ex);  // xmax < 2^ex
  const int e = std::clamp(126 - ex, -2, 120);
  const float post = std::ldexp(1.0f, 120 - e);
  const __m512 p2 = _mm512_set1_ps(std::ldexp(1.0f, e));
  const int64_t ldx = (K + 31) / 32 * 32;
  thread_local std::vector<uint16_t> xb;
  if (xb.size() < size_t(M * ldx)) xb.resize(size_t(M * ldx));
  uint16_t* xbp = xb.data();
  parallel_for(
      M,
      [&](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; ++m)
          for (int64_t k = 0; k < ldx; k += 32) {
            const int64_t left = K - k;
            const __mmask16 lo = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
            const __mmask16 hi = left >= 32   ? __mmask16(0xffff)
                                 : left <= 16 ? __mmask16(0)
                                              : __mmask16((1u << (left - 16)) - 1);
            const __m512 a = _mm512_mul_ps(_mm512_maskz_loadu_ps(lo, x + m * K + k), p2);
            const __m512 b = _mm512_mul_ps(_mm512_maskz_loadu_ps(hi, x + m * K + k + 16), p2);
            _mm512_storeu_si512(xbp + m * ldx + k, (__m512i)_mm512_cvtne2ps_pbh(b, a));
          }
      },
      std::max<int64_t>(1, 16384 / ldx));
  // Work items: 128-row blocks × row ranges of x (more than one only when the blocks are fewer
  // than the threads; each range converts the block again).
  const int64_t nb = (N + kRows - 1) / kRows, threads = region_threads();
  const int64_t mparts =
      std::clamp<int64_t>((threads + nb - 1) / nb, 1, std::max<int64_t>(1, M / (4 * kMR)));
  const int64_t mstep = (M + mparts - 1) / mparts;
  parallel_for(nb * mparts, [&](int64_t i0, int64_t i1) {
    // One converted block: kRows × kKc BF16, at a 64-byte boundary (malloc's 16 split every
    // vector load of the kernel over two cache lines).
    thread_local std::vector<uint16_t> buf;
    uint16_t* bp = grow_aligned64(buf, size_t(kRows * kKc));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t rb = i / mparts, part = i % mparts;
      const int64_t m0 = part * mstep, m1 = std::min(M, m0 + mstep);
      if (m0 < m1)
        block_rows(y, ldy, xbp, ldx, m0, m1, w, rb * kRows, has_nan, accumulate, bp, post);
    }
  });
}

}  // namespace dsv3::cpu
