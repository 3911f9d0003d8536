// Sampler implementation: softmax at the temperature over the top-k candidates, truncated to the
// smallest set whose probability reaches top_p, then one draw from the seeded generator.
#include "serve/sampler.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace dsv3::serve {

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
  } else if (p_.top_p < 1.0f) {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  float mx = -INFINITY;
  for (const auto& c : cand_) mx = std::max(mx, c.first);
  double sum = 0;
  for (auto& c : cand_) {
    c.first = float(std::exp(double(c.first - mx) / p_.temperature));
    sum += c.first;
  }
  size_t n = cand_.size();
  if (p_.top_p < 1.0f) {  // candidates are sorted by probability here
    double acc = 0;
    for (size_t i = 0; i < cand_.size(); ++i) {
      acc += cand_[i].first / sum;
      if (acc >= p_.top_p) {
        n = i + 1;
        break;
      }
    }
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
