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

// Throws dsv3::Error unless temperature is finite and >= 0, top_k >= 0 and top_p in (0, 1]
// (NaN would sample garbage; top_p 0 keeps no token).
void validate_sampling(const SamplingParams& p);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) { validate_sampling(p); }
  // Picks a token from logits[V]. Ties in greedy mode go to the lowest id.
  int32_t sample(const float* logits, int64_t V);
  const SamplingParams& params() const { return p_; }

 private:
  SamplingParams p_;
  Rng rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

}  // namespace dsv3::serve
