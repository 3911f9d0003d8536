// The serving engine of engine.hpp: the request queue, the scheduler thread and one step.
//
// A sequence's state is its tokens (prompt, then generated), `computed` (how many leading
// positions have their latents in the cache; with MTP the MTP layer's latents too) and its block
// table. tokens[computed..] are pending: a prompt still to prefill (in chunks), or the one token
// sampled last. A step:
//   1. admits waiting requests (prefix-cache match first) while the batch has room;
//   2. plans every running sequence's tokens: its pending token (plus its MTP draft to verify),
//      or a prompt chunk from the step's prefill budget; allocates their blocks, preempting the
//      youngest sequence when the pool is exhausted;
//   3. runs one Model::forward_batch over all of them (logits only where a token is sampled);
//   4. samples / verifies and emits tokens;
//   5. with MTP, runs the MTP module over the step's accepted positions (which fills its cache)
//      and drafts the next token of each speculating sequence from the last one;
//   6. caches the sequences' newly full blocks under their chained content keys.
#include "serve/engine.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/parallel.hpp"
#include "serve/distribution.hpp"
#include "serve/kv_blocks.hpp"

namespace dsv3::serve {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Length:
      return "length";
    case FinishReason::Cancelled:
      return "cancelled";
    case FinishReason::Error:
      return "error";
    case FinishReason::None:
      break;
  }
  return "";
}

namespace {

using Clock = std::chrono::steady_clock;

// Steps of at most this many tokens run on one spin team (the model's decode forwards do).
constexpr int64_t kStepTeamTokens = model::Model::kSpinTeamTokens;

double secs(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Seq {
  RequestId id = 0;
  RequestParams p;
  std::function<void(const TokenEvent&)> on_event;
  RequestStats* stats_out = nullptr;
  RequestStats st;
  Rng rng;
  std::vector<int32_t> tokens;  // prompt + generated
  int64_t prompt_len = 0;
  int64_t computed = 0;          // leading positions whose latents are cached
  std::vector<int32_t> blocks;   // block table
  std::vector<uint64_t> hashes;  // content keys of the leading full blocks (the chain)
  int32_t draft = -1;            // MTP draft of the token after the pending one
  std::vector<float> q;          // its distribution (sampling)
  Clock::time_point t_submit;
  bool admitted = false, got_first = false;
  FinishReason finish = FinishReason::None;
  bool greedy() const { return p.sampling.temperature <= 0; }
  int64_t generated() const { return int64_t(tokens.size()) - prompt_len; }
};

// One running sequence's part of a step.
struct Plan {
  Seq* s = nullptr;
  int64_t start = 0, n = 0;  // positions start..start+n-1 (n includes the draft)
  int64_t first = 0;         // its first token in the batch
  int64_t row = -1;          // its first logits row (-1: no logits)
  bool verify = false;       // n = 2: the pending token and its draft
  int64_t mtp_n = 0;         // positions accepted this step (the MTP module runs over them)
};

}  // namespace

struct Engine::Impl {
  model::Model& m;
  EngineOptions opt;
  const model::ModelConfig& c;
  bool mtp = false;  // the cache holds the MTP layer and every step runs the MTP module
  int64_t bt = 0, max_ctx = 0, V = 0;
  std::unique_ptr<model::KVCache> cache;
  std::unique_ptr<BlockPool> pool;

  // Shared with the submitting threads (under mu).
  mutable std::mutex mu;
  std::condition_variable cv;
  std::vector<std::unique_ptr<Seq>> incoming;
  std::vector<RequestId> cancels;
  bool stop = false;
  RequestId next_id = 1;
  EngineMetrics snap;
  std::atomic<int64_t> referenced{0};

  // The engine thread's.
  std::deque<std::unique_ptr<Seq>> waiting;
  std::vector<std::unique_ptr<Seq>> running;  // in order of admission
  EngineMetrics mtr;
  std::deque<std::pair<Clock::time_point, int64_t>> recent;  // (time, tokens) of recent steps
  std::vector<Plan> plans;
  std::vector<int32_t> tok, mnext;
  std::vector<model::SeqSpan> spans, mspans;
  std::vector<int64_t> rows, mrows;
  std::vector<float> logits, hidden, mhidden_in, mlogits, probs;
  std::vector<model::Routing> routes;
  std::vector<Seq*> drafting;
  std::vector<char> hit;
  std::thread thread;

  Impl(model::Model& model, const EngineOptions& o) : m(model), opt(o), c(model.config()) {}

  void loop();
  void step();
  void admit();
  bool plan();
  void run_step(const model::ForwardOptions& fo, bool decode_only);
  void run_mtp();
  void cache_full_blocks(Seq& s);
  void emit(Seq& s, int32_t token, const float* row_logits);
  void finish(Seq& s, FinishReason why, const std::string& error = {});
  void release(Seq& s);
  void preempt(std::unique_ptr<Seq> s);
  void match_prefix(Seq& s);
  int32_t pick(Seq& s, const float* row_logits);
  void handle_cancels(const std::vector<RequestId>& ids);
  void publish();
};

Engine::Engine(model::Model& m, const EngineOptions& opt) : impl_(new Impl(m, opt)) {
  Impl& e = *impl_;
  const auto& c = e.c;
  DSV3_CHECK(opt.block_tokens >= 1 && opt.block_tokens <= 4096,
             "engine: block_tokens must be in 1..4096, got {}", opt.block_tokens);
  DSV3_CHECK(opt.max_running >= 1, "engine: max_running must be >= 1, got {}", opt.max_running);
  DSV3_CHECK(opt.prefill_chunk >= 1, "engine: prefill_chunk must be >= 1, got {}",
             opt.prefill_chunk);
  DSV3_CHECK(opt.kv_cache_mb >= 1, "engine: kv_cache_mb must be >= 1, got {}", opt.kv_cache_mb);
  DSV3_CHECK(opt.max_context >= 0, "engine: max_context must be >= 0, got {}", opt.max_context);
  if (opt.speculative == Speculative::Mtp) {
    DSV3_CHECK(m.has_mtp(),
               "--speculative mtp needs a model with an MTP module (num_nextn_predict_layers > 0 "
               "and its weights loaded)");
    DSV3_CHECK(opt.num_draft == 1,
               "engine: num_draft {} is not supported; MTP speculation drafts 1 token per step "
               "(one MTP module)",
               opt.num_draft);
    e.mtp = true;
  }
  e.bt = opt.block_tokens;
  e.V = c.vocab_size;
  e.max_ctx = opt.max_context > 0 ? std::min(opt.max_context, c.max_position_embeddings)
                                  : c.max_position_embeddings;
  const int64_t layers = c.num_hidden_layers + (e.mtp ? c.num_nextn_predict_layers : 0);
  const int64_t block_bytes =
      layers * e.bt * (c.kv_lora_rank + c.qk_rope_head_dim) * int64_t(sizeof(float));
  DSV3_CHECK(opt.kv_cache_blocks >= 0, "engine: kv_cache_blocks must be >= 0, got {}",
             opt.kv_cache_blocks);
  const int64_t blocks = opt.kv_cache_blocks > 0
                             ? opt.kv_cache_blocks
                             : opt.kv_cache_mb * (int64_t(1) << 20) / block_bytes;
  DSV3_CHECK(blocks >= 1, "engine: kv_cache_mb {} holds no block of {} bytes", opt.kv_cache_mb,
             block_bytes);
  e.cache = std::make_unique<model::KVCache>(c, blocks, e.bt, e.mtp);
  e.pool = std::make_unique<BlockPool>(blocks);
  e.mtr.kv_blocks_total = blocks;
  e.snap = e.mtr;
  e.thread = std::thread([&e] { e.loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  impl_->thread.join();
}

int64_t Engine::max_context() const {
  return impl_->max_ctx;
}

int64_t Engine::blocks_referenced() const {
  return impl_->referenced.load();
}

EngineMetrics Engine::metrics() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  EngineMetrics m = impl_->snap;
  m.requests_waiting += int64_t(impl_->incoming.size());
  return m;
}

RequestId Engine::submit(RequestParams p, std::function<void(const TokenEvent&)> on_event,
                         RequestStats* stats_out) {
  Impl& e = *impl_;
  const int64_t n = int64_t(p.prompt.size());
  DSV3_CHECK(n > 0, "the prompt is empty");
  for (int32_t t : p.prompt)
    DSV3_CHECK(t >= 0 && t < e.V, "prompt token id {} outside the vocabulary (0..{})", t, e.V - 1);
  for (int32_t t : p.stop_tokens)
    DSV3_CHECK(t >= 0 && t < e.V, "stop token id {} outside the vocabulary (0..{})", t, e.V - 1);
  validate_sampling(p.sampling);
  DSV3_CHECK(p.max_tokens >= 1, "max_tokens must be >= 1, got {}", p.max_tokens);
  DSV3_CHECK(p.top_logprobs >= 0 && p.top_logprobs <= 20, "top_logprobs must be in 0..20, got {}",
             p.top_logprobs);
  DSV3_CHECK(n + p.max_tokens <= e.max_ctx,
             "the prompt ({} tokens) plus max_tokens ({}) exceeds the context of {} tokens", n,
             p.max_tokens, e.max_ctx);
  // Alone, a request must fit the whole cache (with the position of a draft), so the scheduler
  // can always finish it.
  const int64_t need = (n + p.max_tokens + 1 + e.bt - 1) / e.bt;
  DSV3_CHECK(need <= e.pool->total(),
             "the prompt ({} tokens) plus max_tokens ({}) needs {} KV blocks; the cache has {} "
             "(raise --kv-cache-mb)",
             n, p.max_tokens, need, e.pool->total());
  DSV3_CHECK(bool(on_event), "submit: no event callback");
  auto s = std::make_unique<Seq>();
  s->rng = Rng(p.sampling.seed);
  s->tokens = p.prompt;
  s->prompt_len = n;
  s->p = std::move(p);
  s->on_event = std::move(on_event);
  s->stats_out = stats_out;
  s->st.prompt_tokens = n;
  s->t_submit = Clock::now();
  RequestId id;
  {
    std::lock_guard<std::mutex> lk(e.mu);
    DSV3_CHECK(!e.stop, "the engine is shutting down");
    id = e.next_id++;
    s->id = id;
    e.incoming.push_back(std::move(s));
  }
  e.cv.notify_all();
  return id;
}

void Engine::cancel(RequestId id) {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->cancels.push_back(id);
  }
  impl_->cv.notify_all();
}

// ---- The engine thread ----

void Engine::Impl::loop() {
  for (;;) {
    std::vector<RequestId> cancel_ids;
    {
      std::unique_lock<std::mutex> lk(mu);
      cv.wait(lk, [&] {
        return stop || !incoming.empty() || !cancels.empty() || !running.empty() ||
               !waiting.empty();
      });
      if (stop) break;
      for (auto& s : incoming) {
        mtr.requests_total += 1;
        mtr.prompt_tokens_total += s->prompt_len;
        waiting.push_back(std::move(s));
      }
      incoming.clear();
      cancel_ids.swap(cancels);
    }
    handle_cancels(cancel_ids);
    try {
      step();
    } catch (const std::exception& ex) {
      // A failed step (a bug or exhausted memory) ends the requests it ran, not the server.
      log_message(LogLevel::Error, std::string("engine step failed: ") + ex.what());
      for (auto& s : running) finish(*s, FinishReason::Error, ex.what());
      running.clear();
    }
    publish();
  }
  // Shutting down: every request still here gets its final event.
  {
    std::lock_guard<std::mutex> lk(mu);
    for (auto& s : incoming) waiting.push_back(std::move(s));
    incoming.clear();
  }
  for (auto& s : running) finish(*s, FinishReason::Cancelled, "the engine shut down");
  for (auto& s : waiting) finish(*s, FinishReason::Cancelled, "the engine shut down");
  running.clear();
  waiting.clear();
}

void Engine::Impl::publish() {
  const auto now = Clock::now();
  while (!recent.empty() && secs(recent.front().first, now) > 10) recent.pop_front();
  int64_t toks = 0;
  for (const auto& r : recent) toks += r.second;
  mtr.requests_running = int64_t(running.size());
  mtr.requests_waiting = int64_t(waiting.size());
  mtr.kv_blocks_used = pool->referenced();
  mtr.decode_tokens_per_s =
      recent.size() >= 2 ? double(toks - recent.front().second) /
                               std::max(1e-9, secs(recent.front().first, recent.back().first))
                         : 0;
  std::lock_guard<std::mutex> lk(mu);
  snap = mtr;
}

void Engine::Impl::handle_cancels(const std::vector<RequestId>& ids) {
  for (RequestId id : ids) {
    for (size_t i = 0; i < running.size(); ++i)
      if (running[i]->id == id) {
        finish(*running[i], FinishReason::Cancelled);
        running.erase(running.begin() + std::ptrdiff_t(i));
        break;
      }
    for (size_t i = 0; i < waiting.size(); ++i)
      if (waiting[i]->id == id) {
        finish(*waiting[i], FinishReason::Cancelled);
        waiting.erase(waiting.begin() + std::ptrdiff_t(i));
        break;
      }
  }
}

void Engine::Impl::release(Seq& s) {
  for (int32_t b : s.blocks) pool->release(b);
  s.blocks.clear();
  s.hashes.clear();
  s.computed = 0;
  s.draft = -1;
  referenced.store(pool->referenced());
}

void Engine::Impl::finish(Seq& s, FinishReason why, const std::string& error) {
  release(s);
  s.finish = why;
  s.st.total_s = secs(s.t_submit, Clock::now());
  if (s.stats_out) *s.stats_out = s.st;
  TokenEvent ev;
  ev.finish = why;
  ev.error = error;
  s.on_event(ev);
}

void Engine::Impl::preempt(std::unique_ptr<Seq> s) {
  // Its blocks go back to the pool (the full ones stay in the prefix cache, so the recompute
  // often finds them); it waits at the front of the queue and recomputes its tokens.
  release(*s);
  mtr.preemptions += 1;
  waiting.push_front(std::move(s));
}

void Engine::Impl::match_prefix(Seq& s) {
  const int64_t n = int64_t(s.tokens.size());
  if (!opt.prefix_cache) return;
  // Full blocks only, and at least one token left to compute (its logits are needed); with MTP
  // a block's key includes the token after it, which is then inside the known tokens.
  const int64_t max_blocks = (n - 1) / bt;
  uint64_t parent = 0;
  for (int64_t j = 0; j < max_blocks; ++j) {
    const BlockKey key = block_key(parent, s.tokens.data() + j * bt, bt + (mtp ? 1 : 0));
    const int32_t b = pool->lookup(key);
    if (b < 0) break;
    s.blocks.push_back(b);
    s.hashes.push_back(key.hash);
    parent = key.hash;
  }
  s.computed = int64_t(s.blocks.size()) * bt;
  referenced.store(pool->referenced());
}

void Engine::Impl::cache_full_blocks(Seq& s) {
  if (!opt.prefix_cache) return;
  while (int64_t(s.hashes.size()) < s.computed / bt) {
    const int64_t j = int64_t(s.hashes.size());
    const uint64_t parent = j ? s.hashes.back() : 0;
    const BlockKey key = block_key(parent, s.tokens.data() + j * bt, bt + (mtp ? 1 : 0));
    pool->insert(s.blocks[size_t(j)], key);
    s.hashes.push_back(key.hash);
  }
}

void Engine::Impl::admit() {
  while (!waiting.empty() && int64_t(running.size()) < opt.max_running) {
    Seq& s = *waiting.front();
    match_prefix(s);
    const int64_t pending = int64_t(s.tokens.size()) - s.computed;
    const int64_t first = std::min(pending, opt.prefill_chunk);
    const int64_t need = (s.computed + first + bt - 1) / bt - int64_t(s.blocks.size());
    if (need > pool->available()) {
      release(s);
      break;
    }
    // Counted once per admission (a request that must wait is matched again next step).
    mtr.prefix_cache_queried_tokens += int64_t(s.tokens.size());
    mtr.prefix_cache_hit_tokens += s.computed;
    if (!s.admitted) {
      s.admitted = true;
      s.st.queue_s = secs(s.t_submit, Clock::now());
      s.st.cached_prompt_tokens = s.computed;
    }
    running.push_back(std::move(waiting.front()));
    waiting.pop_front();
  }
}

bool Engine::Impl::plan() {
  plans.clear();
  int64_t budget = opt.prefill_chunk;
  for (size_t i = 0; i < running.size(); ++i) {
    Seq& s = *running[i];
    const int64_t pending = int64_t(s.tokens.size()) - s.computed;
    Plan p;
    p.s = &s;
    p.start = s.computed;
    if (pending == 1) {
      p.verify = s.draft >= 0;
      p.n = p.verify ? 2 : 1;
    } else {
      p.n = std::min(pending, budget);
      if (p.n == 0) continue;
      budget -= p.n;
    }
    int64_t need = (s.computed + p.n + bt - 1) / bt - int64_t(s.blocks.size());
    bool ok = true;
    while (need > 0) {
      const int32_t b = pool->allocate();
      if (b >= 0) {
        s.blocks.push_back(b);
        --need;
      } else if (running.size() > i + 1) {
        preempt(std::move(running.back()));
        running.pop_back();
      } else {
        ok = false;
        break;
      }
    }
    if (!ok) {  // the youngest itself does not fit: it waits
      preempt(std::move(running[i]));
      running.erase(running.begin() + std::ptrdiff_t(i));
      break;
    }
    plans.push_back(p);
  }
  referenced.store(pool->referenced());
  return !plans.empty();
}

int32_t Engine::Impl::pick(Seq& s, const float* row_logits) {
  if (s.greedy()) return int32_t(std::max_element(row_logits, row_logits + V) - row_logits);
  sampling_probs(probs, row_logits, V, s.p.sampling);
  return sample_probs(probs, s.rng);
}

void Engine::Impl::emit(Seq& s, int32_t token, const float* row_logits) {
  TokenEvent ev;
  ev.token = token;
  if (s.p.logprobs || s.p.top_logprobs > 0)
    ev.logprob = token_logprob(row_logits, V, token, s.p.top_logprobs, &ev.top);
  s.tokens.push_back(token);
  s.st.completion_tokens += 1;
  mtr.generation_tokens_total += 1;
  if (!s.got_first) {
    s.got_first = true;
    s.st.ttft_s = secs(s.t_submit, Clock::now());
  }
  const auto& stop = s.p.stop_tokens;
  if (std::find(stop.begin(), stop.end(), token) != stop.end())
    ev.finish = FinishReason::Stop;
  else if (s.generated() >= s.p.max_tokens || int64_t(s.tokens.size()) >= max_ctx)
    ev.finish = FinishReason::Length;
  if (ev.finish == FinishReason::None) {
    s.on_event(ev);
    return;
  }
  release(s);
  s.finish = ev.finish;
  s.st.total_s = secs(s.t_submit, Clock::now());
  if (s.stats_out) *s.stats_out = s.st;
  s.on_event(ev);
}

void Engine::Impl::step() {
  admit();
  if (running.empty() || !plan()) return;
  // The batch: every plan's tokens in order, the logits rows where a token is sampled.
  tok.clear();
  spans.clear();
  rows.clear();
  for (Plan& p : plans) {
    Seq& s = *p.s;
    p.first = int64_t(tok.size());
    for (int64_t t = 0; t < p.n; ++t)
      tok.push_back(p.verify && t == 1 ? s.draft : s.tokens[size_t(p.start + t)]);
    spans.push_back({p.start, p.n, s.blocks.data(), int64_t(s.blocks.size())});
    if (p.verify) {
      p.row = int64_t(rows.size());
      rows.push_back(p.first);
      rows.push_back(p.first + 1);
    } else if (p.start + p.n == int64_t(s.tokens.size())) {
      p.row = int64_t(rows.size());
      rows.push_back(p.first + p.n - 1);
    }
  }
  const int64_t N = int64_t(tok.size()), D = c.hidden_size;
  if (logits.size() < rows.size() * size_t(V)) logits.resize(rows.size() * size_t(V));
  model::ForwardOptions fo;
  fo.head = !rows.empty();  // rows null would mean every token's logits
  if (mtp) {
    if (hidden.size() < size_t(N * D)) hidden.resize(size_t(N * D));
    fo.final_hidden = hidden.data();
  }
  bool decode_only = true;
  for (const Plan& p : plans) decode_only = decode_only && (p.n == 1 || p.verify);
  routes.clear();
  if (opt.count_experts && decode_only) fo.routes = &routes;
  // A speculative decode step is two short forwards (the verification, then the MTP module)
  // with the sampling between them: one spin team for all of it instead of one per forward
  // (core/parallel.hpp; the forwards of at most kSpinTeamTokens tokens run on one anyway).
  if (mtp && N <= kStepTeamTokens)
    spin_team([&] { run_step(fo, decode_only); });
  else
    run_step(fo, decode_only);
}

void Engine::Impl::run_step(const model::ForwardOptions& fo, bool decode_only) {
  const int64_t N = int64_t(tok.size());
  m.forward_batch(tok.data(), spans, *cache, logits.data(), rows.data(), int64_t(rows.size()), fo);
  mtr.steps += 1;
  if (decode_only) {
    mtr.decode_steps += 1;
    mtr.decode_step_tokens += N;
    for (const model::Routing& r : routes) {
      hit.assign(size_t(c.n_routed_experts), 0);
      for (int32_t e : r.indices) hit[size_t(e)] = 1;
      mtr.decode_step_experts += std::count(hit.begin(), hit.end(), 1);
    }
  }

  int64_t emitted = 0;
  for (Plan& p : plans) {
    Seq& s = *p.s;
    const int64_t before = s.st.completion_tokens;
    if (p.row >= 0) s.st.steps += 1;  // before the emits: a final one copies the stats out
    if (p.row < 0) {                  // a prompt chunk short of the end
      s.computed += p.n;
      p.mtp_n = p.n;
    } else if (!p.verify) {
      s.computed += p.n;
      p.mtp_n = p.n;
      const float* L = logits.data() + p.row * V;
      emit(s, pick(s, L), L);
    } else {
      const float* L0 = logits.data() + p.row * V;
      const float* L1 = L0 + V;
      bool accepted = false;
      int32_t t0;
      if (s.greedy()) {  // the rule's greedy case without the dense one-hot vectors
        t0 = pick(s, L0);
        accepted = t0 == s.draft;
      } else {
        sampling_probs(probs, L0, V, s.p.sampling);
        t0 = speculative_accept(probs, s.q, s.draft, false, s.rng, &accepted);
      }
      s.st.drafted += 1;
      mtr.spec_drafted += 1;
      if (accepted) {
        s.st.accepted += 1;
        mtr.spec_accepted += 1;
        s.computed += 2;
        p.mtp_n = 2;
        emit(s, t0, L0);
        if (s.finish == FinishReason::None) emit(s, pick(s, L1), L1);
      } else {
        s.computed += 1;
        p.mtp_n = 1;
        emit(s, t0, L0);
      }
      s.draft = -1;
    }
    emitted += s.st.completion_tokens - before;
  }
  recent.emplace_back(Clock::now(), (recent.empty() ? 0 : recent.back().second) + emitted);

  if (mtp) run_mtp();
  for (Plan& p : plans)
    if (p.s->finish == FinishReason::None) cache_full_blocks(*p.s);
  std::erase_if(running,
                [](const std::unique_ptr<Seq>& s) { return s->finish != FinishReason::None; });
}

// The MTP module over the positions each sequence accepted this step: position i with the main
// model's final hidden state h_i and the token t_{i+1} (known now) writes the MTP latents of i
// and predicts t_{i+2}; the last position's prediction is the draft of a speculating sequence.
void Engine::Impl::run_mtp() {
  const int64_t D = c.hidden_size;
  mspans.clear();
  mnext.clear();
  mrows.clear();
  int64_t n = 0;
  for (const Plan& p : plans) n += p.s->finish == FinishReason::None ? p.mtp_n : 0;
  if (n == 0) return;
  if (mhidden_in.size() < size_t(n * D)) mhidden_in.resize(size_t(n * D));
  drafting.clear();
  int64_t at = 0;
  for (const Plan& p : plans) {
    Seq& s = *p.s;
    if (s.finish != FinishReason::None || p.mtp_n == 0) continue;
    std::copy_n(hidden.data() + p.first * D, p.mtp_n * D, mhidden_in.data() + at * D);
    for (int64_t t = 0; t < p.mtp_n; ++t) mnext.push_back(s.tokens[size_t(p.start + t + 1)]);
    mspans.push_back({p.start, p.mtp_n, s.blocks.data(), int64_t(s.blocks.size())});
    at += p.mtp_n;
    // Draft when the sequence is at its end, speculates, and a verify step has room for two
    // more tokens (max_tokens, the context).
    const bool at_end = s.computed == int64_t(s.tokens.size()) - 1;
    if (at_end && s.p.speculative && s.generated() + 2 <= s.p.max_tokens &&
        int64_t(s.tokens.size()) + 1 <= max_ctx) {
      mrows.push_back(at - 1);
      drafting.push_back(&s);
    }
  }
  if (mlogits.size() < std::max<size_t>(1, mrows.size()) * size_t(V))
    mlogits.resize(std::max<size_t>(1, mrows.size()) * size_t(V));
  // No draft wanted still runs the module (its cache); rows then holds no row.
  if (mrows.empty()) mrows.push_back(-1);
  m.mtp_forward_batch(mhidden_in.data(), mnext.data(), mspans, *cache, mlogits.data(), mrows.data(),
                      int64_t(drafting.size()));
  for (size_t i = 0; i < drafting.size(); ++i) {
    Seq& s = *drafting[i];
    const float* L = mlogits.data() + int64_t(i) * V;
    if (s.greedy()) {
      s.draft = int32_t(std::max_element(L, L + V) - L);
    } else {
      sampling_probs(s.q, L, V, s.p.sampling);
      s.draft = sample_probs(s.q, s.rng);
    }
  }
}

}  // namespace dsv3::serve
