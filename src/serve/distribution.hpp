// The sampling distribution of a request as a dense probability vector, and the speculative
// sampling rule on two such vectors (Leviathan et al. 2023, Chen et al. 2023): a draft token d
// drawn from the draft distribution q is accepted with probability min(1, p(d)/q(d)); a rejected
// draft is replaced by a draw from norm(max(0, p − q)). The accepted-or-replaced token is then
// distributed exactly as p. Greedy (temperature 0) is the one-hot argmax (ties to the lowest id,
// as Sampler), where the rule reduces to "accept iff the draft is the argmax".
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "core/rng.hpp"
#include "serve/sampler.hpp"

namespace dsv3::serve {

// p[V] = the distribution Sampler draws from: temperature softmax over the top_k logits, cut to
// the smallest prefix (by logit, ties by id) whose probability reaches top_p, renormalized.
void sampling_probs(std::vector<float>& p, const float* logits, int64_t V, const SamplingParams& s);

// One draw from p[V] (sums to 1 up to rounding).
int32_t sample_probs(const std::vector<float>& p, Rng& rng);

// The speculative rule for draft d ~ q against target p. Returns the token to emit and sets
// *accepted. Greedy (both one-hot) draws no random number.
int32_t speculative_accept(const std::vector<float>& p, const std::vector<float>& q, int32_t d,
                           bool greedy, Rng& rng, bool* accepted);

// log p(token) under the temperature-free softmax of logits[V], and the n most likely tokens
// with their log-probabilities (descending; ties by id) into *top when n > 0.
float token_logprob(const float* logits, int64_t V, int32_t token, int64_t n,
                    std::vector<std::pair<int32_t, float>>* top);

}  // namespace dsv3::serve
