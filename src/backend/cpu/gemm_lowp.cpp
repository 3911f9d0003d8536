// Implementation of gemm_lowp.hpp. B is packed once per call into panels of 32 columns, K in
// pairs: panel[kp][j] = the 32-bit pair (B[n0+j, 2kp], B[n0+j, 2kp+1]), so one 64-byte load
// feeds 16 columns of vdpbf16ps (from the pairs layout a panel row is one contiguous copy); A is
// read in place, one pair broadcast per row and step.
// The micro-kernel is MR rows × 32 columns: MR = 8 (16 accumulators) unscaled; MR = 6 scaled
// (12 chunk accumulators + 12 FP32 accumulators). Work is split over (row block, panel group)
// tasks, row-block-major so a thread keeps its rows of A in cache over consecutive panels.
#include "backend/cpu/gemm_lowp.hpp"

#include <immintrin.h>
#include <omp.h>

// GCC 12 flags the _mm*_undefined_* inside masked intrinsics as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/quant_train.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/scratch.hpp"

namespace dsv3::cpu {
namespace {

constexpr int64_t kNR = 32;            // columns per panel
constexpr int64_t kChunkPairs = 64;    // 128 K per promotion
constexpr int64_t kRowBlock = 96;      // rows of a task (a multiple of 6 and of 8)
constexpr int64_t kPanelsPerTask = 4;  // 128 columns

inline __m512 dp(__m512 c, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(c, (__m512bh)a, (__m512bh)b);
}

// Pair (r, kp) of an operand is a[r·rs + kp·ks] (uint32 units): rows layout rs = ld/2, ks = 1;
// pairs layout rs = 1, ks = ld.
struct Pairs {
  const uint32_t* a;
  int64_t rs, ks;
};
Pairs pairs_of(const LowpOperand& o) {
  const auto* p = static_cast<const uint32_t*>(o.data);
  return o.pairs ? Pairs{p, 1, o.ld} : Pairs{p, o.ld / 2, 1};
}

// Packs columns [n0, n0 + 32) of B into panel [kpairs][32] (zeros past N).
void pack_panel(uint32_t* panel, const Pairs& B, int64_t n0, int64_t N, int64_t kpairs) {
  const int64_t n = std::min<int64_t>(kNR, N - n0);
  if (B.rs == 1) {  // pairs layout: each K pair's 32 columns are contiguous
    const __mmask16 k0 = n >= 16 ? 0xffff : __mmask16((1u << n) - 1);
    const __mmask16 k1 = n >= 32 ? 0xffff : n <= 16 ? 0 : __mmask16((1u << (n - 16)) - 1);
    for (int64_t kp = 0; kp < kpairs; ++kp) {
      const uint32_t* src = B.a + kp * B.ks + n0;
      _mm512_store_si512(panel + kp * kNR, _mm512_maskz_loadu_epi32(k0, src));
      _mm512_store_si512(panel + kp * kNR + 16, _mm512_maskz_loadu_epi32(k1, src + 16));
    }
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t* src = B.a + (n0 + j) * B.rs;
    for (int64_t kp = 0; kp < kpairs; ++kp) panel[kp * kNR + j] = src[kp];
  }
  for (int64_t j = n; j < kNR; ++j)
    for (int64_t kp = 0; kp < kpairs; ++kp) panel[kp * kNR + j] = 0;
}

inline void store_c(float* c, __m512 v, __mmask16 k, bool accumulate) {
  if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, c));
  _mm512_mask_storeu_ps(c, k, v);
}

// Unscaled: C[MR, ncols] (+)= A[MR, K]·panelᵀ.
template <int MR>
void kernel_plain(float* C, int64_t ldc, const Pairs& A, const uint32_t* panel, int64_t kpairs,
                  int64_t ncols, bool accumulate) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < kpairs; ++kp) {
    const __m512i b0 = _mm512_load_si512(panel + kp * kNR);
    const __m512i b1 = _mm512_load_si512(panel + kp * kNR + 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512i a = _mm512_set1_epi32(int32_t(A.a[r * A.rs + kp * A.ks]));
      c0[r] = dp(c0[r], a, b0);
      c1[r] = dp(c1[r], a, b1);
    }
  }
  const __mmask16 k0 = ncols >= 16 ? 0xffff : __mmask16((1u << ncols) - 1);
  const __mmask16 k1 = ncols >= 32 ? 0xffff : ncols <= 16 ? 0 : __mmask16((1u << (ncols - 16)) - 1);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    store_c(C + r * ldc, c0[r], k0, accumulate);
    if (k1) store_c(C + r * ldc + 16, c1[r], k1, accumulate);
  }
}

// Scaled: per 128-K chunk c, C += (sa[r, c]·sbp[c, j])·(chunk sum). sa rows stride Kc;
// sbp [Kc][32] the panel's column scales.
template <int MR>
void kernel_scaled(float* C, int64_t ldc, const Pairs& A, const uint32_t* panel, int64_t kpairs,
                   const float* sa, int64_t Kc, const float* sbp, int64_t ncols, bool accumulate) {
  __m512 a0[MR], a1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  for (int64_t ch = 0; ch < Kc; ++ch) {
    __m512 t0[MR], t1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) t0[r] = t1[r] = _mm512_setzero_ps();
    const int64_t k1 = std::min(kpairs, (ch + 1) * kChunkPairs);
    for (int64_t kp = ch * kChunkPairs; kp < k1; ++kp) {
      const __m512i b0 = _mm512_load_si512(panel + kp * kNR);
      const __m512i b1 = _mm512_load_si512(panel + kp * kNR + 16);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512i a = _mm512_set1_epi32(int32_t(A.a[r * A.rs + kp * A.ks]));
        t0[r] = dp(t0[r], a, b0);
        t1[r] = dp(t1[r], a, b1);
      }
    }
    const __m512 s0 = _mm512_loadu_ps(sbp + ch * kNR), s1 = _mm512_loadu_ps(sbp + ch * kNR + 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 s = _mm512_set1_ps(sa[r * Kc + ch]);
      a0[r] = _mm512_fmadd_ps(t0[r], _mm512_mul_ps(s0, s), a0[r]);
      a1[r] = _mm512_fmadd_ps(t1[r], _mm512_mul_ps(s1, s), a1[r]);
    }
  }
  const __mmask16 k0 = ncols >= 16 ? 0xffff : __mmask16((1u << ncols) - 1);
  const __mmask16 k1 = ncols >= 32 ? 0xffff : ncols <= 16 ? 0 : __mmask16((1u << (ncols - 16)) - 1);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    store_c(C + r * ldc, a0[r], k0, accumulate);
    if (k1) store_c(C + r * ldc + 16, a1[r], k1, accumulate);
  }
}

// Runs rows [0, m) of a row block over one panel with micro-kernels of up to MR rows.
void run_rows(float* C, int64_t ldc, const Pairs& A0, const uint32_t* panel, int64_t kpairs,
              const float* sa, int64_t Kc, const float* sbp, int64_t m, int64_t ncols,
              bool accumulate) {
  auto at = [&](int64_t r) { return Pairs{A0.a + r * A0.rs, A0.rs, A0.ks}; };
  if (!sa) {
    int64_t r = 0;
    for (; r + 8 <= m; r += 8)
      kernel_plain<8>(C + r * ldc, ldc, at(r), panel, kpairs, ncols, accumulate);
    switch (m - r) {
#define DSV3_PLAIN(n)                                                           \
  case n:                                                                       \
    kernel_plain<n>(C + r * ldc, ldc, at(r), panel, kpairs, ncols, accumulate); \
    break;
      DSV3_PLAIN(1)
      DSV3_PLAIN(2)
      DSV3_PLAIN(3)
      DSV3_PLAIN(4)
      DSV3_PLAIN(5)
      DSV3_PLAIN(6)
      DSV3_PLAIN(7)
#undef DSV3_PLAIN
      default:
        break;
    }
    return;
  }
  int64_t r = 0;
  for (; r + 6 <= m; r += 6)
    kernel_scaled<6>(C + r * ldc, ldc, at(r), panel, kpairs, sa + r * Kc, Kc, sbp, ncols,
                     accumulate);
  switch (m - r) {
#define DSV3_SCALED(n)                                                                    \
  case n:                                                                                 \
    kernel_scaled<n>(C + r * ldc, ldc, at(r), panel, kpairs, sa + r * Kc, Kc, sbp, ncols, \
                     accumulate);                                                         \
    break;
    DSV3_SCALED(1)
    DSV3_SCALED(2)
    DSV3_SCALED(3)
    DSV3_SCALED(4)
    DSV3_SCALED(5)
#undef DSV3_SCALED
    default:
      break;
  }
}

uint32_t* alloc_panels(LowpPackedB& out, int64_t N, int64_t K, bool scaled) {
  out.n = N;
  out.k = K;
  out.scaled = scaled;
  const int64_t panels = (N + kNR - 1) / kNR, kpairs = lowp_pad_k(K) / 2;
  if (scaled) grow(out.scales, size_t(panels * quant_tiles(K) * kNR));
  return grow_aligned64(out.raw, size_t(panels * kpairs * kNR));  // aligned loads in the kernels
}

// Runs C[M, N] (+)= A·Bᵀ over packed B. Tasks are (row block, panel group), row-block-major;
// with few row blocks the panels are split into groups so that every thread has work.
// a_block(m0, m, &sa) returns the operand of rows [m0, m0 + m) (and its scales [m, Kc] when B is
// scaled); it runs once per task, on the task's thread.
template <typename ABlock>
void run_packed(float* C, int64_t ldc, int64_t M, const LowpPackedB& B, bool accumulate,
                ABlock&& a_block) {
  const int64_t N = B.n, K = B.k;
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill_n(C + m * ldc, N, 0.0f);
    return;
  }
  const int64_t kpairs = lowp_pad_k(K) / 2, Kc = quant_tiles(K);
  const int64_t panels = (N + kNR - 1) / kNR, rblocks = (M + kRowBlock - 1) / kRowBlock;
  // Panel groups only where the row blocks alone leave a thread idle: every group converts its
  // row block of A again (for FP8 a quantization with a division per element).
  const int64_t want = 2 * int64_t(region_threads());
  const int64_t groups = std::clamp<int64_t>((want + rblocks - 1) / rblocks, 1,
                                             (panels + kPanelsPerTask - 1) / kPanelsPerTask);
  const int64_t per = (panels + groups - 1) / groups;
  const uint32_t* pk = B.panels();
  const float* sp = B.scaled ? B.scales.data() : nullptr;
  auto task = [&](int64_t t) {
    const int64_t rb = t / groups, g = t % groups;
    const int64_t m0 = rb * kRowBlock, m = std::min(kRowBlock, M - m0);
    const float* sa = nullptr;
    const Pairs am = a_block(m0, m, &sa);
    for (int64_t p = g * per; p < std::min(panels, (g + 1) * per); ++p)
      run_rows(C + m0 * ldc + p * kNR, ldc, am, pk + p * kpairs * kNR, kpairs, sp ? sa : nullptr,
               Kc, sp ? sp + p * Kc * kNR : nullptr, m, std::min(kNR, N - p * kNR), accumulate);
  };
  // Tasks differ in cost (a last short row block, a last narrow panel) and the two threads'
  // speeds vary: claimed one at a time rather than split in fixed halves.
  const int64_t tasks = rblocks * groups;
  const int nt = region_threads();
  if (nt <= 1 || tasks <= 1) {
    for (int64_t t = 0; t < tasks; ++t) task(t);
    return;
  }

#pragma omp parallel for num_threads(int(std::min <int64_t>(nt, tasks))) schedule(dynamic, 1)
  for (int64_t t = 0; t < tasks; ++t) task(t);
}

}  // namespace

const uint32_t* LowpPackedB::panels() const {
  return align64(raw.data());
}

void lowp_pack_b(LowpPackedB& out, const LowpOperand& B, const float* sb, int64_t N, int64_t K) {
  const int64_t kpairs = lowp_pad_k(K) / 2, Kc = quant_tiles(K);
  const int64_t panels = (N + kNR - 1) / kNR;
  uint32_t* pk = alloc_panels(out, N, K, sb != nullptr);
  float* sp = sb ? out.scales.data() : nullptr;
  const Pairs pb = pairs_of(B);
  parallel_for(panels, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      pack_panel(pk + p * kpairs * kNR, pb, p * kNR, N, kpairs);
      if (!sp) continue;
      float* s = sp + p * Kc * kNR;
      for (int64_t j = 0; j < kNR; ++j) {
        const int64_t n = p * kNR + j;
        for (int64_t c = 0; c < Kc; ++c) s[c * kNR + j] = n < N ? sb[n * Kc + c] : 0.0f;
      }
    }
  });
}

void lowp_pack_b_f32(LowpPackedB& out, const float* b, int64_t ldb, int64_t N, int64_t K,
                     bool fp8) {
  const int64_t kpairs = lowp_pad_k(K) / 2, Kc = quant_tiles(K);
  const int64_t panels = (N + kNR - 1) / kNR;
  uint32_t* pk = alloc_panels(out, N, K, fp8);
  float* sp = fp8 ? out.scales.data() : nullptr;
  parallel_for(panels, [&](int64_t p0, int64_t p1) {
    thread_local std::vector<float> st;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kNR, n = std::min(kNR, N - n0);
      uint32_t* panel = pk + p * kpairs * kNR;
      if (n < kNR) std::memset(panel, 0, size_t(kpairs * kNR) * 4);
      // The panel is the pairs layout of columns [n0, n0 + n) with leading dimension 32.
      if (!fp8) {
        bf16_pairs(panel, kNR, b + n0, ldb, K, n);
        continue;
      }
      float* s = grow(st, size_t(n * Kc));  // [n][Kc]
      fp8_pairs(panel, kNR, s, b + n0, ldb, K, n);
      float* d = sp + p * Kc * kNR;
      for (int64_t c = 0; c < Kc; ++c)
        for (int64_t j = 0; j < kNR; ++j) d[c * kNR + j] = j < n ? s[j * Kc + c] : 0.0f;
    }
  });
}

namespace {

// 16 E4M3 codes (low byte of each 16-bit lane) to FP32, exactly: the code's exponent and
// mantissa bits placed in an IEEE half give the value / 256 (E4M3's subnormals on the half's
// subnormals); 0x7f / 0xff (NaN) to NaN.
inline __m512 e4m3_decode_v(__m256i c) {
  const __m256i mag = _mm256_and_si256(c, _mm256_set1_epi16(0x7f));
  __m256i h = _mm256_or_si256(_mm256_slli_epi16(mag, 7),
                              _mm256_slli_epi16(_mm256_and_si256(c, _mm256_set1_epi16(0x80)), 8));
  h = _mm256_mask_mov_epi16(h, _mm256_cmpeq_epi16_mask(mag, _mm256_set1_epi16(0x7f)),
                            _mm256_set1_epi16(0x7e00));
  return _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0f));
}

// 16 code pairs (low byte: K even, high byte: K odd) to 16 BF16 pairs (exact: E4M3 ⊂ BF16).
inline __m512i e4m3_pairs_v(__m256i v) {
  const __m512 lo = e4m3_decode_v(_mm256_and_si256(v, _mm256_set1_epi16(0xff)));
  const __m512 hi = e4m3_decode_v(_mm256_srli_epi16(v, 8));
  return _mm512_or_si512(_mm512_srli_epi32(_mm512_castps_si512(lo), 16),
                         _mm512_and_si512(_mm512_castps_si512(hi), _mm512_set1_epi32(-65536)));
}

}  // namespace

void lowp_pack_b_e4m3(LowpPackedB& out, const uint16_t* codes, int64_t ldc, const float* sb,
                      int64_t lds, int64_t N, int64_t K) {
  DSV3_CHECK(ldc >= N && lds >= quant_tiles(K), "lowp_pack_b_e4m3: ldc {} / lds {} too small", ldc,
             lds);
  const int64_t kpairs = lowp_pad_k(K) / 2, Kc = quant_tiles(K);
  const int64_t panels = (N + kNR - 1) / kNR;
  uint32_t* pk = alloc_panels(out, N, K, true);
  float* sp = out.scales.data();
  parallel_for(panels, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kNR, n = std::min(kNR, N - n0);
      const __mmask16 k0 = n >= 16 ? 0xffff : __mmask16((1u << n) - 1);
      const __mmask16 k1 = n >= 32 ? 0xffff : n <= 16 ? 0 : __mmask16((1u << (n - 16)) - 1);
      uint32_t* panel = pk + p * kpairs * kNR;
      for (int64_t kp = 0; kp < kpairs; ++kp) {
        const uint16_t* src = codes + kp * ldc + n0;
        _mm512_store_si512(panel + kp * kNR, e4m3_pairs_v(_mm256_maskz_loadu_epi16(k0, src)));
        _mm512_store_si512(panel + kp * kNR + 16,
                           e4m3_pairs_v(_mm256_maskz_loadu_epi16(k1, src + 16)));
      }
      float* d = sp + p * Kc * kNR;
      for (int64_t c = 0; c < Kc; ++c)
        for (int64_t j = 0; j < kNR; ++j) d[c * kNR + j] = j < n ? sb[(n0 + j) * lds + c] : 0.0f;
    }
  });
}

void gemm_lowp(float* C, int64_t ldc, int64_t M, int64_t N, int64_t K, const LowpOperand& A,
               const LowpOperand& B, const float* sa, const float* sb, bool accumulate) {
  DSV3_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm_lowp: bad sizes M={} N={} K={}", M, N, K);
  const int64_t kpairs = lowp_pad_k(K) / 2, Kc = quant_tiles(K);
  auto check = [&](const LowpOperand& o, int64_t rows, const char* what) {
    DSV3_CHECK(o.pairs ? o.ld >= rows : (o.ld % 2 == 0 && o.ld >= 2 * kpairs),
               "gemm_lowp: {} leading dimension {} too small for {} rows of K {} ({} layout)", what,
               o.ld, rows, K, o.pairs ? "pairs" : "rows");
  };
  check(A, M, "A");
  check(B, N, "B");
  DSV3_CHECK((sa == nullptr) == (sb == nullptr), "gemm_lowp: give both scales or neither");
  if (M == 0 || N == 0) return;
  thread_local LowpPackedB packed;
  lowp_pack_b(packed, B, sb, N, K);
  const Pairs pa = pairs_of(A);
  run_packed(C, ldc, M, packed, accumulate, [&](int64_t m0, int64_t, const float** s) {
    if (sa) *s = sa + m0 * Kc;
    return Pairs{pa.a + m0 * pa.rs, pa.rs, pa.ks};
  });
}

void gemm_lowp_a32(float* C, int64_t ldc, int64_t M, const float* a, int64_t lda, bool trans,
                   bool fp8, const LowpPackedB& B, bool accumulate) {
  DSV3_CHECK(M >= 0, "gemm_lowp_a32: bad M={}", M);
  DSV3_CHECK(fp8 == B.scaled, "gemm_lowp_a32: an {} A needs {} B", fp8 ? "FP8" : "BF16",
             fp8 ? "a scaled" : "an unscaled");
  const int64_t K = B.k, ldk = lowp_pad_k(K), Kc = quant_tiles(K);
  DSV3_CHECK(lda >= (trans ? M : K), "gemm_lowp_a32: lda {} too small (M={} K={})", lda, M, K);
  run_packed(C, ldc, M, B, accumulate, [&](int64_t m0, int64_t m, const float** s) {
    // Per-thread block of A (these calls run on the task's thread: the quantizers run inline).
    thread_local std::vector<uint16_t> rows;
    thread_local std::vector<uint32_t> pairs;
    thread_local std::vector<float> scales;
    float* sa = fp8 ? grow(scales, size_t(m * Kc)) : nullptr;
    *s = sa;
    if (!trans) {
      uint16_t* q = grow(rows, size_t(m * ldk));
      if (fp8)
        fp8_rows(q, ldk, sa, a + m0 * lda, lda, m, K);
      else
        bf16_rows(q, ldk, a + m0 * lda, lda, m, K);
      return Pairs{reinterpret_cast<const uint32_t*>(q), ldk / 2, 1};
    }
    uint32_t* p = grow(pairs, size_t((ldk / 2) * m));
    if (fp8)
      fp8_pairs(p, m, sa, a + m0, lda, K, m);
    else
      bf16_pairs(p, m, a + m0, lda, K, m);
    return Pairs{p, 1, m};
  });
}

void gemm_lowp_nt(float* C, int64_t ldc, int64_t M, int64_t N, int64_t K, const uint16_t* A,
                  int64_t lda, const uint16_t* B, int64_t ldb, const float* sa, const float* sb,
                  bool accumulate) {
  gemm_lowp(C, ldc, M, N, K, {A, lda, false}, {B, ldb, false}, sa, sb, accumulate);
}

namespace {

// Keeps the `bits` most significant bits of x's significand (truncation toward zero).
inline float truncate_bits(float x, int bits) {
  if (bits <= 0 || bits >= 24 || !std::isfinite(x)) return x;
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u &= ~((1u << (24 - bits)) - 1u);
  std::memcpy(&x, &u, 4);
  return x;
}

}  // namespace

void gemm_fp8_emulated(float* C, int64_t M, int64_t N, int64_t K, const float* A, const float* sa,
                       const float* B, const float* sb, int64_t interval, int acc_bits) {
  DSV3_CHECK(interval >= 0 && interval % kQuantTile == 0,
             "gemm_fp8_emulated: interval {} must be 0 or a multiple of 128", interval);
  const int64_t Kc = quant_tiles(K);
  parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) {
        float total = 0, part = 0;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t c = k / kQuantTile;
          const float p = A[m * K + k] * B[n * K + k] * (sa[m * Kc + c] * sb[n * Kc + c]);
          part = acc_bits ? truncate_bits(part + p, acc_bits) : part + p;
          if (interval && (k + 1) % interval == 0) {
            total += part;
            part = 0;
          }
        }
        C[m * N + n] = total + part;
      }
  });
}

}  // namespace dsv3::cpu
