// Implementation of fma_peak.hpp, with the widest FMA the build targets (-march=native here).
#include "core/fma_peak.hpp"

// GCC 12 flags the _mm*_undefined_* inside its own AVX-512 intrinsic headers once they are inlined
// (a known false positive; src/backend/cpu/gemv.cpp does the same).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>

namespace dsv3 {

namespace {

constexpr int kChains = 16;

#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr const char* kName = "fp32_fma_avx512";
using Vec = __m512;
inline Vec vset(float x) {
  return _mm512_set1_ps(x);
}
inline Vec vfma(Vec a, Vec b, Vec c) {
  return _mm512_fmadd_ps(a, b, c);
}
inline float vsum(Vec v) {
  return _mm512_reduce_add_ps(v);
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kLanes = 8;
constexpr const char* kName = "fp32_fma_avx2";
using Vec = __m256;
inline Vec vset(float x) {
  return _mm256_set1_ps(x);
}
inline Vec vfma(Vec a, Vec b, Vec c) {
  return _mm256_fmadd_ps(a, b, c);
}
inline float vsum(Vec v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  float s = 0;
  for (float x : t) s += x;
  return s;
}
#else
constexpr int kLanes = 1;
constexpr const char* kName = "fp32_fma_scalar";
using Vec = float;
inline Vec vset(float x) {
  return x;
}
inline Vec vfma(Vec a, Vec b, Vec c) {
  return std::fma(a, b, c);
}
inline float vsum(Vec v) {
  return v;
}
#endif

// One thread's share: iters / kChains rounds of kChains independent FMAs; returns the chains'
// sum so the compiler keeps the work.
float fma_chains(int64_t iters) {
  Vec acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = vset(float(c) * 1e-3f);
  const Vec a = vset(0.999999f), b = vset(1e-7f);
  for (int64_t i = 0; i < iters / kChains; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = vfma(acc[c], a, b);
  }
  float s = 0;
  for (int c = 0; c < kChains; ++c) s += vsum(acc[c]);
  return s;
}

}  // namespace

FmaPeak measure_fp32_fma_peak(int threads, int64_t iters, int reps) {
  threads = std::max(1, threads);
  iters = std::max<int64_t>(kChains, iters);
  // One core's peak, best of `reps`: a single thread finds a moment when its core is free far
  // more often than `threads` threads find all their cores free at once.
  volatile float sink = 0;
  double best = 1e30;
  for (int r = 0; r < std::max(1, reps); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    sink = fma_chains(iters);
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  (void)sink;
  const double per_core = double(iters / kChains * kChains) * kLanes * 2.0 / best;
  const unsigned hw = std::thread::hardware_concurrency();
  const int cores = hw > 0 ? std::min(threads, int(hw)) : threads;
  return {per_core * cores, threads, kName};
}

#if defined(__AVX512BF16__)
namespace {
float dot_chains(int64_t iters) {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(float(c) * 1e-3f);
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.25f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-7f), _mm512_set1_ps(1e-7f));
  for (int64_t i = 0; i < iters / kChains; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
  }
  float s = 0;
  for (int c = 0; c < kChains; ++c) s += _mm512_reduce_add_ps(acc[c]);
  return s;
}
}  // namespace
#endif

FmaPeak measure_bf16_dot_peak(int threads, int64_t iters, int reps) {
  threads = std::max(1, threads);
#if defined(__AVX512BF16__)
  iters = std::max<int64_t>(kChains, iters);
  volatile float sink = 0;
  double best = 1e30;
  for (int r = 0; r < std::max(1, reps); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    sink = dot_chains(iters);
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  (void)sink;
  const double per_core = double(iters / kChains * kChains) * 64.0 / best;
  const unsigned hw = std::thread::hardware_concurrency();
  const int cores = hw > 0 ? std::min(threads, int(hw)) : threads;
  return {per_core * cores, threads, "bf16_dot_avx512"};
#else
  (void)iters;
  (void)reps;
  return {0.0, threads, "bf16_dot_absent"};
#endif
}

namespace {

// FLOP/s of `threads` threads running chains(iters) at once, best of `reps` (flop_per_iter per
// lane-iteration unit as the single-thread figures count them).
template <typename Chains>
double concurrent_rate(int threads, int64_t iters, int reps, double flop_per_iter, Chains chains) {
  threads = std::max(1, threads);
  double best = 1e30;
  float sink = 0;
  for (int r = 0; r < std::max(1, reps); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += chains(iters);
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  volatile float keep = sink;
  (void)keep;
  return double(threads) * double(iters / kChains * kChains) * flop_per_iter / best;
}

}  // namespace

FmaPeak measure_fp32_fma_peak_concurrent(int threads, int64_t iters, int reps) {
  iters = std::max<int64_t>(kChains, iters);
  return {concurrent_rate(threads, iters, reps, kLanes * 2.0, fma_chains), std::max(1, threads),
          "fp32_fma_concurrent"};
}

FmaPeak measure_bf16_dot_peak_concurrent(int threads, int64_t iters, int reps) {
#if defined(__AVX512BF16__)
  iters = std::max<int64_t>(kChains, iters);
  return {concurrent_rate(threads, iters, reps, 64.0, dot_chains), std::max(1, threads),
          "bf16_dot_concurrent"};
#else
  (void)iters;
  (void)reps;
  return {0.0, std::max(1, threads), "bf16_dot_absent"};
#endif
}

}  // namespace dsv3
