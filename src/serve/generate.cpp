// Generation loop of generate.hpp.
#include "serve/generate.hpp"

#include <chrono>

#include "core/error.hpp"

namespace dsv3::serve {

std::vector<std::vector<int32_t>> generate(model::Model& m,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opt,
                                           const std::function<void(int64_t, int32_t)>& on_token,
                                           GenerateStats* stats) {
  using clock = std::chrono::steady_clock;
  const auto& c = m.config();
  const int64_t B = int64_t(prompts.size());
  DSV3_CHECK(B > 0, "no prompts");
  const int64_t T = int64_t(prompts[0].size());
  DSV3_CHECK(T > 0, "empty prompt");
  DSV3_CHECK(opt.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got {}",
             opt.max_new_tokens);
  for (const auto& p : prompts)
    DSV3_CHECK(int64_t(p.size()) == T, "batched prompts must have equal length ({} vs {})",
               p.size(), T);
  const int64_t max_seq = std::min<int64_t>(c.max_position_embeddings, T + opt.max_new_tokens);
  DSV3_CHECK(T < c.max_position_embeddings,
             "prompt of {} tokens leaves no room under max_position_embeddings {}", T,
             c.max_position_embeddings);
  model::KVCache cache(c, B, max_seq, false);
  std::vector<int32_t> flat(size_t(B * T));
  for (int64_t b = 0; b < B; ++b)
    std::copy(prompts[size_t(b)].begin(), prompts[size_t(b)].end(), flat.begin() + b * T);
  std::vector<float> logits(size_t(B * c.vocab_size));
  std::vector<Sampler> samplers;
  for (int64_t b = 0; b < B; ++b) {
    SamplingParams sp = opt.sampling;
    sp.seed += uint64_t(b);
    samplers.emplace_back(sp);
  }
  model::ForwardOptions fo;
  fo.all_logits = false;
  auto t0 = clock::now();
  m.forward(flat.data(), B, T, 0, cache, logits.data(), fo);
  auto t1 = clock::now();
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(B));
  std::vector<bool> done(static_cast<size_t>(B), false);
  std::vector<int32_t> next(static_cast<size_t>(B));
  int64_t generated = 0;
  for (int64_t step = 0; step < opt.max_new_tokens && T + step < max_seq + 1; ++step) {
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      next[size_t(b)] = samplers[size_t(b)].sample(logits.data() + b * c.vocab_size, c.vocab_size);
      if (done[size_t(b)]) continue;
      out[size_t(b)].push_back(next[size_t(b)]);
      ++generated;
      if (on_token) on_token(b, next[size_t(b)]);
      if (opt.stop_at_eos && next[size_t(b)] == c.eos_token_id) done[size_t(b)] = true;
      all_done = all_done && done[size_t(b)];
    }
    if (all_done || step + 1 == opt.max_new_tokens || T + step + 1 >= max_seq) break;
    m.forward(next.data(), B, 1, T + step, cache, logits.data(), fo);
  }
  auto t2 = clock::now();
  if (stats) {
    stats->prompt_tokens = B * T;
    stats->generated_tokens = generated;
    stats->prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
    stats->decode_seconds = std::chrono::duration<double>(t2 - t1).count();
  }
  return out;
}

}  // namespace dsv3::serve
