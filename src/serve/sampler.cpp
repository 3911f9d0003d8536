// Sampler implementation: softmax at the temperature over the top-k candidates, truncated to the
// smallest set whose probability reaches top_p, then one draw from the seeded generator.
#include "serve/sampler.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace dsv3::serve {

void validate_sampling(const SamplingParams& p) {
  DSV3_CHECK(std::isfinite(p.temperature) && p.temperature >= 0,
             "sampling: temperature must be a finite number >= 0 (0: greedy), got {}",
             p.temperature);
  DSV3_CHECK(p.top_k >= 0, "sampling: top_k must be >= 0 (0: off), got {}", p.top_k);
  DSV3_CHECK(p.top_p > 0 && p.top_p <= 1, "sampling: top_p must be in (0, 1] (1: off), got {}",
             p.top_p);
}

int32_t Sampler::sample(const float* logits, int64_t V) {
  DSV3_CHECK(V > 0, "empty logits");
  if (p_.temperature <= 0) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i)
      if (logits[i] > logits[best]) best = i;
    return int32_t(best);
  }
  cand_.resize(size_t(V));
  for (int64_t i = 0; i < V; ++i) cand_[size_t(i)] = {logits[i], int32_t(i)};
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  int64_t k = (p_.top_k > 0 && p_.top_k < V) ? p_.top_k : V;
  if (k < V) {
    std::partial_sort(cand_.begin(), cand_.begin() + k, cand_.end(), by_logit);
    cand_.resize(size_t(k));
  }
  float mx = -INFINITY;
  for (const auto& c : cand_) mx = std::max(mx, c.first);
  double sum = 0;
  for (auto& c : cand_) {
    c.first = float(std::exp(double(c.first - mx) / p_.temperature));
    sum += c.first;
  }
  size_t n = cand_.size();
  if (p_.top_p < 1.0f) {
    // Sort only as many leading candidates as the nucleus needs: grow the sorted prefix until
    // its probability reaches top_p (usually a few dozen of the whole vocabulary).
    size_t sorted = 0;
    double acc = 0;
    bool found = false;
    for (size_t want = std::min<size_t>(64, n); !found; want = std::min(n, want * 4)) {
      std::partial_sort(cand_.begin() + sorted, cand_.begin() + want, cand_.end(), by_logit);
      for (; sorted < want; ++sorted) {
        acc += cand_[sorted].first / sum;
        if (acc >= p_.top_p) {
          found = true;
          ++sorted;
          break;
        }
      }
      if (want == n) break;
    }
    n = sorted;
    sum = 0;
    for (size_t i = 0; i < n; ++i) sum += cand_[i].first;
  }
  double r = rng_.uniform() * sum;
  for (size_t i = 0; i < n; ++i) {
    r -= cand_[i].first;
    if (r < 0) return cand_[i].second;
  }
  return cand_[n - 1].second;
}

}  // namespace dsv3::serve
