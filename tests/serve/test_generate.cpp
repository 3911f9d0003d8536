// Generation on the latent cache: greedy decoding equals re-running the whole sequence through
// a fresh prefill and taking the argmax at every step; batched sequences equal single ones.
#include <gtest/gtest.h>

#include <algorithm>

#include "model/model.hpp"
#include "serve/generate.hpp"

using namespace dsv3;

namespace {

int32_t argmax(const float* p, int64_t n) {
  return int32_t(std::max_element(p, p + n) - p);
}

TEST(Generate, GreedyEqualsFullRecompute) {
  auto m = model::Model::load(std::string(DSV3_TEST_DATA) + "/tiny-v3");
  const auto& c = m->config();
  std::vector<int32_t> prompt = {0, 17, 42, 99, 3, 250, 7};
  serve::GenerateOptions go;
  go.max_new_tokens = 12;
  go.sampling.temperature = 0;
  go.stop_at_eos = false;
  auto out = serve::generate(*m, {prompt}, go, nullptr);
  ASSERT_EQ(out[0].size(), 12u);
  std::vector<int32_t> seq = prompt;
  for (int i = 0; i < 12; ++i) {
    const int64_t T = int64_t(seq.size());
    model::KVCache cache(c, 1, T, false);
    std::vector<float> logits(size_t(c.vocab_size));
    model::ForwardOptions fo;
    fo.all_logits = false;
    fo.attn = model::AttnImpl::Naive;
    m->forward(seq.data(), 1, T, 0, cache, logits.data(), fo);
    int32_t want = argmax(logits.data(), c.vocab_size);
    ASSERT_EQ(out[0][size_t(i)], want) << "step " << i;
    seq.push_back(want);
  }
}

TEST(Generate, BatchedEqualsSingle) {
  auto m = model::Model::load(std::string(DSV3_TEST_DATA) + "/tiny-v2lite");
  serve::GenerateOptions go;
  go.max_new_tokens = 10;
  go.sampling = {0.9f, 50, 0.95f, 5};
  go.stop_at_eos = false;
  std::printf("seed %llu\n", (unsigned long long)go.sampling.seed);
  std::vector<int32_t> p0 = {4, 8, 15, 16, 23}, p1 = {42, 43, 44, 45, 46};
  auto both = serve::generate(*m, {p0, p1}, go, nullptr);
  auto one = serve::generate(*m, {p0}, go, nullptr);
  EXPECT_EQ(both[0], one[0]);
  serve::GenerateOptions g1 = go;
  g1.sampling.seed += 1;  // sequence b is sampled with seed + b
  auto two = serve::generate(*m, {p1}, g1, nullptr);
  EXPECT_EQ(both[1], two[0]);
}

}  // namespace
