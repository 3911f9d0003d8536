// Sampling distributions and the speculative acceptance rule; see distribution.hpp.
#include "serve/distribution.hpp"

// GCC 12 flags the _mm*_undefined_* inside its own AVX-512 intrinsic headers (see gemv.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/vmath.hpp"
#include "core/error.hpp"

namespace dsv3::serve {

namespace {

int64_t argmax(const float* x, int64_t V) {
  int64_t best = 0;
  for (int64_t i = 1; i < V; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

}  // namespace

void sampling_probs(std::vector<float>& p, const float* logits, int64_t V,
                    const SamplingParams& s) {
  DSV3_CHECK(V > 0, "empty logits");
  p.assign(size_t(V), 0.0f);
  if (s.temperature <= 0) {
    p[size_t(argmax(logits, V))] = 1.0f;
    return;
  }
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  const int64_t k = (s.top_k > 0 && s.top_k < V) ? s.top_k : V;
  // The candidates in descending order (the nucleus needs the order; V is a few 10^4 at most).
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
  idx.resize(size_t(k));
  const float mx = logits[idx[0]];
  std::vector<double> e(static_cast<size_t>(k));
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) {
    e[size_t(i)] = std::exp(double(logits[idx[size_t(i)]] - mx) / s.temperature);
    sum += e[size_t(i)];
  }
  int64_t n = k;
  if (s.top_p < 1.0f) {
    double acc = 0;
    for (int64_t i = 0; i < k; ++i) {
      acc += e[size_t(i)] / sum;
      if (acc >= s.top_p) {
        n = i + 1;
        break;
      }
    }
    sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += e[size_t(i)];
  }
  for (int64_t i = 0; i < n; ++i) p[size_t(idx[size_t(i)])] = float(e[size_t(i)] / sum);
}

int32_t sample_probs(const std::vector<float>& p, Rng& rng) {
  double sum = 0;
  for (float v : p) sum += v;
  double r = rng.uniform() * sum;
  int32_t last = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] <= 0) continue;
    last = int32_t(i);
    r -= p[i];
    if (r < 0) return int32_t(i);
  }
  return last;
}

int32_t speculative_accept(const std::vector<float>& p, const std::vector<float>& q, int32_t d,
                           bool greedy, Rng& rng, bool* accepted) {
  if (greedy) {
    const int32_t best = int32_t(std::max_element(p.begin(), p.end()) - p.begin());
    *accepted = best == d;
    return best;
  }
  const float pd = p[size_t(d)], qd = q[size_t(d)];
  if (qd > 0 && rng.uniform() * double(qd) < double(pd)) {
    *accepted = true;
    return d;
  }
  *accepted = false;
  std::vector<float> r(p.size());
  double sum = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    r[i] = std::max(0.0f, p[i] - q[i]);
    sum += r[i];
  }
  // p == q up to rounding leaves no residual mass: p itself is then the right law.
  return sum > 0 ? sample_probs(r, rng) : sample_probs(p, rng);
}

float token_logprob(const float* logits, int64_t V, int32_t token, int64_t n,
                    std::vector<std::pair<int32_t, float>>* top) {
  __m512 vmx = _mm512_set1_ps(-INFINITY);  // max(logits): exact in any order
  for (int64_t i = 0; i < V; i += 16)
    vmx = _mm512_mask_max_ps(vmx, cpu::tail_mask(V - i), vmx,
                             _mm512_maskz_loadu_ps(cpu::tail_mask(V - i), logits + i));
  alignas(64) float mlanes[16];
  _mm512_store_ps(mlanes, vmx);
  const float mx = *std::max_element(mlanes, mlanes + 16);
  // Σ exp(l - mx): AVX-512 exponentials (cpu::exp_ps, ~1 ulp), summed in double per lane. The
  // scalar double std::exp took 155 µs per token at V = 32000: 2.5 ms of serial engine time in
  // every decode step of 16 sequences (each token's event carries its logprob).
  const __m512 shift = _mm512_set1_ps(mx);
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  for (int64_t i = 0; i < V; i += 16) {
    const __mmask16 m = cpu::tail_mask(V - i);
    const __m512 e = _mm512_maskz_mov_ps(
        m, cpu::exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, logits + i), shift)));
    lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    hi = _mm512_add_pd(
        hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
  }
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, _mm512_add_pd(lo, hi));
  double sum = 0;
  for (double v : lanes) sum += v;
  const float lse = mx + float(std::log(sum));
  if (top && n > 0) {
    n = std::min(n, V);
    std::vector<int32_t> idx(static_cast<size_t>(V));
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    top->clear();
    for (int64_t i = 0; i < n; ++i) top->emplace_back(idx[size_t(i)], logits[idx[size_t(i)]] - lse);
  }
  return logits[token] - lse;
}

}  // namespace dsv3::serve
