// Variants of the FP8 prefill GEMM under study (issue 13), one thread, against a plain loop.
//   A: main's route (src/backend/cpu/gemm_fp8.cpp): codes widened to BF16 and transposed into
//      VNNI pairs in a 128 KiB buffer per 128×512 block, 6×64 vdpbf16ps kernel over it.
//   B: the codes transposed as bytes (16-bit pairs, no widening) into a 64 KiB buffer; the kernel
//      widens each 16-row pair vector in registers (vpmovsxbw, shift, and) before vdpbf16ps.
//   carry: the sums stay in registers across 128-column scale blocks (multiplied by s[b]/s[b+1]);
//   flush: each block's sums go to y with its scale (main's route before 2026-12-07, 21:00).
//   wpf: the next block's codes prefetched a line per row every 64 columns; GCC 12 drops this
//     prefetch loop (no prefetcht1 in the assembly), so it times as A cold.
//   gpf: the next 16-row group's codes prefetched in memory order (what the library does).
//   pf: the y tile prefetched at the kernel's start.
// Build: g++ -O3 -march=native -std=c++20 dev/gemm_fp8_variants.cpp -o /tmp/gfv
// Run:   /tmp/gfv [kKc [flush pairs]]  (per shape: the worst error against a plain loop on 200
//        outputs, then GFLOP/s medians, with conversion and kernel only; kernel-only timing
//        reruns the kernel on the last converted block, its values are not checked)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <sys/mman.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <span>
#include <vector>

namespace {
constexpr int kMR = 6;
constexpr int64_t kNR = 64, kRows = 128;
int64_t kKc = 512;
int64_t kFlush = 64;  // pairs per scale block (64; other values: timing only, wrong sums)
bool g_rescale = false, g_prefetch = false, g_wpf = false, g_convonly = false, g_gpf = false;
std::vector<float> ratios;  // s[b] / s[b+1] over the whole scale array

inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
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

// The next block's codes (nw: its first row, nnt rows, from column nk; nw null: none), fetched
// into L2 a line per row every 64 columns while this block converts.
inline void prefetch_next(const uint8_t* nw, int64_t nnt, int64_t nk, int64_t K, int64_t r0,
                          int64_t c) {
  if (!nw || (c & 63) || nk + c >= K) return;
  for (int64_t i = 0; i < 16 && r0 + i < nnt; ++i)
    _mm_prefetch(reinterpret_cast<const char*>(nw + (r0 + i) * K + nk + c), _MM_HINT_T1);
}

void convert_A(uint16_t* buf, const uint8_t* w, int64_t K, int64_t nt, int64_t k0, int64_t kc,
               const uint8_t* nw, int64_t nnt, int64_t nk) {
  const int64_t pc = kc / 2;
  for (int64_t r0 = 0; r0 < kRows; r0 += 16) {
    uint16_t* pan = buf + (r0 / kNR) * pc * 128 + (r0 % kNR) * 2;
    // g_gpf: the next 16-row group's lines (this block's, else the next block's first), 16 × kc/64
    // of them spread over this group's kc/32 steps, in memory order.
    const uint8_t* gw = r0 + 16 < nt ? w + (r0 + 16) * K + k0 : (nw ? nw + nk : nullptr);
    const int64_t grows =
        r0 + 16 < nt ? std::min<int64_t>(16, nt - r0 - 16) : std::min<int64_t>(16, nnt);
    const int64_t glines = ((r0 + 16 < nt ? std::min(kc, K - k0) : std::min(kc, K - nk)) + 63) / 64;
    const int64_t per = (grows * glines + kc / 32 - 1) / (kc / 32);
    for (int64_t c = 0; c < kc; c += 32) {
      if (!g_gpf)
        prefetch_next(nw, nnt, nk, K, r0, c);
      else if (gw)
        for (int64_t t = (c / 32) * per; t < std::min(grows * glines, (c / 32 + 1) * per); ++t)
          _mm_prefetch(reinterpret_cast<const char*>(gw + (t / glines) * K + (t % glines) * 64),
                       _MM_HINT_T0);
      const int64_t k = k0 + c;
      const __mmask32 km = K - k >= 32 ? ~__mmask32(0) : __mmask32((1u << (K - k)) - 1);
      __m512i t[16];
      for (int i = 0; i < 16; ++i) {
        if (r0 + i < nt) {
          __m512i v = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(km, w + (r0 + i) * K + k));
          t[i] = _mm512_and_si512(_mm512_slli_epi16(v, 4), _mm512_set1_epi16(short(0x87f0)));
        } else {
          t[i] = _mm512_setzero_si512();
        }
      }
      transpose16(t);
      for (int q = 0; q < 16; ++q) _mm512_storeu_si512(pan + (c / 2 + q) * 128, t[q]);
    }
  }
}

// B: bytes. Panel j, pair p: 128 bytes at cb + (j·pc + p)·128: rows 64j..64j+63 × (2p, 2p+1).
void convert_B(uint8_t* cb, const uint8_t* w, int64_t K, int64_t nt, int64_t k0, int64_t kc,
               const uint8_t* nw, int64_t nnt, int64_t nk) {
  const int64_t pc = kc / 2;
  const __m512i perm = _mm512_setr_epi64(0, 1, 4, 5, 2, 3, 6, 7);
  for (int64_t r0 = 0; r0 < kRows; r0 += 16) {
    uint8_t* pan = cb + (r0 / kNR) * pc * 128 + (r0 % kNR) * 2;
    for (int64_t c = 0; c < kc; c += 32) {
      prefetch_next(nw, nnt, nk, K, r0, c);
      const int64_t k = k0 + c;
      const __mmask32 km = K - k >= 32 ? ~__mmask32(0) : __mmask32((1u << (K - k)) - 1);
      auto row = [&](int64_t i) {
        return r0 + i < nt ? _mm256_maskz_loadu_epi8(km, w + (r0 + i) * K + k)
                           : _mm256_setzero_si256();
      };
      // R[i] = rows i (low 256) and i + 8 (high 256).
      __m512i R[8], t[8], u[8], v[8];
      for (int i = 0; i < 8; ++i)
        R[i] = _mm512_inserti64x4(_mm512_castsi256_si512(row(i)), row(i + 8), 1);
      for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm512_unpacklo_epi16(R[2 * i], R[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi16(R[2 * i], R[2 * i + 1]);
      }
      // t[0]: w0..w3 of rows 0,1; t[1]: w4..w7 rows 0,1; t[2],t[3]: rows 2,3; t[4..7]: rows 4..7
      u[0] = _mm512_unpacklo_epi32(t[0], t[2]);  // w0, w1 of rows 0..3
      u[1] = _mm512_unpackhi_epi32(t[0], t[2]);  // w2, w3
      u[2] = _mm512_unpacklo_epi32(t[1], t[3]);  // w4, w5
      u[3] = _mm512_unpackhi_epi32(t[1], t[3]);  // w6, w7
      u[4] = _mm512_unpacklo_epi32(t[4], t[6]);
      u[5] = _mm512_unpackhi_epi32(t[4], t[6]);
      u[6] = _mm512_unpacklo_epi32(t[5], t[7]);
      u[7] = _mm512_unpackhi_epi32(t[5], t[7]);
      for (int q = 0; q < 4; ++q) {
        v[2 * q] = _mm512_unpacklo_epi64(u[q], u[4 + q]);      // word 2q of rows 0..7
        v[2 * q + 1] = _mm512_unpackhi_epi64(u[q], u[4 + q]);  // word 2q+1
      }
      // v[q] lanes: [pair q rows 0-7, pair 8+q rows 0-7, pair q rows 8-15, pair 8+q rows 8-15]
      for (int q = 0; q < 8; ++q) {
        const __m512i o = _mm512_permutexvar_epi64(perm, v[q]);
        _mm256_storeu_si256((__m256i*)(pan + (c / 2 + q) * 128), _mm512_castsi512_si256(o));
        _mm256_storeu_si256((__m256i*)(pan + (c / 2 + 8 + q) * 128),
                            _mm512_extracti64x4_epi64(o, 1));
      }
    }
  }
}

inline __m512bh bcast_pair(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return (__m512bh)_mm512_set1_epi32(v);
}

inline __m512bh widen(const uint8_t* p) {
  const __m512i v = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)p));
  return (__m512bh)_mm512_and_si512(_mm512_slli_epi16(v, 4), _mm512_set1_epi16(short(0x87f0)));
}

template <int MR, bool kBytes>
void kernel(float* y, int64_t ldy, const uint16_t* xp, int64_t ldx, const void* panel, int64_t pc,
            int64_t nv, bool acc, const float* s, const float* r, float post) {
  __mmask16 mk[4];
  for (int j = 0; j < 4; ++j) {
    const int64_t left = nv - 16 * j;
    mk[j] = left >= 16 ? __mmask16(0xffff) : left <= 0 ? 0 : __mmask16((1u << left) - 1);
  }
  const __m512 vpost = _mm512_set1_ps(post);
  if (g_prefetch)  // the y tile, read (or written) after pc pairs
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j)
        if (mk[j]) _mm_prefetch((const char*)(y + m * ldy + 16 * j), _MM_HINT_T0);
  const uint16_t* b = (const uint16_t*)panel;
  const uint8_t* bb = (const uint8_t*)panel;
  __m512 a[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) a[m][j] = _mm512_setzero_ps();
  for (int64_t p0 = 0; p0 < pc; p0 += kFlush) {
    const int64_t pe = std::min<int64_t>(pc, p0 + kFlush);
#pragma GCC unroll 4
    for (int64_t p = p0; p < pe; ++p) {
      __m512bh bv[4];
      if constexpr (kBytes) {
        for (int j = 0; j < 4; ++j) bv[j] = widen(bb + 32 * j);
        bb += 128;
      } else {
        for (int j = 0; j < 4; ++j) bv[j] = (__m512bh)_mm512_loadu_si512(b + 32 * j);
        b += 128;
      }
      for (int m = 0; m < MR; ++m) {
        const __m512bh xv = bcast_pair(xp + m * ldx + 2 * p);
        for (int j = 0; j < 4; ++j) a[m][j] = _mm512_dpbf16_ps(a[m][j], xv, bv[j]);
      }
    }
    if (r) {  // rescale: the sums stay in registers, carried at scale s[last block]
      if (pe < pc) {
        const __m512 vr = _mm512_set1_ps(r[p0 / 64]);
        for (int m = 0; m < MR; ++m)
          for (int j = 0; j < 4; ++j) a[m][j] = _mm512_mul_ps(a[m][j], vr);
        continue;
      }
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
    if (!r)
      for (int m = 0; m < MR; ++m)
        for (int j = 0; j < 4; ++j) a[m][j] = _mm512_setzero_ps();
  }
}

template <bool kBytes>
void kernel_any(int mr, float* y, int64_t ldy, const uint16_t* xp, int64_t ldx, const void* panel,
                int64_t pc, int64_t nv, bool acc, const float* s, const float* r, float post) {
  static constexpr decltype(&kernel<1, kBytes>) ks[] = {kernel<1, kBytes>, kernel<2, kBytes>,
                                                        kernel<3, kBytes>, kernel<4, kBytes>,
                                                        kernel<5, kBytes>, kernel<6, kBytes>};
  ks[std::min(mr, kMR) - 1](y, ldy, xp, ldx, panel, pc, nv, acc, s, r, post);
}

// Full GEMM, one thread. conv = false: the buffer is converted once per block and column block
// up front... (kernel-only timing converts only the first time: `convert` flag).
template <bool kBytes>
void gemm(float* y, const uint16_t* xb, int64_t ldx, int64_t M, const uint8_t* codes,
          const float* sc, int64_t N, int64_t K, bool convert, std::vector<uint8_t>& buf) {
  const int64_t nsc = (K + 127) / 128;
  for (int64_t n0 = 0; n0 < N; n0 += kRows) {
    const int64_t nt = std::min(kRows, N - n0);
    const uint8_t* w = codes + n0 * K;
    const float* s = sc + (n0 / 128) * nsc;
    for (int64_t k0 = 0; k0 < ldx; k0 += kKc) {
      const int64_t kc = std::min(kKc, ldx - k0), pc = kc / 2;
      if (convert) {
        const uint8_t* nw = nullptr;
        int64_t nnt = 0, nk = 0;
        if (g_wpf) {
          if (k0 + kKc < ldx)
            nw = w, nnt = nt, nk = k0 + kKc;
          else if (n0 + kRows < N)
            nw = w + kRows * K, nnt = std::min(kRows, N - n0 - kRows);
        }
        if (kBytes)
          convert_B(buf.data(), w, K, nt, k0, kc, nw, nnt, nk);
        else
          convert_A((uint16_t*)buf.data(), w, K, nt, k0, kc, nw, nnt, nk);
      }
      const int64_t pstride = kBytes ? pc * 128 : pc * 256;
      for (int64_t j = 0; j * kNR < nt && !g_convonly; ++j)
        for (int64_t m = 0; m < M; m += kMR)
          kernel_any<kBytes>(
              int(std::min<int64_t>(kMR, M - m)), y + m * N + n0 + j * kNR, N, xb + m * ldx + k0,
              ldx, buf.data() + j * pstride, pc, std::min(kNR, nt - j * kNR), k0 > 0, s + k0 / 128,
              g_rescale ? ratios.data() + (n0 / 128) * nsc + k0 / 128 : nullptr, 1.0f);
    }
  }
}

uint16_t bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}
float f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
double code_val(uint8_t c) {  // e4m3, subnormals as zero (as the kernels)
  const int e = (c >> 3) & 15, m = c & 7;
  if (e == 0) return 0.0;
  return (c & 0x80 ? -1 : 1) * std::ldexp(1.0 + m / 8.0, e - 7);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) kKc = std::atoi(argv[1]);
  if (argc > 2) kFlush = std::atoi(argv[2]);
  struct Case {
    int64_t N, K, M;
  } cases[] = {{512, 1024, 16}, {1024, 512, 16},   {512, 1024, 48},
               {1024, 512, 48}, {2816, 1024, 512}, {1024, 2816, 512}};
  std::mt19937_64 rng(1);
  std::normal_distribution<float> nd;
  for (auto [N, K, M] : cases) {
    std::vector<uint8_t> codes(size_t(N * K));
    for (auto& c : codes) {
      c = uint8_t(rng() & 0xff);
      if ((c & 0x7f) == 0x7f) --c;
    }
    std::vector<float> sc(size_t((N + 127) / 128 * ((K + 127) / 128)));
    for (auto& s : sc) s = 1e-3f + 0.05f * float(rng() % 1000) / 1000.0f;
    const int64_t ldx = (K + 31) / 32 * 32;
    ratios.assign(sc.size(), 1.0f);
    for (size_t i = 0; i + 1 < sc.size(); ++i) ratios[i] = sc[i] / sc[i + 1];
    std::vector<uint16_t> xb(size_t(M * ldx), 0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k)
        xb[size_t(m * ldx + k)] = bf16(nd(rng) * 1e-36f * 0 + std::ldexp(nd(rng), 120));
    // x·2^120 so the 2^-120 weight scale comes back (post = 1)
    std::vector<float> y(size_t(M * N));
    std::vector<uint8_t> buf(size_t(kRows * kKc * 2));
    // check both against the loop on a few outputs
    for (int v = 0; v < 2; ++v) {
      g_rescale = g_prefetch = true;
      if (v == 0)
        gemm<false>(y.data(), xb.data(), ldx, M, codes.data(), sc.data(), N, K, true, buf);
      else
        gemm<true>(y.data(), xb.data(), ldx, M, codes.data(), sc.data(), N, K, true, buf);
      double worst = 0;
      for (int t = 0; t < 200; ++t) {
        const int64_t m = int64_t(rng() % M), n = int64_t(rng() % N);
        double ref = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double p = f32(xb[size_t(m * ldx + k)]) *
                           std::ldexp(code_val(codes[size_t(n * K + k)]), -120) *
                           sc[size_t((n / 128) * ((K + 127) / 128) + k / 128)];
          ref += p;
          mag += std::fabs(p);
        }
        worst = std::max(worst, std::fabs(y[size_t(m * N + n)] - ref) / mag);
      }
      std::printf("%s N=%ld K=%ld M=%ld: worst |y-ref|/sum|terms| %.2e\n", v ? "B" : "A", N, K, M,
                  worst);
    }
    const double flop = 2.0 * M * N * K;
    // Cold weights, as in prefill (each expert's weight read once per layer from memory): a
    // 256 MiB pool of copies, a different one per call. Interleaved: A warm (one weight, in
    // cache), then cold A, A + codes prefetch (wpf), B, B + wpf, all with carry and y prefetch;
    // medians of 9.
    const int64_t copies = std::max<int64_t>(2, (int64_t(256) << 20) / (N * K));
    // In 2 MiB pages, as the model's weights (its huge-page copy).
    const size_t pool_bytes = size_t(copies * N * K + (2 << 20));
    void* pm =
        mmap(nullptr, pool_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(pm, pool_bytes, MADV_HUGEPAGE);
    std::span<uint8_t> pool(static_cast<uint8_t*>(pm), pool_bytes);
    for (int64_t c = 0; c < copies; ++c)
      std::memcpy(pool.data() + c * N * K, codes.data(), size_t(N * K));
    const char* names[5] = {"A warm", "A cold", "A cold+wpf", "A cold+gpf", "Aconv c+gpf"};
    std::vector<double> g[5];
    int64_t next = 0;
    g_rescale = g_prefetch = true;
    for (int rep = 0; rep < 9; ++rep)
      for (int v = 0; v < 5; ++v) {
        const bool bytes = false;
        g_convonly = v >= 4;
        g_gpf = v >= 3;
        g_wpf = v >= 2;
        const int iters = std::max<int>(3, int(5e8 / flop));
        auto t0 = std::chrono::steady_clock::now();
        for (int it = 0; it < iters; ++it) {
          const uint8_t* wc = v == 0 ? codes.data() : pool.data() + (next++ % copies) * N * K;
          if (bytes)
            gemm<true>(y.data(), xb.data(), ldx, M, wc, sc.data(), N, K, true, buf);
          else
            gemm<false>(y.data(), xb.data(), ldx, M, wc, sc.data(), N, K, true, buf);
        }
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        g[v].push_back(flop * iters / s / 1e9);
      }
    for (int v = 0; v < 5; ++v) {
      std::sort(g[v].begin(), g[v].end());
      std::printf("  %-11s median %7.1f GFLOP/s (min %.1f max %.1f)\n", names[v], g[v][4], g[v][0],
                  g[v][8]);
    }
  }
}
