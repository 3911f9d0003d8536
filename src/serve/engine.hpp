// The serving engine: continuous batching over a paged latent KV cache with prefix caching and
// MTP speculative decoding (DeepSeek-V3 report §2.2, §3.x "speculative decoding with MTP").
//
// Requests join and leave the running batch at every step. One step is one ragged forward of
// the model (Model::forward_batch) over every running sequence: decode tokens, prompt chunks of
// at most prefill_chunk tokens, and (speculation) a pending token plus its MTP draft to verify.
// The latent cache is a pool of blocks of block_tokens positions per layer (MTP layers too), a
// block table per sequence, sized by kv_cache_mb; full blocks are content-hashed (chain over the
// token blocks) and shared between prompts with a common prefix, ref-counted, and the unreferenced
// ones evicted least recently used first. A sequence that does not fit waits, or is preempted
// (blocks freed) and recomputed later. See docs/serving.md.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/model.hpp"
#include "serve/sampler.hpp"

namespace dsv3::serve {

enum class FinishReason { None, Stop, Length, Cancelled, Error };  // Stop: a stop token (eos)
enum class Speculative { None, Mtp };

const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error", ""

struct RequestParams {
  std::vector<int32_t> prompt;       // token ids (the server applies the chat template)
  SamplingParams sampling;           // temperature (0 greedy), top_k, top_p, seed
  int64_t max_tokens = 256;          // new tokens at most
  std::vector<int32_t> stop_tokens;  // e.g. eos; generation ends after emitting one of them
  bool logprobs = true;              // false: TokenEvent::logprob is 0 (no V-way softmax)
  int64_t top_logprobs = 0;          // >0: also report this many alternatives per token
  bool speculative = true;           // use the engine's speculation if it has one
};

struct TokenEvent {
  int32_t token = -1;  // -1 on a final event without a token
  float logprob = 0;   // log p of `token` under the (temperature-free) model distribution
                       // (0 when the request asked for no logprobs)
  std::vector<std::pair<int32_t, float>> top;  // top_logprobs alternatives
  FinishReason finish = FinishReason::None;    // != None: the request's last event
  std::string error;                           // with FinishReason::Error
};

struct RequestStats {
  int64_t prompt_tokens = 0, cached_prompt_tokens = 0, completion_tokens = 0;
  int64_t drafted = 0, accepted = 0;  // speculative tokens
  int64_t steps = 0;                  // engine steps that produced tokens for this request
  double queue_s = 0, ttft_s = 0, total_s = 0;
};

struct EngineOptions {
  int64_t kv_cache_mb = 1024;   // paged latent cache budget
  int64_t block_tokens = 16;    // tokens per KV block
  int64_t max_running = 32;     // sequences per decode step
  int64_t prefill_chunk = 256;  // prompt tokens per step (chunked prefill)
  bool prefix_cache = true;
  Speculative speculative = Speculative::None;
  int64_t num_draft = 1;        // MTP draft tokens per step (the model's MTP modules: 1 each)
  int64_t max_context = 0;      // 0: config max_position_embeddings
  int64_t kv_cache_blocks = 0;  // > 0: exactly this many blocks instead of kv_cache_mb (tests)
  bool count_experts = false;   // fill EngineMetrics' decode_step_* routing counts (benchmarks)
};

struct EngineMetrics {  // a snapshot, for /metrics
  int64_t requests_total = 0, requests_running = 0, requests_waiting = 0;
  int64_t prompt_tokens_total = 0, generation_tokens_total = 0;
  int64_t kv_blocks_used = 0, kv_blocks_total = 0;
  int64_t prefix_cache_queried_tokens = 0, prefix_cache_hit_tokens = 0;
  int64_t spec_drafted = 0, spec_accepted = 0;
  int64_t preemptions = 0;
  int64_t steps = 0;  // forward steps run
  // Steps with no prompt chunk (decode and verification only), their tokens, and (with
  // count_experts) the distinct (MoE layer, routed expert) pairs their tokens reached, summed:
  // what bench_serve turns into the bytes a step reads.
  int64_t decode_steps = 0, decode_step_tokens = 0, decode_step_experts = 0;
  double decode_tokens_per_s = 0;  // recent
};

using RequestId = uint64_t;

class Engine {
 public:
  // Runs its scheduler on its own thread until destroyed. The model must outlive the engine.
  Engine(model::Model& m, const EngineOptions& opt);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  // Thread-safe. Throws dsv3::Error (message for the client) for bad input: empty prompt,
  // prompt + max_tokens over max_context, bad token ids, bad sampling. on_event is called from
  // the engine thread for every token and exactly once with finish != None; it must not block.
  RequestId submit(RequestParams p, std::function<void(const TokenEvent&)> on_event,
                   RequestStats* stats_out = nullptr /* filled before the final event */);
  void cancel(RequestId id);  // thread-safe; frees the sequence's blocks; final event Cancelled
  EngineMetrics metrics() const;
  int64_t max_context() const;
  // Blocks referenced by sequences (0 once every request has finished: no leak).
  int64_t blocks_referenced() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv3::serve
