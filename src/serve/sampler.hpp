// Token sampling: greedy, temperature, top-k and top-p (nucleus), seeded for reproducibility.
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.hpp"

namespace dsv3::serve {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {}
  // Picks a token from logits[V]. Ties in greedy mode go to the lowest id.
  int32_t sample(const float* logits, int64_t V);
  const SamplingParams& params() const { return p_; }

 private:
  SamplingParams p_;
  Rng rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

}  // namespace dsv3::serve
