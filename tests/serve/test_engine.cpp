// The serving engine on the reference checkpoints (F32): every request's greedy output in a
// continuous batch equals its output alone (tokens, and log-probabilities within 1e-4); chunked
// prefill equals whole prefill; prefix-cache hits give the same output and are counted;
// preemption under a tiny KV budget still gives the same output; no block stays referenced after
// requests finish or are cancelled; bad requests are refused with an error.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "engine_test_util.hpp"

using namespace dsv3;
using test::Outcome;
using test::run_requests;

namespace {

std::vector<serve::RequestParams> make_requests(int n, int64_t V, uint64_t seed,
                                                int64_t max_tokens = 10) {
  Rng rng(seed);
  std::vector<serve::RequestParams> r(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    auto& p = r[size_t(i)];
    p.prompt.resize(size_t(3 + rng.below(20)));
    for (auto& t : p.prompt) t = int32_t(rng.below(uint64_t(V)));
    p.sampling.temperature = 0;
    p.max_tokens = max_tokens;
    p.top_logprobs = 3;
  }
  return r;
}

std::vector<Outcome> alone(model::Model& m, const serve::EngineOptions& o,
                           const std::vector<serve::RequestParams>& reqs) {
  std::vector<Outcome> out;
  for (const auto& r : reqs) {
    serve::Engine e(m, o);
    out.push_back(run_requests(e, {r})[0]);
  }
  return out;
}

TEST(Engine, BatchEqualsAlone) {
  for (const char* name : {"tiny-v3", "tiny-v2lite"}) {
    auto m = test::load_tiny(name);
    const uint64_t seed = 161;
    std::printf("%s seed %llu\n", name, (unsigned long long)seed);
    auto reqs = make_requests(6, m->config().vocab_size, seed);
    reqs[2].max_tokens = 4;  // leaves the batch early; later ones keep running
    serve::EngineOptions o;
    o.block_tokens = 4;
    o.prefill_chunk = 16;
    o.kv_cache_mb = 4;
    serve::Engine e(*m, o);
    const auto batch = run_requests(e, reqs);
    const auto solo = alone(*m, o, reqs);
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(batch[i].finals, 1);
      EXPECT_EQ(batch[i].finish, serve::FinishReason::Length);
      EXPECT_EQ(int64_t(batch[i].tokens.size()), reqs[i].max_tokens);
      test::expect_same(batch[i], solo[i], 1e-4f,
                        std::string(name) + " request " + std::to_string(i));
    }
    EXPECT_EQ(e.blocks_referenced(), 0);
    const auto mt = e.metrics();
    EXPECT_EQ(mt.requests_total, 6);
    EXPECT_EQ(mt.generation_tokens_total, 5 * 10 + 4);
  }
}

TEST(Engine, ChunkedPrefillEqualsWhole) {
  auto m = test::load_tiny("tiny-v3");
  auto reqs = make_requests(3, m->config().vocab_size, 17);
  reqs[0].prompt.resize(45, 5);  // long enough for the naive path in the whole prefill
  serve::EngineOptions whole, chunked;
  whole.block_tokens = chunked.block_tokens = 8;
  whole.kv_cache_mb = chunked.kv_cache_mb = 4;
  whole.prefill_chunk = 256;
  chunked.prefill_chunk = 3;
  serve::Engine ew(*m, whole), ec(*m, chunked);
  const auto a = run_requests(ew, reqs), b = run_requests(ec, reqs);
  for (size_t i = 0; i < reqs.size(); ++i)
    test::expect_same(a[i], b[i], 1e-4f, "request " + std::to_string(i));
}

TEST(Engine, PrefixCacheHitsGiveSameOutput) {
  auto m = test::load_tiny("tiny-v3");
  const int64_t V = m->config().vocab_size;
  Rng rng(23);
  std::printf("seed 23\n");
  std::vector<int32_t> system(37);
  for (auto& t : system) t = int32_t(rng.below(uint64_t(V)));
  std::vector<serve::RequestParams> reqs(3);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].prompt = system;
    for (int k = 0; k < 5; ++k) reqs[i].prompt.push_back(int32_t(rng.below(uint64_t(V))));
    reqs[i].sampling.temperature = 0;
    reqs[i].max_tokens = 8;
    reqs[i].top_logprobs = 2;
  }
  for (const bool spec : {false, true}) {
    serve::EngineOptions on, off;
    on.block_tokens = off.block_tokens = 8;
    on.kv_cache_mb = off.kv_cache_mb = 4;
    off.prefix_cache = false;
    if (spec) on.speculative = off.speculative = serve::Speculative::Mtp;
    serve::Engine e(*m, on), ref(*m, off);
    // One after the other: the first fills the cache, the others hit its 4 full blocks.
    std::vector<Outcome> got;
    for (const auto& r : reqs) got.push_back(run_requests(e, {r})[0]);
    const auto want = run_requests(ref, reqs);
    for (size_t i = 0; i < reqs.size(); ++i)
      test::expect_same(got[i], want[i], 1e-4f, "request " + std::to_string(i));
    EXPECT_EQ(got[0].stats.cached_prompt_tokens, 0);
    EXPECT_EQ(got[1].stats.cached_prompt_tokens, 32);
    EXPECT_EQ(got[2].stats.cached_prompt_tokens, 32);
    const auto mt = e.metrics();
    EXPECT_EQ(mt.prefix_cache_hit_tokens, 64);
    EXPECT_EQ(mt.prefix_cache_queried_tokens, 3 * 42);
    EXPECT_EQ(ref.metrics().prefix_cache_hit_tokens, 0);
    EXPECT_EQ(e.blocks_referenced(), 0);
  }
}

TEST(Engine, PreemptionUnderTinyBudgetGivesSameOutput) {
  auto m = test::load_tiny("tiny-v3");
  auto reqs = make_requests(5, m->config().vocab_size, 29, 14);
  serve::EngineOptions roomy, tiny;
  roomy.block_tokens = tiny.block_tokens = 4;
  roomy.kv_cache_mb = 4;
  tiny.kv_cache_blocks = 10;  // 40 positions; each request needs up to 37
  tiny.prefill_chunk = roomy.prefill_chunk = 8;
  for (const bool spec : {false, true}) {
    if (spec) roomy.speculative = tiny.speculative = serve::Speculative::Mtp;
    serve::Engine er(*m, roomy), et(*m, tiny);
    const auto want = run_requests(er, reqs), got = run_requests(et, reqs);
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(got[i].finish, serve::FinishReason::Length);
      test::expect_same(got[i], want[i], 1e-4f, "request " + std::to_string(i));
    }
    EXPECT_GT(et.metrics().preemptions, 0);
    EXPECT_EQ(et.blocks_referenced(), 0);
    EXPECT_EQ(er.metrics().preemptions, 0);
  }
}

TEST(Engine, CancelledAndStoppedRequestsFreeTheirBlocks) {
  auto m = test::load_tiny("tiny-v3");
  auto reqs = make_requests(6, m->config().vocab_size, 31, 20);
  serve::EngineOptions o;
  o.block_tokens = 4;
  o.kv_cache_mb = 4;
  o.speculative = serve::Speculative::Mtp;
  serve::Engine e(*m, o);
  // A stop token: the one request 1 emits third when run without it.
  const auto free_run = run_requests(e, {reqs[1]})[0];
  reqs[1].stop_tokens = {free_run.tokens[2]};
  const auto out = run_requests(e, reqs, {3, -1, 1, -1, 5, -1});
  for (size_t i : {0, 2, 4}) {
    EXPECT_EQ(out[i].finish, serve::FinishReason::Cancelled) << i;
    EXPECT_EQ(out[i].finals, 1);
  }
  EXPECT_EQ(out[1].finish, serve::FinishReason::Stop);
  EXPECT_LE(out[1].tokens.size(), 3u);
  EXPECT_EQ(out[1].tokens.back(), free_run.tokens[2]);
  EXPECT_EQ(e.blocks_referenced(), 0);
  // Cancelling unknown or finished ids is harmless.
  e.cancel(12345);
  e.cancel(1);
  EXPECT_EQ(run_requests(e, {reqs[3]})[0].finish, serve::FinishReason::Length);
  EXPECT_EQ(e.blocks_referenced(), 0);
}

TEST(Engine, BadRequestsAreRefused) {
  auto m = test::load_tiny("tiny-v3");
  serve::EngineOptions o;
  o.kv_cache_mb = 1;
  serve::Engine e(*m, o);
  auto cb = [](const serve::TokenEvent&) {};
  serve::RequestParams p;
  EXPECT_THROW(e.submit(p, cb), Error);  // empty prompt
  p.prompt = {1, 2, 3};
  p.max_tokens = e.max_context();
  EXPECT_THROW(e.submit(p, cb), Error);  // over the context
  p.max_tokens = 4;
  p.prompt = {1, int32_t(m->config().vocab_size)};
  EXPECT_THROW(e.submit(p, cb), Error);  // token id
  p.prompt = {1, 2};
  p.sampling.top_p = 0;
  EXPECT_THROW(e.submit(p, cb), Error);
  p.sampling.top_p = 1;
  p.max_tokens = 0;
  EXPECT_THROW(e.submit(p, cb), Error);
  serve::EngineOptions nb = o;
  nb.kv_cache_blocks = 2;
  nb.block_tokens = 4;
  serve::Engine small(*m, nb);
  p.max_tokens = 10;
  EXPECT_THROW(small.submit(p, cb), Error);  // needs more blocks than the whole cache
  auto v2 = test::load_tiny("tiny-v2lite");
  if (!v2->has_mtp()) {
    serve::EngineOptions so;
    so.speculative = serve::Speculative::Mtp;
    EXPECT_THROW(serve::Engine(*v2, so), Error);
  }
}

}  // namespace
