// Implementation of gemm_lowp.hpp. B is packed once per call into panels of 32 columns, K in
// pairs: panel[kp][j] = the 32-bit pair (B[n0+j, 2kp], B[n0+j, 2kp+1]), so one 64-byte load
// feeds 16 columns of vdpbf16ps (from the pairs layout a panel row is one contiguous copy); A is
// read in place, one pair broadcast per row and step.
// The micro-kernel is MR rows × 32 columns: MR = 8 (16 accumulators) unscaled; MR = 6 scaled
// (12 chunk accumulators + 12 FP32 accumulators). Work is split over (row block, panel group)
// tasks, row-block-major so a thread keeps its rows of A in cache over consecutive panels.
#include "backend/cpu/gemm_lowp.hpp"

#include <immintrin.h>

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
      DSV3_PLAIN(3) DSV3_PLAIN(4) DSV3_PLAIN(5) DSV3_PLAIN(6) DSV3_PLAIN(7)
#undef DSV3_PLAIN
          default : break;
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
    DSV3_SCALED(3) DSV3_SCALED(4) DSV3_SCALED(5)
#undef DSV3_SCALED
        default : break;
  }
}

struct PackBuf {
  std::vector<uint32_t> panels;  // [panels][kpairs][32] (+ alignment slack)
  std::vector<float> scales;     // [panels][Kc][32]
};

}  // namespace

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
  if (K == 0) {
    for (int64_t m = 0; m < M; ++m)
      if (!accumulate) std::fill_n(C + m * ldc, N, 0.0f);
    return;
  }
  const Pairs pa = pairs_of(A), pb = pairs_of(B);
  const int64_t panels = (N + kNR - 1) / kNR;
  thread_local PackBuf buf;
  // 64-byte aligned panels (aligned loads in the kernels).
  uint32_t* raw = grow(buf.panels, size_t(panels * kpairs * kNR + 16));
  uint32_t* pk =
      reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(raw) + 63) & ~uintptr_t(63));
  float* sp = sa ? grow(buf.scales, size_t(panels * Kc * kNR)) : nullptr;
  parallel_for(panels, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      pack_panel(pk + p * kpairs * kNR, pb, p * kNR, N, kpairs);
      if (sp) {
        float* s = sp + p * Kc * kNR;
        for (int64_t j = 0; j < kNR; ++j) {
          const int64_t n = p * kNR + j;
          for (int64_t c = 0; c < Kc; ++c) s[c * kNR + j] = n < N ? sb[n * Kc + c] : 0.0f;
        }
      }
    }
  });
  const int64_t rblocks = (M + kRowBlock - 1) / kRowBlock;
  const int64_t groups = (panels + kPanelsPerTask - 1) / kPanelsPerTask;
  parallel_for(rblocks * groups, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t rb = t / groups, g = t % groups;
      const int64_t m0 = rb * kRowBlock, m = std::min(kRowBlock, M - m0);
      const int64_t pe = std::min(panels, (g + 1) * kPanelsPerTask);
      const Pairs am{pa.a + m0 * pa.rs, pa.rs, pa.ks};
      for (int64_t p = g * kPanelsPerTask; p < pe; ++p)
        run_rows(C + m0 * ldc + p * kNR, ldc, am, pk + p * kpairs * kNR, kpairs,
                 sa ? sa + m0 * Kc : nullptr, Kc, sp ? sp + p * Kc * kNR : nullptr, m,
                 std::min(kNR, N - p * kNR), accumulate);
    }
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
