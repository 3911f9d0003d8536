// Sampler: greedy picks the argmax; top-k / top-p never pick outside their candidate set;
// empirical frequencies follow the tempered softmax; the same seed gives the same draws.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/rng.hpp"
#include "serve/distribution.hpp"
#include "serve/sampler.hpp"

using namespace dsv3::serve;

TEST(Sampler, GreedyIsArgmax) {
  std::vector<float> l = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f};
  Sampler s({0.0f, 0, 1.0f, 1});
  EXPECT_EQ(s.sample(l.data(), 5), 1);  // ties go to the lowest id
}

TEST(Sampler, TopKAndTopPRestrictCandidates) {
  const uint64_t seed = 42;
  std::printf("seed %llu\n", (unsigned long long)seed);
  std::vector<float> l = {3.0f, 2.9f, 0.0f, -1.0f, 2.8f, -5.0f};
  Sampler k({1.0f, 2, 1.0f, seed});
  for (int i = 0; i < 500; ++i) {
    int t = k.sample(l.data(), 6);
    EXPECT_TRUE(t == 0 || t == 1) << t;
  }
  // probabilities ~ {0.33, 0.30, 0.016, 0.006, 0.27, ...}: top_p 0.6 keeps {0, 1}.
  Sampler p({1.0f, 0, 0.6f, seed});
  for (int i = 0; i < 500; ++i) {
    int t = p.sample(l.data(), 6);
    EXPECT_TRUE(t == 0 || t == 1) << t;
  }
}

TEST(Sampler, FrequenciesFollowTemperedSoftmax) {
  const uint64_t seed = 7;
  std::printf("seed %llu\n", (unsigned long long)seed);
  std::vector<float> l = {1.0f, 0.0f, -1.0f};
  const float temp = 0.7f;
  Sampler s({temp, 0, 1.0f, seed});
  std::vector<int> count(3, 0);
  const int n = 20000;
  for (int i = 0; i < n; ++i) count[size_t(s.sample(l.data(), 3))]++;
  double z = 0;
  for (float v : l) z += std::exp(v / temp);
  for (int i = 0; i < 3; ++i) {
    double p = std::exp(l[size_t(i)] / temp) / z;
    EXPECT_NEAR(count[size_t(i)] / double(n), p, 4 * std::sqrt(p * (1 - p) / n) + 1e-3);
  }
}

TEST(Sampler, SeededDrawsRepeat) {
  std::vector<float> l(100);
  for (int i = 0; i < 100; ++i) l[size_t(i)] = std::sin(float(i));
  Sampler a({1.0f, 0, 0.9f, 3}), b({1.0f, 0, 0.9f, 3});
  for (int i = 0; i < 200; ++i) EXPECT_EQ(a.sample(l.data(), 100), b.sample(l.data(), 100));
}

// token_logprob (every emitted token's logprob) against log-softmax in double, over a vocabulary
// the vector loop covers exactly and ones with a masked tail, with the top alternatives.
TEST(Sampler, TokenLogprobMatchesDoubleLogSoftmax) {
  const uint64_t seed = 77;
  std::printf("seed %llu\n", (unsigned long long)seed);
  dsv3::Rng rng(seed);
  for (const int64_t V : {int64_t(32000), int64_t(37), int64_t(5)}) {
    std::vector<float> l(static_cast<size_t>(V));
    for (auto& v : l) v = float(rng.uniform() * 30 - 15);
    double mx = l[0], sum = 0;
    for (float v : l) mx = std::max(mx, double(v));
    for (float v : l) sum += std::exp(double(v) - mx);
    const double lse = mx + std::log(sum);
    for (const int32_t tok : {int32_t(0), int32_t(V / 2), int32_t(V - 1)}) {
      std::vector<std::pair<int32_t, float>> top;
      const float got = token_logprob(l.data(), V, tok, 3, &top);
      EXPECT_NEAR(got, double(l[size_t(tok)]) - lse, 1e-5) << "V " << V << " token " << tok;
      ASSERT_EQ(top.size(), 3u);
      for (const auto& [id, lp] : top) EXPECT_NEAR(lp, double(l[size_t(id)]) - lse, 1e-5);
    }
  }
}
