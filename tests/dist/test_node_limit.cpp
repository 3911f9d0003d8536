// Node-limited routing (DeepSeek-V3 report §2.1.2): the router's group-limited top-k with the
// groups being nodes of expert-parallel ranks. Checked against an independent selection written
// from the report's rule: nodes ranked by the sum of the K/M highest biased affinities of their
// experts, the best M kept, then the top K experts of those; and every token's experts lie on at
// most M nodes (while without the limit many tokens span more).
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "core/rng.hpp"
#include "model/config.hpp"
#include "model/moe.hpp"

using namespace dsv3;
using namespace dsv3::model;

namespace {

// The K experts of one token by the rule above (biased scores b[E], nodes of E/nodes experts).
std::vector<int32_t> reference_pick(const float* b, int64_t E, int64_t K, int64_t nodes,
                                    int64_t M) {
  const int64_t per = E / nodes, top = K / M;
  std::vector<float> score(static_cast<size_t>(nodes));
  for (int64_t n = 0; n < nodes; ++n) {
    std::vector<float> v(b + n * per, b + (n + 1) * per);
    std::sort(v.begin(), v.end(), std::greater<float>());
    float s = 0;
    for (int64_t i = 0; i < top; ++i) s += v[size_t(i)];
    score[size_t(n)] = s;
  }
  std::vector<int32_t> ord(static_cast<size_t>(nodes));
  std::iota(ord.begin(), ord.end(), 0);
  std::stable_sort(ord.begin(), ord.end(),
                   [&](int32_t x, int32_t y) { return score[size_t(x)] > score[size_t(y)]; });
  std::vector<int32_t> cand;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t e = 0; e < per; ++e) cand.push_back(int32_t(ord[size_t(i)] * per + e));
  std::stable_sort(cand.begin(), cand.end(), [&](int32_t x, int32_t y) { return b[x] > b[y]; });
  std::sort(cand.begin(), cand.begin() + K);
  return {cand.begin(), cand.begin() + K};
}

}  // namespace

TEST(NodeLimitedRouting, AtMostMNodesAsTheReportRules) {
  const uint64_t seed = 20261207;
  std::printf("[node-limit] seed %llu\n", (unsigned long long)seed);
  ModelConfig c = load_config(std::string(DSV3_TEST_DATA) + "/tiny-v3");  // E 16, K 4
  const int64_t N = 300, D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const int64_t nodes = 4, M = 2;
  Rng rng(seed);
  std::vector<float> x(size_t(N * D)), router(size_t(E * D)), bias(static_cast<size_t>(E));
  for (auto& v : x) v = float(rng.normal());
  for (auto& v : router) v = float(rng.normal() * 0.05);
  for (auto& v : bias) v = float(rng.normal() * 0.05);
  MoeW<W<float>> w;
  w.router = router.data();
  w.bias = bias.data();
  const MoeDims d = moe_dims(c, N);

  MoeScratch<float> s;
  s.node_limit = {nodes, M};
  MoeActs<float> a;
  moe_router_forward(a, x.data(), w, d, s);
  MoeScratch<float> s0;  // the config's own group limit (4 groups, top 2): also checked below
  MoeActs<float> a0;
  moe_router_forward(a0, x.data(), w, d, s0);

  int64_t spanning = 0;
  for (int64_t t = 0; t < N; ++t) {
    std::vector<float> b(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) b[size_t(e)] = a.scores[size_t(t * E + e)] + bias[size_t(e)];
    std::vector<int32_t> got(a.indices.begin() + t * K, a.indices.begin() + (t + 1) * K);
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, reference_pick(b.data(), E, K, nodes, M)) << "token " << t;
    std::vector<int> used(static_cast<size_t>(nodes), 0), used0(static_cast<size_t>(nodes), 0);
    for (int32_t e : got) used[size_t(e / (E / nodes))] = 1;
    EXPECT_LE(std::accumulate(used.begin(), used.end(), 0), M) << "token " << t;
    // Without a node limit, choices by score alone (all E) span more nodes for many tokens.
    std::vector<int32_t> all(static_cast<size_t>(E));
    std::iota(all.begin(), all.end(), 0);
    std::stable_sort(all.begin(), all.end(),
                     [&](int32_t p, int32_t q) { return b[size_t(p)] > b[size_t(q)]; });
    for (int64_t k = 0; k < K; ++k) used0[size_t(all[size_t(k)] / (E / nodes))] = 1;
    spanning += std::accumulate(used0.begin(), used0.end(), 0) > M;
    // The config's groups (n_group 4, topk_group 2, sum of the top two) are the same mechanism.
    std::vector<int32_t> got0(a0.indices.begin() + t * K, a0.indices.begin() + (t + 1) * K);
    std::sort(got0.begin(), got0.end());
    EXPECT_EQ(got0, reference_pick(b.data(), E, K, c.n_group, c.topk_group)) << "token " << t;
  }
  EXPECT_GT(spanning, N / 4) << "the limit is not exercised";
}
