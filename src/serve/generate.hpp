// Batched generation on the latent KV cache: one prefill of the prompts, then one token per
// step for every sequence, with timing of both phases.
#pragma once
#include <functional>
#include <vector>

#include "model/model.hpp"
#include "serve/sampler.hpp"

namespace dsv3::serve {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingParams sampling;
  bool stop_at_eos = true;
  // Prefill and decode pick the attention path with AttnImpl::Auto (naive for long prompts,
  // absorbed for decode steps).
};

struct GenerateStats {
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  double prefill_tokens_per_s() const {
    return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0;
  }
  double decode_tokens_per_s() const {
    return decode_seconds > 0 ? generated_tokens / decode_seconds : 0;
  }
};

// prompts: B sequences of equal length. on_token(b, token) is called as tokens are made.
// Returns the generated tokens per sequence.
std::vector<std::vector<int32_t>> generate(model::Model& m,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opt,
                                           const std::function<void(int64_t, int32_t)>& on_token,
                                           GenerateStats* stats = nullptr);

}  // namespace dsv3::serve
