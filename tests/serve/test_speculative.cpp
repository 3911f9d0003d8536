// MTP speculative decoding: greedy output equals plain greedy output (tokens and
// log-probabilities) with the acceptance reported per request and in the metrics; the acceptance
// rule leaves the target distribution unchanged (chi-square on a small vocabulary); sampled
// speculative generation has the distribution of plain sampling (two-sample chi-square on the
// first two tokens over many seeds).
#include <gtest/gtest.h>

#include <map>

#include "core/rng.hpp"
#include "engine_test_util.hpp"
#include "serve/distribution.hpp"

using namespace dsv3;
using test::run_requests;

namespace {

TEST(Speculative, GreedyEqualsPlainGreedy) {
  auto m = test::load_tiny("tiny-v3");
  ASSERT_TRUE(m->has_mtp());
  const int64_t V = m->config().vocab_size;
  Rng rng(41);
  std::printf("seed 41\n");
  std::vector<serve::RequestParams> reqs(5);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].prompt.resize(size_t(2 + rng.below(30)));
    for (auto& t : reqs[i].prompt) t = int32_t(rng.below(uint64_t(V)));
    reqs[i].sampling.temperature = 0;
    reqs[i].max_tokens = 16;
    reqs[i].top_logprobs = 2;
  }
  reqs[3].speculative = false;  // a plain request in a speculating batch
  serve::EngineOptions plain, spec;
  plain.block_tokens = spec.block_tokens = 4;
  plain.kv_cache_mb = spec.kv_cache_mb = 4;
  plain.prefill_chunk = spec.prefill_chunk = 8;
  spec.speculative = serve::Speculative::Mtp;
  serve::Engine ep(*m, plain), es(*m, spec);
  const auto want = run_requests(ep, reqs), got = run_requests(es, reqs);
  int64_t drafted = 0, accepted = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    test::expect_same(got[i], want[i], 1e-4f, "request " + std::to_string(i));
    EXPECT_LE(got[i].stats.accepted, got[i].stats.drafted);
    EXPECT_EQ(want[i].stats.drafted, 0);
    // Every step emits one token plus the accepted draft.
    EXPECT_EQ(got[i].stats.steps + got[i].stats.accepted, got[i].stats.completion_tokens);
    drafted += got[i].stats.drafted;
    accepted += got[i].stats.accepted;
  }
  EXPECT_EQ(got[3].stats.drafted, 0);
  // The reference model's weights are random: its MTP module rarely guesses the main model's
  // argmax, so only the drafting itself is checked here (bench_serve reports real acceptance).
  EXPECT_GT(drafted, 0);
  std::printf("acceptance %lld / %lld\n", (long long)accepted, (long long)drafted);
  const auto mt = es.metrics();
  EXPECT_EQ(mt.spec_drafted, drafted);
  EXPECT_EQ(mt.spec_accepted, accepted);
  EXPECT_EQ(es.blocks_referenced(), 0);
}

// One request alone (each speculative step is one spin team over the verification and the MTP
// module) without log-probabilities: the plain greedy tokens, every logprob 0 and no
// alternatives, and the step count of speculation.
TEST(Speculative, AloneWithoutLogprobsEqualsPlainGreedy) {
  auto m = test::load_tiny("tiny-v3");
  const int64_t V = m->config().vocab_size;
  const uint64_t seed = 77;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  for (int r = 0; r < 3; ++r) {
    serve::RequestParams q;
    q.prompt.resize(size_t(1 + rng.below(12)));
    for (auto& t : q.prompt) t = int32_t(rng.below(uint64_t(V)));
    q.sampling.temperature = 0;
    q.max_tokens = 24;
    serve::RequestParams quiet = q;
    quiet.logprobs = false;
    serve::EngineOptions plain, spec;
    plain.block_tokens = spec.block_tokens = 4;
    plain.kv_cache_mb = spec.kv_cache_mb = 4;
    spec.speculative = serve::Speculative::Mtp;
    serve::Engine ep(*m, plain), es(*m, spec);
    const auto want = run_requests(ep, {q})[0];
    const auto got = run_requests(es, {quiet})[0];
    ASSERT_EQ(got.tokens, want.tokens) << "request " << r;
    for (size_t t = 0; t < got.tokens.size(); ++t) {
      EXPECT_EQ(got.logprobs[t], 0.0f);
      EXPECT_TRUE(got.top[t].empty());
      EXPECT_NE(want.logprobs[t], 0.0f);
    }
    EXPECT_GT(got.stats.drafted, 0);
    EXPECT_EQ(got.stats.steps + got.stats.accepted, got.stats.completion_tokens);
    EXPECT_EQ(es.blocks_referenced(), 0);
  }
}

// Pearson's statistic of observed counts against expected probabilities.
double chi_square(const std::vector<int64_t>& counts, const std::vector<float>& p, int64_t n) {
  double x = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] <= 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    const double e = double(n) * p[i];
    x += (double(counts[i]) - e) * (double(counts[i]) - e) / e;
  }
  return x;
}

TEST(Speculative, AcceptanceRuleKeepsTheTargetDistribution) {
  const uint64_t seed = 1234;
  std::printf("seed %llu\n", (unsigned long long)seed);
  Rng rng(seed);
  // Target p and draft q on 6 tokens, with tokens only one of them can produce.
  const std::vector<float> p = {0.30f, 0.05f, 0.25f, 0.0f, 0.15f, 0.25f};
  const std::vector<float> q = {0.10f, 0.40f, 0.25f, 0.15f, 0.10f, 0.0f};
  const int64_t n = 200000;
  std::vector<int64_t> counts(p.size(), 0);
  int64_t acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t d = serve::sample_probs(q, rng);
    bool a = false;
    ++counts[size_t(serve::speculative_accept(p, q, d, false, rng, &a))];
    acc += a;
  }
  // 4 degrees of freedom (5 tokens with p > 0): P(χ² > 18.47) = 0.001.
  EXPECT_LT(chi_square(counts, p, n), 18.47);
  // The acceptance probability is Σ min(p, q) = 0.10 + 0.05 + 0.25 + 0 + 0.10 + 0 = 0.50.
  EXPECT_NEAR(double(acc) / double(n), 0.50, 0.01);
  // Greedy: accepted iff the draft is the argmax; the argmax is emitted either way.
  bool a = false;
  EXPECT_EQ(serve::speculative_accept(p, q, 2, true, rng, &a), 0);
  EXPECT_FALSE(a);
  EXPECT_EQ(serve::speculative_accept(p, q, 0, true, rng, &a), 0);
  EXPECT_TRUE(a);
}

TEST(Speculative, SamplingProbsMatchTheSampler) {
  // The engine's distribution (top-k, temperature, top-p) is the Sampler's: same support and the
  // same frequencies up to sampling noise.
  const int64_t V = 40;
  Rng rng(5);
  std::printf("seed 5\n");
  std::vector<float> logits(static_cast<size_t>(V));
  for (auto& l : logits) l = float(rng.normal() * 2);
  serve::SamplingParams sp{0.7f, 12, 0.9f, 99};
  std::vector<float> p;
  serve::sampling_probs(p, logits.data(), V, sp);
  serve::Sampler s(sp);
  const int64_t n = 100000;
  std::vector<int64_t> counts(size_t(V), 0);
  for (int64_t i = 0; i < n; ++i) ++counts[size_t(s.sample(logits.data(), V))];
  int64_t support = 0;
  for (float v : p) support += v > 0;
  // P(χ² > x) = 0.001 for support-1 degrees of freedom <= 11: x <= 31.3.
  EXPECT_LT(chi_square(counts, p, n), 31.3);
  EXPECT_GE(support, 2);
  EXPECT_LE(support, 12);
}

TEST(Speculative, SampledOutputHasThePlainDistribution) {
  auto m = test::load_tiny("tiny-v3");
  const int64_t n = 480;
  std::vector<serve::RequestParams> reqs(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    reqs[size_t(i)].prompt = {3, 14, 15, 92, 65, 35};
    // The whole vocabulary at temperature 1: on the random reference model the main and MTP
    // distributions are both wide and overlap, so drafts are often accepted.
    reqs[size_t(i)].sampling = {1.0f, 0, 1.0f, uint64_t(1000 + i)};
    // Token 1 comes from the prefill, token 2 is a verified draft (or its replacement), token 3
    // the bonus token of an accepted draft.
    reqs[size_t(i)].max_tokens = 3;
  }
  std::printf("seeds 1000..%lld\n", (long long)(1000 + n - 1));
  serve::EngineOptions plain, spec;
  plain.kv_cache_mb = spec.kv_cache_mb = 8;
  plain.block_tokens = spec.block_tokens = 4;
  spec.speculative = serve::Speculative::Mtp;
  serve::Engine ep(*m, plain), es(*m, spec);
  const auto a = run_requests(ep, reqs), b = run_requests(es, reqs);
  // Joint counts of (token 2, token 3), binned by id mod 4 (a function of the tokens has the
  // same law under both when the tokens do).
  std::vector<int64_t> ca(16, 0), cb(16, 0);
  int64_t drafted = 0, accepted = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto& ta = a[size_t(i)].tokens;
    const auto& tb = b[size_t(i)].tokens;
    ++ca[size_t(ta[1] % 4 * 4 + ta[2] % 4)];
    ++cb[size_t(tb[1] % 4 * 4 + tb[2] % 4)];
    drafted += b[size_t(i)].stats.drafted;
    accepted += b[size_t(i)].stats.accepted;
  }
  // Two-sample chi-square (equal sample sizes), 15 degrees of freedom: P(χ² > 37.7) = 0.001.
  double x = 0;
  for (size_t k = 0; k < 16; ++k)
    if (ca[k] + cb[k] > 0) x += double((ca[k] - cb[k]) * (ca[k] - cb[k])) / double(ca[k] + cb[k]);
  std::printf("chi2 %.2f drafted %lld accepted %lld\n", x, (long long)drafted, (long long)accepted);
  EXPECT_EQ(drafted, n);
  EXPECT_GT(accepted, n / 10);
  EXPECT_LT(x, 37.7);
}

}  // namespace
